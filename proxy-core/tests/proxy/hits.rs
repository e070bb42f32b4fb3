//! Hits from each backend, byte-verified, 0 B to 64 MiB, 32 concurrent clients.

use proxy_core::metrics::Counter;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::thread;

use crate::common::{self, Backend, Rig};

const BIG: &str = "/big/64m.bin";

/// The file set: edge sizes around the 128 KiB chunk, many small files and one 64 MiB object.
fn file_set() -> HashMap<String, Arc<Vec<u8>>> {
    let mut sizes: Vec<(String, usize)> = vec![
        ("/empty".into(), 0),
        ("/one".into(), 1),
        ("/edge/chunk-1".into(), 128 * 1024 - 1),
        ("/edge/chunk".into(), 128 * 1024),
        ("/edge/chunk+1".into(), 128 * 1024 + 1),
        ("/edge/segment".into(), 256 * 1024),
        ("/mid/1m+3".into(), (1 << 20) + 3),
        (BIG.into(), 64 << 20),
    ];
    for i in 0..40 {
        sizes.push((format!("/small/{i}.bin"), 1 + i * 977));
    }
    sizes
        .into_iter()
        .enumerate()
        .map(|(seed, (path, len))| (path, Arc::new(common::content(seed as u64 + 1, len))))
        .collect()
}

/// `make_backend(scratch, root)`: the files are under `root`; `scratch` is for anything else.
fn run_hits(make_backend: impl Fn(&Path, &Path) -> Backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("files");
    let files = file_set();
    common::write_tree(&root, &files);
    let backend = make_backend(dir.path(), &root);
    let rig = Rig::start(16, &[backend.clone(), backend], common::proxy_config(None));
    let addr = rig.addr();

    let mut paths: Vec<String> = files.keys().filter(|p| *p != BIG).cloned().collect();
    paths.sort();
    let files = Arc::new(files);
    let clients: Vec<_> = (0..32)
        .map(|client| {
            let files = Arc::clone(&files);
            let addr = addr.clone();
            let mut order = paths.clone();
            order.rotate_left(client % paths.len());
            thread::spawn(move || {
                let mut fetched = 0u64;
                let mut bytes = 0u64;
                if client < 3 {
                    common::fetch_ok(&addr, BIG, &files[BIG]);
                    fetched += 1;
                    bytes += files[BIG].len() as u64;
                }
                for path in order {
                    common::fetch_ok(&addr, &path, &files[&path]);
                    fetched += 1;
                    bytes += files[&path].len() as u64;
                }
                (fetched, bytes)
            })
        })
        .collect();
    let (mut requests, mut bytes) = (0, 0);
    for client in clients {
        let (n, b) = client.join().expect("client thread");
        requests += n;
        bytes += b;
    }

    assert_eq!(rig.counter(Counter::LookupHits), requests);
    rig.wait_counter(Counter::RequestsOk, requests);
    rig.wait_counter(Counter::ResponseBytes, bytes);
    assert_eq!(rig.counter(Counter::LookupMisses), 0);
    assert_eq!(rig.counter(Counter::Fallbacks), 0);
    assert_eq!(rig.counter(Counter::RequestsAborted), 0);

    // Paths are normalised before lookup; what names nothing is FILE_NOT_FOUND.
    common::fetch_ok(&addr, "/small/../one", &files["/one"]);
    common::fetch_ok(&addr, "//edge/./chunk", &files["/edge/chunk"]);
    common::fetch_status(&addr, "/../one", gfprotocol::Status::FileNotFound);
    common::fetch_status(&addr, "/no/such/file", gfprotocol::Status::FileNotFound);
    rig.wait_counter(Counter::RequestsNotFound, 2);
    rig.wait_pool_full();
}

#[test]
fn hits_from_the_directory_backend() {
    run_hits(|_, root| Backend::Directory(root.to_path_buf()));
}

#[test]
fn hits_from_the_memory_backend() {
    run_hits(|_, root| Backend::MemoryWarm(root.to_path_buf()));
}

#[test]
fn hits_from_the_pack_backend() {
    run_hits(|scratch, root| {
        let pack = scratch.join("content.pack");
        cache_backends::build_pack(root, &pack).expect("build the pack");
        Backend::Pack(pack)
    });
}
