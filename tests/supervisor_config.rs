//! check-config, reload and start run the same validation: what check-config accepts, a child
//! accepts at start; what a child would refuse, check-config names (key and line), and a reload
//! to it keeps the running config.

mod common;

use std::net::TcpListener;
use std::path::Path;

use common::*;
use nix::sys::signal::{kill, Signal};

/// `gfsupervisor check-config` on `text`: whether it passed, and its stderr.
fn check(dir: &Path, text: &str) -> (bool, String) {
    let config = dir.join("check.toml");
    std::fs::write(&config, text).unwrap();
    let out = gfsupervisor(&["check-config"], &config);
    (out.status.success(), output_text(&out))
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).expect(needle) + 1
}

fn base_config(dir: &Path) -> String {
    let content = dir.join("content");
    make_content(&content);
    Setup::new(Backend::Directory(content)).render(&dir.join("run"))
}

#[test]
fn origins_the_proxy_would_refuse_are_refused_by_check_config() {
    let dir = tempfile::tempdir().unwrap();
    let good = base_config(dir.path());
    let (ok, out) = check(dir.path(), &good);
    assert!(ok, "{out}");
    for origin in [
        "http://127.0.0.1:8080/?v=1",
        "http://127.0.0.1:99999",
        "http://user:pw@127.0.0.1:8080/base#frag",
    ] {
        let text = good.replace("threads = 4", &format!("threads = 4\norigin = {origin:?}"));
        let (ok, out) = check(dir.path(), &text);
        assert!(!ok, "{origin} was accepted: {out}");
        let line = line_of(&text, "origin =");
        assert!(
            out.contains(&format!("line {line}: proxy.origin:")),
            "{origin}: {out}"
        );
    }
}

#[test]
fn check_config_verifies_what_it_can_without_starting() {
    let dir = tempfile::tempdir().unwrap();
    let good = base_config(dir.path());

    // A listen port another process holds.
    let holder = TcpListener::bind("127.0.0.1:0").unwrap();
    let held = holder.local_addr().unwrap();
    let text = regex_listen(&good, &held.to_string());
    let (ok, out) = check(dir.path(), &text);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!(
            "line {}: proxy.listen: cannot listen on {held}",
            line_of(&text, "listen =")
        )),
        "{out}"
    );

    // An HTTP listen port another process holds, and one the metrics endpoint wants too.
    let mut setup = Setup::new(Backend::Directory(dir.path().join("content"))).with_http();
    setup.http_port = Some(held.port());
    let text = setup.render(&dir.path().join("run"));
    let (ok, out) = check(dir.path(), &text);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!(
            "line {}: proxy.http_listen: cannot listen on {held}",
            line_of(&text, "http_listen =")
        )),
        "{out}"
    );
    setup.http_port = Some(setup.metrics_port);
    let (ok, out) = check(dir.path(), &setup.render(&dir.path().join("run")));
    assert!(!ok, "{out}");
    assert!(
        out.contains("supervisor.metrics_listen: must differ from proxy.http_listen"),
        "{out}"
    );
    let http = free_port();
    setup.http_port = Some(http);
    let (ok, out) = check(dir.path(), &setup.render(&dir.path().join("run")));
    assert!(ok, "{out}");
    assert!(out.contains(&format!("HTTP 127.0.0.1:{http}")), "{out}");

    // A run_dir under a regular file.
    let file = dir.path().join("plain-file");
    std::fs::write(&file, "x").unwrap();
    let text = good.replace(
        &format!(
            "run_dir = {:?}",
            dir.path().join("run").display().to_string()
        ),
        &format!("run_dir = {:?}", file.join("run").display().to_string()),
    );
    let (ok, out) = check(dir.path(), &text);
    assert!(!ok, "{out}");
    assert!(
        out.contains("supervisor.run_dir:") && out.contains("is not a directory"),
        "{out}"
    );

    // A truncated pack: the file and the damage are named.
    let pack = dir.path().join("good.pack");
    cache_backends::build_pack(&dir.path().join("content"), &pack).unwrap();
    let bytes = std::fs::read(&pack).unwrap();
    let bad_pack = dir.path().join("bad.pack");
    std::fs::write(&bad_pack, &bytes[..bytes.len().min(5000)]).unwrap();
    let text = Setup::new(Backend::Pack(bad_pack.clone())).render(&dir.path().join("run"));
    let (ok, out) = check(dir.path(), &text);
    assert!(!ok, "{out}");
    assert!(
        out.contains("cache.pack.path:") && out.contains(&bad_pack.display().to_string()),
        "{out}"
    );
    let text = Setup::new(Backend::Pack(pack)).render(&dir.path().join("run"));
    let (ok, out) = check(dir.path(), &text);
    assert!(ok, "{out}");
}

