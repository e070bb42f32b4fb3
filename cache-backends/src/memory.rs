//! The memory backend: an LRU bounded in bytes, sharded by key hash.
//!
//! Layout, chosen to keep the bookkeeping per object small (see [`ENTRY_OVERHEAD`]):
//! - each object is one `Arc<[u8]>` holding the key bytes followed by the payload, so a `get`
//!   hands out a clone of the `Arc` and an eviction only drops the cache's reference: bytes a
//!   transfer is still copying stay alive until the transfer drops its handle;
//! - each shard is a `Mutex` over a slab of 32-byte nodes (the `Arc`, the key length, the LRU
//!   links and a hash-chain link, all `u32` slab indices) and a map from a 32-bit key hash to
//!   the first node of that hash's chain;
//! - the slab grows in fixed chunks, so growth never doubles the bookkeeping.
//!
//! Every object is charged `key + payload + ENTRY_OVERHEAD` bytes against its shard's share of
//! the capacity; a shard evicts from its cold end until a new object fits.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::directory::check_range;
use crate::{
    BackendStats, CacheBackend, CachedObject, ChunkDest, Error, Fill, ObjectMeta, ObjectVersion,
};

/// Bytes charged per object on top of its key and payload: an upper estimate of the node,
/// its share of the hash map, the `Arc` counts, the object's 16-byte trailer (version and fill
/// time) and the allocator's header and rounding.
/// `cargo bench -p cache-backends` measures the real figure with a counting allocator
/// (docs/backends.md records it); it must stay at or below this constant.
pub const ENTRY_OVERHEAD: u64 = 104;

/// Bytes charged per object's metadata on top of its encoded length: its entry in the shard's
/// metadata map, the `Arc` counts and the allocator's rounding.
pub const META_OVERHEAD: u64 = 64;

/// The most shards a memory backend uses.
pub const MAX_SHARDS: usize = 16;

/// Slab nodes per chunk (32 bytes each).
const CHUNK_NODES: usize = 256;

/// "No node" in the `u32` links.
const NIL: u32 = u32::MAX;

/// The memory backend. See the module docs.
pub struct MemoryBackend {
    inner: Arc<MemoryInner>,
}

struct MemoryInner {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    capacity: u64,
    max_object_size: u64,
    /// The version the next fill gets. It starts at a random value so that a restarted cache
    /// process never gives a new object the version an object of its predecessor had.
    next_version: AtomicU64,
}

/// Each stored buffer is the key, the payload, then the object's version and its fill time in
/// seconds since the Unix epoch (both little-endian u64).
const VERSION_BYTES: usize = 16;

impl MemoryBackend {
    /// A backend bounded to `capacity` bytes that does not store objects over
    /// `max_object_size`. It uses up to [`MAX_SHARDS`] shards, fewer when a shard's share of
    /// the capacity would not hold an object of `max_object_size` with the longest key.
    pub fn new(capacity: u64, max_object_size: u64) -> Result<MemoryBackend, Error> {
        let mut shards = MAX_SHARDS;
        let largest_charge = max_object_size
            .saturating_add(crate::paths::MAX_PATH_LEN as u64)
            .saturating_add(ENTRY_OVERHEAD);
        while shards > 1 && capacity / (shards as u64) < largest_charge {
            shards /= 2;
        }
        MemoryBackend::with_shards(capacity, max_object_size, shards)
    }

    /// Like [`MemoryBackend::new`] with an explicit shard count (each shard gets
    /// `capacity / shards` bytes and is an exact LRU; with one shard the whole backend is).
    pub fn with_shards(
        capacity: u64,
        max_object_size: u64,
        shards: usize,
    ) -> Result<MemoryBackend, Error> {
        if capacity == 0 {
            return Err(Error::Config("memory capacity must be above 0".into()));
        }
        if shards == 0 || shards > 1024 {
            return Err(Error::Config(format!(
                "{shards} shards: expected 1 to 1024"
            )));
        }
        let shard_capacity = capacity / shards as u64;
        let shards = (0..shards)
            .map(|_| Mutex::new(Shard::new(shard_capacity)))
            .collect();
        Ok(MemoryBackend {
            inner: Arc::new(MemoryInner {
                shards,
                hasher: RandomState::new(),
                capacity,
                max_object_size,
                next_version: AtomicU64::new(RandomState::new().hash_one(std::process::id())),
            }),
        })
    }

