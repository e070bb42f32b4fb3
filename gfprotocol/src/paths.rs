//! Strict containment: opening a request path beneath a root directory.
//!
//! The kernel resolves the path with `openat2(2)` and `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`
//! relative to a descriptor of the root, so `..` components and symlinks that leave the root are
//! refused atomically (no check-then-open race). Only regular files are returned.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

/// An open root directory that request paths are resolved beneath.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
}

impl Root {
    /// Opens `dir` (which must be a directory).
    pub fn open(dir: &Path) -> io::Result<Root> {
        let fd = nix::fcntl::open(
            dir,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Root { fd })
    }

    /// Opens the regular file named by the request path `path` beneath the root; see
    /// [`open_beneath`].
    pub fn open_file(&self, path: &str) -> io::Result<Option<File>> {
        open_beneath(&self.fd, path)
    }
}

impl AsFd for Root {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Opens the regular file named by the request path `path` (leading '/'s are relative to the
/// root) beneath the directory `root`, read-only.
///
/// Returns `Ok(None)` when the path names nothing servable: missing, escaping the root (by `..`
/// or a symlink), a magic link, not a regular file, or not readable. Other failures (out of
/// descriptors...) are errors.
pub fn open_beneath(root: &impl AsFd, path: &str) -> io::Result<Option<File>> {
    let relative = path.trim_start_matches('/');
    let relative = if relative.is_empty() { "." } else { relative };
    if relative.as_bytes().contains(&0) {
        return Ok(None);
    }
    // O_NONBLOCK: opening a FIFO must not block; it is then refused as not regular.
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = match openat2(root.as_fd(), relative, how) {
        Ok(fd) => fd,
        Err(e) if is_not_servable(e) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let file = File::from(fd);
    if !file.metadata()?.file_type().is_file() {
        return Ok(None);
    }
    Ok(Some(file))
}

/// Errors that mean "nothing to serve here" rather than a server fault.
fn is_not_servable(errno: Errno) -> bool {
    matches!(
        errno,
        Errno::ENOENT
            | Errno::ENOTDIR
            | Errno::EXDEV // RESOLVE_BENEATH: the path escapes the root
            | Errno::ELOOP
            | Errno::EACCES
            | Errno::EPERM
            | Errno::EISDIR
            | Errno::ENAMETOOLONG
            | Errno::ENXIO // a socket or a FIFO without writer
            | Errno::ENODEV
            | Errno::EINVAL
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::symlink;

    fn read(root: &Root, path: &str) -> Option<String> {
        let mut file = root.open_file(path).unwrap()?;
        let mut s = String::new();
        file.read_to_string(&mut s).unwrap();
        Some(s)
    }

    #[test]
    fn containment() {
        let outer = tempfile::tempdir().unwrap();
        std::fs::write(outer.path().join("secret"), "secret").unwrap();
        let dir = outer.path().join("root");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("a.txt"), "a").unwrap();
        std::fs::write(dir.join("sub/b.txt"), "b").unwrap();
        symlink("../a.txt", dir.join("sub/inside")).unwrap();
        symlink("../secret", dir.join("outside")).unwrap();
        symlink(outer.path().join("secret"), dir.join("absolute")).unwrap();
        symlink("/proc/self/root/etc/hostname", dir.join("magic")).unwrap();
        symlink("..", dir.join("up")).unwrap();
        let root = Root::open(&dir).unwrap();

        assert_eq!(read(&root, "/a.txt").as_deref(), Some("a"));
        assert_eq!(read(&root, "//a.txt").as_deref(), Some("a"));
        assert_eq!(read(&root, "/sub/b.txt").as_deref(), Some("b"));
        assert_eq!(read(&root, "/sub/../a.txt").as_deref(), Some("a"));
        assert_eq!(read(&root, "/sub/inside").as_deref(), Some("a"));
        for escape in [
            "/../secret",
            "/sub/../../secret",
            "/outside",
            "/absolute",
            "/magic",
            "/up/secret",
            "/",
            "/sub",
            "/missing",
            "/a.txt/x",
        ] {
            assert_eq!(read(&root, escape), None, "{escape}");
        }
    }
}
