//! The memory backend: byte bound, LRU order, objects held across eviction, and op sequences
//! checked against a model.

mod common;

use std::collections::VecDeque;

use cache_backends::{CacheBackend, MemoryBackend, ENTRY_OVERHEAD};
use common::{get_bytes, put_one, read_all};
use proptest::prelude::*;

fn charge(key: &str, len: usize) -> u64 {
    key.len() as u64 + len as u64 + ENTRY_OVERHEAD
}

#[test]
fn bytes_count_keys_payload_and_bookkeeping() {
    let backend = MemoryBackend::new(1 << 20, 1 << 16).unwrap();
    put_one(&backend, "/a", &[1; 100]).unwrap();
    put_one(&backend, "/bb", &[2; 0]).unwrap();
    let stats = backend.stats();
    assert_eq!(stats.objects, 2);
    assert_eq!(stats.bytes, charge("/a", 100) + charge("/bb", 0));
    assert_eq!(stats.capacity, Some(1 << 20));
}

#[test]
fn eviction_order_is_least_recently_used() {
    // Room for exactly three 100-byte objects with 2-byte keys in one shard.
    let capacity = 3 * charge("/a", 100);
    let backend = MemoryBackend::with_shards(capacity, 1000, 1).unwrap();
    for key in ["/a", "/b", "/c"] {
        put_one(&backend, key, &[0; 100]).unwrap();
    }
    // Use /a so that /b is now the least recently used.
    assert!(backend.get("/a").unwrap().is_some());
    put_one(&backend, "/d", &[0; 100]).unwrap();
    assert!(backend.get("/b").unwrap().is_none(), "/b was the coldest");
    // Order now (cold to hot): /c, /a, /d.
    put_one(&backend, "/e", &[0; 100]).unwrap();
    assert!(backend.get("/c").unwrap().is_none(), "/c was the coldest");
    for key in ["/a", "/d", "/e"] {
        assert!(backend.get(key).unwrap().is_some(), "{key}");
    }
    // A large object evicts as many cold ones as it needs, coldest first.
    put_one(&backend, "/f", &[0; 200]).unwrap();
    let survivors: Vec<_> = ["/a", "/d", "/e", "/f"]
        .into_iter()
        .filter(|key| backend.get(key).unwrap().is_some())
        .collect();
    assert_eq!(survivors, ["/e", "/f"]);
    let stats = backend.stats();
    assert_eq!(stats.evictions, 4);
    assert!(stats.bytes <= capacity);
}

#[test]
fn an_object_held_by_a_transfer_survives_its_eviction() {
    let capacity = charge("/other0", 50_000);
    let backend = MemoryBackend::with_shards(capacity, 1 << 20, 1).unwrap();
    let body = common::pattern(50_000, 9);
    put_one(&backend, "/held", &body).unwrap();
    let transfer = backend.get("/held").unwrap().unwrap();
    let mut first_half = Vec::new();
    transfer.copy_to(0, 25_000, &mut first_half).unwrap();
    // Evict it (and overwrite the memory allocator's free lists with other objects).
    for round in 0..5 {
        put_one(&backend, &format!("/other{round}"), &vec![round; 50_000]).unwrap();
    }
    assert!(backend.get("/held").unwrap().is_none(), "evicted");
    assert!(backend.stats().evictions >= 1);
    let mut second_half = Vec::new();
    transfer.copy_to(25_000, 25_000, &mut second_half).unwrap();
    first_half.extend(second_half);
    assert_eq!(first_half, body);
    assert_eq!(read_all(transfer.as_ref(), 7000), body);
}

#[test]
fn oversized_objects_are_declined() {
    let backend = MemoryBackend::new(1 << 20, 1000).unwrap();
    assert!(backend.put("/big", 1001).unwrap().is_none());
    assert!(backend.put("/fits", 1000).unwrap().is_some());
    let small = MemoryBackend::with_shards(500, 10_000, 1).unwrap();
    assert!(
        small.put("/x", 500).unwrap().is_none(),
        "larger than the capacity"
    );
    assert!(small.put("no-slash", 1).unwrap().is_none());
}

#[test]
fn sharding_keeps_the_largest_allowed_object_storable() {
    let backend = MemoryBackend::new(1 << 20, 1 << 19).unwrap();
    assert!(backend.shard_count() < cache_backends::MAX_SHARDS);
    let body = vec![5; 1 << 19];
    put_one(&backend, "/half", &body).unwrap();
    assert_eq!(get_bytes(&backend, "/half"), Some(body));
    let many = MemoryBackend::new(1 << 30, 1 << 20).unwrap();
    assert_eq!(many.shard_count(), cache_backends::MAX_SHARDS);
}

