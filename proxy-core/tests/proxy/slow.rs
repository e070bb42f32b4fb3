//! Clients that read slowly: they cost their own buffer, never a segment or a cache worker, and
//! never get two versions of an object stitched together.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use proxy_core::metrics::Counter;

use crate::common::{self, Backend, Fetched, Rig};

const BIG: usize = 8 << 20;

fn file_set() -> HashMap<String, Arc<Vec<u8>>> {
    let mut files = HashMap::new();
    files.insert("/big".to_owned(), Arc::new(common::content(7, BIG)));
    for i in 0..16 {
        files.insert(format!("/small{i}"), Arc::new(common::content(i, 1024)));
    }
    files
}

/// A client that asked for `/big` and reads it at its own pace.
struct SlowReader {
    stream: TcpStream,
    received: Vec<u8>,
}

impl SlowReader {
    fn start(addr: &str) -> SlowReader {
        let mut stream = TcpStream::connect(addr).expect("connect");
        // A small receive buffer keeps the bytes in flight few, as over a slow link.
        nix::sys::socket::setsockopt(&stream, nix::sys::socket::sockopt::RcvBuf, &4096)
            .expect("SO_RCVBUF");
        stream
            .write_all(b"GETFILE GET /big\r\n\r\n")
            .expect("send the request");
        stream.set_nonblocking(true).expect("non-blocking");
        SlowReader {
            stream,
            received: Vec::new(),
        }
    }

    /// Reads at most `budget` bytes of what has arrived; false once the server closed.
    fn read_some(&mut self, budget: usize) -> bool {
        let mut buf = vec![0u8; budget];
        match self.stream.read(&mut buf) {
            Ok(0) => false,
            Ok(n) => {
                self.received.extend_from_slice(&buf[..n]);
                true
            }
            Err(error) if error.kind() == ErrorKind::WouldBlock => true,
            Err(error) => panic!("a slow reader's connection failed: {error}"),
        }
    }

    /// The body bytes received so far (after the header).
    fn body(&self) -> &[u8] {
        let header = format!("GETFILE OK {BIG}\r\n\r\n");
        if self.received.len() < header.len() {
            return &[];
        }
        assert!(
            self.received.starts_with(header.as_bytes()),
            "unexpected answer {:?}",
            String::from_utf8_lossy(&self.received[..header.len().min(self.received.len())])
        );
        &self.received[header.len()..]
    }
}

#[test]
fn a_hundred_slow_readers_hold_no_segment_and_others_are_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = file_set();
    common::write_tree(dir.path(), &files);
    let mut config = common::proxy_config(None);
    // Each slow reader holds a worker in its blocking write: the pool grows for them.
    config.settings.threads = 4;
    config.settings.max_threads = 256;
    config.settings.client_buffer = 64 << 10;
    let rig = Rig::start(8, &[Backend::Directory(dir.path().to_path_buf())], config);
    let addr = rig.addr();

    let mut readers: Vec<SlowReader> = (0..100).map(|_| SlowReader::start(&addr)).collect();
    // 50 KB/s each: 1 KiB every 20 ms.
    let read_round = |readers: &mut Vec<SlowReader>| {
        for reader in readers.iter_mut() {
            assert!(reader.read_some(1024), "a slow reader was cut");
        }
        thread::sleep(Duration::from_millis(20));
    };
    common::wait_for(
        "every slow reader to go client-paced",
        Duration::from_secs(60),
        || {
            read_round(&mut readers);
            rig.counter(Counter::ClientPaced) >= 100
        },
    );

    // While they read on, holding no segment, every other client is served.
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let addr = addr.clone();
            let files = files.clone();
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let mut served = 0u32;
                let mut i = c;
                while !stop.load(Ordering::SeqCst) {
                    let path = format!("/small{}", i % 16);
                    match common::fetch(&addr, &path) {
                        Fetched::Ok(body) => {
                            assert!(body == files[&path][..], "{path}: wrong bytes")
                        }
                        other => panic!("{path}: {other:?} while slow readers read"),
                    }
                    served += 1;
                    i += 4;
                }
                served
            })
        })
        .collect();
    // At least 3 s of other clients beside the slow readers, and until the pool was seen whole
    // once (a loaded machine may keep the other clients' segments busy for a while).
    let started = Instant::now();
    let mut pool_seen_full = false;
    while started.elapsed() < Duration::from_secs(3)
        || (!pool_seen_full && started.elapsed() < Duration::from_secs(30))
    {
        read_round(&mut readers);
        pool_seen_full |= rig.region.segment_counts().free == rig.region.config().segments;
    }
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        assert!(client.join().expect("a client thread") > 0);
    }
    assert!(
        pool_seen_full,
        "100 slow readers should hold no segment between their ranges"
    );
    for reader in &readers {
        let body = reader.body();
        assert!(!body.is_empty() && body.len() < BIG);
        assert!(body == &files["/big"][..body.len()], "a wrong byte");
    }
    assert_eq!(rig.counter(Counter::RequestsAborted), 0);
}

