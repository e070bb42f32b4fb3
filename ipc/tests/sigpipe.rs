//! `Chunk::send_all_to` to a socket whose peer is gone fails with `EPIPE` and raises no SIGPIPE,
//! with SIGPIPE at its default action (terminate): a signal would kill this test binary.

use std::io::ErrorKind;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use ipc::{CacheSlot, ChunkDest, Lookup, Region, RegionConfig};

#[test]
fn sending_a_chunk_to_a_closed_peer_is_an_error_not_a_signal() {
    ipc::testkit::restore_default_sigpipe().expect("SIGPIPE to SIG_DFL");
    let config = RegionConfig {
        segments: 1,
        segment_size: 64 * 1024,
        cache_slots: 1,
        proxy_slots: 1,
    };
    let region = Arc::new(Region::create(&config, None).expect("region"));
    let timeout = Duration::from_secs(10);
    let cache = {
        let region = Arc::clone(&region);
        std::thread::spawn(
            move || -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
                let request = loop {
                    if let Some(request) = region.next_request(CacheSlot::from_raw(0), timeout)? {
                        break request;
                    }
                };
                let mut writer = request.found(5)?;
                let mut buf = writer.next_buf(timeout)?;
                buf.put_slice(b"hello")?;
                buf.publish()?;
                writer.finish()?;
                Ok(())
            },
        )
    };
    let lease = region.acquire(timeout).expect("a segment");
    let mut stream = lease
        .get(CacheSlot::from_raw(0), "/hello", timeout)
        .expect("get");
    assert_eq!(stream.lookup(), Lookup::Found { len: 5 });
    let chunk = stream
        .next_chunk(timeout)
        .expect("a chunk")
        .expect("not the end");
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    drop(theirs);
    let error = chunk.send_all_to(ours.as_fd()).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::BrokenPipe, "{error}");
    drop(chunk);
    while stream.next_chunk(timeout).expect("the rest").is_some() {}
    cache.join().expect("cache thread").expect("cache side");
}