    /// The number of shards.
    pub fn shard_count(&self) -> usize {
        self.inner.shards.len()
    }
}

impl MemoryInner {
    fn locate(&self, key: &str) -> (MutexGuard<'_, Shard>, u32) {
        let hash = self.hasher.hash_one(key.as_bytes());
        let shard_count = self.shards.len() as u64;
        let index = usize::try_from((hash >> 32) % shard_count).unwrap_or(0);
        let shard = match self.shards.get(index).or_else(|| self.shards.first()) {
            Some(shard) => shard,
            // `with_shards` never builds an empty shard list.
            None => unreachable!("a memory backend has at least one shard"),
        };
        // Every shard mutation keeps the structure valid between statements that can panic
        // (there are none on data from outside), so a poisoned lock is still usable.
        let guard = shard
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        (guard, hash as u32)
    }

    fn shard_of(&self, key: &str) -> MutexGuard<'_, Shard> {
        self.locate(key).0
    }

    fn charge(&self, key: &str, len: u64) -> u64 {
        (key.len() as u64)
            .saturating_add(len)
            .saturating_add(ENTRY_OVERHEAD)
    }
}

impl CacheBackend for MemoryBackend {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn get(&self, path: &str) -> Result<Option<Box<dyn CachedObject>>, Error> {
        let (mut shard, hash) = self.inner.locate(path);
        match shard.get(path.as_bytes(), hash) {
            Some((data, meta)) => {
                shard.hits += 1;
                Ok(Some(Box::new(MemoryObject {
                    data,
                    meta,
                    key_len: path.len(),
                })))
            }
            None => {
                shard.misses += 1;
                Ok(None)
            }
        }
    }

    fn put_with_meta(
        &self,
        path: &str,
        len: u64,
        meta: Option<&ObjectMeta>,
    ) -> Result<Option<Box<dyn Fill>>, Error> {
        if !path.starts_with('/') || path.len() > crate::paths::MAX_PATH_LEN {
            return Ok(None);
        }
        if len > self.inner.max_object_size {
            return Ok(None);
        }
        let meta: Arc<[u8]> = Arc::from(meta.map(ObjectMeta::encode).unwrap_or_default());
        let charge = self.inner.charge(path, len) + meta_charge(&meta);
        let (shard, _) = self.inner.locate(path);
        if charge > shard.capacity {
            return Ok(None);
        }
        drop(shard);
        let total = usize::try_from(len)
            .ok()
            .and_then(|len| len.checked_add(path.len() + VERSION_BYTES))
            .ok_or_else(|| Error::Config(format!("{len} bytes do not fit in memory")))?;
        let mut data: Arc<[u8]> = std::iter::repeat_n(0u8, total).collect();
        let version = self.inner.next_version.fetch_add(1, Ordering::Relaxed);
        if let Some(buffer) = Arc::get_mut(&mut data) {
            if let Some(key_area) = buffer.get_mut(..path.len()) {
                key_area.copy_from_slice(path.as_bytes());
            }
            let filled = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| since.as_secs());
            if let Some(version_area) = buffer.get_mut(total - VERSION_BYTES..total - 8) {
                version_area.copy_from_slice(&version.to_le_bytes());
            }
            if let Some(time_area) = buffer.get_mut(total - 8..) {
                time_area.copy_from_slice(&filled.to_le_bytes());
            }
        }
        Ok(Some(Box::new(MemoryFill {
            inner: Arc::clone(&self.inner),
            key_len: path.len(),
            data,
            meta,
            written: 0,
        })))
    }

    fn update_meta(
        &self,
        path: &str,
        version: ObjectVersion,
        meta: &ObjectMeta,
    ) -> Result<bool, Error> {
        let (mut shard, _) = self.inner.locate(path);
        let hash = hash32(&self.inner.hasher, path.as_bytes());
        Ok(shard.replace_meta(path.as_bytes(), hash, version, Arc::from(meta.encode())))
    }

    fn purge(&self, path: &str, prefix: bool) -> Result<u64, Error> {
        let mut removed = 0;
        for shard in self.inner.shards.iter() {
            let mut shard = shard
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            removed += shard.purge(&self.inner.hasher, path.as_bytes(), prefix);
        }
        Ok(removed)
    }

    fn stats(&self) -> BackendStats {
        let mut stats = BackendStats {
            capacity: Some(self.inner.capacity),
            ..BackendStats::default()
        };
        for shard in self.inner.shards.iter() {
            let shard = shard
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            stats.objects += shard.objects;
            stats.bytes += shard.bytes;
            stats.hits += shard.hits;
            stats.misses += shard.misses;
            stats.inserts += shard.inserts;
            stats.evictions += shard.evictions;
        }
        stats
    }
}