/// A directory cache, and a client that read 16 KiB of `/big` and stopped: its transfer is
/// client-paced and holds no segment.
fn one_paced_reader() -> (
    tempfile::TempDir,
    HashMap<String, Arc<Vec<u8>>>,
    Rig,
    common::PartialClient,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = file_set();
    common::write_tree(dir.path(), &files);
    let mut config = common::proxy_config(None);
    config.settings.client_buffer = 64 << 10;
    let rig = Rig::start(4, &[Backend::Directory(dir.path().to_path_buf())], config);
    let partial = common::start_partial(&rig.addr(), "/big", 16 << 10);
    common::wait_for(
        "the reader to go client-paced",
        Duration::from_secs(20),
        || rig.counter(Counter::ClientPaced) == 1,
    );
    rig.wait_pool_full();
    (dir, files, rig, partial)
}

/// A file replaced by a rename (the way to update served files) under a slow reader: its next
/// ranges come from the old file, which its cache process keeps open for the transfer, so the
/// reader gets the old version whole, and the next client the new one.
#[test]
fn a_file_replaced_by_rename_under_a_slow_reader_is_sent_whole_from_the_old_file() {
    let (dir, files, rig, partial) = one_paced_reader();
    let addr = rig.addr();

    // Same length, other bytes, renamed over the path: a new version.
    let replacement = common::content(99, BIG);
    let staged = dir.path().join("big.new");
    std::fs::write(&staged, &replacement).expect("write the replacement");
    std::fs::rename(&staged, dir.path().join("big")).expect("rename over /big");

    let received = partial.read_to_close();
    assert_eq!(received.len(), BIG, "the transfer was cut");
    assert!(
        received[..] == files["/big"][..],
        "bytes of the new version were stitched to the old"
    );
    rig.wait_counter(Counter::RequestsOk, 1);
    assert_eq!(rig.counter(Counter::RequestsAborted), 0);
    // The next client gets the new version whole.
    common::fetch_ok(&addr, "/big", &replacement);
}

/// A file written in place under a slow reader: the transfer is cut short where the change is
/// noticed, and what the reader got is a prefix of the old version.
#[test]
fn a_file_written_in_place_under_a_slow_reader_is_cut_not_mixed() {
    let (dir, files, rig, partial) = one_paced_reader();
    let addr = rig.addr();

    let replacement = common::content(99, BIG);
    std::fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join("big"))
        .and_then(|mut file| std::io::Write::write_all(&mut file, &replacement))
        .expect("write in place");

    let received = partial.read_to_close();
    assert!(received.len() < BIG, "the transfer should have been cut");
    assert!(
        received[..] == files["/big"][..received.len()],
        "bytes of the new version were stitched to the old"
    );
    rig.wait_counter(Counter::RequestsAborted, 1);
    common::fetch_ok(&addr, "/big", &replacement);
}

#[test]
fn a_slow_reader_that_catches_up_gets_every_byte() {
    let (_dir, files, rig, partial) = one_paced_reader();
    let received = partial.read_to_close();
    assert_eq!(received.len(), BIG);
    assert!(received[..] == files["/big"][..], "a wrong byte");
    rig.wait_counter(Counter::RequestsOk, 1);
    assert_eq!(rig.counter(Counter::RequestsAborted), 0);
    // The proxy dropped the cache's first transfer to go on in ranges: not a cache error.
    let cache = rig
        .region
        .stats_snapshot(ipc::Member::Cache(ipc::CacheSlot::from_raw(0)));
    assert_eq!(
        cache.counter(cache_backends::metrics::Counter::Errors.id()),
        0
    );
}
