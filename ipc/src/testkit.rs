//! Deterministic test objects shared by the test helper binary, the tests and the benchmark.
//! Not part of the supported API.

/// Sets how long this process's waiters poll (spin, then `sched_yield`) before sleeping in
/// `FUTEX_WAIT`; `Duration::ZERO` leaves only the 100-iteration spin. For benchmarks.
pub fn set_yield_budget(budget: std::time::Duration) {
    crate::futex::set_yield_budget(budget);
}

/// The default of [`set_yield_budget`].
pub const DEFAULT_YIELD_BUDGET: std::time::Duration = crate::futex::DEFAULT_YIELD_BUDGET;

/// Sets SIGPIPE back to its default action (terminate) for the whole process, which Rust
/// executables ignore from startup: a test that then writes to a closed socket without
/// `MSG_NOSIGNAL` dies of it.
pub fn restore_default_sigpipe() -> std::io::Result<()> {
    // SAFETY: SIG_DFL is a valid disposition and installs no handler.
    let previous = unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    if previous == libc::SIG_ERR {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The counters the test peer (`ipc-testpeer`) keeps in its stats block: ipc gives the indices
/// no meaning of its own, so the peer and the tests agree on these.
pub mod peer_counters {
    use crate::CounterId;
    /// GETs answered found.
    pub const HITS: CounterId = CounterId::at::<0>();
    /// GETs answered not found.
    pub const MISSES: CounterId = CounterId::at::<1>();
    /// Body bytes copied into segments.
    pub const BYTES_OUT: CounterId = CounterId::at::<2>();
    /// PUTs stored.
    pub const PUTS_STORED: CounterId = CounterId::at::<3>();
}

/// splitmix64: a fast, well-mixed function of one word.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn word(seed: u64, index: u64) -> [u8; 8] {
    mix(seed.rotate_left(32) ^ index).to_le_bytes()
}

/// Fills `buf` with the bytes at `offset..offset + buf.len()` of the object named by `seed`.
pub fn fill_pattern(seed: u64, offset: u64, buf: &mut [u8]) {
    let mut at = offset;
    let mut rest = buf;
    // Unaligned head.
    while !at.is_multiple_of(8) && !rest.is_empty() {
        let (first, tail) = rest.split_at_mut(1);
        first[0] = word(seed, at / 8)[(at % 8) as usize];
        rest = tail;
        at += 1;
    }
    let mut words = rest.chunks_exact_mut(8);
    for chunk in &mut words {
        chunk.copy_from_slice(&word(seed, at / 8));
        at += 8;
    }
    for (i, byte) in words.into_remainder().iter_mut().enumerate() {
        *byte = word(seed, at / 8)[i];
    }
}

/// The whole object of `len` bytes named by `seed`.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    fill_pattern(seed, 0, &mut buf);
    buf
}

/// Checks that `data` equals the object named by `seed` at `offset`; returns the first
/// differing absolute offset.
pub fn check_pattern(
    seed: u64,
    offset: u64,
    data: &[u8],
    scratch: &mut Vec<u8>,
) -> Result<(), u64> {
    scratch.resize(data.len(), 0);
    fill_pattern(seed, offset, scratch);
    if scratch.as_slice() == data {
        return Ok(());
    }
    let first = data
        .iter()
        .zip(scratch.iter())
        .position(|(a, b)| a != b)
        .unwrap_or(0);
    Err(offset + first as u64)
}

/// A running checksum over bytes (order sensitive, independent of how the bytes are split).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Checksum {
    state: u64,
    len: u64,
}

