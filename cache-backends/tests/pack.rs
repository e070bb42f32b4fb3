//! The pack backend and builder: round trips, and damage caught at open or before serving.

mod common;

use std::os::unix::fs::{symlink, FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

use cache_backends::pack::format;
use cache_backends::{build_pack, verify_pack, CacheBackend, Error, PackBackend};
use common::{
    fixture, get_bytes, overwrite_in_place, pattern, truncate_in_place, wait_ready,
    wait_unavailable, write_pack_file, write_tree,
};
use tempfile::TempDir;

/// 100 MiB of binary bytes, each MiB different (quicker than 100 MiB of random bytes).
fn hundred_mib() -> Vec<u8> {
    let block = pattern(1 << 20, 11);
    let mut big = Vec::with_capacity(100 << 20);
    for mib in 0..100u64 {
        big.extend_from_slice(&mib.to_le_bytes());
        big.extend_from_slice(&block[8..]);
    }
    big
}

fn build_fixture(dir: &TempDir) -> PathBuf {
    let tree = dir.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    write_tree(&tree, &fixture());
    let pack = dir.path().join("small.pack");
    build_pack(&tree, &pack).unwrap();
    pack
}

fn open_error(path: &Path) -> String {
    match PackBackend::open(path) {
        Ok(_) => panic!("{} opened", path.display()),
        Err(error @ Error::CorruptPack { .. }) => {
            let message = error.to_string();
            assert!(message.contains(&path.display().to_string()), "{message}");
            message
        }
        Err(other) => panic!("not a CorruptPack error: {other}"),
    }
}

#[test]
fn a_tree_with_empty_binary_and_100_mib_files_round_trips() {
    let dir = TempDir::new().unwrap();
    let tree = dir.path().join("tree");
    let mut objects = fixture();
    let big = hundred_mib();
    objects.push(("/big/hundred-mib.bin", big.clone()));
    objects.push(("/big/after-big", b"x".to_vec()));
    objects.push(("/zero/also-empty", Vec::new()));
    std::fs::create_dir(&tree).unwrap();
    write_tree(&tree, &objects);
    let pack_path = dir.path().join("out.pack");
    let report = build_pack(&tree, &pack_path).unwrap();
    assert_eq!(report.objects, objects.len() as u64);
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);

    let pack = PackBackend::open(&pack_path).unwrap();
    let listed: Vec<_> = pack.objects().collect();
    let mut expected_paths: Vec<_> = objects.iter().map(|(path, _)| path.to_string()).collect();
    expected_paths.sort();
    let listed_paths: Vec<_> = listed.iter().map(|object| object.path.clone()).collect();
    assert_eq!(listed_paths, expected_paths);
    for object in &listed {
        assert_eq!(object.offset % format::PAGE_SIZE, 0, "{}", object.path);
    }
    for (path, bytes) in &objects {
        assert_eq!(get_bytes(&pack, path).as_ref(), Some(bytes), "{path}");
    }
    let object = pack.get("/big/hundred-mib.bin").unwrap().unwrap();
    let mut tail = Vec::new();
    object.copy_to((100 << 20) - 10, 10, &mut tail).unwrap();
    assert_eq!(tail, &big[(100 << 20) - 10..]);
    let stats = pack.stats();
    assert_eq!(stats.objects, objects.len() as u64);
    assert_eq!(
        stats.bytes,
        objects.iter().map(|(_, b)| b.len() as u64).sum::<u64>()
    );
    let verified = verify_pack(&pack_path).unwrap();
    assert!(verified.problems.is_empty(), "{:?}", verified.problems);
}

#[test]
fn every_flipped_byte_of_header_index_and_footer_is_caught_at_open() {
    let dir = TempDir::new().unwrap();
    let pack = build_fixture(&dir);
    let original = std::fs::read(&pack).unwrap();
    let len = original.len();
    let footer_start = len - format::FOOTER_LEN as usize;
    let index_offset =
        u64::from_le_bytes(original[footer_start..footer_start + 8].try_into().unwrap());
    let mut positions: Vec<usize> = (0..format::HEADER_LEN as usize).collect();
    positions.extend(index_offset as usize..len);
    assert!(positions.len() > 4096 + 48 + 5 * 22);
    // One copy patched in place (pwrite), not rewritten: truncating and rewriting a file
    // thousands of times makes ext4 flush it each time.
    let damaged = dir.path().join("damaged.pack");
    write_pack_file(&damaged, &original);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&damaged)
        .unwrap();
    for &position in &positions {
        for flip in [0x01u8, 0xff] {
            file.write_all_at(&[original[position] ^ flip], position as u64)
                .unwrap();
            let message = open_error(&damaged);
            assert!(!message.is_empty(), "byte {position}");
        }
        file.write_all_at(&original[position..=position], position as u64)
            .unwrap();
    }
    PackBackend::open(&damaged).unwrap();
    PackBackend::open(&pack).unwrap();
}

