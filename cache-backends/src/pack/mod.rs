//! The pack backend: one write-once file of page-aligned objects, an index and a footer
//! (docs/pack-format.md), made by `gfpack build`, opened with one read-only `mmap`, validated
//! at open, and watched while served: a pack changed on disk is never served from, but opened
//! and verified again.

mod builder;
pub mod format;
mod reader;

use std::path::Path;

pub use builder::{build_pack, build_pack_with, BuildOptions, BuildReport, PACK_MODE};
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

/// Opens a pack as a cache would (a regular file that group and others cannot write, its
/// structure) and checks every object's checksum and padding, reading the file with `pread`
/// (a pack truncated meanwhile is an error, never SIGBUS). A pack that does not even open is an
/// `Err` naming the file and the problem; damage inside objects or padding is listed in
/// [`VerifyReport::problems`].
pub fn verify_pack(path: &Path) -> Result<VerifyReport, Error> {
    let (entries, problems) = reader::verify_file(path)?;
    Ok(VerifyReport {
        objects: entries.len() as u64,
        bytes: entries.iter().map(|entry| entry.len).sum(),
        problems,
    })
}

/// The full check of a pack for `check-config`: [`verify_pack`], with any problem as an error.
/// `Ok` (objects and bytes) only for a pack a cache would serve in full; otherwise
/// [`Error::PackWritable`] (naming the file and its mode), [`Error::Io`] (it does not open) or
/// [`Error::CorruptPack`] naming the file and the damage (the first problems and how many).
pub fn check_pack(path: &Path) -> Result<VerifyReport, Error> {
    const SHOWN: usize = 3;
    let report = verify_pack(path)?;
    if report.problems.is_empty() {
        return Ok(report);
    }
    let mut what = report
        .problems
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if report.problems.len() > SHOWN {
        what.push_str(&format!(
            "; and {} more problems (gfpack verify lists them all)",
            report.problems.len() - SHOWN
        ));
    }
    Err(Error::CorruptPack {
        path: path.to_path_buf(),
        what,
    })
}
