//! Object metadata in every backend: stored with a fill, given back with the object, replaced
//! for the same version only, removed by a purge, and made up for content put in place.

mod common;

use std::time::{Duration, SystemTime};

use cache_backends::{
    build_pack, build_pack_with, BuildOptions, CacheBackend, DirectoryBackend, DirectoryOptions,
    MemoryBackend, ObjectMeta, ObjectVersion, PackBackend,
};
use common::{pattern, write_tree};
use tempfile::TempDir;

fn origin_meta(etag: &str) -> ObjectMeta {
    ObjectMeta {
        fresh_for: Some(60),
        etag: Some(etag.into()),
        content_type: Some("text/plain".into()),
        ..ObjectMeta::fresh_forever(SystemTime::now())
    }
}

fn fill(backend: &dyn CacheBackend, path: &str, bytes: &[u8], meta: &ObjectMeta) {
    let mut fill = backend
        .put_with_meta(path, bytes.len() as u64, Some(meta))
        .unwrap()
        .expect("accepted");
    fill.write(bytes).unwrap();
    fill.commit().unwrap();
}

fn meta_of(backend: &dyn CacheBackend, path: &str) -> Option<(ObjectMeta, ObjectVersion)> {
    let object = backend.get(path).unwrap()?;
    let meta = ObjectMeta::decode(&object.encoded_meta()).expect("decodes");
    Some((meta, object.version()))
}

fn writable(dir: &TempDir) -> DirectoryBackend {
    let options = DirectoryOptions {
        writable: true,
        max_size: Some(1 << 30),
        ttl: None,
    };
    DirectoryBackend::open(dir.path(), options).unwrap()
}

/// What every backend that stores fills must do with metadata.
fn stores_replaces_and_purges(backend: &dyn CacheBackend) {
    fill(backend, "/a.txt", b"alpha", &origin_meta("\"1\""));
    let (meta, version) = meta_of(backend, "/a.txt").unwrap();
    assert_eq!(
        meta,
        origin_meta("\"1\"").clone_with_stored_at(meta.stored_at)
    );

    let refreshed = origin_meta("\"2\"");
    let other = ObjectVersion::from_raw(version.as_raw() ^ 1);
    assert!(!backend.update_meta("/a.txt", other, &refreshed).unwrap());
    assert_eq!(
        meta_of(backend, "/a.txt").unwrap().0.etag.as_deref(),
        Some("\"1\"")
    );
    assert!(backend.update_meta("/a.txt", version, &refreshed).unwrap());
    let (meta, same_version) = meta_of(backend, "/a.txt").unwrap();
    assert_eq!(meta.etag.as_deref(), Some("\"2\""));
    assert_eq!(
        same_version, version,
        "a metadata update keeps the bytes' version"
    );
    assert!(!backend
        .update_meta("/missing", version, &refreshed)
        .unwrap());

    for path in ["/dir/one", "/dir/two", "/dir/sub/three", "/dirt"] {
        fill(backend, path, &pattern(100, 1), &origin_meta("\"x\""));
    }
    assert_eq!(backend.purge("/a.txt", false).unwrap(), 1);
    assert!(backend.get("/a.txt").unwrap().is_none());
    assert_eq!(backend.purge("/a.txt", false).unwrap(), 0);
    assert_eq!(backend.purge("/dir/", true).unwrap(), 3);
    assert!(backend.get("/dir/one").unwrap().is_none());
    assert!(backend.get("/dir/sub/three").unwrap().is_none());
    assert!(
        backend.get("/dirt").unwrap().is_some(),
        "a prefix ends where it says"
    );
}

trait WithStoredAt {
    fn clone_with_stored_at(&self, stored_at: u64) -> ObjectMeta;
}

impl WithStoredAt for ObjectMeta {
    fn clone_with_stored_at(&self, stored_at: u64) -> ObjectMeta {
        ObjectMeta {
            stored_at,
            ..self.clone()
        }
    }
}

#[test]
fn memory_stores_replaces_and_purges_metadata() {
    let backend = MemoryBackend::new(16 << 20, 1 << 20).unwrap();
    stores_replaces_and_purges(&backend);
}

#[test]
fn writable_directory_stores_replaces_and_purges_metadata() {
    let dir = TempDir::new().unwrap();
    stores_replaces_and_purges(&writable(&dir));
}

#[test]
fn writable_directory_metadata_survives_a_restart() {
    let dir = TempDir::new().unwrap();
    fill(
        &writable(&dir),
        "/kept/a.txt",
        b"alpha",
        &origin_meta("\"1\""),
    );
    let reopened = writable(&dir);
    let (meta, _) = meta_of(&reopened, "/kept/a.txt").unwrap();
    assert_eq!(meta.etag.as_deref(), Some("\"1\""));
    assert_eq!(meta.fresh_for, Some(60));
    // The sidecars are the backend's own: never served, never counted as objects.
    assert!(reopened.get("/.gfcache-meta/kept/a.txt").unwrap().is_none());
    assert_eq!(reopened.stats().objects, 1);
}