/// Payload bytes of a stored buffer (key, payload, version).
fn payload_len(data: &[u8], key_len: usize) -> usize {
    data.len().saturating_sub(key_len + VERSION_BYTES)
}

impl MemoryObject {
    /// Word `index` of the trailer after the payload (0: version, 1: fill time).
    fn trailer_word(&self, index: usize) -> u64 {
        let start = self.data.len().saturating_sub(VERSION_BYTES) + 8 * index;
        let mut bytes = [0u8; 8];
        if let Some(stored) = self.data.get(start..start + 8) {
            bytes.copy_from_slice(stored);
        }
        u64::from_le_bytes(bytes)
    }
}

/// A stored object: a shared reference to the key and payload bytes, and to its metadata.
struct MemoryObject {
    data: Arc<[u8]>,
    meta: Option<Arc<[u8]>>,
    key_len: usize,
}

/// A stored object's bytes (key, payload, trailer) and its metadata, if any.
type StoredEntry = (Arc<[u8]>, Option<Arc<[u8]>>);

/// What a stored metadata buffer is charged.
fn meta_charge(meta: &[u8]) -> u64 {
    match meta.is_empty() {
        true => 0,
        false => meta.len() as u64 + META_OVERHEAD,
    }
}

/// The version in a stored buffer's trailer.
fn stored_version(data: &[u8]) -> ObjectVersion {
    let start = data.len().saturating_sub(VERSION_BYTES);
    let mut bytes = [0u8; 8];
    if let Some(stored) = data.get(start..start + 8) {
        bytes.copy_from_slice(stored);
    }
    ObjectVersion::from_raw(u64::from_le_bytes(bytes))
}

impl CachedObject for MemoryObject {
    fn len(&self) -> u64 {
        payload_len(&self.data, self.key_len) as u64
    }

    fn version(&self) -> ObjectVersion {
        ObjectVersion::from_raw(self.trailer_word(0))
    }

    fn modified(&self) -> Option<std::time::SystemTime> {
        let secs = self.trailer_word(1);
        (secs != 0).then(|| std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
    }

    fn encoded_meta(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self.meta.as_deref().unwrap_or_default())
    }

    fn copy_to(&self, offset: u64, len: usize, dest: &mut dyn ChunkDest) -> Result<(), Error> {
        check_range(offset, len, CachedObject::len(self))?;
        let start = usize::try_from(offset)
            .ok()
            .and_then(|offset| offset.checked_add(self.key_len));
        let bytes = start
            .and_then(|start| self.data.get(start..start.checked_add(len)?))
            .ok_or(Error::OutOfRange {
                offset,
                len,
                object_len: CachedObject::len(self),
            })?;
        dest.put_slice(bytes).map_err(Error::Dest)
    }
}

/// A fill in progress: the object's final buffer, written in place.
struct MemoryFill {
    inner: Arc<MemoryInner>,
    key_len: usize,
    data: Arc<[u8]>,
    meta: Arc<[u8]>,
    written: usize,
}

