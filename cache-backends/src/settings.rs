//! The `[cache]` settings: their one type, one default and one validator. The supervisor reads
//! them from its TOML file and `gfcache-cache` from its flags; both validate with
//! [`CacheSettings::validate`] and open with [`CacheSettings::backend_config`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use settings::Problems;

use crate::BackendConfig;

/// Which backend a cache process serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Files under a root, or a listing.
    Directory,
    /// The in-memory LRU.
    Memory,
    /// A pack file made by gfpack.
    Pack,
}

impl BackendKind {
    /// "directory", "memory" or "pack".
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Directory => "directory",
            BackendKind::Memory => "memory",
            BackendKind::Pack => "pack",
        }
    }
}

/// A cache process's settings: its workers and its backend. Only the chosen backend's table is
/// required and checked, so the others can stay in the file for a later switch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CacheSettings {
    /// Worker threads per cache process.
    pub workers: usize,
    /// How long a worker waits for the proxy (room, data) before it aborts a transfer.
    #[serde(with = "settings::duration")]
    pub transfer_timeout: Duration,
    /// The backend; required.
    pub backend: Option<BackendKind>,
    /// `cache.directory`.
    pub directory: Option<DirectorySettings>,
    /// `cache.memory`.
    pub memory: Option<MemorySettings>,
    /// `cache.pack`.
    pub pack: Option<PackSettings>,
}

impl Default for CacheSettings {
    fn default() -> CacheSettings {
        CacheSettings {
            workers: 4,
            transfer_timeout: Duration::from_secs(5),
            backend: None,
            directory: None,
            memory: None,
            pack: None,
        }
    }
}

/// `cache.directory`: exactly one of `root` and `content`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DirectorySettings {
    /// Serve the files under this directory.
    pub root: Option<PathBuf>,
    /// Instead of a root, a `<path> <file>` listing (read-only).
    pub content: Option<PathBuf>,
    /// Store origin fills under `root`.
    pub writable: bool,
    /// With `writable`, the byte bound of the stored files.
    #[serde(with = "settings::size::option")]
    pub max_size: Option<u64>,
    /// How long the files put in place (not fills, which carry the origin's freshness) stay
    /// fresh; absent: they never go stale.
    #[serde(with = "settings::duration::option")]
    pub ttl: Option<Duration>,
}

/// `cache.memory`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MemorySettings {
    /// Byte bound: payload, keys and bookkeeping.
    #[serde(with = "settings::size")]
    pub capacity: u64,
    /// Larger objects are not stored; default a quarter of the capacity.
    #[serde(with = "settings::size::option")]
    pub max_object_size: Option<u64>,
}

impl Default for MemorySettings {
    fn default() -> MemorySettings {
        MemorySettings {
            capacity: 256 << 20,
            max_object_size: None,
        }
    }
}

impl MemorySettings {
    /// The effective object bound.
    pub fn max_object_size(&self) -> u64 {
        self.max_object_size.unwrap_or((self.capacity / 4).max(1))
    }
}

/// `cache.pack`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PackSettings {
    /// The pack file; required.
    pub path: Option<PathBuf>,
}

/// The smallest memory capacity: below it the shards hold almost nothing.
const MIN_MEMORY_CAPACITY: u64 = 64 << 10;

impl CacheSettings {
    /// Checks the values and the files they name, without opening the backend. Keys are relative
    /// to `[cache]`.
    pub fn validate(&self) -> Problems {
        let mut problems = Problems::default();
        problems.check_range("workers", self.workers, 1, 256);
        problems.check_nonzero("transfer_timeout", self.transfer_timeout);
        match self.backend {
            None => problems.add(
                "backend",
                "is required: \"directory\", \"memory\" or \"pack\"",
            ),
            Some(kind) => self.validate_backend(kind, &mut problems),
        }
        problems
    }

    fn validate_backend(&self, kind: BackendKind, problems: &mut Problems) {
        let table = kind.as_str();
        let missing = || {
            let example = match kind {
                BackendKind::Directory => "directory = { root = \"etc/content\" }",
                BackendKind::Memory => "memory = { capacity = \"256MiB\" }",
                BackendKind::Pack => "pack = { path = \"var/content.pack\" }",
            };
            format!("backend = {table:?} needs a [cache.{table}] table (e.g. {example})")
        };
        let found = match kind {
            BackendKind::Directory => self.directory.as_ref().map(|d| d.validate()),
            BackendKind::Memory => self.memory.as_ref().map(|m| m.validate()),
            BackendKind::Pack => self.pack.as_ref().map(|p| p.validate()),
        };
        match found {
            Some(found) => problems.extend_under(table, found),
            None => problems.add(table, missing()),
        }
    }

    /// Whether every cache process serves the same data, so that any of them can answer for
    /// another: a read-only directory or a pack (a memory cache, or a writable directory, holds
    /// what was filled into it alone).
    pub fn is_shared(&self) -> bool {
        match self.backend {
            Some(BackendKind::Pack) => true,
            Some(BackendKind::Directory) => !self.directory.as_ref().is_some_and(|d| d.writable),
            _ => false,
        }
    }