#[test]
fn a_file_replaced_behind_the_backend_does_not_take_the_old_metadata() {
    let dir = TempDir::new().unwrap();
    let backend = writable(&dir);
    fill(&backend, "/a.txt", b"alpha", &origin_meta("\"1\""));
    // An operator replaces the file by rename: another inode.
    let replacement = dir.path().join("replacement");
    std::fs::write(&replacement, b"beta!").unwrap();
    std::fs::rename(&replacement, dir.path().join("a.txt")).unwrap();
    let (meta, _) = meta_of(&backend, "/a.txt").unwrap();
    assert_ne!(meta.etag.as_deref(), Some("\"1\""));
    assert_eq!(meta.fresh_for, None, "content put in place, without a ttl");
    assert!(meta.last_modified.is_some());
}

#[test]
fn a_damaged_sidecar_is_ignored_not_fatal() {
    let dir = TempDir::new().unwrap();
    let backend = writable(&dir);
    fill(&backend, "/a.txt", b"alpha", &origin_meta("\"1\""));
    std::fs::write(dir.path().join(".gfcache-meta/a.txt"), b"garbage").unwrap();
    let (meta, _) = meta_of(&backend, "/a.txt").unwrap();
    assert_ne!(meta.etag.as_deref(), Some("\"1\""));
}

#[test]
fn read_only_content_gets_last_modified_an_etag_and_the_ttl() {
    let dir = TempDir::new().unwrap();
    write_tree(dir.path(), &[("/page.html", b"<p>hi</p>".to_vec())]);
    let options = DirectoryOptions {
        ttl: Some(Duration::from_secs(300)),
        ..DirectoryOptions::default()
    };
    let backend = DirectoryBackend::open(dir.path(), options).unwrap();
    let (meta, version) = meta_of(&backend, "/page.html").unwrap();
    assert_eq!(meta.fresh_for, Some(300));
    assert!(meta.etag.is_some());
    let modified = std::fs::metadata(dir.path().join("page.html"))
        .unwrap()
        .modified()
        .unwrap();
    let secs = modified
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert_eq!(meta.last_modified, Some(secs));
    assert_eq!(
        meta.stored_at, secs,
        "fresh for the ttl from the file's modification"
    );
    assert!(
        meta.local_etag,
        "an ETag of our own, never sent to an origin"
    );
    // Read-only content is refreshed in this process only, and never purged.
    let other = ObjectVersion::from_raw(version.as_raw() ^ 1);
    assert!(!backend
        .update_meta("/page.html", other, &origin_meta("\"9\""))
        .unwrap());
    assert!(backend
        .update_meta("/page.html", version, &origin_meta("\"9\""))
        .unwrap());
    assert_eq!(
        meta_of(&backend, "/page.html").unwrap().0.etag.as_deref(),
        Some("\"9\"")
    );
    assert_eq!(backend.purge("/", true).unwrap(), 0);
    assert!(backend.get("/page.html").unwrap().is_some());
}

#[test]
fn a_pack_built_with_a_ttl_gives_each_object_its_type_mtime_and_lifetime() {
    let dir = TempDir::new().unwrap();
    let tree = dir.path().join("tree");
    write_tree(
        &tree,
        &[
            ("/docs/a.css", b"body{}".to_vec()),
            ("/b.bin", pattern(5000, 3)),
        ],
    );
    let pack_path = dir.path().join("content.pack");
    let options = BuildOptions {
        ttl: Some(Duration::from_secs(600)),
    };
    build_pack_with(&tree, &pack_path, &options).unwrap();
    let pack = PackBackend::open(&pack_path).unwrap();
    let (css, _) = meta_of(&pack, "/docs/a.css").unwrap();
    assert_eq!(css.fresh_for, Some(600));
    assert_eq!(css.content_type.as_deref(), Some("text/css"));
    let source_mtime = std::fs::metadata(tree.join("docs/a.css"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(
        css.last_modified,
        Some(cache_backends::meta::unix_secs(source_mtime))
    );
    let built = std::fs::metadata(&pack_path).unwrap().modified().unwrap();
    assert_eq!(css.stored_at, cache_backends::meta::unix_secs(built));
    let (bin, _) = meta_of(&pack, "/b.bin").unwrap();
    assert_eq!(
        bin.content_type.as_deref(),
        Some("application/octet-stream")
    );
    // Without --ttl, nothing goes stale.
    build_pack(&tree, &pack_path).unwrap();
    let pack = PackBackend::open(&pack_path).unwrap();
    assert_eq!(meta_of(&pack, "/docs/a.css").unwrap().0.fresh_for, None);
    // A pack never changes: a refresh lives in the process, for that version only.
    let reopened = PackBackend::open(&pack_path).unwrap();
    let (_, current) = meta_of(&reopened, "/docs/a.css").unwrap();
    let other = ObjectVersion::from_raw(current.as_raw() ^ 1);
    assert!(!reopened
        .update_meta("/docs/a.css", other, &origin_meta("\"x\""))
        .unwrap());
    assert!(reopened
        .update_meta("/docs/a.css", current, &origin_meta("\"x\""))
        .unwrap());
    assert_eq!(
        meta_of(&reopened, "/docs/a.css").unwrap().0.etag.as_deref(),
        Some("\"x\"")
    );
}