impl MemoryFill {
    fn key(&self) -> String {
        let key = self.data.get(..self.key_len).unwrap_or_default();
        String::from_utf8_lossy(key).into_owned()
    }

    fn length_error(&self, written: u64) -> Error {
        Error::FillLength {
            path: self.key(),
            announced: payload_len(&self.data, self.key_len) as u64,
            written,
        }
    }
}

impl Fill for MemoryFill {
    fn write(&mut self, src: &[u8]) -> Result<(), Error> {
        let start = self.key_len + self.written;
        let end = start.saturating_add(src.len());
        let too_long = self.length_error((end - self.key_len) as u64);
        if self.written + src.len() > payload_len(&self.data, self.key_len) {
            return Err(too_long);
        }
        let area = Arc::get_mut(&mut self.data)
            .and_then(|buffer| buffer.get_mut(start..end))
            .ok_or(too_long)?;
        area.copy_from_slice(src);
        self.written += src.len();
        Ok(())
    }

    fn commit(self: Box<Self>) -> Result<(), Error> {
        let payload = payload_len(&self.data, self.key_len);
        if self.written != payload {
            return Err(self.length_error(self.written as u64));
        }
        let key = self.key();
        let charge = self.inner.charge(&key, payload as u64) + meta_charge(&self.meta);
        let mut shard = self.inner.shard_of(&key);
        let entry = (self.data, self.meta);
        if shard.insert(&self.inner.hasher, key.as_bytes(), entry, charge) {
            shard.inserts += 1;
        }
        Ok(())
    }
}

/// One slab node. 32 bytes: keeping it small is what keeps [`ENTRY_OVERHEAD`] small.
struct Node {
    /// Key bytes then payload; `None` on a free node.
    data: Option<Arc<[u8]>>,
    key_len: u32,
    /// Towards the most recently used end.
    newer: u32,
    /// Towards the least recently used end.
    older: u32,
    /// Next node with the same 32-bit hash, or next free node.
    chain: u32,
}

impl Node {
    fn key(&self) -> &[u8] {
        let key_len = self.key_len as usize;
        self.data
            .as_deref()
            .and_then(|data| data.get(..key_len))
            .unwrap_or_default()
    }
}

/// The 32-bit hash a shard's chain map is keyed by (the low half of the hash that also picks
/// the shard).
fn hash32(hasher: &RandomState, key: &[u8]) -> u32 {
    hasher.hash_one(key) as u32
}

/// An exact LRU over one shard's share of the capacity.
struct Shard {
    chunks: Vec<Vec<Node>>,
    heads: HashMap<u32, u32, MixHash>,
    /// The metadata of each node that has some, by node index.
    metas: HashMap<u32, Arc<[u8]>, MixHash>,
    newest: u32,
    oldest: u32,
    free: u32,
    capacity: u64,
    bytes: u64,
    objects: u64,
    hits: u64,
    misses: u64,
    inserts: u64,
    evictions: u64,
}

impl Shard {
    fn new(capacity: u64) -> Shard {
        Shard {
            chunks: Vec::new(),
            heads: HashMap::with_hasher(MixHash),
            metas: HashMap::with_hasher(MixHash),
            newest: NIL,
            oldest: NIL,
            free: NIL,
            capacity,
            bytes: 0,
            objects: 0,
            hits: 0,
            misses: 0,
            inserts: 0,
            evictions: 0,
        }
    }

    fn node(&self, index: u32) -> Option<&Node> {
        let index = index as usize;
        self.chunks
            .get(index / CHUNK_NODES)?
            .get(index % CHUNK_NODES)
    }

    fn node_mut(&mut self, index: u32) -> Option<&mut Node> {
        let index = index as usize;
        self.chunks
            .get_mut(index / CHUNK_NODES)?
            .get_mut(index % CHUNK_NODES)
    }

    fn find(&self, key: &[u8], hash: u32) -> Option<u32> {
        let mut index = *self.heads.get(&hash)?;
        while let Some(node) = self.node(index) {
            if node.key() == key {
                return Some(index);
            }
            index = node.chain;
        }
        None
    }

