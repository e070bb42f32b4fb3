//! Fixtures shared by the integration tests.
#![allow(dead_code)]

use std::path::Path;

use cache_backends::{CacheBackend, CachedObject};

/// The objects every backend is loaded with: an empty one, text, and binary ones that cross
/// page boundaries.
pub fn fixture() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("/empty", Vec::new()),
        ("/a.txt", b"hello, world\n".to_vec()),
        ("/dir/one-page.bin", pattern(4096, 1)),
        ("/dir/sub/binary.bin", pattern(10_000, 7)),
        ("/dir/sub/z", vec![0, 255, 0, 13, 10, 13, 10]),
    ]
}

/// Deterministic bytes, every value 0..=255 present.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..len).map(|_| rng.u8(..)).collect()
}

/// Writes `objects` as files under `root`.
pub fn write_tree(root: &Path, objects: &[(&str, Vec<u8>)]) {
    for (path, bytes) in objects {
        let file = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, bytes).unwrap();
    }
}

/// Stores `objects` through `put`; panics if the backend declines.
pub fn put_all(backend: &dyn CacheBackend, objects: &[(&str, Vec<u8>)]) {
    for (path, bytes) in objects {
        put_one(backend, path, bytes).unwrap_or_else(|| panic!("{path} declined"));
    }
}

/// Stores one object in chunks of 1000 bytes; `None` if declined.
pub fn put_one(backend: &dyn CacheBackend, path: &str, bytes: &[u8]) -> Option<()> {
    let mut fill = backend.put(path, bytes.len() as u64).unwrap()?;
    for chunk in bytes.chunks(1000) {
        fill.write(chunk).unwrap();
    }
    fill.commit().unwrap();
    Some(())
}

/// The whole object, copied in steps of `step` bytes.
pub fn read_all(object: &dyn CachedObject, step: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut offset = 0u64;
    while offset < object.len() {
        let n = step.min((object.len() - offset) as usize);
        object.copy_to(offset, n, &mut out).unwrap();
        offset += n as u64;
    }
    out
}

/// The object at `path`, fully read; `None` if absent.
pub fn get_bytes(backend: &dyn CacheBackend, path: &str) -> Option<Vec<u8>> {
    let object = backend.get(path).unwrap()?;
    Some(read_all(object.as_ref(), 1 << 20))
}

/// Writes a pack file the way an operator would put a copy in place: a temporary file of mode
/// 0644 (whatever the umask) renamed over `path`, so that it works over a read-only pack too.
pub fn write_pack_file(path: &Path, bytes: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    let temp = path.with_extension("writing");
    std::fs::write(&temp, bytes).unwrap();
    std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::rename(&temp, path).unwrap();
}

/// Overwrites `bytes` at `offset` of the file in place, like `dd conv=notrunc` (as root, the
/// file's read-only mode does not stop it; otherwise the test makes it writable first).
pub fn overwrite_in_place(path: &Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::{FileExt, PermissionsExt};
    let file = match std::fs::OpenOptions::new().write(true).open(path) {
        Ok(file) => file,
        Err(_) => {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
            std::fs::OpenOptions::new().write(true).open(path).unwrap()
        }
    };
    file.write_all_at(bytes, offset).unwrap();
}

/// Truncates the file in place to `len` bytes.
pub fn truncate_in_place(path: &Path, len: u64) {
    use std::os::unix::fs::PermissionsExt;
    let file = match std::fs::OpenOptions::new().write(true).open(path) {
        Ok(file) => file,
        Err(_) => {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
            std::fs::OpenOptions::new().write(true).open(path).unwrap()
        }
    };
    file.set_len(len).unwrap();
}

/// Polls `refresh` until the backend is ready (a reopen is tried at most once a second).
pub fn wait_ready(backend: &dyn CacheBackend) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let availability = backend.refresh();
        if availability == cache_backends::Availability::Ready {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never ready again: {availability:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10)); // polling, not syncing
    }
}

/// Polls `refresh` until the backend is unavailable, and returns why.
pub fn wait_unavailable(backend: &dyn CacheBackend) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let cache_backends::Availability::Unavailable(why) = backend.refresh() {
            return why;
        }
        assert!(std::time::Instant::now() < deadline, "never unavailable");
        std::thread::sleep(std::time::Duration::from_millis(10)); // polling, not syncing
    }
}
