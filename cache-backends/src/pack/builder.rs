//! Building a pack from a directory tree.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

use super::format::{self, Footer, IndexEntry};
use crate::paths::relative_object_path;
use crate::Error;

/// What a build stored and what it left out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BuildReport {
    /// Objects stored.
    pub objects: u64,
    /// Payload bytes stored.
    pub bytes: u64,
    /// Size of the pack file.
    pub pack_len: u64,
    /// Files left out, with the reason (a name that is not a GetFile path, a symlink leaving
    /// the tree, not a regular file).
    pub skipped: Vec<(PathBuf, String)>,
}

/// Builds a pack of every regular file under `dir` at `output`: written to a temporary file in
/// `output`'s directory, fsynced, then renamed over `output` (and the directory fsynced), so
/// `output` always names a complete pack. Object paths are `/` + the path under `dir`; symlinks
/// are followed only when they resolve inside `dir`, and symlinked directories are not entered.
pub fn build_pack(dir: &Path, output: &Path) -> Result<BuildReport, Error> {
    let io_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io {
            path: path.clone(),
            source,
        }
    };
    let root: OwnedFd = nix::fcntl::open(
        dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|errno| io_error(dir)(errno.into()))?;
    let mut report = BuildReport::default();
    let mut objects = Vec::new();
    collect_files(dir, &root, &mut objects, &mut report.skipped)?;
    objects.sort();

    let output_dir = match output.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let temp = tempfile::Builder::new()
        .prefix(".gfpack.")
        .suffix(".tmp")
        .tempfile_in(&output_dir)
        .map_err(io_error(&output_dir))?;
    let temp_path = temp.path().to_path_buf();
    let mut writer = BufWriter::with_capacity(1 << 20, temp);
    let write_error = io_error(&temp_path);
    writer
        .write_all(&format::encode_header())
        .map_err(&write_error)?;
    let mut position = format::HEADER_LEN;
    let mut index = Vec::with_capacity(objects.len());
    let mut buffer = vec![0u8; 1 << 20];
    for relative in &objects {
        let offset = format::align_up(position)
            .ok_or_else(|| Error::Config("pack offsets overflow".into()))?;
        write_zeros(&mut writer, offset - position).map_err(&write_error)?;
        let source_path = dir.join(relative);
        let mut file = File::from(
            open_beneath(&root, relative).map_err(|errno| io_error(&source_path)(errno.into()))?,
        );
        let mut len = 0u64;
        let mut crc = 0u32;
        loop {
            let read = match file.read(&mut buffer) {
                Ok(0) => break,
                Ok(read) => read,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(io_error(&source_path)(error)),
            };
            let chunk = buffer.get(..read).unwrap_or_default();
            crc = crc32c::crc32c_append(crc, chunk);
            writer.write_all(chunk).map_err(&write_error)?;
            len += read as u64;
        }
        position = offset + len;
        index.push(IndexEntry {
            path: format!("/{relative}"),
            offset,
            len,
            crc,
        });
        report.objects += 1;
        report.bytes += len;
    }
    let mut index_bytes = Vec::new();
    for entry in &index {
        format::encode_entry(entry, &mut index_bytes).map_err(|error| Error::Config(error.0))?;
    }
    let footer = Footer {
        index_offset: position,
        index_len: index_bytes.len() as u64,
        object_count: index.len() as u64,
        index_crc: crc32c::crc32c(&index_bytes),
    };
    writer.write_all(&index_bytes).map_err(&write_error)?;
    writer
        .write_all(&format::encode_footer(&footer))
        .map_err(&write_error)?;
    let mut temp = writer
        .into_inner()
        .map_err(|error| write_error(error.into_error()))?;
    report.pack_len = temp.stream_position().map_err(&write_error)?;
    temp.as_file().sync_all().map_err(&write_error)?;
    temp.persist(output)
        .map_err(|error| io_error(output)(error.error))?;
    File::open(&output_dir)
        .and_then(|dir| dir.sync_all())
        .map_err(io_error(&output_dir))?;
    Ok(report)
}

fn write_zeros(writer: &mut impl Write, count: u64) -> std::io::Result<()> {
    const ZEROS: [u8; 4096] = [0; 4096];
    let mut left = count;
    while left > 0 {
        let step = left.min(ZEROS.len() as u64) as usize;
        writer.write_all(ZEROS.get(..step).unwrap_or_default())?;
        left -= step as u64;
    }
    Ok(())
}

fn open_beneath(root: &OwnedFd, relative: &str) -> nix::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK | OFlag::O_NOCTTY)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    nix::fcntl::openat2(root, relative, how)
}

/// Collects the relative paths of the files to pack, depth first.
fn collect_files(
    dir: &Path,
    root: &OwnedFd,
    out: &mut Vec<String>,
    skipped: &mut Vec<(PathBuf, String)>,
) -> Result<(), Error> {
    let mut pending = vec![(dir.to_path_buf(), String::new())];
    while let Some((current, prefix)) = pending.pop() {
        let io_error = |source| Error::Io {
            path: current.clone(),
            source,
        };
        for entry in std::fs::read_dir(&current).map_err(io_error)? {
            let entry = entry.map_err(io_error)?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                skipped.push((entry.path(), "name is not UTF-8".into()));
                continue;
            };
            let relative = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            if relative_object_path(&format!("/{relative}")).is_none() {
                skipped.push((entry.path(), "not a valid GetFile path".into()));
                continue;
            }
            let file_type = entry.file_type().map_err(io_error)?;
            if file_type.is_dir() {
                pending.push((entry.path(), relative));
            } else if file_type.is_file() {
                out.push(relative);
            } else if file_type.is_symlink() {
                match open_beneath(root, &relative).map(File::from) {
                    Ok(file) if file.metadata().is_ok_and(|meta| meta.is_file()) => {
                        out.push(relative)
                    }
                    Ok(_) => skipped.push((entry.path(), "symlink to a non-file".into())),
                    Err(errno) => skipped.push((
                        entry.path(),
                        format!("symlink does not resolve inside the tree: {errno}"),
                    )),
                }
            } else {
                skipped.push((entry.path(), "not a regular file".into()));
            }
        }
    }
    Ok(())
}
