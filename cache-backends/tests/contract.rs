//! One contract suite, run against every backend (directory root, directory listing, writable
//! directory, memory, pack).

mod common;

use std::sync::Arc;

use cache_backends::{
    BackendConfig, CacheBackend, DirectoryBackend, DirectoryOptions, Error, MemoryBackend,
    PackBackend,
};
use common::{fixture, get_bytes, put_all, put_one, read_all, write_tree};
use tempfile::TempDir;

/// A backend holding the fixture, plus what the suite needs to know about it.
struct Subject {
    backend: Arc<dyn CacheBackend>,
    writable: bool,
    /// Whether `stats().bytes` is exactly the payload (memory also counts keys and bookkeeping).
    bytes_are_payload: bool,
    /// Inserts made while loading the fixture.
    loaded_inserts: u64,
    _dirs: Vec<TempDir>,
}

fn directory_root() -> Subject {
    let dir = TempDir::new().unwrap();
    write_tree(dir.path(), &fixture());
    let backend = DirectoryBackend::open(dir.path(), DirectoryOptions::default()).unwrap();
    Subject {
        backend: Arc::new(backend),
        writable: false,
        bytes_are_payload: true,
        loaded_inserts: 0,
        _dirs: vec![dir],
    }
}

fn directory_listing() -> Subject {
    let files = TempDir::new().unwrap();
    let mut listing = String::from("# course-format content listing\n\n");
    for (number, (path, bytes)) in fixture().iter().enumerate() {
        let file = files.path().join(format!("file{number}"));
        std::fs::write(&file, bytes).unwrap();
        listing.push_str(&format!("{path} file{number}\n"));
    }
    let listing_file = files.path().join("content.txt");
    std::fs::write(&listing_file, listing).unwrap();
    let backend = cache_backends::open_backend(&BackendConfig::Directory {
        root: None,
        content: Some(listing_file),
        writable: false,
        max_size: None,
        ttl: None,
    })
    .unwrap();
    Subject {
        backend: Arc::from(backend),
        writable: false,
        bytes_are_payload: true,
        loaded_inserts: 0,
        _dirs: vec![files],
    }
}

fn directory_writable() -> Subject {
    let dir = TempDir::new().unwrap();
    let options = DirectoryOptions {
        writable: true,
        max_size: Some(1 << 30),
        ttl: None,
    };
    let backend = DirectoryBackend::open(dir.path(), options).unwrap();
    put_all(&backend, &fixture());
    Subject {
        backend: Arc::new(backend),
        writable: true,
        bytes_are_payload: true,
        loaded_inserts: fixture().len() as u64,
        _dirs: vec![dir],
    }
}

fn memory() -> Subject {
    let backend = MemoryBackend::new(64 << 20, 1 << 20).unwrap();
    put_all(&backend, &fixture());
    Subject {
        backend: Arc::new(backend),
        writable: true,
        bytes_are_payload: false,
        loaded_inserts: fixture().len() as u64,
        _dirs: vec![],
    }
}

fn pack() -> Subject {
    let tree = TempDir::new().unwrap();
    write_tree(tree.path(), &fixture());
    let out = TempDir::new().unwrap();
    let pack_file = out.path().join("content.pack");
    cache_backends::build_pack(tree.path(), &pack_file).unwrap();
    let backend = PackBackend::open(&pack_file).unwrap();
    Subject {
        backend: Arc::new(backend),
        writable: false,
        bytes_are_payload: true,
        loaded_inserts: 0,
        _dirs: vec![tree, out],
    }
}

fn present_paths_have_their_bytes(subject: &Subject) {
    for (path, bytes) in fixture() {
        let object = subject.backend.get(path).unwrap().expect(path);
        assert_eq!(object.len(), bytes.len() as u64, "{path}");
        assert_eq!(object.is_empty(), bytes.is_empty(), "{path}");
        assert_eq!(read_all(object.as_ref(), 1 << 20), bytes, "{path}");
        assert_eq!(read_all(object.as_ref(), 4096), bytes, "{path}");
        assert_eq!(read_all(object.as_ref(), 333), bytes, "{path}");
    }
}

fn absent_paths_are_not_found(subject: &Subject) {
    for path in [
        "/missing",
        "/dir/missing",
        "/a.txt/x",
        "/A.TXT",
        "/nope/a.txt",
    ] {
        assert!(subject.backend.get(path).unwrap().is_none(), "{path}");
    }
}

fn directories_and_other_spellings_are_not_objects(subject: &Subject) {
    for path in [
        "/dir",
        "/dir/",
        "/dir/sub",
        "/",
        "//a.txt",
        "/./a.txt",
        "/dir/../a.txt",
    ] {
        assert!(subject.backend.get(path).unwrap().is_none(), "{path}");
    }
}

