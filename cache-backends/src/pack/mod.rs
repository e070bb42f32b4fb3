//! The pack backend: one write-once file of page-aligned objects, an index and a footer
//! (docs/pack-format.md), made by `gfpack build`, opened with one read-only `mmap` and
//! validated at open.

mod builder;
pub mod format;
mod reader;

use std::path::Path;

pub use builder::{build_pack, BuildReport};
pub use reader::{PackBackend, PackObjectInfo};

use crate::Error;

/// What `gfpack verify` found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Objects in the index.
    pub objects: u64,
    /// Payload bytes.
    pub bytes: u64,
    /// One line per problem; empty when the pack is sound.
    pub problems: Vec<String>,
}

/// Opens a pack (validating its structure) and checks every object's checksum and padding.
/// A pack that does not even open is an `Err` naming the file and the problem.
pub fn verify_pack(path: &Path) -> Result<VerifyReport, Error> {
    let pack = PackBackend::open(path)?;
    let (objects, bytes) = pack.objects().fold((0, 0), |(count, bytes), object| {
        (count + 1, bytes + object.len)
    });
    Ok(VerifyReport {
        objects,
        bytes,
        problems: pack.check_all(),
    })
}
