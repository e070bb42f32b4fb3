//! `gfpack`, black box: build, ls, get and verify a pack, and the exit codes on damage.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

fn gfpack(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gfpack"))
        .args(args)
        .output()
        .expect("run gfpack")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A tree with an empty file, a binary file and a nested text file; returns (path, bytes).
fn make_tree(root: &Path) -> Vec<(&'static str, Vec<u8>)> {
    let files: Vec<(&'static str, Vec<u8>)> = vec![
        ("/empty", Vec::new()),
        (
            "/bin/noise",
            (0..70_000u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect(),
        ),
        ("/a/b/hello.txt", b"hello, pack\n".to_vec()),
    ];
    for (path, bytes) in &files {
        let file = root.join(path.trim_start_matches('/'));
        fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
        fs::write(file, bytes).expect("write");
    }
    files
}

fn build(dir: &Path) -> (Vec<(&'static str, Vec<u8>)>, std::path::PathBuf) {
    let tree = dir.join("tree");
    let files = make_tree(&tree);
    let pack = dir.join("content.pack");
    let built = gfpack(&[
        "build",
        tree.to_str().unwrap(),
        "-o",
        pack.to_str().unwrap(),
    ]);
    assert!(built.status.success(), "build failed: {}", stderr(&built));
    (files, pack)
}

#[test]
fn a_built_pack_lists_verifies_and_serves_every_file_byte_for_byte() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (files, pack) = build(dir.path());
    let pack = pack.to_str().unwrap();

    let listed = gfpack(&["ls", pack]);
    assert!(listed.status.success(), "{}", stderr(&listed));
    let listing = String::from_utf8_lossy(&listed.stdout);
    for (path, _) in &files {
        assert!(listing.contains(path), "{path} missing from:\n{listing}");
    }

    let verified = gfpack(&["verify", pack]);
    assert!(verified.status.success(), "{}", stderr(&verified));

    for (path, bytes) in &files {
        let got = gfpack(&["get", pack, path]);
        assert!(got.status.success(), "get {path}: {}", stderr(&got));
        assert_eq!(&got.stdout, bytes, "{path}");
    }

    let missing = gfpack(&["get", pack, "/not/there"]);
    assert_eq!(missing.status.code(), Some(1));
}

#[test]
fn a_flipped_object_byte_fails_verify_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, pack) = build(dir.path());
    let mut bytes = fs::read(&pack).expect("read pack");
    let needle = b"hello, pack\n";
    let target = bytes
        .windows(needle.len())
        .position(|window| window == needle)
        .expect("the object's bytes are in the pack");
    bytes[target] ^= 0x5a;
    fs::write(&pack, &bytes).expect("write pack");

    let verified = gfpack(&["verify", pack.to_str().unwrap()]);
    assert_eq!(verified.status.code(), Some(1), "{}", stderr(&verified));
    assert!(
        stderr(&verified).contains("content.pack")
            || String::from_utf8_lossy(&verified.stdout).contains("content.pack"),
        "the report does not name the pack: {}",
        stderr(&verified)
    );
}

#[test]
fn a_truncated_pack_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, pack) = build(dir.path());
    let len = fs::metadata(&pack).expect("stat").len();
    let file = fs::OpenOptions::new()
        .write(true)
        .open(&pack)
        .expect("open");
    file.set_len(len - 10).expect("truncate");

    for command in ["ls", "verify"] {
        let output = gfpack(&[command, pack.to_str().unwrap()]);
        assert_eq!(
            output.status.code(),
            Some(1),
            "{command}: {}",
            stderr(&output)
        );
        assert!(
            stderr(&output).contains("content.pack"),
            "{command}: {}",
            stderr(&output)
        );
    }
}