    fn get(&mut self, key: &[u8], hash: u32) -> Option<StoredEntry> {
        let index = self.find(key, hash)?;
        self.unlink(index);
        self.link_newest(index);
        let data = self.node(index)?.data.clone()?;
        Some((data, self.metas.get(&index).cloned()))
    }

    /// Replaces the metadata of the object at `key` if it is version `version`.
    fn replace_meta(
        &mut self,
        key: &[u8],
        hash: u32,
        version: ObjectVersion,
        meta: Arc<[u8]>,
    ) -> bool {
        let Some(index) = self.find(key, hash) else {
            return false;
        };
        let current = self.node(index).and_then(|node| node.data.as_deref());
        if current.map(stored_version) != Some(version) {
            return false;
        }
        let added = meta_charge(&meta);
        let old = self.metas.insert(index, meta);
        let freed = old.as_deref().map_or(0, meta_charge);
        // A few bytes over the bound at most; the next insert evicts back under it.
        self.bytes = self.bytes.saturating_sub(freed).saturating_add(added);
        true
    }

    /// Removes the object at `key`, or with `prefix` every object whose key starts with it.
    fn purge(&mut self, hasher: &RandomState, key: &[u8], prefix: bool) -> u64 {
        let victims: Vec<(u32, u32)> = if prefix {
            let mut victims = Vec::new();
            let mut index = self.newest;
            while let Some(node) = self.node(index) {
                if node.key().starts_with(key) {
                    victims.push((index, hash32(hasher, node.key())));
                }
                index = node.older;
            }
            victims
        } else {
            let hash = hash32(hasher, key);
            self.find(key, hash)
                .map(|index| (index, hash))
                .into_iter()
                .collect()
        };
        for &(index, hash) in &victims {
            self.remove(index, hash);
        }
        victims.len() as u64
    }

    /// Stores an object (its bytes and its metadata), replacing one with the same key and
    /// evicting from the cold end until it fits. Returns false if it cannot fit at all.
    fn insert(
        &mut self,
        hasher: &RandomState,
        key: &[u8],
        (data, meta): (Arc<[u8]>, Arc<[u8]>),
        charge: u64,
    ) -> bool {
        if charge > self.capacity {
            return false;
        }
        let hash = hash32(hasher, key);
        if let Some(old) = self.find(key, hash) {
            self.remove(old, hash);
        }
        while self.bytes.saturating_add(charge) > self.capacity && self.oldest != NIL {
            let victim = self.oldest;
            let victim_hash = self.node(victim).map(|node| hash32(hasher, node.key()));
            let Some(victim_hash) = victim_hash else {
                break;
            };
            self.remove(victim, victim_hash);
            self.evictions += 1;
        }
        let node = Node {
            data: Some(data),
            key_len: key.len() as u32,
            newer: NIL,
            older: NIL,
            chain: self.heads.get(&hash).copied().unwrap_or(NIL),
        };
        let Some(index) = self.allocate(node) else {
            return false;
        };
        self.heads.insert(hash, index);
        if !meta.is_empty() {
            self.metas.insert(index, meta);
        }
        self.link_newest(index);
        self.bytes += charge;
        self.objects += 1;
        true
    }

    /// Puts `node` in a free slot or a new one; `None` if the shard ran out of `u32` indices.
    fn allocate(&mut self, node: Node) -> Option<u32> {
        let free = self.free;
        if let Some(slot) = self.node_mut(free) {
            let next_free = slot.chain;
            *slot = node;
            self.free = next_free;
            return Some(free);
        }
        if self
            .chunks
            .last()
            .is_none_or(|chunk| chunk.len() == CHUNK_NODES)
        {
            self.chunks.push(Vec::with_capacity(CHUNK_NODES));
        }
        let chunk_index = self.chunks.len() - 1;
        let chunk = self.chunks.last_mut()?;
        let index = u32::try_from(chunk_index * CHUNK_NODES + chunk.len())
            .ok()
            .filter(|&index| index != NIL)?;
        chunk.push(node);
        Some(index)
    }

