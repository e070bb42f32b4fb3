//! Black-box tests of restarts: a killed cache or proxy comes back, a crash loop is quarantined,
//! and a killed supervisor takes its children along and leaves nothing after cleanup or start.
mod common;

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

fn sigkill(pid: i64) {
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).expect("SIGKILL");
}

#[test]
fn a_killed_cache_is_restarted_and_requests_keep_succeeding() {
    let content = tempfile::tempdir().unwrap();
    let files = make_content(content.path());
    let origin = Origin::serve(content.path());
    let mut setup = Setup::new(Backend::Directory(content.path().to_path_buf()));
    setup.origin = Some(origin.url());
    let run = Run::start(setup);
    let before = run.child("cache", 0);
    let old_pid = before["pid"].as_i64().unwrap();
    sigkill(old_pid);
    // Requests made from now on succeed: the proxy falls back to the origin until the cache is
    // back (a transfer cut by the kill itself could only be closed, so none is in flight).
    let mut requests = 0;
    let after = wait_for("cache 0 to be restarted", DEADLINE, || {
        for (path, body) in &files {
            requests += 1;
            assert_eq!(
                run.get(path),
                Ok(Reply::Ok(body.clone())),
                "{path} after the kill"
            );
        }
        let c = run.child("cache", 0);
        (c["state"] == "running" && c["pid"].as_i64().is_some_and(|p| p != old_pid)).then_some(c)
    });
    assert!(requests > 0);
    assert_eq!(after["restarts"], 1, "{after}");
    let text = run.metrics_text();
    assert_eq!(
        metric_value(
            &text,
            "gfcache_child_restarts_total{role=\"cache\",slot=\"0\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric_value(&text, "gfcache_child_up{role=\"cache\",slot=\"0\"}"),
        Some(1.0),
        "{text}"
    );
    wait_for("/readyz after the restart", DEADLINE, || {
        run.ready().then_some(())
    });
    for (path, body) in &files {
        assert_eq!(
            run.get(path),
            Ok(Reply::Ok(body.clone())),
            "{path} after the restart"
        );
    }
    let log = run.log_text();
    assert!(
        log.contains("child died") && log.contains("SIGKILL"),
        "the exit and its signal are logged:\n{log}"
    );
    assert!(log.contains("restarted child"), "{log}");
}

#[test]
fn a_killed_proxy_is_restarted() {
    let content = tempfile::tempdir().unwrap();
    let files = make_content(content.path());
    let run = Run::start(Setup::new(Backend::Directory(content.path().to_path_buf())));
    let before = run.child("proxy", 0);
    sigkill(before["pid"].as_i64().unwrap());
    let after = wait_restarted(&run, "proxy", 0, before["pid"].as_i64().unwrap());
    assert_eq!(after["restarts"], 1, "{after}");
    let (path, body) = &files[0];
    let reply = wait_for("the new proxy to serve", DEADLINE, || run.get(path).ok());
    assert_eq!(reply, Reply::Ok(body.clone()));
    let text = run.metrics_text();
    assert_eq!(
        metric_value(
            &text,
            "gfcache_child_restarts_total{role=\"proxy\",slot=\"0\"}"
        ),
        Some(1.0),
        "{text}"
    );
}

#[test]
fn a_cache_that_crashes_at_once_backs_off_then_is_quarantined() {
    let content = tempfile::tempdir().unwrap();
    let root = content.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let files = make_content(&root);
    let moved = content.path().join("moved");
    let origin_dir = tempfile::tempdir().unwrap();
    make_content(origin_dir.path());
    let origin = Origin::serve(origin_dir.path());
    let mut setup = Setup::new(Backend::Directory(root.clone()));
    setup.origin = Some(origin.url());
    setup.max_restarts = 2;
    let run = Run::start(setup);
    // Without its root the backend cannot open: every restart of cache 0 fails at once.
    std::fs::rename(&root, &moved).unwrap();
    let before = run.child("cache", 0);
    sigkill(before["pid"].as_i64().unwrap());
    let quarantined = wait_for("cache 0 to be quarantined", DEADLINE, || {
        let c = run.child("cache", 0);
        (c["state"] == "quarantined").then_some(c)
    });
    assert!(quarantined["pid"].is_null(), "{quarantined}");
    assert_eq!(
        quarantined["restarts"], 2,
        "max_restarts restarts, then quarantine: {quarantined}"
    );
    let log = run.log_text();
    assert!(log.contains("restarting after backoff"), "{log}");
    assert!(log.contains("quarantined"), "{log}");
    let text = run.metrics_text();
    assert_eq!(
        metric_value(
            &text,
            "gfcache_child_quarantined{role=\"cache\",slot=\"0\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric_value(&text, "gfcache_child_up{role=\"cache\",slot=\"0\"}"),
        Some(0.0),
        "{text}"
    );
    // The proxy routes around it (the origin answers its keys); /readyz ignores it.
    assert!(
        run.ready(),
        "a quarantined cache does not make the run unready"
    );
    for (path, body) in &files {
        assert_eq!(run.get(path), Ok(Reply::Ok(body.clone())), "{path}");
    }
    // A reload revives it; with its root back it stays up.
    std::fs::rename(&moved, &root).unwrap();
    let out = gfsupervisor(&["reload"], &run.config);
    assert!(out.status.success(), "{}", output_text(&out));
    let revived = wait_for("cache 0 to be revived", DEADLINE, || {
        let c = run.child("cache", 0);
        (c["state"] == "running").then_some(c)
    });
    assert_eq!(revived["restarts"], 3, "{revived}");
}

fn kill_supervisor_and_wait_for_children(run: &mut Run) -> Vec<(ipc::IpcKind, i32, i32, i64)> {
    let pids = child_pids(&run.status());
    assert_eq!(pids.len(), 3);
    let ledger = run.ledger();
    assert!(!ledger.is_empty());
    kill(run.pid(), Signal::SIGKILL).unwrap();
    run.wait_exit();
    for pid in pids {
        wait_for(
            &format!("child {pid} to exit after the supervisor died"),
            DEADLINE,
            || process_gone(pid).then_some(()),
        );
    }
    ledger
}

#[test]
fn after_a_killed_supervisor_cleanup_removes_every_object() {
    let content = tempfile::tempdir().unwrap();
    make_content(content.path());
    let mut run = Run::start(Setup::new(Backend::Directory(content.path().to_path_buf())));
    let ledger = kill_supervisor_and_wait_for_children(&mut run);
    let out = gfsupervisor(&["cleanup"], &run.config);
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(
        surviving_objects(&ledger),
        Vec::new(),
        "cleanup: {}",
        output_text(&out)
    );
}

#[test]
fn after_a_killed_supervisor_the_next_start_removes_every_object() {
    let content = tempfile::tempdir().unwrap();
    let files = make_content(content.path());
    let mut run = Run::start(Setup::new(Backend::Directory(content.path().to_path_buf())));
    let ledger = kill_supervisor_and_wait_for_children(&mut run);
    run.spawn();
    run.wait_ready();
    assert_eq!(
        surviving_objects(&ledger),
        Vec::new(),
        "log:\n{}",
        run.log_text()
    );
    let (path, body) = &files[0];
    assert_eq!(run.get(path), Ok(Reply::Ok(body.clone())));
}
