//! Objects kept open for the transfers that go on in ranges.
//!
//! A client that reads slowly is sent the rest of an object in ranges, each a GET of its own
//! that asks for the version the transfer began with (docs/proxy.md, "Slow readers"). When the
//! path changes meanwhile (a file renamed over it, a fill replacing it), the backend's `get`
//! finds the new version, and the transfer would have to end short. A cache process therefore
//! keeps the object of a transfer that is not finished (a GET that did not reach the object's
//! end) for the next range: that range is then sent from the old bytes, which the open object
//! still holds, as nginx sends a replaced file to the end from its open descriptor.
//!
//! Only objects that are cheap to hold are kept ([`CachedObject::cheap_to_hold`]: an open file,
//! not the bytes of a memory object beyond the cache's capacity), at most [`RETAINED_MAX`] at
//! once, each for [`RETAINED_FOR`] after its last range. A purge forgets the paths it names.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ipc::ObjectVersion;

use crate::CachedObject;

/// Most objects a cache process keeps for unfinished transfers (each an open descriptor).
pub(crate) const RETAINED_MAX: usize = 64;

/// How long an object is kept after its last range: longer than a slow client takes to drain
/// a `client_buffer` (256 KiB at 10 kB/s is 26 s).
pub(crate) const RETAINED_FOR: Duration = Duration::from_secs(60);

/// The objects of unfinished transfers, by path and version.
#[derive(Default)]
pub(crate) struct Retained {
    entries: Mutex<Vec<Entry>>,
}

struct Entry {
    path: String,
    version: ObjectVersion,
    object: Arc<dyn CachedObject>,
    last_used: Instant,
}

impl Retained {
    /// Keeps `object`, the one at `path`, for the next range of its transfer.
    pub(crate) fn keep(&self, path: &str, object: &Arc<dyn CachedObject>) {
        if !object.cheap_to_hold() {
            return;
        }
        let now = Instant::now();
        let mut entries = self.lock(now);
        let version = object.version();
        if let Some(entry) = entries
            .iter_mut()
            .find(|e| e.path == path && e.version == version)
        {
            entry.last_used = now;
            return;
        }
        if entries.len() >= RETAINED_MAX {
            // The least recently used goes: its transfer, if any, ends short at its next range.
            if let Some(oldest) = (0..entries.len()).min_by_key(|&i| entries[i].last_used) {
                entries.swap_remove(oldest);
            }
        }
        entries.push(Entry {
            path: path.to_string(),
            version,
            object: Arc::clone(object),
            last_used: now,
        });
    }

    /// The kept object at `path` of `version`, if any.
    pub(crate) fn find(&self, path: &str, version: ObjectVersion) -> Option<Arc<dyn CachedObject>> {
        let now = Instant::now();
        let mut entries = self.lock(now);
        let entry = entries
            .iter_mut()
            .find(|e| e.path == path && e.version == version)?;
        entry.last_used = now;
        Some(Arc::clone(&entry.object))
    }

    /// Drops the object at `path` of `version`: its transfer is done.
    pub(crate) fn release(&self, path: &str, version: ObjectVersion) {
        self.lock(Instant::now())
            .retain(|e| !(e.path == path && e.version == version));
    }

    /// Drops every object at `path` (or, with `prefix`, under it): a purge.
    pub(crate) fn forget(&self, path: &str, prefix: bool) {
        self.lock(Instant::now()).retain(|e| match prefix {
            true => !e.path.starts_with(path),
            false => e.path != path,
        });
    }

    /// How many objects are kept.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock(Instant::now()).len()
    }

    /// The entries, those unused for [`RETAINED_FOR`] dropped.
    fn lock(&self, now: Instant) -> MutexGuard<'_, Vec<Entry>> {
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        entries.retain(|e| now.duration_since(e.last_used) < RETAINED_FOR);
        entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ChunkDest, Error};

    struct Held {
        version: u64,
        cheap: bool,
    }

    impl CachedObject for Held {
        fn len(&self) -> u64 {
            0
        }
        fn version(&self) -> ObjectVersion {
            ObjectVersion::from_raw(self.version)
        }
        fn modified(&self) -> Option<std::time::SystemTime> {
            None
        }
        fn encoded_meta(&self) -> std::borrow::Cow<'_, [u8]> {
            std::borrow::Cow::Borrowed(&[])
        }
        fn copy_to(&self, _: u64, _: usize, _: &mut dyn ChunkDest) -> Result<(), Error> {
            Ok(())
        }
        fn cheap_to_hold(&self) -> bool {
            self.cheap
        }
    }

    fn held(version: u64) -> Arc<dyn CachedObject> {
        Arc::new(Held {
            version,
            cheap: true,
        })
    }

    #[test]
    fn a_kept_object_is_found_by_path_and_version_until_released() {
        let retained = Retained::default();
        retained.keep("/a", &held(1));
        retained.keep("/a", &held(1));
        assert_eq!(retained.len(), 1);
        assert!(retained.find("/a", ObjectVersion::from_raw(1)).is_some());
        assert!(retained.find("/a", ObjectVersion::from_raw(2)).is_none());
        assert!(retained.find("/b", ObjectVersion::from_raw(1)).is_none());
        retained.release("/a", ObjectVersion::from_raw(1));
        assert!(retained.find("/a", ObjectVersion::from_raw(1)).is_none());
    }

    #[test]
    fn objects_dear_to_hold_are_not_kept() {
        let retained = Retained::default();
        let dear: Arc<dyn CachedObject> = Arc::new(Held {
            version: 1,
            cheap: false,
        });
        retained.keep("/a", &dear);
        assert_eq!(retained.len(), 0);
    }

    #[test]
    fn the_least_recently_used_goes_past_the_bound() {
        let retained = Retained::default();
        for version in 0..RETAINED_MAX as u64 {
            retained.keep("/a", &held(version + 1));
        }
        assert!(retained.find("/a", ObjectVersion::from_raw(1)).is_some());
        retained.keep("/a", &held(1000));
        assert_eq!(retained.len(), RETAINED_MAX);
        // Version 1 was used last but one; version 2 was the oldest.
        assert!(retained.find("/a", ObjectVersion::from_raw(2)).is_none());
        assert!(retained.find("/a", ObjectVersion::from_raw(1)).is_some());
    }

    #[test]
    fn a_purge_forgets_the_paths_it_names() {
        let retained = Retained::default();
        retained.keep("/dir/a", &held(1));
        retained.keep("/dir/b", &held(2));
        retained.keep("/other", &held(3));
        retained.forget("/dir/a", false);
        assert_eq!(retained.len(), 2);
        retained.forget("/dir/", true);
        assert_eq!(retained.len(), 1);
        assert!(retained
            .find("/other", ObjectVersion::from_raw(3))
            .is_some());
    }
}
