//! The directory backend: containment, non-regular files, writable roots with an LRU bound.

mod common;

use std::os::unix::fs::symlink;

use cache_backends::{
    BackendConfig, CacheBackend, DirectoryBackend, DirectoryOptions, Error, FILL_PREFIX,
};
use common::{get_bytes, put_one, read_all};
use tempfile::TempDir;

/// A root `outer/root` with `outer/x` and `outer/secret` beside it, so escapes have targets.
struct Escape {
    outer: TempDir,
}

impl Escape {
    fn new() -> Escape {
        let outer = TempDir::new().unwrap();
        std::fs::create_dir_all(outer.path().join("root/a")).unwrap();
        std::fs::write(outer.path().join("x"), b"outside").unwrap();
        std::fs::write(outer.path().join("root/inside"), b"inside").unwrap();
        std::fs::write(outer.path().join("root/a/file"), b"a-file").unwrap();
        Escape { outer }
    }
    fn root(&self) -> std::path::PathBuf {
        self.outer.path().join("root")
    }
    fn open(&self) -> DirectoryBackend {
        DirectoryBackend::open(&self.root(), DirectoryOptions::default()).unwrap()
    }
}

#[test]
fn escapes_by_dot_dot_and_double_slash_are_not_found() {
    let tree = Escape::new();
    let backend = tree.open();
    for path in [
        "/../x",
        "//x",
        "/a/../../x",
        "/a/../inside",
        "/./inside",
        "/a/./file",
        "/a//file",
        "x",
        "",
        "/",
        "/inside/",
        "/../root/inside",
    ] {
        assert!(backend.get(path).unwrap().is_none(), "{path:?}");
    }
    let absolute = format!("/{}", tree.outer.path().join("x").display());
    assert!(backend.get(&absolute).unwrap().is_none(), "{absolute}");
    assert_eq!(get_bytes(&backend, "/inside").unwrap(), b"inside");
    assert_eq!(get_bytes(&backend, "/a/file").unwrap(), b"a-file");
}

#[test]
fn symlinks_that_leave_the_root_are_not_found() {
    let tree = Escape::new();
    let root = tree.root();
    symlink("../x", root.join("relative-out")).unwrap();
    symlink(tree.outer.path().join("x"), root.join("absolute-out")).unwrap();
    symlink(tree.outer.path(), root.join("dir-out")).unwrap();
    symlink("../../x", root.join("a/deep-out")).unwrap();
    symlink("inside", root.join("link-in")).unwrap();
    symlink("../inside", root.join("a/link-up-in")).unwrap();
    symlink("a", root.join("dir-in")).unwrap();
    symlink("loop", root.join("loop")).unwrap();
    let backend = tree.open();
    for path in [
        "/relative-out",
        "/absolute-out",
        "/dir-out/x",
        "/a/deep-out",
        "/loop",
    ] {
        assert!(backend.get(path).unwrap().is_none(), "{path}");
    }
    assert_eq!(get_bytes(&backend, "/link-in").unwrap(), b"inside");
    assert_eq!(get_bytes(&backend, "/a/link-up-in").unwrap(), b"inside");
    assert_eq!(get_bytes(&backend, "/dir-in/file").unwrap(), b"a-file");
}

#[test]
fn only_regular_files_are_objects() {
    let tree = Escape::new();
    nix::unistd::mkfifo(
        &tree.root().join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    let backend = tree.open();
    // Opening a FIFO must neither block nor serve it.
    assert!(backend.get("/fifo").unwrap().is_none());
    assert!(backend.get("/a").unwrap().is_none());
}

#[test]
fn fill_files_in_progress_are_never_served() {
    let dir = TempDir::new().unwrap();
    let options = DirectoryOptions {
        writable: true,
        max_size: None,
        ttl: None,
    };
    let backend = DirectoryBackend::open(dir.path(), options).unwrap();
    let mut fill = backend.put("/object", 4).unwrap().unwrap();
    fill.write(b"ab").unwrap();
    let temp_names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.starts_with(FILL_PREFIX))
        .collect();
    assert_eq!(temp_names.len(), 1);
    assert!(backend
        .get(&format!("/{}", temp_names[0]))
        .unwrap()
        .is_none());
    assert!(backend
        .put(&format!("/{FILL_PREFIX}x"), 1)
        .unwrap()
        .is_none());
    fill.write(b"cd").unwrap();
    fill.commit().unwrap();
    assert_eq!(get_bytes(&backend, "/object").unwrap(), b"abcd");
    let leftovers = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|entry| {
            let name = entry.as_ref().unwrap().file_name();
            name.to_string_lossy().starts_with(FILL_PREFIX)
        })
        .count();
    assert_eq!(leftovers, 0, "the temp file was renamed into place");
}

#[test]
fn stale_fills_are_removed_at_open() {
    let dir = TempDir::new().unwrap();
    let stale = dir.path().join(format!("{FILL_PREFIX}crashed"));
    std::fs::write(&stale, b"partial").unwrap();
    let read_only = DirectoryBackend::open(dir.path(), DirectoryOptions::default()).unwrap();
    assert_eq!(read_only.stats().objects, 0);
    assert!(stale.exists(), "a read-only open changes nothing");
    let options = DirectoryOptions {
        writable: true,
        max_size: None,
        ttl: None,
    };
    let _writable = DirectoryBackend::open(dir.path(), options).unwrap();
    assert!(!stale.exists());
}

