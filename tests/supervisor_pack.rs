//! A pack changed on disk under a running gfsupervisor, black box: clients never get wrong
//! bytes, the cache does not crash-loop, and it serves again once the pack is restored.

mod common;

use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use common::*;

const BIG: &str = "/video/four-mib.bin";

/// What the client loop saw.
#[derive(Default)]
struct Tally {
    correct: AtomicU64,
    wrong: AtomicU64,
    failed: AtomicU64,
}

impl Tally {
    fn answers(&self) -> u64 {
        self.correct.load(Ordering::Relaxed)
            + self.wrong.load(Ordering::Relaxed)
            + self.failed.load(Ordering::Relaxed)
    }
}

/// Fetches `paths` in a loop until `stop`, comparing every body with the expected bytes.
fn client_loop(
    proxy: std::net::SocketAddr,
    files: Arc<Vec<(String, Vec<u8>)>>,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let wanted: Vec<&(String, Vec<u8>)> = files
            .iter()
            .filter(|(path, _)| path == BIG || path == "/img/big.bin" || path == "/hello.txt")
            .collect();
        while !stop.load(Ordering::Relaxed) {
            for (path, body) in &wanted {
                match getfile(proxy, path) {
                    Ok(Reply::Ok(got)) if got == *body => &tally.correct,
                    Ok(Reply::Ok(_)) => &tally.wrong,
                    // A transfer cut short (the OK header had gone out) or an ERROR.
                    _ => &tally.failed,
                }
                .fetch_add(1, Ordering::Relaxed);
            }
        }
    })
}

fn pack_offset(pack: &Path, path: &str) -> u64 {
    cache_backends::PackBackend::open(pack)
        .expect("open pack")
        .objects()
        .find(|object| object.path == path)
        .expect("object in pack")
        .offset
}

/// Opens the pack for writing in place (as root its read-only mode does not stop that; as
/// another user the test makes it writable first, as a careless operator would).
fn open_in_place(pack: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .write(true)
        .open(pack)
        .or_else(|_| {
            std::fs::set_permissions(pack, std::fs::Permissions::from_mode(0o644))?;
            std::fs::OpenOptions::new().write(true).open(pack)
        })
        .expect("open the pack for writing")
}

fn wait_answers(tally: &Tally, more: u64) {
    let target = tally.answers() + more;
    wait_for("more client answers", DEADLINE, || {
        (tally.answers() >= target).then_some(())
    });
}

#[test]
fn a_pack_modified_or_truncated_in_place_never_serves_wrong_bytes() {
    let content = tempfile::tempdir().unwrap();
    let mut files = make_content(content.path());
    let big: Vec<u8> = (0..4u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::create_dir_all(content.path().join("video")).unwrap();
    std::fs::write(content.path().join(&BIG[1..]), &big).unwrap();
    files.push((BIG.to_string(), big));
    let files = Arc::new(files);
    let work = tempfile::tempdir().unwrap();
    let pack = work.path().join("content.pack");
    cache_backends::build_pack(content.path(), &pack).unwrap();
    let original = std::fs::read(&pack).unwrap();
    let origin = Origin::serve(content.path());

    let mut setup = Setup::new(Backend::Pack(pack.clone()));
    setup.origin = Some(origin.url());
    setup.caches = 1;
    let mut run = Run::start(setup);

    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let client = client_loop(
        run.proxy,
        Arc::clone(&files),
        Arc::clone(&tally),
        Arc::clone(&stop),
    );
    wait_answers(&tally, 30);
    assert_eq!(
        origin.hits.load(Ordering::Relaxed),
        0,
        "all served by the pack"
    );

    // 1. dd bs=4096 conv=notrunc inside the big object, already served many times.
    let offset = pack_offset(&pack, BIG);
    open_in_place(&pack)
        .write_all_at(&[0x5a; 4096], offset + (2 << 20))
        .unwrap();
    // The damaged object now comes from the origin; the others still from the pack.
    wait_for("fallback to the origin", DEADLINE, || {
        (origin.hits.load(Ordering::Relaxed) > 0).then_some(())
    });
    wait_answers(&tally, 30);
    run.assert_alive();

    // 2. Truncated in place: the cache goes unavailable (its paths go to the origin).
    open_in_place(&pack)
        .set_len(original.len() as u64 / 3)
        .unwrap();
    wait_for("the cache to be unavailable", DEADLINE, || {
        (run.child("cache", 0)["state"] == "unavailable").then_some(())
    });
    wait_answers(&tally, 30);
    let cache = run.child("cache", 0);
    assert_ne!(cache["state"], "quarantined", "{cache}");

    // 3. Restored by rename: served from the pack again, without a restart.
    let restored = work.path().join("restored.pack");
    std::fs::write(&restored, &original).unwrap();
    std::fs::set_permissions(&restored, std::fs::Permissions::from_mode(0o444)).unwrap();
    std::fs::rename(&restored, &pack).unwrap();
    wait_for("the cache to serve again", DEADLINE, || {
        (run.child("cache", 0)["state"] == "running").then_some(())
    });
    wait_answers(&tally, 30);
    stop.store(true, Ordering::Relaxed);
    client.join().unwrap();

    assert_eq!(tally.wrong.load(Ordering::Relaxed), 0, "wrong bytes served");
    let before = origin.hits.load(Ordering::Relaxed);
    for (path, body) in files.iter() {
        assert_eq!(run.get(path), Ok(Reply::Ok(body.clone())), "{path}");
    }
    assert_eq!(
        origin.hits.load(Ordering::Relaxed),
        before,
        "the restored pack serves everything"
    );
    // A truncation between a stat check and a copy can still kill the cache with SIGBUS (the
    // documented window); its restart must then wait, unavailable, not crash-loop.
    let cache = run.child("cache", 0);
    assert!(cache["restarts"].as_u64().unwrap_or(99) <= 1, "{cache}");
    let log = run.log_text();
    assert!(log.contains("modified in place"), "{log}");
    eprintln!(
        "answers: {} correct, {} failed (cut short or error), {} wrong",
        tally.correct.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
        tally.wrong.load(Ordering::Relaxed)
    );
    stop_and_check_nothing_left(run);
}
