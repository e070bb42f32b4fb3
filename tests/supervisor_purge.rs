//! Black-box tests of purge: `gfsupervisor purge PATH...` and `--prefix`, and HTTP `PURGE` on
//! the metrics listener, against a real supervisor with memory caches in front of a real
//! origin that counts the requests for each path.
mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// An origin serving fixed bodies with `Cache-Control: max-age=3600`, counting the requests
/// for each path.
struct CountingOrigin {
    addr: SocketAddr,
    counts: Arc<Mutex<HashMap<String, u64>>>,
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
}

impl CountingOrigin {
    fn serve(files: HashMap<String, Vec<u8>>) -> CountingOrigin {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("origin bind"));
        let addr = server.server_addr().to_ip().expect("ip origin");
        let counts = Arc::new(Mutex::new(HashMap::new()));
        let (srv, seen) = (Arc::clone(&server), Arc::clone(&counts));
        let thread = std::thread::spawn(move || {
            for request in srv.incoming_requests() {
                let path = request.url().split('?').next().unwrap_or("/").to_string();
                if let Ok(mut seen) = seen.lock() {
                    *seen.entry(path.clone()).or_insert(0) += 1;
                }
                let response = match files.get(&path) {
                    Some(body) => tiny_http::Response::from_data(body.clone())
                        .with_status_code(200)
                        .with_header(
                            tiny_http::Header::from_bytes(
                                &b"Cache-Control"[..],
                                &b"max-age=3600"[..],
                            )
                            .expect("header"),
                        ),
                    None => {
                        tiny_http::Response::from_data(b"not found".to_vec()).with_status_code(404)
                    }
                };
                let _ = request.respond(response);
            }
        });
        CountingOrigin {
            addr,
            counts,
            server,
            thread: Some(thread),
        }
    }

    fn count(&self, path: &str) -> u64 {
        self.counts
            .lock()
            .map(|c| c.get(path).copied().unwrap_or(0))
            .unwrap_or(0)
    }
}

impl Drop for CountingOrigin {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

const PATHS: [&str; 5] = ["/a.txt", "/b.txt", "/dir/x.txt", "/dir/y.txt", "/dirt.txt"];

fn files() -> HashMap<String, Vec<u8>> {
    PATHS
        .iter()
        .map(|p| {
            (
                p.to_string(),
                format!("body of {p}\n").repeat(50).into_bytes(),
            )
        })
        .collect()
}

fn purge_cli(run: &Run, args: &[&str]) -> Output {
    let mut all = vec!["purge"];
    all.extend_from_slice(args);
    gfsupervisor(&all, &run.config)
}

/// `curl -X METHOD` against the metrics listener: (status, body).
fn curl(run: &Run, method: &str, target: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "-g",
            "--max-time",
            "30",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
        ])
        .args(["-X", method])
        .arg(format!("http://{}{target}", run.metrics))
        .output()
        .expect("run curl (Debian package curl)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (
        code.trim()
            .parse()
            .unwrap_or_else(|_| panic!("curl: {}", output_text(&out))),
        body.to_string(),
    )
}

fn sum_over_caches(run: &Run, family: &str, caches: u32) -> f64 {
    let text = run.metrics_text();
    (0..caches)
        .filter_map(|s| metric_value(&text, &format!("{family}{{slot=\"{s}\"}}")))
        .sum()
}

/// GETs `path` through the proxy and checks the body.
fn fetch(run: &Run, path: &str) {
    let body = files().remove(path).expect("known path");
    assert_eq!(run.get(path), Ok(Reply::Ok(body)), "GET {path}");
}

/// Fetches every path once and waits until the caches stored all of them (fills complete after
/// the answer), so that the next requests are hits.
fn fill(run: &Run, paths: &[&str]) {
    let before = sum_over_caches(run, "gfcache_cache_fills_stored_total", run.setup.caches);
    for path in paths {
        fetch(run, path);
    }
    wait_for("the fills to be stored", DEADLINE, || {
        let stored = sum_over_caches(run, "gfcache_cache_fills_stored_total", run.setup.caches);
        (stored >= before + paths.len() as f64).then_some(())
    });
}

fn start(origin: &CountingOrigin) -> Run {
    let mut setup = Setup::new(Backend::Memory);
    setup.origin = Some(format!("http://{}", origin.addr));
    Run::start(setup)
}