#[test]
fn truncation_at_every_4_kib_boundary_is_caught() {
    let dir = TempDir::new().unwrap();
    let pack = build_fixture(&dir);
    let original = std::fs::read(&pack).unwrap();
    assert!(original.len() > 4 * 4096);
    let truncated = dir.path().join("truncated.pack");
    let mut cuts: Vec<usize> = (0..original.len()).step_by(4096).collect();
    cuts.extend([
        1,
        original.len() - 1,
        original.len() - format::FOOTER_LEN as usize,
    ]);
    for cut in cuts {
        write_pack_file(&truncated, &original[..cut]);
        open_error(&truncated);
    }
}

#[test]
fn other_versions_and_other_files_are_named_errors() {
    let dir = TempDir::new().unwrap();
    let pack = build_fixture(&dir);
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[8..12].copy_from_slice(&3u32.to_le_bytes());
    let other_version = dir.path().join("v3.pack");
    write_pack_file(&other_version, &bytes);
    assert!(open_error(&other_version).contains("version 3"));

    let text = dir.path().join("text.pack");
    write_pack_file(&text, "not a pack at all\n".repeat(1000).as_bytes());
    assert!(open_error(&text).contains("magic"));
    let empty = dir.path().join("empty.pack");
    write_pack_file(&empty, b"");
    open_error(&empty);
    assert!(matches!(
        PackBackend::open(&dir.path().join("missing.pack")),
        Err(Error::Io { .. })
    ));
}

#[test]
fn a_damaged_object_is_never_served() {
    let dir = TempDir::new().unwrap();
    let pack_path = build_fixture(&dir);
    let pack = PackBackend::open(&pack_path).unwrap();
    let target = pack
        .objects()
        .find(|object| object.path == "/dir/sub/binary.bin")
        .unwrap();
    drop(pack);
    let mut bytes = std::fs::read(&pack_path).unwrap();
    bytes[(target.offset + 5000) as usize] ^= 0x40;
    let damaged = dir.path().join("damaged.pack");
    write_pack_file(&damaged, &bytes);

    let pack = PackBackend::open(&damaged).unwrap();
    for _ in 0..2 {
        match pack.get("/dir/sub/binary.bin") {
            Err(Error::CorruptPack { what, .. }) => assert!(what.contains("/dir/sub/binary.bin")),
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("a damaged object was served"),
        }
    }
    assert_eq!(get_bytes(&pack, "/a.txt").unwrap(), b"hello, world\n");
    let report = verify_pack(&damaged).unwrap();
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert!(report.problems[0].contains("/dir/sub/binary.bin"));

    // Non-zero padding between objects is reported by verify (not needed to serve).
    let mut bytes = std::fs::read(&pack_path).unwrap();
    let first_object_end = 4096 + 13; // /a.txt sorts first (after "/" + "a.txt" < "/dir...")
    bytes[first_object_end + 1] = 1;
    let padded = dir.path().join("padding.pack");
    write_pack_file(&padded, &bytes);
    let report = verify_pack(&padded).unwrap();
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert!(report.problems[0].contains("padding"));
}

#[test]
fn build_skips_what_cannot_be_served_and_follows_only_inner_symlinks() {
    let dir = TempDir::new().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("sub/real"), b"real").unwrap();
    std::fs::write(tree.join("has space"), b"x").unwrap();
    std::fs::write(dir.path().join("outside"), b"secret").unwrap();
    symlink("sub/real", tree.join("inner-link")).unwrap();
    symlink("../outside", tree.join("outer-link")).unwrap();
    symlink(dir.path(), tree.join("dir-link")).unwrap();
    let pack_path = dir.path().join("p.pack");
    let report = build_pack(&tree, &pack_path).unwrap();
    let pack = PackBackend::open(&pack_path).unwrap();
    let paths: Vec<_> = pack.objects().map(|object| object.path).collect();
    assert_eq!(paths, ["/inner-link", "/sub/real"]);
    assert_eq!(report.skipped.len(), 3, "{:?}", report.skipped);
    assert_eq!(get_bytes(&pack, "/inner-link").unwrap(), b"real");
}

