//! Segment protocol benchmark (plain `fn main`, `cargo bench -p ipc --bench segment`).
//!
//! 1. Stream: a 64 MiB object through one 1 MiB segment (two 512 KiB halves), cache side in
//!    another process (`ipc-testpeer cache --mode bench`, one copy from its buffer into the
//!    segment) and in another thread, proxy side copying each chunk out into a 64 MiB buffer;
//!    beside a plain memcpy of the same 64 MiB in the same run; then the same stream with every
//!    chunk drained into one reused half-sized buffer (as the proxy drains a chunk into a
//!    socket) beside a memcpy of the 64 MiB in half-sized chunks into one buffer.
//! 2. Hand-offs: ping-pong between two threads with a futex (with and without the spin), a SysV
//!    semaphore pair and a SysV message queue.
//! 3. Round trips: GETs of a 100-byte object with 1, 4 and 16 concurrent requester threads
//!    against a cache process with 2 worker threads, 16 segments.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ipc::testkit::handoff::{ping_pong, Primitive};
use ipc::testkit::{set_yield_budget, DEFAULT_YIELD_BUDGET};
use ipc::{CacheSlot, ChunkDest, Lookup, Region, RegionConfig};

const OBJECT: usize = 64 << 20;
const TIMEOUT: Duration = Duration::from_secs(10);
const ROUNDS: usize = 12;

struct CachePeer(Child);

impl CachePeer {
    fn spawn(region: &Region, workers: usize, yield_budget: Duration) -> CachePeer {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ipc-testpeer"))
            .args([
                "cache",
                "--region",
                &region.id().to_string(),
                "--slot",
                "0",
                "--mode",
                "bench",
            ])
            .args(["--workers", &workers.to_string()])
            .args(["--yield-us", &yield_budget.as_micros().to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn ipc-testpeer");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read ready");
        assert_eq!(line.trim(), "ready", "cache peer failed");
        CachePeer(child)
    }
}

impl Drop for CachePeer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The in-thread cache: same loop as the peer's bench mode.
fn serve_in_thread(region: &Region, object: &[u8], stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let Some(request) = region
            .next_request(CacheSlot::from_raw(0), Duration::from_millis(50))
            .unwrap()
        else {
            continue;
        };
        let len: usize = request
            .path()
            .trim_start_matches("/bench/")
            .parse()
            .unwrap();
        let mut writer = request.found(len as u64).unwrap();
        let mut offset = 0;
        while offset < len {
            let mut buf = writer.next_buf(TIMEOUT).unwrap();
            let n = buf.remaining().min(len - offset);
            buf.put_slice(&object[offset..offset + n]).unwrap();
            buf.publish().unwrap();
            offset += n;
        }
        writer.finish().unwrap();
    }
}

fn fetch_into(region: &Region, len: usize, dst: &mut Vec<u8>) {
    dst.clear();
    let mut stream = region
        .acquire(TIMEOUT)
        .unwrap()
        .get(CacheSlot::from_raw(0), &format!("/bench/{len}"), TIMEOUT)
        .unwrap();
    assert_eq!(stream.lookup(), Lookup::Found { len: len as u64 });
    while let Some(chunk) = stream.next_chunk(TIMEOUT).unwrap() {
        chunk.append_to(dst);
    }
    assert_eq!(dst.len(), len);
}

/// Like [`fetch_into`], but every chunk is copied into the same buffer (its bytes are checked
/// by the rows that keep them all).
fn fetch_drain(region: &Region, len: usize, scratch: &mut Vec<u8>) {
    let mut stream = region
        .acquire(TIMEOUT)
        .unwrap()
        .get(CacheSlot::from_raw(0), &format!("/bench/{len}"), TIMEOUT)
        .unwrap();
    let mut received = 0;
    while let Some(chunk) = stream.next_chunk(TIMEOUT).unwrap() {
        scratch.clear();
        chunk.append_to(scratch);
        received += scratch.len();
    }
    assert_eq!(received, len);
}

struct Times(Vec<Duration>);

impl Times {
    fn best(&self) -> Duration {
        self.0.iter().copied().min().unwrap_or_default()
    }
    fn median(&self) -> Duration {
        let mut sorted = self.0.clone();
        sorted.sort();
        sorted.get(sorted.len() / 2).copied().unwrap_or_default()
    }
}

fn gbps(bytes: usize, time: Duration) -> f64 {
    bytes as f64 / time.as_secs_f64() / 1e9
}

fn measure(mut once: impl FnMut()) -> Times {
    once(); // warm: page faults, caches
    once();
    Times(
        (0..ROUNDS)
            .map(|_| {
                let start = Instant::now();
                once();
                start.elapsed()
            })
            .collect(),
    )
}

fn stream_row(name: &str, times: &Times, memcpy: &Times) {
    println!(
        "{name:<34} {:>8.2} {:>8.2} {:>10.2}",
        gbps(OBJECT, times.best()),
        gbps(OBJECT, times.median()),
        memcpy.median().as_secs_f64() / times.median().as_secs_f64()
    );
}