fn ranges_at_every_boundary(subject: &Subject) {
    for (path, bytes) in fixture() {
        let object = subject.backend.get(path).unwrap().expect(path);
        let len = bytes.len();
        let mut offsets = vec![0, 1, len / 2, len.saturating_sub(1), len];
        offsets.extend(
            [4095, 4096, 4097, 8191, 8192, 8193]
                .iter()
                .filter(|&&o| o <= len),
        );
        for &offset in &offsets {
            if offset > len {
                continue;
            }
            let rest = len - offset;
            for n in [0, 1, rest / 2, rest.saturating_sub(1), rest] {
                if n > rest {
                    continue;
                }
                let mut out = Vec::new();
                object.copy_to(offset as u64, n, &mut out).unwrap();
                assert_eq!(out, &bytes[offset..offset + n], "{path} {offset}+{n}");
            }
            let mut out = Vec::new();
            let past = object.copy_to(offset as u64, rest + 1, &mut out);
            assert!(
                matches!(past, Err(Error::OutOfRange { .. })),
                "{path} {offset}+{}: {past:?}",
                rest + 1
            );
        }
        let mut out = Vec::new();
        assert!(matches!(
            object.copy_to(len as u64 + 1, 0, &mut out),
            Err(Error::OutOfRange { .. })
        ));
        assert!(matches!(
            object.copy_to(u64::MAX, 1, &mut out),
            Err(Error::OutOfRange { .. })
        ));
        assert!(out.is_empty());
    }
}

fn concurrent_gets(subject: &Subject) {
    let expected = fixture();
    std::thread::scope(|scope| {
        for thread in 0..4 {
            let backend = &subject.backend;
            let expected = &expected;
            scope.spawn(move || {
                for round in 0..50 {
                    let (path, bytes) = &expected[(thread + round) % expected.len()];
                    assert_eq!(get_bytes(backend.as_ref(), path).as_ref(), Some(bytes));
                    assert!(backend.get("/missing").unwrap().is_none());
                }
            });
        }
    });
}

/// Writers replace a few keys with uniform bodies (every byte equal to a version whose length
/// is derived from it) while readers check that each object they get is one whole version.
fn concurrent_puts_and_gets(subject: &Subject) {
    if !subject.writable {
        return;
    }
    let body = |version: u8| vec![version; 1000 + usize::from(version) * 37];
    std::thread::scope(|scope| {
        for writer in 0..2u8 {
            let backend = &subject.backend;
            scope.spawn(move || {
                for round in 0..40u8 {
                    let version = round.wrapping_mul(2).wrapping_add(writer);
                    let key = format!("/busy/{}", round % 3);
                    put_one(backend.as_ref(), &key, &body(version)).unwrap();
                }
            });
        }
        for _reader in 0..2 {
            let backend = &subject.backend;
            scope.spawn(move || {
                for round in 0..200 {
                    let key = format!("/busy/{}", round % 3);
                    if let Some(bytes) = get_bytes(backend.as_ref(), &key) {
                        let version = bytes[0];
                        assert_eq!(bytes, body(version), "{key}: a torn object");
                    }
                }
            });
        }
    });
}

fn put_then_get(subject: &Subject) {
    let backend = subject.backend.as_ref();
    let body = common::pattern(70_000, 3);
    let stored = put_one(backend, "/new/object.bin", &body);
    if !subject.writable {
        assert!(stored.is_none(), "a read-only backend must decline");
        assert!(backend.get("/new/object.bin").unwrap().is_none());
        return;
    }
    assert!(stored.is_some());
    assert_eq!(get_bytes(backend, "/new/object.bin"), Some(body));
    // Replacing an object: a holder of the old one keeps the old bytes.
    let old = backend.get("/a.txt").unwrap().unwrap();
    put_one(backend, "/a.txt", b"replaced").unwrap();
    assert_eq!(get_bytes(backend, "/a.txt").unwrap(), b"replaced");
    assert_eq!(read_all(old.as_ref(), 100), b"hello, world\n");
    // A short fill, a dropped fill and an overlong write leave nothing behind.
    let mut short = backend.put("/short", 10).unwrap().unwrap();
    short.write(b"12345").unwrap();
    assert!(matches!(short.commit(), Err(Error::FillLength { .. })));
    let mut dropped = backend.put("/dropped", 3).unwrap().unwrap();
    dropped.write(b"abc").unwrap();
    drop(dropped);
    let mut long = backend.put("/long", 2).unwrap().unwrap();
    assert!(matches!(long.write(b"abc"), Err(Error::FillLength { .. })));
    for path in ["/short", "/dropped", "/long"] {
        assert!(backend.get(path).unwrap().is_none(), "{path}");
    }
    // Fills are not visible before commit.
    let mut pending = backend.put("/pending", 1).unwrap().unwrap();
    pending.write(b"x").unwrap();
    assert!(backend.get("/pending").unwrap().is_none());
    pending.commit().unwrap();
    assert_eq!(get_bytes(backend, "/pending").unwrap(), b"x");
}