#[test]
fn build_replaces_the_output_atomically_and_leaves_no_temp_files() {
    let dir = TempDir::new().unwrap();
    let pack_path = build_fixture(&dir);
    let first = PackBackend::open(&pack_path).unwrap();
    // Rebuild from another tree while the first pack is open and mapped.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("only"), b"only").unwrap();
    build_pack(&other, &pack_path).unwrap();
    // The open backend notices the replacement (the old file lost its link) and serves the new
    // pack once refreshed; never a mix of both.
    match first.get("/a.txt") {
        Err(Error::PackChanged { how, .. }) => assert!(how.contains("replaced"), "{how}"),
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("the replaced pack was still served"),
    }
    wait_ready(&first);
    assert_eq!(get_bytes(&first, "/only").unwrap(), b"only");
    assert!(first.get("/a.txt").unwrap().is_none());
    let second = PackBackend::open(&pack_path).unwrap();
    assert_eq!(second.objects().count(), 1);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        names.iter().all(|name| !name.starts_with(".gfpack.")),
        "{names:?}"
    );
    // An empty tree makes a valid, empty pack.
    let empty = dir.path().join("empty-tree");
    std::fs::create_dir(&empty).unwrap();
    let empty_pack = dir.path().join("empty.pack");
    build_pack(&empty, &empty_pack).unwrap();
    assert_eq!(
        std::fs::metadata(&empty_pack).unwrap().len(),
        format::MIN_PACK_LEN
    );
    assert_eq!(PackBackend::open(&empty_pack).unwrap().objects().count(), 0);
}

#[test]
fn a_pack_written_inside_its_tree_does_not_swallow_itself() {
    let dir = TempDir::new().unwrap();
    std::fs::write(dir.path().join("a"), b"a").unwrap();
    let pack_path = dir.path().join("self.pack");
    build_pack(dir.path(), &pack_path).unwrap();
    let report = build_pack(dir.path(), &pack_path).unwrap();
    assert_eq!(report.objects, 1, "{report:?}");
    let pack = PackBackend::open(&pack_path).unwrap();
    let paths: Vec<_> = pack.objects().map(|object| object.path).collect();
    assert_eq!(paths, ["/a"]);
}

// ---------------------------------------------------------------------------------------------
// A pack changed on disk while served (docs/pack-format.md, "Changes while served").

const BIG: &str = "/big/three-mib.bin";