#[test]
fn concurrent_puts_and_gets_keep_the_bound() {
    let capacity = 200_000;
    let backend = MemoryBackend::new(capacity, 20_000).unwrap();
    std::thread::scope(|scope| {
        for thread in 0..4u64 {
            let backend = &backend;
            scope.spawn(move || {
                let mut rng = fastrand::Rng::with_seed(thread);
                for _ in 0..2000 {
                    let key = format!("/k{}", rng.u32(..200));
                    if rng.bool() {
                        let len = rng.usize(..15_000);
                        let byte = (key.len() + len) as u8;
                        put_one(backend, &key, &vec![byte; len]);
                    } else if let Some(bytes) = get_bytes(backend, &key) {
                        let byte = (key.len() + bytes.len()) as u8;
                        assert!(bytes.iter().all(|&b| b == byte), "{key}");
                    }
                    assert!(backend.stats().bytes <= capacity);
                }
            });
        }
    });
}

/// An exact LRU model with the same charges, for a one-shard backend.
struct Model {
    capacity: u64,
    max_object: u64,
    /// Cold at the front, hot at the back.
    entries: VecDeque<(String, Vec<u8>)>,
}

impl Model {
    fn bytes(&self) -> u64 {
        self.entries
            .iter()
            .map(|(key, value)| charge(key, value.len()))
            .sum()
    }
    fn get(&mut self, key: &str) -> Option<Vec<u8>> {
        let position = self.entries.iter().position(|(k, _)| k == key)?;
        let entry = self.entries.remove(position)?;
        let value = entry.1.clone();
        self.entries.push_back(entry);
        Some(value)
    }
    fn put(&mut self, key: &str, value: Vec<u8>) -> bool {
        if value.len() as u64 > self.max_object || charge(key, value.len()) > self.capacity {
            return false;
        }
        self.entries.retain(|(k, _)| k != key);
        while self.bytes() + charge(key, value.len()) > self.capacity {
            self.entries.pop_front();
        }
        self.entries.push_back((key.to_string(), value));
        true
    }
}

#[derive(Clone, Debug)]
enum Op {
    Put { key: u8, len: u16, byte: u8 },
    Get { key: u8 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..24u8, 0..3000u16, any::<u8>()).prop_map(|(key, len, byte)| Op::Put { key, len, byte }),
        (0..24u8).prop_map(|key| Op::Get { key }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn one_shard_matches_an_lru_model(ops in proptest::collection::vec(op(), 1..300)) {
        let capacity = 12_000;
        let backend = MemoryBackend::with_shards(capacity, 2500, 1).unwrap();
        let mut model = Model { capacity, max_object: 2500, entries: VecDeque::new() };
        for op in ops {
            match op {
                Op::Put { key, len, byte } => {
                    let key = format!("/key/{key}");
                    let value = vec![byte; usize::from(len)];
                    let stored = put_one(&backend, &key, &value).is_some();
                    prop_assert_eq!(stored, model.put(&key, value));
                }
                Op::Get { key } => {
                    let key = format!("/key/{key}");
                    prop_assert_eq!(get_bytes(&backend, &key), model.get(&key));
                }
            }
            let stats = backend.stats();
            prop_assert!(stats.bytes <= capacity);
            prop_assert_eq!(stats.bytes, model.bytes());
            prop_assert_eq!(stats.objects, model.entries.len() as u64);
        }
    }

    #[test]
    fn sharded_backend_never_exceeds_its_bound(ops in proptest::collection::vec(op(), 1..300)) {
        let capacity = 40_000;
        let backend = MemoryBackend::with_shards(capacity, 2500, 4).unwrap();
        let mut last_values = std::collections::HashMap::new();
        for op in ops {
            match op {
                Op::Put { key, len, byte } => {
                    let key = format!("/key/{key}");
                    let value = vec![byte; usize::from(len)];
                    if put_one(&backend, &key, &value).is_some() {
                        last_values.insert(key, value);
                    }
                }
                Op::Get { key } => {
                    let key = format!("/key/{key}");
                    if let Some(bytes) = get_bytes(&backend, &key) {
                        prop_assert_eq!(Some(&bytes), last_values.get(&key));
                    }
                }
            }
            prop_assert!(backend.stats().bytes <= capacity);
        }
    }
}