    /// The backend to open; None until a backend is chosen.
    pub fn backend_config(&self) -> Option<BackendConfig> {
        Some(match self.backend? {
            BackendKind::Directory => {
                let d = self.directory.clone().unwrap_or_default();
                BackendConfig::Directory {
                    root: d.root,
                    content: d.content,
                    writable: d.writable,
                    max_size: d.max_size,
                    ttl: d.ttl,
                }
            }
            BackendKind::Memory => {
                let m = self.memory.clone().unwrap_or_default();
                BackendConfig::Memory {
                    capacity: m.capacity,
                    max_object_size: m.max_object_size(),
                }
            }
            BackendKind::Pack => BackendConfig::Pack {
                path: self.pack.as_ref()?.path.clone()?,
            },
        })
    }

    /// What can be checked only by opening: the backend opens, and a pack verifies (every
    /// object's checksum). Keys are relative to `[cache]`.
    pub fn check_backend_opens(&self) -> Problems {
        let mut problems = Problems::default();
        let Some(config) = self.backend_config() else {
            return problems;
        };
        let key = match self.backend {
            Some(BackendKind::Pack) => "pack.path",
            Some(BackendKind::Directory)
                if self.directory.as_ref().is_some_and(|d| d.root.is_none()) =>
            {
                "directory.content"
            }
            Some(BackendKind::Directory) => "directory.root",
            _ => "memory",
        };
        if let BackendConfig::Directory {
            root: Some(root),
            writable: true,
            ..
        } = &config
        {
            if !root.exists() {
                // Created at start; whether it can be is the caller's check.
                return problems;
            }
        }
        // A pack is checked in full (a cache would start on a bad one and wait, unavailable).
        let outcome = match &config {
            BackendConfig::Pack { path } => crate::check_pack(path).map(drop),
            other => crate::open_backend(other).map(drop),
        };
        if let Err(error) = outcome {
            problems.add(key, error.to_string());
        }
        problems
    }

    /// Resolves the relative paths against `base`.
    pub fn resolve_paths(&mut self, base: &Path) {
        let resolve = |path: &mut Option<PathBuf>| {
            if let Some(p) = path {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
        };
        if let Some(d) = &mut self.directory {
            resolve(&mut d.root);
            resolve(&mut d.content);
        }
        if let Some(p) = &mut self.pack {
            resolve(&mut p.path);
        }
    }
}

impl DirectorySettings {
    fn validate(&self) -> Problems {
        let mut problems = Problems::default();
        match (&self.root, &self.content) {
            (Some(root), None) => {
                // A writable root is created at start when missing.
                let creatable = self.writable && !root.exists();
                if !root.is_dir() && !creatable {
                    problems.add("root", format!("{} is not a directory", root.display()));
                }
            }
            (None, Some(content)) => {
                if !content.is_file() {
                    problems.add("content", format!("{} is not a file", content.display()));
                }
                if self.writable {
                    problems.add("writable", "needs root (a listing is read-only)");
                }
            }
            _ => problems.add("root", "give exactly one of root and content"),
        }
        if self.max_size.is_some() && !self.writable {
            problems.add("max_size", "only applies with writable = true");
        }
        if self.max_size == Some(0) {
            problems.add("max_size", "must be greater than 0");
        }
        problems
    }
}

impl MemorySettings {
    fn validate(&self) -> Problems {
        let mut problems = Problems::default();
        problems.check_size("capacity", self.capacity, MIN_MEMORY_CAPACITY, 1 << 40);
        let max_object_size = self.max_object_size();
        if max_object_size == 0 {
            problems.add("max_object_size", "must be greater than 0");
        } else if max_object_size > self.capacity {
            problems.add("max_object_size", "must not exceed cache.memory.capacity");
        }
        problems
    }
}

impl PackSettings {
    fn validate(&self) -> Problems {
        let mut problems = Problems::default();
        match &self.path {
            None => problems.add("path", "is required (a pack file made by `gfpack build`)"),
            Some(path) if !path.is_file() => problems.add(
                "path",
                format!(
                    "{} does not exist (build it with `gfpack build <dir> -o {}`)",
                    path.display(),
                    path.display()
                ),
            ),
            Some(_) => {}
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(settings: &CacheSettings) -> Vec<String> {
        settings.validate().into_iter().map(|p| p.key).collect()
    }

    #[test]
    fn a_backend_and_its_table_are_required() {
        assert_eq!(keys(&CacheSettings::default()), ["backend"]);
        let pack = CacheSettings {
            backend: Some(BackendKind::Pack),
            ..CacheSettings::default()
        };
        assert_eq!(keys(&pack), ["pack"]);
        let memory = CacheSettings {
            backend: Some(BackendKind::Memory),
            memory: Some(MemorySettings::default()),
            ..CacheSettings::default()
        };
        assert!(keys(&memory).is_empty());
        assert_eq!(
            memory.backend_config(),
            Some(BackendConfig::Memory {
                capacity: 256 << 20,
                max_object_size: 64 << 20
            })
        );
    }

    #[test]
    fn only_the_chosen_table_is_checked() {
        let settings = CacheSettings {
            backend: Some(BackendKind::Memory),
            memory: Some(MemorySettings::default()),
            pack: Some(PackSettings { path: None }),
            ..CacheSettings::default()
        };
        assert!(keys(&settings).is_empty());
    }

    #[test]
    fn memory_bounds() {
        let settings = CacheSettings {
            backend: Some(BackendKind::Memory),
            memory: Some(MemorySettings {
                capacity: 1024,
                max_object_size: Some(4096),
            }),
            workers: 0,
            ..CacheSettings::default()
        };
        assert_eq!(
            keys(&settings),
            ["workers", "memory.capacity", "memory.max_object_size"]
        );
    }
}