#[test]
fn writable_root_evicts_least_recently_used_files_beyond_max_size() {
    let dir = TempDir::new().unwrap();
    // Pre-existing files count toward max_size.
    std::fs::write(dir.path().join("old"), vec![1; 400]).unwrap();
    let options = DirectoryOptions {
        writable: true,
        max_size: Some(1000),
        ttl: None,
    };
    let backend = DirectoryBackend::open(dir.path(), options).unwrap();
    let stats = backend.stats();
    assert_eq!(
        (stats.objects, stats.bytes, stats.capacity),
        (1, 400, Some(1000))
    );

    put_one(&backend, "/d/a", &[2; 300]).unwrap();
    put_one(&backend, "/d/b", &[3; 300]).unwrap();
    // Use /old so that /d/a is the least recently used.
    let held = backend.get("/old").unwrap().unwrap();
    let held_a = backend.get("/d/a").unwrap().unwrap();
    assert!(backend.get("/old").unwrap().is_some());
    put_one(&backend, "/c", &[4; 300]).unwrap();
    assert!(
        backend.get("/d/b").unwrap().is_none(),
        "/d/b was the coldest"
    );
    assert!(!dir.path().join("d/b").exists());
    let stats = backend.stats();
    assert_eq!(stats.bytes, 1000);
    assert_eq!(stats.evictions, 1);

    put_one(&backend, "/e", &[5; 500]).unwrap();
    assert!(backend.stats().bytes <= 1000);
    assert!(backend.get("/e").unwrap().is_some());
    // An evicted file that a transfer holds still reads whole.
    assert!(!dir.path().join("old").exists() || !dir.path().join("d/a").exists());
    assert_eq!(read_all(held.as_ref(), 100), vec![1; 400]);
    assert_eq!(read_all(held_a.as_ref(), 100), vec![2; 300]);
    // Larger than the bound: declined.
    assert!(backend.put("/huge", 1001).unwrap().is_none());
}

#[test]
fn writable_root_over_its_bound_at_open_evicts_the_oldest() {
    let dir = TempDir::new().unwrap();
    for name in ["one", "two", "three"] {
        std::fs::write(dir.path().join(name), vec![0; 100]).unwrap();
    }
    let options = DirectoryOptions {
        writable: true,
        max_size: Some(250),
        ttl: None,
    };
    let backend = DirectoryBackend::open(dir.path(), options).unwrap();
    let stats = backend.stats();
    assert_eq!((stats.objects, stats.bytes, stats.evictions), (2, 200, 1));
}

#[test]
fn puts_cannot_escape_the_root() {
    let tree = Escape::new();
    symlink(tree.outer.path(), tree.root().join("dir-out")).unwrap();
    let options = DirectoryOptions {
        writable: true,
        max_size: None,
        ttl: None,
    };
    let backend = DirectoryBackend::open(&tree.root(), options).unwrap();
    for path in ["/../evil", "//evil", "/a/../../evil"] {
        assert!(backend.put(path, 1).unwrap().is_none(), "{path}");
    }
    // A parent that is a symlink out of the root fails at commit, and nothing is written.
    let mut fill = backend.put("/dir-out/evil", 4).unwrap().unwrap();
    fill.write(b"evil").unwrap();
    assert!(matches!(fill.commit(), Err(Error::Io { .. })));
    assert!(!tree.outer.path().join("evil").exists());
}

#[test]
fn read_only_backends_decline_puts_and_bad_configs_are_errors() {
    let dir = TempDir::new().unwrap();
    let backend = DirectoryBackend::open(dir.path(), DirectoryOptions::default()).unwrap();
    assert!(backend.put("/x", 1).unwrap().is_none());
    let bad = [
        BackendConfig::Directory {
            root: None,
            content: None,
            writable: false,
            max_size: None,
            ttl: None,
        },
        BackendConfig::Directory {
            root: Some(dir.path().into()),
            content: Some(dir.path().join("c")),
            writable: false,
            max_size: None,
            ttl: None,
        },
        BackendConfig::Directory {
            root: None,
            content: Some(dir.path().join("c")),
            writable: true,
            max_size: None,
            ttl: None,
        },
        BackendConfig::Directory {
            root: Some(dir.path().into()),
            content: None,
            writable: false,
            max_size: Some(10),
            ttl: None,
        },
    ];
    for config in bad {
        assert!(
            matches!(cache_backends::open_backend(&config), Err(Error::Config(_))),
            "{config:?}"
        );
    }
    let missing = dir.path().join("missing");
    let error = DirectoryBackend::open(&missing, DirectoryOptions::default())
        .err()
        .unwrap();
    assert!(error.to_string().contains("missing"), "{error}");
}

#[test]
fn listing_errors_name_the_line() {
    let dir = TempDir::new().unwrap();
    let listing = dir.path().join("content.txt");
    std::fs::write(&listing, "/ok file\nno-slash file\n").unwrap();
    let error = DirectoryBackend::open_listing(&listing, None)
        .err()
        .unwrap();
    assert!(error.to_string().contains("line 2"), "{error}");
    std::fs::write(&listing, "/only-a-path\n").unwrap();
    assert!(DirectoryBackend::open_listing(&listing, None).is_err());
}
