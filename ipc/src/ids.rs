//! Newtypes for the ids and indices the crate hands out.

use crate::{Error, Result};

/// A SysV shared memory id (`shmid`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ShmId(i32);
impl ShmId {
    /// Wraps a raw id.
    pub fn from_raw(raw: i32) -> Self {
        ShmId(raw)
    }
    /// The raw id.
    pub fn as_raw(self) -> i32 {
        self.0
    }
}

/// Index of a segment in the region, `0..segments`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SegmentIndex(u32);
impl SegmentIndex {
    /// Wraps a raw index.
    pub fn from_raw(raw: u32) -> Self {
        SegmentIndex(raw)
    }
    /// The raw index.
    pub fn as_raw(self) -> u32 {
        self.0
    }
}

/// The generation of one use of a segment; bumped on every acquire. Fences late peers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Generation(u32);
impl Generation {
    /// Wraps a raw generation.
    pub fn from_raw(raw: u32) -> Self {
        Generation(raw)
    }
    /// The raw generation.
    pub fn as_raw(self) -> u32 {
        self.0
    }
}

/// A cache process slot, `0..cache_slots`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheSlot(u32);
impl CacheSlot {
    /// Wraps a raw slot number.
    pub fn from_raw(raw: u32) -> Self {
        CacheSlot(raw)
    }
    /// The raw slot number.
    pub fn as_raw(self) -> u32 {
        self.0
    }
}

/// A proxy process slot, `0..proxy_slots`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProxySlot(u32);
impl ProxySlot {
    /// Wraps a raw slot number.
    pub fn from_raw(raw: u32) -> Self {
        ProxySlot(raw)
    }
    /// The raw slot number.
    pub fn as_raw(self) -> u32 {
        self.0
    }
}

/// A request id, unique within a region's life (a counter in the control header).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RequestId(u64);
impl RequestId {
    /// Wraps a raw id.
    pub fn from_raw(raw: u64) -> Self {
        RequestId(raw)
    }
    /// The raw id.
    pub fn as_raw(self) -> u64 {
        self.0
    }
}

/// One version of an object's bytes, as the cache that holds it names it: two answers for the
/// same path with the same version carry the same bytes, so a reader may stitch ranges of them
/// together. The value is the backend's (a file's identity and modification time, a pack
/// entry, a fill's sequence number); ipc only carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ObjectVersion(u64);
impl ObjectVersion {
    /// No particular version: an answer with it is never stitched to another.
    pub const NONE: ObjectVersion = ObjectVersion(0);
    /// Wraps a raw version.
    pub fn from_raw(raw: u64) -> Self {
        ObjectVersion(raw)
    }
    /// The raw version.
    pub fn as_raw(self) -> u64 {
        self.0
    }
}

/// The bytes of an object a GET asks for: from `offset`, at most `len` bytes (`None`: to the
/// end). A range past the end is empty, not an error: the answer still says the object's length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteRange {
    /// The first byte.
    pub offset: u64,
    /// How many bytes at most; `None` to the end.
    pub len: Option<u64>,
}

impl ByteRange {
    /// The whole object.
    pub const WHOLE: ByteRange = ByteRange {
        offset: 0,
        len: None,
    };

    /// `len` bytes from `offset`.
    pub fn new(offset: u64, len: u64) -> Self {
        ByteRange {
            offset,
            len: Some(len),
        }
    }

    /// From `offset` to the end.
    pub fn from(offset: u64) -> Self {
        ByteRange { offset, len: None }
    }

    /// How many bytes of an object of `object_len` bytes the range covers.
    pub fn len_within(self, object_len: u64) -> u64 {
        let available = object_len.saturating_sub(self.offset);
        self.len.map_or(available, |len| len.min(available))
    }

    pub(crate) fn to_words(self) -> (u64, u64) {
        (self.offset, self.len.unwrap_or(u64::MAX))
    }

    pub(crate) fn from_words(offset: u64, len: u64) -> Self {
        ByteRange {
            offset,
            len: (len != u64::MAX).then_some(len),
        }
    }
}

/// What a child needs to attach the region: the shm id plus a random nonce stored in the header,
/// so that a reused shm id is never mistaken for ours. Text form `"<shmid>.<nonce-hex>"`
/// (`Display` / `FromStr`), for command lines and environment variables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionId {
    /// The shm id.
    pub shm: ShmId,
    /// The nonce written in the control header at creation.
    pub nonce: u64,
}

impl std::fmt::Display for RegionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{:016x}", self.shm.as_raw(), self.nonce)
    }
}

impl std::str::FromStr for RegionId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::BadRegion(format!("{s:?} is not a region id (<shmid>.<nonce-hex>)"));
        let (id, nonce) = s.split_once('.').ok_or_else(bad)?;
        Ok(RegionId {
            shm: ShmId::from_raw(id.parse().map_err(|_| bad())?),
            nonce: u64::from_str_radix(nonce, 16).map_err(|_| bad())?,
        })
    }
}