    fn remove(&mut self, index: u32, hash: u32) {
        self.unlink(index);
        let free = self.free;
        let Some(node) = self.node_mut(index) else {
            return;
        };
        let next_in_chain = node.chain;
        let data = node.data.take();
        node.chain = free;
        self.free = index;
        // Unhook from the hash chain.
        match self.heads.get(&hash).copied() {
            Some(head) if head == index => {
                if next_in_chain == NIL {
                    self.heads.remove(&hash);
                } else {
                    self.heads.insert(hash, next_in_chain);
                }
            }
            Some(mut cursor) => {
                while let Some(node) = self.node(cursor) {
                    if node.chain == index {
                        if let Some(node) = self.node_mut(cursor) {
                            node.chain = next_in_chain;
                        }
                        break;
                    }
                    cursor = node.chain;
                }
            }
            None => {}
        }
        if let Some(data) = data {
            // The trailer bytes are part of ENTRY_OVERHEAD (see `charge`).
            let meta = self.metas.remove(&index);
            let charge = (data.len().saturating_sub(VERSION_BYTES) as u64)
                .saturating_add(ENTRY_OVERHEAD)
                .saturating_add(meta.as_deref().map_or(0, meta_charge));
            self.bytes = self.bytes.saturating_sub(charge);
            self.objects = self.objects.saturating_sub(1);
        }
    }

    fn unlink(&mut self, index: u32) {
        let Some((newer, older)) = self.node(index).map(|node| (node.newer, node.older)) else {
            return;
        };
        match self.node_mut(newer) {
            Some(node) => node.older = older,
            None => self.newest = older,
        }
        match self.node_mut(older) {
            Some(node) => node.newer = newer,
            None => self.oldest = newer,
        }
        if let Some(node) = self.node_mut(index) {
            node.newer = NIL;
            node.older = NIL;
        }
    }

    fn link_newest(&mut self, index: u32) {
        let previous_newest = self.newest;
        if let Some(node) = self.node_mut(index) {
            node.newer = NIL;
            node.older = previous_newest;
        }
        match self.node_mut(previous_newest) {
            Some(node) => node.newer = index,
            None => self.oldest = index,
        }
        self.newest = index;
    }
}

/// Hashes the already-hashed `u32` keys of the chain map: a multiply spreads them into the
/// high bits, which the map uses for its control bytes.
#[derive(Clone, Copy, Default)]
struct MixHash;

impl BuildHasher for MixHash {
    type Hasher = MixHasher;
    fn build_hasher(&self) -> MixHasher {
        MixHasher(0)
    }
}

struct MixHasher(u64);

impl Hasher for MixHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u32(&mut self, value: u32) {
        self.0 = (self.0 ^ u64::from(value)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_stay_32_bytes() {
        assert_eq!(std::mem::size_of::<Node>(), 32);
    }

    /// The charge covers the structures' own worst case: a node, a chain-map bucket at the
    /// map's lowest load (7/16 just after it grew), and the `Arc` counts. The allocator's
    /// per-allocation overhead is what is left; the benchmark measures the total.
    #[test]
    fn the_charge_covers_the_structures() {
        let node = std::mem::size_of::<Node>() as u64;
        let bucket = std::mem::size_of::<(u32, u32)>() as u64 + 1;
        let map_worst = bucket * 16 / 7 + 1;
        let arc_counts = 2 * std::mem::size_of::<usize>() as u64;
        let version = VERSION_BYTES as u64;
        assert!(node + map_worst + arc_counts + version + 16 <= ENTRY_OVERHEAD);
    }

    #[test]
    fn slots_are_reused_after_removal() {
        let backend = MemoryBackend::with_shards(10 * (ENTRY_OVERHEAD + 10), 100, 1).unwrap();
        for round in 0..1000 {
            let key = format!("/k{}", round % 37);
            let mut fill = backend.put(&key, 4).unwrap().unwrap();
            fill.write(b"abcd").unwrap();
            fill.commit().unwrap();
        }
        let shard = backend.inner.shards[0].lock().unwrap();
        assert_eq!(shard.chunks.len(), 1);
        assert!(shard.objects <= 10);
    }
}
