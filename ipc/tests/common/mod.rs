//! Helpers for the multi-process tests: a guard around a spawned `ipc-testpeer` that SIGKILLs
//! and reaps it on drop, and a guard that removes standalone SysV objects on drop.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use ipc::{object_info, IpcKind, IpcObject, ObjectInfo};

/// How long a test waits for a peer's line or exit before failing.
pub const PEER_DEADLINE: Duration = Duration::from_secs(60);

/// A running `ipc-testpeer`. Dropping it SIGKILLs and reaps the process.
pub struct Peer {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Peer {
    pub fn spawn(args: &[&str]) -> Peer {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ipc-testpeer"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn ipc-testpeer");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Peer {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Waits for a line starting with `prefix`; panics on an `error:` line, on exit or after
    /// the deadline.
    pub fn expect(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + PEER_DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.starts_with(prefix) {
                        return line;
                    }
                    assert!(
                        !line.starts_with("error:"),
                        "peer failed: {line} (waiting for {prefix:?})"
                    );
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no {prefix:?} line from the peer; saw {:?}", self.seen)
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!(
                        "peer exited before printing {prefix:?}; saw {:?}",
                        self.seen
                    )
                }
            }
        }
    }

    /// SIGKILLs the peer and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the peer to exit on its own (polling with a deadline).
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PEER_DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "peer did not exit; saw {:?}",
                self.seen
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Standalone SysV objects to remove at the end of a test, pass or fail. Removes an id only if
/// it still names the object first seen (the kernel reuses ids).
#[derive(Default)]
pub struct ObjectGuard {
    objects: Vec<(IpcKind, i32, Option<ObjectInfo>)>,
}

impl ObjectGuard {
    pub fn add(&mut self, kind: IpcKind, id: i32) {
        self.objects.push((kind, id, object_info(kind, id)));
    }
}

impl Drop for ObjectGuard {
    fn drop(&mut self) {
        for &(kind, id, first) in &self.objects {
            let (Some(first), Some(now)) = (first, object_info(kind, id)) else {
                continue;
            };
            if first.created == now.created && first.creator_pid == now.creator_pid {
                let _ = IpcObject::from_raw(kind, id).remove();
            }
        }
    }
}

/// Polls `condition` until it holds, panicking after the deadline.
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + PEER_DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}