#[test]
fn purge_by_path_prefix_and_http_sends_the_next_request_to_the_origin() {
    let origin = CountingOrigin::serve(files());
    let run = start(&origin);
    assert!(
        run.status()["region"]
            .as_str()
            .is_some_and(|r| r.contains('.')),
        "the status names the region: {}",
        run.status()
    );
    fill(&run, &PATHS);
    for path in PATHS {
        fetch(&run, path);
        assert_eq!(origin.count(path), 1, "{path} is a hit after its fill");
    }

    // One path with the command: its next request goes to the origin, the others are hits.
    let out = purge_cli(&run, &["/a.txt"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("purged 1 object (/a.txt) from 2 caches"),
        "{}",
        output_text(&out)
    );
    fetch(&run, "/a.txt");
    assert_eq!(origin.count("/a.txt"), 2);
    for path in &PATHS[1..] {
        fetch(&run, path);
        assert_eq!(origin.count(path), 1, "{path} is still a hit");
    }

    // A path spelled differently is the same object; purging it twice removes nothing more.
    let out = purge_cli(&run, &["/b.txt", "//b.txt"]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("purged 1 object (/b.txt, /b.txt)"),
        "{}",
        output_text(&out)
    );

    // A prefix: what is under /dir/, not /dirt.txt.
    let out = purge_cli(&run, &["--prefix", "/dir/"]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("purged 2 objects (/dir/*) from 2 caches"),
        "{}",
        output_text(&out)
    );
    fill(&run, &["/dir/x.txt", "/dir/y.txt"]);
    fetch(&run, "/dirt.txt");
    assert_eq!(origin.count("/dir/x.txt"), 2);
    assert_eq!(origin.count("/dir/y.txt"), 2);
    assert_eq!(origin.count("/dirt.txt"), 1, "not under the prefix /dir/");

    // HTTP PURGE with curl, one path and a prefix (/b.txt went with the purge above).
    fill(&run, &["/b.txt"]);
    assert_eq!(origin.count("/b.txt"), 2);
    let (code, body) = curl(&run, "PURGE", "/b.txt");
    assert_eq!(code, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).expect("JSON answer");
    assert_eq!(answer["purged"], 1, "{answer}");
    assert_eq!(answer["caches"], 2, "{answer}");
    assert_eq!(answer["complete"], true, "{answer}");
    fetch(&run, "/b.txt");
    assert_eq!(origin.count("/b.txt"), 3);
    let (code, body) = curl(&run, "PURGE", "/dir/*");
    assert_eq!(code, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).expect("JSON answer");
    assert_eq!(answer["purged"], 2, "{answer}");
    assert_eq!(answer["prefix"], true, "{answer}");

    // Bad paths: refused, nothing sent to any cache.
    let purges_before = sum_over_caches(&run, "gfcache_cache_purges_total", 2);
    let out = purge_cli(&run, &["/ok.txt", "relative.txt"]);
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad path \"relative.txt\"") && stderr.contains("starts with '/'"),
        "{}",
        output_text(&out)
    );
    let (code, body) = curl(&run, "PURGE", "/a%2Fb");
    assert_eq!(code, 400, "{body}");
    let (code, body) = curl(&run, "PURGE", "/a%00b");
    assert_eq!(code, 400, "{body}");
    let (code, body) = curl(&run, "DELETE", "/a.txt");
    assert_eq!(code, 405, "{body}");
    assert_eq!(curl(&run, "GET", "/healthz").0, 200);
    assert_eq!(
        sum_over_caches(&run, "gfcache_cache_purges_total", 2),
        purges_before,
        "a refused purge sends nothing"
    );

    // The counts: every purge at the caches, HTTP ones at the supervisor.
    let text = run.metrics_text();
    // /a.txt, /b.txt twice, /dir/ by the command; /b.txt and /dir/* by HTTP: 6 targets, 2 caches.
    assert_eq!(
        sum_over_caches(&run, "gfcache_cache_purges_total", 2),
        12.0,
        "{text}"
    );
    assert_eq!(
        sum_over_caches(&run, "gfcache_cache_purged_objects_total", 2),
        1.0 + 1.0 + 2.0 + 1.0 + 2.0,
        "{text}"
    );
    assert_eq!(
        metric_value(&text, "gfcache_purge_requests_total{result=\"ok\"}"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        metric_value(
            &text,
            "gfcache_purge_requests_total{result=\"bad_request\"}"
        ),
        Some(2.0),
        "{text}"
    );
    match supervisor::promtool::check_metrics(&text) {
        Ok(()) => {}
        Err(supervisor::promtool::PromtoolError::Missing) if std::env::var_os("CI").is_none() => {
            eprintln!("note: promtool is not on PATH: skipping `promtool check metrics`");
        }
        Err(e) => panic!("{e}\n{text}"),
    }

    // purge_from naming another network: loopback is refused (applied by a reload), and the
    // command, which does not go through HTTP, still purges.
    let config = std::fs::read_to_string(&run.config).expect("read config");
    std::fs::write(
        &run.config,
        config.replace(
            "[supervisor]\n",
            "[supervisor]\npurge_from = [\"10.0.0.0/8\"]\n",
        ),
    )
    .expect("write config");
    let out = gfsupervisor(&["reload"], &run.config);
    assert!(out.status.success(), "{}", output_text(&out));
    let (code, body) = curl(&run, "PURGE", "/a.txt");
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("10.0.0.0/8"), "{body}");
    let out = purge_cli(&run, &["/a.txt"]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(
        metric_value(
            &run.metrics_text(),
            "gfcache_purge_requests_total{result=\"forbidden\"}"
        ),
        Some(1.0)
    );
    stop_and_check_nothing_left(run);
}