fn round_trips(region: &Region, requesters: usize, duration: Duration) -> f64 {
    let done = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..requesters {
            scope.spawn(|| {
                let mut dst = Vec::with_capacity(128);
                while !stop.load(Ordering::Relaxed) {
                    fetch_into(region, 100, &mut dst);
                    done.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        while start.elapsed() < duration {
            std::thread::sleep(Duration::from_millis(10));
        }
        stop.store(true, Ordering::Relaxed);
    });
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let object = ipc::testkit::pattern(3, OBJECT);
    let mut dst = vec![0; OBJECT];

    let memcpy = measure(|| {
        dst.copy_from_slice(std::hint::black_box(&object));
        std::hint::black_box(&mut dst);
    });

    println!("64 MiB stream, 1 MiB segment (2 x 512 KiB halves), {ROUNDS} rounds");
    println!(
        "{:<34} {:>8} {:>8} {:>10}",
        "", "best", "median", "vs memcpy"
    );
    println!(
        "{:<34} {:>8.2} {:>8.2} {:>10}",
        "memcpy 64 MiB (GB/s)",
        gbps(OBJECT, memcpy.best()),
        gbps(OBJECT, memcpy.median()),
        "1.00"
    );

    let policies = [
        ("spin 100", Duration::ZERO),
        ("spin 100 + yield 50us", DEFAULT_YIELD_BUDGET),
    ];
    let config = RegionConfig {
        segments: 1,
        segment_size: 1 << 20,
        cache_slots: 1,
        proxy_slots: 1,
    };
    for (policy, budget) in policies {
        set_yield_budget(budget);
        {
            let region = Region::create(&config, None).unwrap();
            let _peer = CachePeer::spawn(&region, 1, budget);
            let times = measure(|| fetch_into(&region, OBJECT, &mut dst));
            assert!(dst == object, "stream delivered wrong bytes");
            stream_row(&format!("process, {policy}"), &times, &memcpy);
        }
        {
            let region = Region::create(&config, None).unwrap();
            let stop = AtomicBool::new(false);
            std::thread::scope(|scope| {
                scope.spawn(|| serve_in_thread(&region, &object, &stop));
                let times = measure(|| fetch_into(&region, OBJECT, &mut dst));
                stop.store(true, Ordering::Relaxed);
                assert!(dst == object, "stream delivered wrong bytes");
                stream_row(&format!("thread, {policy}"), &times, &memcpy);
            });
        }
    }

    // The same stream with the proxy side draining each chunk into one reused buffer, as the
    // proxy drains a chunk into a socket: this measures the segment rather than the RAM
    // bandwidth of a 64 MiB destination. Its baseline copies the 64 MiB the same way.
    let half = config.segment_size / 2;
    let mut scratch = Vec::with_capacity(half);
    let memcpy_chunked = measure(|| {
        for piece in std::hint::black_box(&object).chunks(half) {
            scratch.clear();
            scratch.extend_from_slice(piece);
            std::hint::black_box(&mut scratch);
        }
    });
    println!();
    println!(
        "the same, each chunk drained into one reused {} KiB buffer",
        half >> 10
    );
    println!(
        "{:<34} {:>8.2} {:>8.2} {:>10}",
        "memcpy in chunks (GB/s)",
        gbps(OBJECT, memcpy_chunked.best()),
        gbps(OBJECT, memcpy_chunked.median()),
        "1.00"
    );
    set_yield_budget(DEFAULT_YIELD_BUDGET);
    {
        let region = Region::create(&config, None).unwrap();
        let _peer = CachePeer::spawn(&region, 1, DEFAULT_YIELD_BUDGET);
        let times = measure(|| fetch_drain(&region, OBJECT, &mut scratch));
        stream_row("process, spin 100 + yield 50us", &times, &memcpy_chunked);
    }
    {
        let region = Region::create(&config, None).unwrap();
        let stop = AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(|| serve_in_thread(&region, &object, &stop));
            let times = measure(|| fetch_drain(&region, OBJECT, &mut scratch));
            stop.store(true, Ordering::Relaxed);
            stream_row("thread, spin 100 + yield 50us", &times, &memcpy_chunked);
        });
    }

    println!();
    println!("hand-off round trips between two threads (A wakes B, B wakes A), 10000 rounds");
    println!(
        "{:<34} {:>12} {:>12}",
        "primitive", "round trips/s", "us/round trip"
    );
    let handoffs = [
        (
            "futex, spin 100 + yield 50us",
            Primitive::FutexSpin,
            DEFAULT_YIELD_BUDGET,
        ),
        (
            "futex, spin 100 then sleep",
            Primitive::FutexSpin,
            Duration::ZERO,
        ),
        (
            "futex, sleep at once",
            Primitive::FutexSleep,
            Duration::ZERO,
        ),
        (
            "SysV semaphore pair (semop)",
            Primitive::Semaphore,
            Duration::ZERO,
        ),
        (
            "SysV message queue",
            Primitive::MessageQueue,
            Duration::ZERO,
        ),
    ];
    for (name, primitive, budget) in handoffs {
        set_yield_budget(budget);
        let rounds = 10_000;
        let _ = ping_pong(primitive, 500); // warm
        let time = ping_pong(primitive, rounds).expect("ping-pong");
        println!(
            "{name:<34} {:>12.0} {:>12.2}",
            rounds as f64 / time.as_secs_f64(),
            time.as_secs_f64() * 1e6 / rounds as f64
        );
    }

    println!();
    println!("round trips/s of a 100-byte GET, cache process with 2 workers, 16 segments");
    println!("{:<34} {:>10} {:>10} {:>10}", "requesters", "1", "4", "16");
    let config = RegionConfig {
        segments: 16,
        segment_size: 64 * 1024,
        cache_slots: 1,
        proxy_slots: 1,
    };
    for (policy, budget) in policies {
        set_yield_budget(budget);
        let region = Region::create(&config, None).unwrap();
        let _peer = CachePeer::spawn(&region, 2, budget);
        round_trips(&region, 1, Duration::from_millis(300)); // warm
        let rates: Vec<f64> = [1, 4, 16]
            .iter()
            .map(|&n| round_trips(&region, n, Duration::from_secs(2)))
            .collect();
        println!(
            "{policy:<34} {:>10.0} {:>10.0} {:>10.0}",
            rates[0], rates[1], rates[2]
        );
    }
}
