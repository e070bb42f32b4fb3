//! The pack backend and builder: round trips, and damage caught at open or before serving.

mod common;

use std::os::unix::fs::{symlink, FileExt};
use std::path::{Path, PathBuf};

use cache_backends::pack::format;
use cache_backends::{build_pack, verify_pack, CacheBackend, Error, PackBackend};
use common::{fixture, get_bytes, pattern, write_tree};
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
    std::fs::write(&damaged, &original).unwrap();
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
        std::fs::write(&truncated, &original[..cut]).unwrap();
        open_error(&truncated);
    }
}

#[test]
fn other_versions_and_other_files_are_named_errors() {
    let dir = TempDir::new().unwrap();
    let pack = build_fixture(&dir);
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
    let other_version = dir.path().join("v2.pack");
    std::fs::write(&other_version, &bytes).unwrap();
    assert!(open_error(&other_version).contains("version 2"));

    let text = dir.path().join("text.pack");
    std::fs::write(&text, "not a pack at all\n".repeat(1000)).unwrap();
    assert!(open_error(&text).contains("magic"));
    let empty = dir.path().join("empty.pack");
    std::fs::write(&empty, b"").unwrap();
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
    std::fs::write(&damaged, &bytes).unwrap();

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
    std::fs::write(&padded, &bytes).unwrap();
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
    assert_eq!(get_bytes(&first, "/a.txt").unwrap(), b"hello, world\n");
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