#[test]
fn a_cache_that_does_not_answer_makes_the_purge_fail_and_says_which() {
    let origin = CountingOrigin::serve(files());
    let run = start(&origin);
    fill(&run, &["/a.txt"]);
    let cache = run.child("cache", 1);
    let pid = Pid::from_raw(cache["pid"].as_i64().expect("cache 1 pid") as i32);
    kill(pid, Signal::SIGSTOP).expect("SIGSTOP cache 1");
    let out = purge_cli(&run, &["--timeout", "500ms", "/a.txt"]);
    kill(pid, Signal::SIGCONT).expect("SIGCONT cache 1");
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("from 1 cache\n"), "{}", output_text(&out));
    assert!(
        stdout.contains("incomplete: cache 1 did not answer"),
        "{}",
        output_text(&out)
    );
    // Once it answers again the purge is complete, and the segment went back to the pool.
    wait_for("a complete purge", DEADLINE, || {
        purge_cli(&run, &["--timeout", "2s", "/a.txt"])
            .status
            .success()
            .then_some(())
    });
    let all_free = || {
        let text = run.metrics_text();
        (metric_value(&text, "gfcache_segments{state=\"free\"}")
            == Some(f64::from(run.setup.segments)))
        .then_some(())
    };
    wait_for("every segment to be free", DEADLINE, all_free);

    // A purge command killed while it waits for a cache: the supervisor reclaims its segment.
    kill(pid, Signal::SIGSTOP).expect("SIGSTOP cache 1");
    let mut waiting = Command::new(SUPERVISOR)
        .args(["purge", "--timeout", "60s", "/a.txt", "-c"])
        .arg(&run.config)
        .spawn()
        .expect("spawn gfsupervisor purge");
    let mark = run
        .run_dir
        .join("purge-clients")
        .join(waiting.id().to_string());
    wait_for("the purge to wait for cache 1", DEADLINE, || {
        let text = run.metrics_text();
        let free = metric_value(&text, "gfcache_segments{state=\"free\"}")?;
        (mark.exists() && free < f64::from(run.setup.segments)).then_some(())
    });
    waiting.kill().expect("SIGKILL the purge");
    waiting.wait().expect("reap the purge");
    kill(pid, Signal::SIGCONT).expect("SIGCONT cache 1");
    wait_for(
        "the killed purge's segment to be reclaimed",
        DEADLINE,
        all_free,
    );
    wait_for("its mark to be removed", DEADLINE, || {
        (!mark.exists()).then_some(())
    });
}

/// A writable directory cache that did not answer a purge keeps the file on disk, but it
/// empties itself as soon as it runs again: the purged object is fetched from the origin, not
/// served from the file the purge did not reach.
#[test]
fn a_writable_directory_that_missed_a_purge_does_not_serve_what_it_purged() {
    let origin = CountingOrigin::serve(files());
    let dir = tempfile::tempdir().expect("tempdir");
    let mut setup = Setup::new(Backend::WritableDirectory(dir.path().join("cache")));
    setup.caches = 1;
    setup.origin = Some(format!("http://{}", origin.addr));
    let run = Run::start(setup);
    fill(&run, &["/a.txt"]);
    fetch(&run, "/a.txt");
    assert_eq!(origin.count("/a.txt"), 1, "the second GET is a hit");

    let cache = run.child("cache", 0);
    let pid = Pid::from_raw(cache["pid"].as_i64().expect("cache 0 pid") as i32);
    kill(pid, Signal::SIGSTOP).expect("SIGSTOP cache 0");
    let out = purge_cli(&run, &["--timeout", "500ms", "/a.txt"]);
    kill(pid, Signal::SIGCONT).expect("SIGCONT cache 0");
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("it empties itself once it runs again"),
        "{}",
        output_text(&out)
    );
    wait_for("the purged file to go to the origin", DEADLINE, || {
        fetch(&run, "/a.txt");
        (origin.count("/a.txt") >= 2).then_some(())
    });
    assert!(
        run.log_text().contains("a purge did not reach this cache"),
        "{}",
        run.log_text()
    );
    stop_and_check_nothing_left(run);
}

#[test]
fn purge_without_a_running_supervisor_exits_3_and_bad_config_keys_are_named() {
    let run = Run::prepare(Setup::new(Backend::Memory));
    let out = purge_cli(&run, &["/a.txt"]);
    assert_eq!(out.status.code(), Some(3), "{}", output_text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no gfsupervisor is running"),
        "{}",
        output_text(&out)
    );
    let out = purge_cli(&run, &[]);
    assert_eq!(out.status.code(), Some(2), "usage: {}", output_text(&out));

    let config = std::fs::read_to_string(&run.config).expect("read config");
    std::fs::write(
        &run.config,
        config.replace("[supervisor]\n", "[supervisor]\npurge_from = [\"lan\"]\n"),
    )
    .expect("write config");
    let out = gfsupervisor(&["check-config"], &run.config);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("supervisor.purge_from: entry 1: \"lan\" is not a network"),
        "{}",
        output_text(&out)
    );
}