/// The fixture plus a 3 MiB object, packed; returns the pack and the objects.
fn build_served(dir: &TempDir) -> (PathBuf, Vec<(&'static str, Vec<u8>)>) {
    let tree = dir.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    let mut objects = fixture();
    objects.push((BIG, pattern(3 << 20, 21)));
    write_tree(&tree, &objects);
    let pack = dir.path().join("served.pack");
    build_pack(&tree, &pack).unwrap();
    (pack, objects)
}

fn offset_of(pack: &PackBackend, path: &str) -> u64 {
    pack.objects()
        .find(|object| object.path == path)
        .unwrap()
        .offset
}

/// Reads the whole object in 512 KiB chunks: `Ok(bytes)` or the first error.
fn try_read(backend: &dyn CacheBackend, path: &str) -> Result<Option<Vec<u8>>, Error> {
    let Some(object) = backend.get(path)? else {
        return Ok(None);
    };
    let mut body = Vec::new();
    let mut offset = 0;
    while offset < object.len() {
        let step = (512 << 10).min(object.len() - offset) as usize;
        let mut chunk = Vec::new();
        object.copy_to(offset, step, &mut chunk)?;
        body.extend_from_slice(&chunk);
        offset += step as u64;
    }
    Ok(Some(body))
}

#[test]
fn an_object_overwritten_in_place_after_being_served_is_never_served_wrong() {
    let dir = TempDir::new().unwrap();
    let (pack_path, objects) = build_served(&dir);
    let big = &objects.last().unwrap().1;
    let pack = PackBackend::open_for_serving(&pack_path);
    assert_eq!(try_read(&pack, BIG).unwrap().as_ref(), Some(big));
    let offset = offset_of(&pack, BIG);

    // dd bs=4096 seek=... conv=notrunc: 4 KiB inside the object that was served (and whose
    // checksum was therefore checked already).
    overwrite_in_place(&pack_path, offset + (1 << 20), &pattern(4096, 99));
    match try_read(&pack, BIG) {
        Err(Error::PackChanged { how, .. }) => assert!(how.contains("ctime"), "{how}"),
        Err(other) => panic!("{other}"),
        Ok(body) => panic!(
            "served after the change: {} bytes",
            body.map_or(0, |b| b.len())
        ),
    }
    assert!(matches!(pack.get("/a.txt"), Err(Error::PackChanged { .. })));
    // Re-opened and verified again: the damaged object is refused, the others are served.
    wait_ready(&pack);
    for _ in 0..5 {
        match try_read(&pack, BIG) {
            Err(Error::CorruptPack { what, .. }) => assert!(what.contains(BIG), "{what}"),
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("the damaged object was served"),
        }
    }
    for (path, bytes) in objects.iter().filter(|(path, _)| *path != BIG) {
        assert_eq!(
            try_read(&pack, path).unwrap().as_ref(),
            Some(bytes),
            "{path}"
        );
    }
}

#[test]
fn a_transfer_under_way_fails_at_its_next_chunk_after_a_change() {
    let dir = TempDir::new().unwrap();
    let (pack_path, objects) = build_served(&dir);
    let big = &objects.last().unwrap().1;
    let pack = PackBackend::open(&pack_path).unwrap();
    let object = pack.get(BIG).unwrap().unwrap();
    let mut first = Vec::new();
    object.copy_to(0, 512 << 10, &mut first).unwrap();
    assert_eq!(first, big[..512 << 10]);
    // Change bytes the transfer has not copied yet.
    overwrite_in_place(&pack_path, offset_of(&pack, BIG) + (2 << 20), &[0xee; 4096]);
    let mut rest = Vec::new();
    let copied = object.copy_to(2 << 20, 512 << 10, &mut rest);
    assert!(
        matches!(copied, Err(Error::PackChanged { .. })),
        "{copied:?}"
    );
}

#[test]
fn a_pack_truncated_in_place_is_unavailable_until_it_is_restored_by_rename() {
    let dir = TempDir::new().unwrap();
    let (pack_path, objects) = build_served(&dir);
    let original = std::fs::read(&pack_path).unwrap();
    let pack = PackBackend::open_for_serving(&pack_path);
    assert_eq!(pack.refresh(), cache_backends::Availability::Ready);
    let object = pack.get(BIG).unwrap().unwrap();
    let big_offset = offset_of(&pack, BIG);

    // Cut the pack inside the big object: the map no longer covers its end. The stat check
    // before the copy sees the new size, so the copy fails instead of raising SIGBUS.
    truncate_in_place(&pack_path, big_offset + (1 << 20));
    let mut tail = Vec::new();
    let copied = object.copy_to((3 << 20) - 4096, 4096, &mut tail);
    match copied {
        Err(Error::PackChanged { how, .. }) => assert!(how.contains("size"), "{how}"),
        other => panic!("{other:?}"),
    }
    let why = wait_unavailable(&pack);
    assert!(why.contains(&pack_path.display().to_string()), "{why}");
    assert!(why.contains("truncated") || why.contains("footer"), "{why}");
    assert!(matches!(
        pack.get("/a.txt"),
        Err(Error::PackUnavailable { .. }) | Err(Error::PackChanged { .. })
    ));
    // Still unavailable at the next tries (once a second), until a sound pack is renamed in.
    assert_ne!(pack.refresh(), cache_backends::Availability::Ready);
    write_pack_file(&pack_path, &original);
    std::fs::set_permissions(&pack_path, std::fs::Permissions::from_mode(0o444)).unwrap();
    wait_ready(&pack);
    for (path, bytes) in &objects {
        assert_eq!(
            try_read(&pack, path).unwrap().as_ref(),
            Some(bytes),
            "{path}"
        );
    }
}

#[test]
fn a_pack_replaced_by_rename_is_picked_up_without_a_request() {
    let dir = TempDir::new().unwrap();
    let (pack_path, _) = build_served(&dir);
    let pack = PackBackend::open_for_serving(&pack_path);
    assert_eq!(get_bytes(&pack, "/a.txt").unwrap(), b"hello, world\n");
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("a.txt"), b"the new pack\n").unwrap();
    build_pack(&other, &pack_path).unwrap();
    // No get in between: the path is stat'ed once a second.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        pack.refresh();
        if let Ok(Some(bytes)) = try_read(&pack, "/a.txt") {
            if bytes == b"the new pack\n" {
                break;
            }
            assert_eq!(
                bytes, b"hello, world\n",
                "neither the old nor the new bytes"
            );
        }
        assert!(std::time::Instant::now() < deadline, "never picked up");
        std::thread::sleep(std::time::Duration::from_millis(10)); // polling, not syncing
    }
    assert_eq!(pack.objects().count(), 1);
}

