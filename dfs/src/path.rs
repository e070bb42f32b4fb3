//! Paths as the server names files: relative to its root, strictly contained.
use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The name of the server's and the mount's own state directory (temporary files,
/// tombstones); no path may name it.
pub const STATE_DIR: &str = ".gfdfs";

/// A validated file path under a gfdfs root: `/`-separated components, none empty, `.` or
/// `..`, no NUL, none naming [`STATE_DIR`]. A leading `/` is dropped, so `/a/b` and `a/b` are
/// one path.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DfsPath(String);

impl DfsPath {
    /// Validates `raw`.
    pub fn parse(raw: &str) -> Result<Self> {
        let refuse = |reason| Error::InvalidPath {
            path: raw.to_string(),
            reason,
        };
        if raw.contains('\0') {
            return Err(refuse("contains NUL"));
        }
        let relative = raw.strip_prefix('/').unwrap_or(raw);
        if relative.is_empty() {
            return Err(refuse("empty"));
        }
        for component in relative.split('/') {
            match component {
                "" => return Err(refuse("empty component")),
                "." | ".." => return Err(refuse("`.` or `..` component")),
                name if name.starts_with(STATE_DIR) => return Err(refuse("reserved name")),
                _ => {}
            }
        }
        Ok(DfsPath(relative.to_string()))
    }

    /// The path of a file beneath `root` (a mount directory), relative and validated.
    pub fn from_local(root: &Path, local: &Path) -> Result<Self> {
        let relative = local.strip_prefix(root).map_err(|_| {
            Error::Invalid(format!("{} is outside {}", local.display(), root.display()))
        })?;
        let text = relative
            .to_str()
            .ok_or_else(|| Error::Invalid(format!("{} is not UTF-8", local.display())))?;
        DfsPath::parse(text)
    }

    /// The path without a leading `/`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The file beneath `root`.
    pub fn under(&self, root: &Path) -> PathBuf {
        root.join(&self.0)
    }

    /// Whether this path lies beneath the directory `dir` (a path prefix).
    pub fn is_under(&self, dir: &DfsPath) -> bool {
        self.0
            .strip_prefix(dir.as_str())
            .is_some_and(|rest| rest.starts_with('/'))
    }

    /// Refuses a path whose existing ancestors (or the file itself) are symlinks, so no path
    /// can lead out of `root` however the tree beneath it is arranged.
    pub fn check_no_symlink(&self, root: &Path) -> Result<()> {
        let mut current = root.to_path_buf();
        for component in self.0.split('/') {
            current.push(component);
            match std::fs::symlink_metadata(&current) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(Error::InvalidPath {
                        path: self.0.clone(),
                        reason: "passes through a symlink",
                    })
                }
                Ok(_) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(error) => return Err(Error::io(current, error)),
            }
        }
        Ok(())
    }
}

impl fmt::Display for DfsPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leading_slash_names_the_same_file() {
        assert_eq!(
            DfsPath::parse("/a/b").unwrap(),
            DfsPath::parse("a/b").unwrap()
        );
    }

    #[test]
    fn escapes_and_oddities_are_refused() {
        for bad in [
            "",
            "/",
            "..",
            "a/../b",
            "a//b",
            "a/",
            "./a",
            "a\0b",
            ".gfdfs/tmp/x",
            "a/.gfdfs",
        ] {
            assert!(DfsPath::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn prefixes_are_by_component() {
        let dir = DfsPath::parse("a").unwrap();
        assert!(DfsPath::parse("a/b").unwrap().is_under(&dir));
        assert!(!DfsPath::parse("ab").unwrap().is_under(&dir));
    }
}
