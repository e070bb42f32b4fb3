//! Building a pack from a directory tree.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
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

/// Mode of a built pack: read-only for everyone, so that even its owner cannot write it in
/// place by mistake (a pack is replaced by building a new one, which needs no write permission
/// on the old file).
pub const PACK_MODE: u32 = 0o444;

/// Builds a pack of every regular file under `dir` at `output`: written to a temporary file in
/// `output`'s directory, made mode [`PACK_MODE`], fsynced, read back and checked (structure and
/// every checksum), then renamed over `output` (and the directory fsynced), so `output` always
/// names a complete, sound, read-only pack. Object paths are `/` + the path under `dir`; symlinks
/// are followed only when they resolve inside `dir`, and symlinked directories are not entered.
/// An earlier `output` inside `dir` is not packed into the new one.
pub fn build_pack(dir: &Path, output: &Path) -> Result<BuildReport, Error> {
    build_pack_with(dir, output, &BuildOptions::default())
}

/// How to build a pack beyond its content.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BuildOptions {
    /// How long its objects stay fresh after the build (`None`: they never go stale). A proxy
    /// with an origin revalidates them once stale.
    pub ttl: Option<std::time::Duration>,
}

/// [`build_pack`] with options.
pub fn build_pack_with(
    dir: &Path,
    output: &Path,
    options: &BuildOptions,
) -> Result<BuildReport, Error> {
    let root: OwnedFd = nix::fcntl::open(
        dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|errno| io_error(dir)(errno.into()))?;
    let mut report = BuildReport::default();
    let mut objects = Vec::new();
    let exclude = std::fs::metadata(output)
        .ok()
        .map(|meta| (meta.dev(), meta.ino()));
    collect_files(dir, &root, exclude, &mut objects, &mut report.skipped)?;
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
    let write_error = io_error(&temp_path);
    let mut writer = PackWriter {
        out: BufWriter::with_capacity(1 << 20, temp),
        position: 0,
        buffer: vec![0u8; 1 << 20],
    };
    writer
        .write(&format::encode_header(options.ttl.map(|ttl| ttl.as_secs())))
        .map_err(&write_error)?;
    let mut index = Vec::with_capacity(objects.len());
    for relative in &objects {
        let mut entry = writer.copy_object(dir, &root, relative)?;
        entry.content_type = Some(gfprotocol::http::content_type_of(&entry.path).to_owned());
        report.objects += 1;
        report.bytes += entry.len;
        index.push(entry);
    }
    writer.finish_index(&index)?;
    let temp = writer
        .out
        .into_inner()
        .map_err(|error| write_error(error.into_error()))?;
    report.pack_len = writer.position;
    temp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(PACK_MODE))
        .map_err(&write_error)?;
    temp.as_file().sync_all().map_err(&write_error)?;
    check_written(&temp_path)?;
    temp.persist(output)
        .map_err(|error| io_error(output)(error.error))?;
    File::open(&output_dir)
        .and_then(|dir| dir.sync_all())
        .map_err(io_error(&output_dir))?;
    Ok(report)
}

/// Reads the finished pack back before it is renamed into place: the checks of an open, then
/// every object's checksum and the padding.
fn check_written(temp_path: &Path) -> Result<(), Error> {
    let written = super::verify_pack(temp_path)?;
    match written.problems.into_iter().next() {
        None => Ok(()),
        Some(problem) => Err(Error::CorruptPack {
            path: temp_path.to_path_buf(),
            what: format!("read back after writing: {problem}"),
        }),
    }
}

/// An `Error::Io` about `path`.
fn io_error(path: &Path) -> impl Fn(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io {
        path: path.clone(),
        source,
    }
}

/// The pack being written, and where it has got to.
struct PackWriter {
    out: BufWriter<tempfile::NamedTempFile>,
    position: u64,
    buffer: Vec<u8>,
}

impl PackWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.out.write_all(bytes)?;
        self.position += bytes.len() as u64;
        Ok(())
    }

    fn temp_error(&self) -> impl Fn(std::io::Error) -> Error {
        io_error(self.out.get_ref().path())
    }

    /// Pads to the next page and copies the file `relative` under `root`, computing its CRC32C
    /// on the way. The length is what was read (a file that changes during the build is packed
    /// as it was read).
    fn copy_object(
        &mut self,
        dir: &Path,
        root: &OwnedFd,
        relative: &str,
    ) -> Result<IndexEntry, Error> {
        let write_error = self.temp_error();
        let offset = format::align_up(self.position)
            .ok_or_else(|| Error::Config("pack offsets overflow".into()))?;
        write_zeros(&mut self.out, offset - self.position).map_err(&write_error)?;
        self.position = offset;
        let source_path = dir.join(relative);
        let read_error = io_error(&source_path);
        let mut file = gfprotocol::paths::open_beneath(root, relative)
            .map_err(&read_error)?
            .ok_or_else(|| {
                read_error(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "vanished or changed type during the build",
                ))
            })?;
        let modified = file
            .metadata()
            .ok()
            .and_then(|meta| meta.modified().ok())
            .map(crate::meta::unix_secs);
        let mut crc = 0u32;
        loop {
            let read = match file.read(&mut self.buffer) {
                Ok(0) => break,
                Ok(read) => read,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(read_error(error)),
            };
            let chunk = self.buffer.get(..read).unwrap_or_default();
            crc = crc32c::crc32c_append(crc, chunk);
            self.out.write_all(chunk).map_err(&write_error)?;
            self.position += read as u64;
        }
        Ok(IndexEntry {
            path: format!("/{relative}"),
            offset,
            len: self.position - offset,
            crc,
            modified,
            content_type: None,
        })
    }

    /// Writes the index right after the last object, then the footer.
    fn finish_index(&mut self, index: &[IndexEntry]) -> Result<(), Error> {
        let mut index_bytes = Vec::new();
        for entry in index {
            format::encode_entry(entry, &mut index_bytes)
                .map_err(|error| Error::Config(error.0))?;
        }
        let footer = Footer {
            index_offset: self.position,
            index_len: index_bytes.len() as u64,
            object_count: index.len() as u64,
            index_crc: crc32c::crc32c(&index_bytes),
        };
        let write_error = self.temp_error();
        self.write(&index_bytes).map_err(&write_error)?;
        self.write(&format::encode_footer(&footer))
            .map_err(&write_error)
    }
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

/// Collects the relative paths of the files to pack, depth first.
fn collect_files(
    dir: &Path,
    root: &OwnedFd,
    exclude: Option<(u64, u64)>,
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
                let meta = entry.metadata().map_err(io_error)?;
                if Some((meta.dev(), meta.ino())) == exclude {
                    skipped.push((entry.path(), "the output pack itself".into()));
                    continue;
                }
                out.push(relative);
            } else if file_type.is_symlink() {
                match gfprotocol::paths::open_beneath(root, &relative) {
                    Ok(Some(_)) => out.push(relative),
                    Ok(None) => skipped.push((
                        entry.path(),
                        "symlink that leaves the tree or names no regular file".into(),
                    )),
                    Err(error) => skipped.push((entry.path(), format!("symlink: {error}"))),
                }
            } else {
                skipped.push((entry.path(), "not a regular file".into()));
            }
        }
    }
    Ok(())
}