impl Checksum {
    /// Adds bytes.
    pub fn update(&mut self, data: &[u8]) {
        for &byte in data {
            self.state = (self.state ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.len += data.len() as u64;
    }
    /// The value (FNV-1a 64 mixed with the length).
    pub fn value(&self) -> u64 {
        mix(self.state ^ self.len)
    }
}

/// Ping-pong hand-offs between two threads with each primitive, for the benchmark: the figures
/// behind the choice of futexes (docs/ipc.md).
pub mod handoff {
    use std::sync::atomic::AtomicU32;
    use std::time::{Duration, Instant};

    use crate::futex::{deadline_after, update_flag_word, wait_flag_word, COUNT_MASK};
    use crate::sys;
    use crate::{Error, Result};

    /// Which way `ping_pong` hands off.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Primitive {
        /// A futex word per direction, spinning briefly before `FUTEX_WAIT` (what the crate uses).
        FutexSpin,
        /// A futex word per direction, `FUTEX_WAIT` at once.
        FutexSleep,
        /// A SysV semaphore per direction (`semop`, no SEM_UNDO).
        Semaphore,
        /// A SysV message queue, one message type per direction.
        MessageQueue,
    }

    /// Removes a SysV object on drop.
    struct Remove(Box<dyn Fn()>);
    impl Drop for Remove {
        fn drop(&mut self) {
            (self.0)();
        }
    }

    /// Runs `rounds` round trips (A signals B, B signals A) between two threads and returns the
    /// elapsed time.
    pub fn ping_pong(primitive: Primitive, rounds: u32) -> Result<Duration> {
        let os = |op| move |source| Error::Os { op, source };
        match primitive {
            Primitive::FutexSpin | Primitive::FutexSleep => {
                let spin = primitive == Primitive::FutexSpin;
                let words = [AtomicU32::new(0), AtomicU32::new(0)];
                let wait = |word: &AtomicU32, target: u32| {
                    let deadline = deadline_after(Duration::from_secs(10));
                    let _ = wait_flag_word_maybe_spin(word, deadline, spin, |v| {
                        v & COUNT_MASK == target
                    });
                };
                let start = Instant::now();
                std::thread::scope(|scope| {
                    scope.spawn(|| {
                        for round in 1..=rounds {
                            wait(&words[0], round & COUNT_MASK);
                            update_flag_word(&words[1], |v| {
                                (v & !COUNT_MASK) | ((v + 1) & COUNT_MASK)
                            });
                        }
                    });
                    for round in 1..=rounds {
                        update_flag_word(&words[0], |v| (v & !COUNT_MASK) | ((v + 1) & COUNT_MASK));
                        wait(&words[1], round & COUNT_MASK);
                    }
                });
                Ok(start.elapsed())
            }
            Primitive::Semaphore => {
                let id = sys::sem_create(2).map_err(os("semget"))?;
                let _remove = Remove(Box::new(move || drop(sys::sem_remove(id))));
                let start = Instant::now();
                std::thread::scope(|scope| {
                    let peer = scope.spawn(|| -> std::io::Result<()> {
                        for _ in 0..rounds {
                            sys::sem_add(id, 0, -1)?;
                            sys::sem_add(id, 1, 1)?;
                        }
                        Ok(())
                    });
                    for _ in 0..rounds {
                        sys::sem_add(id, 0, 1).map_err(os("semop"))?;
                        sys::sem_add(id, 1, -1).map_err(os("semop"))?;
                    }
                    peer.join().unwrap_or(Ok(())).map_err(os("semop"))
                })?;
                Ok(start.elapsed())
            }
            Primitive::MessageQueue => {
                let id = sys::msg_create().map_err(os("msgget"))?;
                let _remove = Remove(Box::new(move || drop(sys::msg_remove(id))));
                let start = Instant::now();
                std::thread::scope(|scope| {
                    let peer = scope.spawn(|| -> std::io::Result<()> {
                        for _ in 0..rounds {
                            let n = sys::msg_receive(id, 1)?;
                            sys::msg_send(id, 2, n)?;
                        }
                        Ok(())
                    });
                    for round in 0..rounds {
                        sys::msg_send(id, 1, u64::from(round)).map_err(os("msgsnd"))?;
                        sys::msg_receive(id, 2).map_err(os("msgrcv"))?;
                    }
                    peer.join().unwrap_or(Ok(())).map_err(os("msgrcv"))
                })?;
                Ok(start.elapsed())
            }
        }
    }

    fn wait_flag_word_maybe_spin(
        word: &AtomicU32,
        deadline: Instant,
        spin: bool,
        ready: impl Fn(u32) -> bool,
    ) -> std::io::Result<Option<u32>> {
        if spin {
            wait_flag_word(word, deadline, ready)
        } else {
            crate::futex::wait_flag_word_no_spin(word, deadline, ready)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_is_split_independent() {
        let whole = pattern(7, 1000);
        let mut part = vec![0; 333];
        fill_pattern(7, 13, &mut part);
        assert_eq!(&whole[13..346], &part[..]);
        let mut scratch = Vec::new();
        assert_eq!(check_pattern(7, 13, &part, &mut scratch), Ok(()));
        part[5] ^= 1;
        assert_eq!(check_pattern(7, 13, &part, &mut scratch), Err(18));
        assert_ne!(pattern(8, 16), pattern(7, 16));
    }

    #[test]
    fn every_handoff_primitive_ping_pongs() {
        use handoff::{ping_pong, Primitive};
        for primitive in [
            Primitive::FutexSpin,
            Primitive::FutexSleep,
            Primitive::Semaphore,
            Primitive::MessageQueue,
        ] {
            ping_pong(primitive, 100).unwrap();
        }
    }

    #[test]
    fn checksum_ignores_splits() {
        let data = pattern(1, 100);
        let mut a = Checksum::default();
        a.update(&data);
        let mut b = Checksum::default();
        b.update(&data[..40]);
        b.update(&data[40..]);
        assert_eq!(a.value(), b.value());
    }
}
