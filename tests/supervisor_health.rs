//! Black-box tests of readiness and of the last proxy: a run whose every cache is broken is not
//! ready without an origin and degraded with one, and the only proxy is never quarantined.
mod common;

use std::path::{Path, PathBuf};

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A pack of the test content, and its first 5000 bytes (`head -c 5000 good.pack`).
fn pack_and_truncation(content: &Path, work: &Path) -> (PathBuf, Vec<u8>) {
    let good = work.join("good.pack");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gfpack"))
        .arg("build")
        .arg(content)
        .arg("-o")
        .arg(&good)
        .output()
        .expect("run gfpack");
    assert!(out.status.success(), "gfpack build: {}", output_text(&out));
    let bytes = std::fs::read(&good).expect("read the pack");
    assert!(bytes.len() > 5000, "the pack is larger than the cut");
    (good, bytes[..5000].to_vec())
}

/// Starts a run on a good pack (start refuses a damaged one), then replaces the pack with its
/// truncation, as an operator's mistake would, and SIGKILLs the caches so that they reopen it.
fn run_on_a_pack_broken_after_start(setup_origin: Option<String>) -> (Run, tempfile::TempDir) {
    let content = tempfile::tempdir().unwrap();
    make_content(content.path());
    let work = tempfile::tempdir().unwrap();
    let (pack, truncated) = pack_and_truncation(content.path(), work.path());
    let mut setup = Setup::new(Backend::Pack(pack.clone()));
    setup.origin = setup_origin;
    let run = Run::start(setup);
    let replacement = work.path().join("bad.pack.tmp");
    std::fs::write(&replacement, truncated).expect("write the truncated pack");
    std::fs::rename(&replacement, &pack).expect("replace the pack");
    for slot in 0..2 {
        if let Some(pid) = run.child("cache", slot)["pid"].as_i64() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }
    (run, content)
}

/// Whether a cache's status state says it cannot answer for good: it crash-looped into
/// quarantine, or its process runs and reports itself unavailable.
fn out_of_service(state: &serde_json::Value) -> bool {
    state == "quarantined" || state == "unavailable"
}

/// Waits until every cache slot is out of service, and returns the status then.
fn wait_every_cache_out_of_service(run: &mut Run) -> serde_json::Value {
    wait_for(
        "every cache to be quarantined or unavailable",
        DEADLINE,
        || {
            run.assert_alive();
            // Until the supervisor wrote its first status file, `status` fails: poll on.
            let out = gfsupervisor(&["status", "--json"], &run.config);
            let status: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            let caches: Vec<serde_json::Value> = status["children"]
                .as_array()?
                .iter()
                .filter(|c| c["role"] == "cache")
                .cloned()
                .collect();
            (caches.len() == 2 && caches.iter().all(|c| out_of_service(&c["state"])))
                .then_some(status)
        },
    )
}

