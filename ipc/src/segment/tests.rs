//! Unit tests of the segment protocol between threads of one process.

use super::cache::read_path;
use super::*;
use crate::{CacheSlot, ObjectVersion, RegionConfig, SegmentCounts, MAX_PATH_LEN};
use std::sync::Arc;

const T: Duration = Duration::from_secs(10);

fn region(segments: u32) -> Arc<Region> {
    let config = RegionConfig {
        segments,
        segment_size: 8192,
        cache_slots: 2,
        proxy_slots: 1,
    };
    Arc::new(Region::create(&config, None).unwrap())
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// A cache worker thread that serves `count` GETs from `object` (and stores PUTs it compares).
fn serve(
    region: Arc<Region>,
    slot: u32,
    object: Vec<u8>,
    count: usize,
) -> std::thread::JoinHandle<Vec<Vec<u8>>> {
    std::thread::spawn(move || {
        let mut puts = Vec::new();
        let mut served = 0;
        while served < count {
            let Some(request) = region.next_request(CacheSlot::from_raw(slot), T).unwrap() else {
                continue;
            };
            served += 1;
            match request.op() {
                Op::Get if request.path() == "/missing" => request.not_found().unwrap(),
                Op::Get => {
                    let mut writer = request.found(object.len() as u64).unwrap();
                    let mut offset = 0;
                    while offset < object.len() {
                        let mut buf = writer.next_buf(T).unwrap();
                        let n = buf.remaining().min(object.len() - offset);
                        buf.put_slice(&object[offset..offset + n]).unwrap();
                        buf.publish().unwrap();
                        offset += n;
                    }
                    writer.finish().unwrap();
                }
                Op::Put { .. } => {
                    let mut reader = request.accept().unwrap();
                    let mut body = Vec::new();
                    while let Some(chunk) = reader.next_chunk(T).unwrap() {
                        chunk.append_to(&mut body);
                    }
                    reader.complete(true).unwrap();
                    puts.push(body);
                }
                Op::UpdateMeta { .. } => request.updated(false).unwrap(),
                Op::Purge { .. } => request.purged(0).unwrap(),
            }
        }
        puts
    })
}

fn fetch(region: &Region, slot: u32, path: &str) -> (Lookup, Vec<u8>) {
    let lease = region.acquire(T).unwrap();
    let mut stream = lease.get(CacheSlot::from_raw(slot), path, T).unwrap();
    let mut body = Vec::new();
    while let Some(chunk) = stream.next_chunk(T).unwrap() {
        chunk.append_to(&mut body);
    }
    (stream.lookup(), body)
}

#[test]
fn control_word_round_trips() {
    let word = control_word(7, Phase::Requested, 4_000_000);
    assert_eq!(generation_of(word), 7);
    assert_eq!(Phase::of(word), Phase::Requested);
    assert_eq!(holder_of(word), 4_000_000);
}

#[test]
fn get_round_trips_sizes_around_the_chunk() {
    for len in [0usize, 1, 4095, 4096, 4097, 3 * 4096 + 5] {
        let region = region(1);
        let object = pattern(len, 3);
        let cache = serve(Arc::clone(&region), 1, object.clone(), 1);
        let (lookup, body) = fetch(&region, 1, "/object");
        assert_eq!(lookup, Lookup::Found { len: len as u64 });
        assert!(body == object, "len {len}");
        cache.join().unwrap();
        assert_eq!(
            region.segment_counts(),
            SegmentCounts {
                free: 1,
                busy: 0,
                quarantined: 0
            }
        );
    }
}

#[test]
fn not_found_and_put() {
    let region = region(1);
    let cache = serve(Arc::clone(&region), 0, Vec::new(), 2);
    let (lookup, body) = fetch(&region, 0, "/missing");
    assert_eq!(lookup, Lookup::NotFound);
    assert!(body.is_empty());
    let object = pattern(10_000, 9);
    let mut put = region
        .acquire(T)
        .unwrap()
        .put(CacheSlot::from_raw(0), "/fill", object.len() as u64)
        .unwrap();
    put.write(&object[..100], T).unwrap();
    put.write(&object[100..], T).unwrap();
    put.finish(T).unwrap();
    assert_eq!(cache.join().unwrap(), vec![object]);
    assert_eq!(region.segment_counts().free, 1);
}

#[test]
fn get_without_a_cache_times_out_and_frees_the_segment() {
    let region = region(1);
    let lease = region.acquire(T).unwrap();
    let err = lease
        .get(CacheSlot::from_raw(0), "/x", Duration::from_millis(30))
        .err()
        .unwrap();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    // Never claimed: straight back to the pool.
    assert_eq!(region.segment_counts().free, 1);
}

#[test]
fn stale_generation_cannot_touch_a_reused_segment() {
    let region = region(1);
    let lease = region.acquire(T).unwrap();
    let stale = Seg {
        region: &region,
        index: 0,
        generation: lease.generation().as_raw(),
        header: region.segment_header(0).unwrap(),
    };
    drop(lease);
    let fresh = region.acquire(T).unwrap();
    assert_ne!(fresh.generation().as_raw(), stale.generation);
    stale.finish_side(Side::Proxy, true);
    assert_eq!(
        region.segment_counts(),
        SegmentCounts {
            free: 0,
            busy: 1,
            quarantined: 0
        }
    );
    drop(fresh);
    assert_eq!(region.segment_counts().free, 1);
}

#[test]
fn bad_slot_and_long_path_are_typed_errors() {
    let region = region(1);
    let err = region
        .acquire(T)
        .unwrap()
        .get(CacheSlot::from_raw(9), "/x", T)
        .err()
        .unwrap();
    assert!(matches!(err, Error::InvalidConfig(_)));
    let long = format!("/{}", "a".repeat(MAX_PATH_LEN));
    let err = region
        .acquire(T)
        .unwrap()
        .get(CacheSlot::from_raw(0), &long, T)
        .err()
        .unwrap();
    assert!(matches!(err, Error::PathTooLong { .. }));
    assert!(matches!(
        region.next_request(CacheSlot::from_raw(5), T),
        Err(Error::InvalidConfig(_))
    ));
    assert_eq!(region.segment_counts().free, 1);
}

#[test]
fn many_gets_over_few_segments() {
    let region = region(2);
    let object = pattern(20_000, 1);
    let caches: Vec<_> = (0..2)
        .map(|_| serve(Arc::clone(&region), 0, object.clone(), 12))
        .collect();
    let proxies: Vec<_> = (0..4)
        .map(|_| {
            let region = Arc::clone(&region);
            let object = object.clone();
            std::thread::spawn(move || {
                for _ in 0..6 {
                    let (_, body) = fetch(&region, 0, "/o");
                    assert!(body == object);
                }
            })
        })
        .collect();
    for proxy in proxies {
        proxy.join().unwrap();
    }
    for cache in caches {
        cache.join().unwrap();
    }
    assert_eq!(region.segment_counts().free, 2);
}

#[test]
fn dropping_a_get_stream_mid_transfer_aborts_the_writer() {
    let region = region(1);
    let writer_region = Arc::clone(&region);
    let cache = std::thread::spawn(move || {
        let request = loop {
            if let Some(request) = writer_region
                .next_request(CacheSlot::from_raw(0), T)
                .unwrap()
            {
                break request;
            }
        };
        let mut writer = request.found(1 << 20).unwrap();
        loop {
            match writer.next_buf(T) {
                Ok(mut buf) => {
                    let n = buf.remaining();
                    buf.put_slice(&vec![7u8; n]).unwrap();
                    if buf.publish().is_err() {
                        return;
                    }
                }
                Err(err) => {
                    assert!(matches!(err, Error::Aborted), "{err}");
                    return;
                }
            }
        }
    });
    let mut stream = region
        .acquire(T)
        .unwrap()
        .get(CacheSlot::from_raw(0), "/big", T)
        .unwrap();
    drop(stream.next_chunk(T).unwrap());
    drop(stream);
    cache.join().unwrap();
    assert_eq!(region.segment_counts().free, 1);
}

#[test]
fn declined_put() {
    let region = region(1);
    let cache_region = Arc::clone(&region);
    let cache = std::thread::spawn(move || loop {
        if let Some(request) = cache_region
            .next_request(CacheSlot::from_raw(0), T)
            .unwrap()
        {
            request.decline().unwrap();
            return;
        }
    });
    let mut put = region
        .acquire(T)
        .unwrap()
        .put(CacheSlot::from_raw(0), "/f", 100_000)
        .unwrap();
    let chunk = vec![1u8; 1000];
    let err = loop {
        if let Err(err) = put.write(&chunk, T) {
            break err;
        }
    };
    assert!(matches!(err, Error::Declined), "{err}");
    assert!(matches!(put.finish(T), Err(Error::Declined)));
    cache.join().unwrap();
    assert_eq!(region.segment_counts().free, 1);
}

/// Claims the next request of slot 0 and answers it by writing the header directly, as a
/// broken or hostile peer could.
fn forge_answer(region: &Region, status: u32, total: u64, half_len: u32, published: u32) {
    let request = loop {
        if let Some(request) = region.next_request(CacheSlot::from_raw(0), T).unwrap() {
            break request;
        }
    };
    let header = request.seg.as_ref().unwrap().header;
    header.request.status.store(status, Ordering::Relaxed);
    header.request.total_len.store(total, Ordering::Relaxed);
    header.half_len[0].store(half_len, Ordering::Relaxed);
    header.half_len[1].store(half_len, Ordering::Relaxed);
    futex::update_flag_word(&header.produced, |v| {
        (v & !COUNT_MASK) | ((v + published) & COUNT_MASK) | FINAL
    });
    std::mem::forget(request); // the forger never finishes its side
}

fn forged_get(forgery: impl FnOnce(&Region) + Send) -> Result<Vec<u8>> {
    let region = region(1);
    std::thread::scope(|scope| {
        scope.spawn(|| forgery(&region));
        let mut stream = region.acquire(T)?.get(CacheSlot::from_raw(0), "/x", T)?;
        let mut body = Vec::new();
        while let Some(chunk) = stream.next_chunk(T)? {
            chunk.append_to(&mut body);
        }
        Ok(body)
    })
}

#[test]
fn impossible_values_from_the_peer_are_protocol_errors() {
    let status = forged_get(|r| forge_answer(r, 99, 10, 10, 1)).unwrap_err();
    assert!(matches!(status, Error::Protocol { .. }), "{status}");
    let too_long = forged_get(|r| forge_answer(r, 1, 1 << 20, 5000, 1)).unwrap_err();
    assert!(matches!(too_long, Error::Protocol { .. }), "{too_long}");
    let beyond_total = forged_get(|r| forge_answer(r, 1, 100, 200, 1)).unwrap_err();
    assert!(
        matches!(beyond_total, Error::Protocol { .. }),
        "{beyond_total}"
    );
    let empty = forged_get(|r| forge_answer(r, 1, 100, 0, 1)).unwrap_err();
    assert!(matches!(empty, Error::Protocol { .. }), "{empty}");
    let ahead = forged_get(|r| forge_answer(r, 1, 1 << 20, 4096, 5)).unwrap_err();
    assert!(matches!(ahead, Error::Protocol { .. }), "{ahead}");
}

#[test]
fn a_malformed_path_is_answered_with_an_error() {
    let region = region(1);
    let lease = region.acquire(T).unwrap();
    let index = lease.segment().as_raw();
    std::thread::scope(|scope| {
        let cache = scope.spawn(|| {
            region
                .next_request(CacheSlot::from_raw(0), Duration::from_millis(300))
                .unwrap()
        });
        // Not starting with '/': the cache answers Error and keeps looking.
        let stream = lease.get(CacheSlot::from_raw(0), "relative", T).unwrap();
        assert_eq!(stream.lookup(), Lookup::Error);
        assert!(cache.join().unwrap().is_none());
    });
    // A path length beyond the area (the segment is free again: nobody else reads it).
    let header = region.segment_header(index).unwrap();
    header
        .request
        .path_len
        .store(MAX_PATH_LEN as u32 + 1, Ordering::Relaxed);
    let seg = Seg {
        region: &region,
        index,
        generation: 0,
        header,
    };
    assert!(matches!(read_path(&seg), Err(Error::Protocol { .. })));
}

#[test]
fn a_put_whose_proxy_vanished_before_any_claim_is_reclaimed() {
    let region = region(1);
    let put = region
        .acquire(T)
        .unwrap()
        .put(CacheSlot::from_raw(0), "/p", 10)
        .unwrap();
    std::mem::forget(put);
    assert_eq!(region.segment_counts().busy, 1);
    assert_eq!(region.reclaim_dead(region.pid()), 1);
    assert_eq!(region.segment_counts().free, 1);
}

#[test]
fn reclaim_of_a_vanished_cache_returns_the_segment() {
    let region = region(1);
    // Claim a request as a "cache" and then forget the handle, as a SIGKILL would.
    let proxy_region = Arc::clone(&region);
    let proxy = std::thread::spawn(move || {
        let lease = proxy_region.acquire(T).unwrap();
        lease
            .get(CacheSlot::from_raw(0), "/x", Duration::from_millis(200))
            .err()
            .unwrap()
    });
    let request = loop {
        if let Some(request) = region.next_request(CacheSlot::from_raw(0), T).unwrap() {
            break request;
        }
    };
    std::mem::forget(request);
    assert!(matches!(proxy.join().unwrap(), Error::Timeout { .. }));
    assert_eq!(region.segment_counts().quarantined, 1);
    assert_eq!(region.reclaim_dead(region.pid()), 1);
    assert_eq!(region.segment_counts().free, 1);
}

#[test]
fn handles_can_move_between_threads() {
    fn send<T: Send>() {}
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Region>();
    send::<Lease<'static>>();
    send::<GetStream<'static>>();
    send::<PutStream<'static>>();
    send::<CacheRequest<'static>>();
    send::<GetWriter<'static>>();
    send::<PutReader<'static>>();
}

#[test]
fn a_consumer_count_ahead_of_the_producer_is_a_protocol_error() {
    let region = region(1);
    std::thread::scope(|scope| {
        let proxy = scope.spawn(|| {
            let lease = region.acquire(T).unwrap();
            let header = region.segment_header(lease.segment().as_raw()).unwrap();
            let stream = lease.get(CacheSlot::from_raw(0), "/x", T).unwrap();
            // A hostile consumer releases chunks it never received.
            futex::update_flag_word(&header.consumed, |v| {
                (v & !COUNT_MASK) | ((v + 7) & COUNT_MASK)
            });
            stream
        });
        let request = loop {
            if let Some(request) = region.next_request(CacheSlot::from_raw(0), T).unwrap() {
                break request;
            }
        };
        let mut writer = request.found(1 << 20).unwrap();
        let mut buf = writer.next_buf(T).unwrap();
        buf.put_slice(&[1; 100]).unwrap();
        buf.publish().unwrap();
        let stream = proxy.join().unwrap();
        let err = writer.next_buf(T).unwrap_err();
        assert!(matches!(err, Error::Protocol { .. }), "{err}");
        drop(stream);
    });
    assert_eq!(region.segment_counts().free, 1);
}

/// A cache thread that answers one ranged GET from `object` with `version`, copying from the
/// offset the writer names.
fn serve_range(
    region: Arc<Region>,
    object: Vec<u8>,
    version: u64,
) -> std::thread::JoinHandle<crate::ByteRange> {
    std::thread::spawn(move || loop {
        let Some(request) = region.next_request(CacheSlot::from_raw(0), T).unwrap() else {
            continue;
        };
        let range = request.range();
        let modified = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut writer = request
            .found_object(
                object.len() as u64,
                crate::ObjectVersion::from_raw(version),
                Some(modified),
            )
            .unwrap();
        let end = writer.next_offset() + writer.len();
        while writer.next_offset() < end {
            let offset = writer.next_offset() as usize;
            let mut buf = writer.next_buf(T).unwrap();
            let n = buf.remaining().min(end as usize - offset);
            buf.put_slice(&object[offset..offset + n]).unwrap();
            buf.publish().unwrap();
        }
        writer.finish().unwrap();
        return range;
    })
}

#[test]
fn a_ranged_get_carries_only_its_range_and_the_version() {
    let object = pattern(3 * 4096 + 17, 5);
    let len = object.len() as u64;
    for (range, expected) in [
        (crate::ByteRange::WHOLE, 0..object.len()),
        (crate::ByteRange::new(0, 10), 0..10),
        (crate::ByteRange::new(4000, 5000), 4000..9000),
        (crate::ByteRange::from(9000), 9000..object.len()),
        (
            crate::ByteRange::new(len - 3, 100),
            object.len() - 3..object.len(),
        ),
        (crate::ByteRange::from(len), object.len()..object.len()),
        (
            crate::ByteRange::new(len + 50, 10),
            object.len()..object.len(),
        ),
    ] {
        let region = region(1);
        let cache = serve_range(Arc::clone(&region), object.clone(), 42);
        let lease = region.acquire(T).unwrap();
        let mut stream = lease
            .get_range(CacheSlot::from_raw(0), "/object", range, T)
            .unwrap();
        assert_eq!(stream.lookup(), Lookup::Found { len }, "{range:?}");
        assert_eq!(stream.version(), crate::ObjectVersion::from_raw(42));
        assert_eq!(
            stream.modified(),
            Some(std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        );
        assert_eq!(stream.body_len(), expected.len() as u64, "{range:?}");
        let mut body = Vec::new();
        while let Some(chunk) = stream.next_chunk(T).unwrap() {
            chunk.append_to(&mut body);
        }
        assert!(body == object[expected.clone()], "{range:?}");
        assert_eq!(
            cache.join().unwrap(),
            range,
            "the cache saw the range asked"
        );
        drop(stream);
        assert_eq!(region.segment_counts().free, 1);
    }
}

/// Metadata travels as opaque bytes: with a PUT to the cache, back with every GET answer, and
/// in an UPDATE that names the version it belongs to; a PURGE says how many objects went.
#[test]
fn metadata_rides_with_put_get_and_update_and_purge_counts() {
    let region = region(4);
    let cache = {
        let region = Arc::clone(&region);
        std::thread::spawn(move || {
            let slot = CacheSlot::from_raw(0);
            let mut meta = Vec::new();
            let mut seen = Vec::new();
            for _ in 0..5 {
                let request = region.next_request(slot, T).unwrap().unwrap();
                seen.push(request.op());
                match request.op() {
                    Op::Put { .. } => {
                        meta = request.meta().to_vec();
                        let mut reader = request.accept().unwrap();
                        while reader.next_chunk(T).unwrap().is_some() {}
                        reader.complete(true).unwrap();
                    }
                    Op::Get => {
                        let version = ObjectVersion::from_raw(7);
                        let writer = request.found_with_meta(0, version, None, &meta).unwrap();
                        writer.finish().unwrap();
                    }
                    Op::UpdateMeta { version } => {
                        let current = version == ObjectVersion::from_raw(7);
                        if current {
                            meta = request.meta().to_vec();
                        }
                        request.updated(current).unwrap();
                    }
                    Op::Purge { prefix } => {
                        assert_eq!(request.path(), "/dir/");
                        request.purged(if prefix { 3 } else { 0 }).unwrap();
                    }
                }
            }
            seen
        })
    };
    let slot = CacheSlot::from_raw(0);
    let put = region.acquire(T).unwrap();
    put.put_with_meta(slot, "/a", 0, b"first")
        .unwrap()
        .finish(T)
        .unwrap();
    let stream = region.acquire(T).unwrap().get(slot, "/a", T).unwrap();
    assert_eq!(stream.meta(), b"first");
    drop(stream);
    let stale = ObjectVersion::from_raw(8);
    let lease = region.acquire(T).unwrap();
    assert!(!lease.update_meta(slot, "/a", stale, b"lost", T).unwrap());
    let current = ObjectVersion::from_raw(7);
    let lease = region.acquire(T).unwrap();
    assert!(lease
        .update_meta(slot, "/a", current, b"second", T)
        .unwrap());
    let lease = region.acquire(T).unwrap();
    assert_eq!(lease.purge(slot, "/dir/", true, T).unwrap(), 3);
    let seen = cache.join().unwrap();
    assert_eq!(seen.len(), 5);
    assert_eq!(
        region.segment_counts().free,
        4,
        "every segment back in the pool"
    );
}

/// More metadata than a header holds is refused before anything is sent.
#[test]
fn oversized_metadata_is_refused_and_the_segment_freed() {
    let region = region(1);
    let lease = region.acquire(T).unwrap();
    let meta = vec![1u8; crate::MAX_META_LEN + 1];
    let refused = lease.put_with_meta(CacheSlot::from_raw(0), "/a", 1, &meta);
    assert!(refused.is_err());
    drop(region.acquire(T).unwrap());
}