#[test]
fn a_pack_group_or_others_can_write_is_refused_saying_what_to_do() {
    let dir = TempDir::new().unwrap();
    let (pack_path, _) = build_served(&dir);
    let shown = pack_path.display().to_string();
    for mode in [0o664, 0o646, 0o666] {
        std::fs::set_permissions(&pack_path, std::fs::Permissions::from_mode(mode)).unwrap();
        for error in [
            PackBackend::open(&pack_path).err(),
            verify_pack(&pack_path).err(),
            cache_backends::check_pack(&pack_path).err(),
        ] {
            let error = error.expect("a writable pack was accepted");
            assert!(
                matches!(error, Error::PackWritable { mode: m, .. } if m == mode),
                "{error}"
            );
            let message = error.to_string();
            assert!(message.contains(&shown), "{message}");
            assert!(message.contains(&format!("{mode:04o}")), "{message}");
            assert!(message.contains("chmod go-w"), "{message}");
        }
    }
    // Served from once fixed, without a restart.
    let pack = PackBackend::open_for_serving(&pack_path);
    assert!(wait_unavailable(&pack).contains("chmod go-w"));
    std::fs::set_permissions(&pack_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    wait_ready(&pack);
    assert_eq!(get_bytes(&pack, "/a.txt").unwrap(), b"hello, world\n");
}

#[test]
fn a_built_pack_is_read_only_for_everyone() {
    let dir = TempDir::new().unwrap();
    let (pack_path, _) = build_served(&dir);
    let mode = std::fs::metadata(&pack_path).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, cache_backends::pack::PACK_MODE);
    assert_eq!(mode, 0o444);
}

#[test]
fn a_missing_pack_is_unavailable_until_it_appears() {
    let dir = TempDir::new().unwrap();
    let pack_path = dir.path().join("later.pack");
    let pack = PackBackend::open_for_serving(&pack_path);
    let why = wait_unavailable(&pack);
    assert!(why.contains(&pack_path.display().to_string()), "{why}");
    assert!(matches!(
        pack.get("/a.txt"),
        Err(Error::PackUnavailable { .. })
    ));
    assert_eq!(pack.stats().objects, 0);
    let tree = dir.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    write_tree(&tree, &fixture());
    build_pack(&tree, &pack_path).unwrap();
    wait_ready(&pack);
    assert_eq!(get_bytes(&pack, "/a.txt").unwrap(), b"hello, world\n");
}

#[test]
fn check_pack_names_the_file_and_the_damage() {
    let dir = TempDir::new().unwrap();
    let (pack_path, objects) = build_served(&dir);
    let report = cache_backends::check_pack(&pack_path).unwrap();
    assert_eq!(report.objects, objects.len() as u64);
    assert!(report.problems.is_empty());
    let shown = pack_path.display().to_string();

    let offset = offset_of(&PackBackend::open(&pack_path).unwrap(), BIG);
    let mut bytes = std::fs::read(&pack_path).unwrap();
    bytes[offset as usize + 12345] ^= 1;
    write_pack_file(&pack_path, &bytes);
    match cache_backends::check_pack(&pack_path) {
        Err(error @ Error::CorruptPack { .. }) => {
            let message = error.to_string();
            assert!(message.contains(&shown), "{message}");
            assert!(message.contains(BIG), "{message}");
            assert!(message.contains("checksum mismatch"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    truncate_in_place(&pack_path, offset + 100);
    match cache_backends::check_pack(&pack_path) {
        Err(error @ Error::CorruptPack { .. }) => {
            assert!(error.to_string().contains(&shown), "{error}");
        }
        other => panic!("{other:?}"),
    }
}
