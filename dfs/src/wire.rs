//! Conversions between the crate's types and the generated messages.
use crate::path::DfsPath;
use crate::proto;
use crate::version::FileMeta;
use crate::volume::Change;

/// The listing entry of a file.
pub(crate) fn entry(path: &DfsPath, meta: &FileMeta) -> proto::FileEntry {
    proto::FileEntry {
        path: path.as_str().to_string(),
        size: meta.size,
        mtime: meta.mtime,
        checksum: meta.checksum,
    }
}

/// The Watch message of a change.
pub(crate) fn event(change: &Change) -> proto::WatchEvent {
    proto::WatchEvent {
        kind: proto::EventKind::from(change.kind) as i32,
        path: change.path.as_str().to_string(),
        size: change.meta.size,
        mtime: change.meta.mtime,
        checksum: change.meta.checksum,
    }
}

/// The version told by a listing entry.
pub(crate) fn meta_of(entry: &proto::FileEntry) -> FileMeta {
    FileMeta {
        size: entry.size,
        mtime: entry.mtime,
        checksum: entry.checksum,
    }
}