fn stats_add_up(subject: &Subject) {
    let backend = subject.backend.as_ref();
    let before = backend.stats();
    assert_eq!(before.inserts, subject.loaded_inserts);
    assert_eq!(before.objects, fixture().len() as u64);
    let payload: u64 = fixture().iter().map(|(_, bytes)| bytes.len() as u64).sum();
    if subject.bytes_are_payload {
        assert_eq!(before.bytes, payload);
    } else {
        assert!(before.bytes > payload);
    }
    if let Some(capacity) = before.capacity {
        assert!(before.bytes <= capacity);
    }
    let mut hits = 0;
    let mut misses = 0;
    for round in 0..3 {
        for (path, _) in fixture() {
            assert!(backend.get(path).unwrap().is_some());
            hits += 1;
        }
        for path in ["/missing", "//a.txt"].iter().take(round + 1) {
            assert!(backend.get(path).unwrap().is_none());
            misses += 1;
        }
    }
    let after = backend.stats();
    assert_eq!(after.hits - before.hits, hits);
    assert_eq!(after.misses - before.misses, misses);
    assert_eq!(after.objects, before.objects);
    assert_eq!(after.bytes, before.bytes);
    assert_eq!(after.evictions, 0);
    if subject.writable {
        put_one(backend, "/one-more", b"12345").unwrap();
        let stored = backend.stats();
        assert_eq!(stored.inserts, after.inserts + 1);
        assert_eq!(stored.objects, after.objects + 1);
        assert!(stored.bytes >= after.bytes + 5);
    }
}

/// A version names the bytes: stable across gets, distinct between objects, new on a
/// replacement (while a holder of the old object keeps the old version).
fn versions_name_the_bytes(subject: &Subject) {
    let backend = subject.backend.as_ref();
    let version = |path: &str| backend.get(path).unwrap().unwrap().version();
    let mut seen = std::collections::HashSet::new();
    for (path, _) in fixture() {
        let first = version(path);
        assert_ne!(first, cache_backends::ObjectVersion::NONE, "{path}");
        assert_eq!(
            version(path),
            first,
            "{path}: another version for the same bytes"
        );
        assert!(
            seen.insert(first),
            "{path}: shares a version with another object"
        );
        let modified = backend.get(path).unwrap().unwrap().modified();
        let age = modified.and_then(|time| std::time::SystemTime::now().duration_since(time).ok());
        assert!(
            age.is_some_and(|age| age < std::time::Duration::from_secs(3600)),
            "{path}: modified {modified:?}"
        );
    }
    if subject.writable {
        let old = backend.get("/a.txt").unwrap().unwrap();
        put_one(backend, "/a.txt", b"replaced").unwrap();
        assert_ne!(version("/a.txt"), old.version());
        assert_eq!(old.version(), old.version());
    }
}

fn kind_is_named(subject: &Subject, kind: &str) {
    assert_eq!(subject.backend.kind(), kind);
}

macro_rules! contract_suite {
    ($module:ident, $make:expr, $kind:expr) => {
        mod $module {
            use super::*;

            #[test]
            fn kind() {
                kind_is_named(&$make(), $kind);
            }
            #[test]
            fn present_paths() {
                present_paths_have_their_bytes(&$make());
            }
            #[test]
            fn absent_paths() {
                absent_paths_are_not_found(&$make());
            }
            #[test]
            fn directories_and_other_spellings() {
                directories_and_other_spellings_are_not_objects(&$make());
            }
            #[test]
            fn ranges() {
                ranges_at_every_boundary(&$make());
            }
            #[test]
            fn concurrent() {
                concurrent_gets(&$make());
            }
            #[test]
            fn concurrent_puts() {
                concurrent_puts_and_gets(&$make());
            }
            #[test]
            fn put_get() {
                put_then_get(&$make());
            }
            #[test]
            fn stats() {
                stats_add_up(&$make());
            }
            #[test]
            fn versions() {
                versions_name_the_bytes(&$make());
            }
        }
    };
}

contract_suite!(directory_root_backend, directory_root, "directory");
contract_suite!(directory_listing_backend, directory_listing, "directory");
contract_suite!(directory_writable_backend, directory_writable, "directory");
contract_suite!(memory_backend, memory, "memory");
contract_suite!(pack_backend, pack, "pack");
