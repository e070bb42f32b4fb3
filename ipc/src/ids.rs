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