/// The not-answering entries of a status for caches, as (slot, state).
fn caches_not_answering(status: &serde_json::Value) -> Vec<(u64, String)> {
    status["not_answering"]
        .as_array()
        .map(|slots| {
            slots
                .iter()
                .filter(|s| s["role"] == "cache")
                .filter_map(|s| Some((s["slot"].as_u64()?, s["state"].as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

fn assert_child_state_metric(text: &str, role: &str, slot: u32, state: &str) {
    let series =
        format!("gfcache_child_state{{role=\"{role}\",slot=\"{slot}\",state=\"{state}\"}}");
    assert_eq!(metric_value(text, &series), Some(1.0), "{series}:\n{text}");
}

#[test]
fn a_run_whose_every_cache_is_broken_and_no_origin_is_not_ready() {
    let (mut run, _content) = run_on_a_pack_broken_after_start(None);
    let status = wait_every_cache_out_of_service(&mut run);

    assert_eq!(status["ready"], false, "{status}");
    assert_eq!(status["state"], "not-ready", "{status}");
    assert!(
        status["reason"]
            .as_str()
            .is_some_and(|r| r.contains("no cache can answer")),
        "{status}"
    );
    let named = caches_not_answering(&status);
    assert_eq!(
        named.iter().map(|(slot, _)| *slot).collect::<Vec<_>>(),
        [0, 1],
        "{status}"
    );
    assert!(
        named
            .iter()
            .all(|(_, state)| state == "quarantined" || state == "unavailable"),
        "{status}"
    );

    let (code, body) = http_get(run.metrics, "/readyz").expect("GET /readyz");
    assert_eq!(code, 503, "{body}");
    assert!(
        body.starts_with("not ready") && body.contains("cache 0") && body.contains("cache 1"),
        "{body}"
    );
    let text = run.metrics_text();
    assert_eq!(metric_value(&text, "gfcache_ready"), Some(0.0), "{text}");
    assert_eq!(metric_value(&text, "gfcache_degraded"), Some(0.0), "{text}");
    for (slot, state) in &named {
        assert_child_state_metric(&text, "cache", *slot as u32, state);
    }

    let table = gfsupervisor(&["status"], &run.config);
    assert!(table.status.success(), "{}", output_text(&table));
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains(", not ready;"), "{table}");
    assert!(
        table.contains("not answering: cache 0") && table.contains("cache 1"),
        "{table}"
    );
    // What readiness says is what a client gets.
    assert_eq!(run.get("/hello.txt"), Ok(Reply::Error));
}

#[test]
fn with_an_origin_a_run_whose_every_cache_is_broken_is_ready_but_degraded() {
    let content = tempfile::tempdir().unwrap();
    let files = make_content(content.path());
    let origin = Origin::serve(content.path());
    let (mut run, _pack_content) = run_on_a_pack_broken_after_start(Some(origin.url()));
    let status = wait_every_cache_out_of_service(&mut run);

    assert_eq!(status["ready"], true, "{status}");
    assert_eq!(status["state"], "degraded", "{status}");
    let named = caches_not_answering(&status);
    assert_eq!(named.len(), 2, "{status}");

    let (code, body) = http_get(run.metrics, "/readyz").expect("GET /readyz");
    assert_eq!(code, 200, "{body}");
    assert!(
        body.starts_with("degraded") && body.contains("cache 0") && body.contains("cache 1"),
        "{body}"
    );
    let text = run.metrics_text();
    assert_eq!(metric_value(&text, "gfcache_ready"), Some(1.0), "{text}");
    assert_eq!(metric_value(&text, "gfcache_degraded"), Some(1.0), "{text}");
    for (slot, state) in &named {
        assert_child_state_metric(&text, "cache", *slot as u32, state);
    }
    let table = gfsupervisor(&["status"], &run.config);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains(", degraded;"), "{table}");
    for (path, body) in &files {
        assert_eq!(run.get(path), Ok(Reply::Ok(body.clone())), "{path}");
    }
}

#[test]
fn the_last_proxy_is_never_quarantined() {
    let content = tempfile::tempdir().unwrap();
    let files = make_content(content.path());
    let mut setup = Setup::new(Backend::Directory(content.path().to_path_buf()));
    setup.max_restarts = 2;
    let run = Run::start(setup);
    let kills = 5;
    let mut pid = run.child("proxy", 0)["pid"].as_i64().expect("proxy pid");
    for round in 1..=kills {
        kill(Pid::from_raw(pid as i32), Signal::SIGKILL).expect("SIGKILL the proxy");
        let old = pid;
        let back = wait_for(&format!("kill {round}: the proxy back"), DEADLINE, || {
            let proxy = run.child("proxy", 0);
            assert_ne!(proxy["state"], "quarantined", "kill {round}: {proxy}");
            let pid = proxy["pid"].as_i64().filter(|&p| p != old)?;
            (proxy["state"] == "running").then_some((pid, proxy))
        });
        pid = back.0;
        assert_eq!(back.1["restarts"], round, "{}", back.1);
    }
    let proxy = run.child("proxy", 0);
    assert_eq!(proxy["crash_looping"], true, "{proxy}");
    let text = run.metrics_text();
    assert_eq!(
        metric_value(
            &text,
            "gfcache_child_crash_looping{role=\"proxy\",slot=\"0\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric_value(
            &text,
            "gfcache_child_quarantined{role=\"proxy\",slot=\"0\"}"
        ),
        Some(0.0),
        "{text}"
    );
    let table = gfsupervisor(&["status"], &run.config);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("proxy 0 crash-loops"), "{table}");
    let log = run.log_text();
    assert!(
        log.contains("it is the last proxy: not quarantined"),
        "{log}"
    );
    let (path, body) = &files[0];
    let reply = wait_for("the proxy to serve", DEADLINE, || run.get(path).ok());
    assert_eq!(reply, Reply::Ok(body.clone()));
}