#[test]
fn every_problem_is_reported_together() {
    let dir = tempfile::tempdir().unwrap();
    let good = base_config(dir.path());
    let text = good
        .replace(
            "threads = 4",
            "threads = 4\ncolour = \"red\"\nmax_redirects = 99",
        )
        .replace("workers = 2", "workers = \"two\"")
        .replace("backoff_initial = \"50ms\"", "backoff_initial = \"soon\"");
    let (ok, out) = check(dir.path(), &text);
    assert!(!ok, "{out}");
    for (key, needle) in [
        ("proxy.colour", "colour ="),
        ("proxy.max_redirects", "max_redirects ="),
        ("cache.workers", "workers ="),
        ("supervisor.backoff_initial", "backoff_initial ="),
    ] {
        let line = line_of(&text, needle);
        assert!(
            out.contains(&format!("line {line}: {key}:")),
            "{key}: {out}"
        );
    }
}

#[test]
fn a_reload_to_a_config_the_proxy_would_refuse_keeps_the_service() {
    let content = tempfile::tempdir().unwrap();
    let files = make_content(content.path());
    let run = Run::start(Setup::new(Backend::Directory(content.path().to_path_buf())));
    let good = std::fs::read_to_string(&run.config).unwrap();
    let pids_before = child_pids(&run.status());
    let holder = TcpListener::bind("127.0.0.1:0").unwrap();
    let held = holder.local_addr().unwrap().to_string();
    let bad_configs = [
        good.replace(
            "threads = 4",
            "threads = 4\norigin = \"http://127.0.0.1:8080/?v=1\"",
        ),
        regex_listen(&good, &held),
    ];
    for (attempt, bad) in bad_configs.iter().enumerate() {
        std::fs::write(&run.config, bad).unwrap();
        kill(run.pid(), Signal::SIGHUP).unwrap();
        let reload = wait_for("the rejected reload", DEADLINE, || {
            let status = run.status();
            (status["last_reload"]["sequence"].as_u64() == Some(attempt as u64 + 1))
                .then_some(status)
        });
        assert_eq!(reload["last_reload"]["ok"], false, "{reload}");
        let message = reload["last_reload"]["message"].as_str().unwrap();
        assert!(message.contains("proxy."), "{message}");
        assert_eq!(child_pids(&reload), pids_before, "no child was restarted");
        for (path, body) in &files {
            assert_eq!(run.get(path), Ok(Reply::Ok(body.clone())));
        }
    }
    // The same listen address it holds itself is fine for a reload.
    std::fs::write(&run.config, good.replace("workers = 2", "workers = 3")).unwrap();
    let out = gfsupervisor(&["reload"], &run.config);
    assert!(out.status.success(), "{}", output_text(&out));
    stop_and_check_nothing_left(run);
}

/// `text` with its proxy listen address replaced by `addr`.
fn regex_listen(text: &str, addr: &str) -> String {
    text.lines()
        .map(|l| {
            if l.starts_with("listen = ") {
                format!("listen = {addr:?}")
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}
