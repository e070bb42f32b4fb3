//! Black-box tests of reload: a backend change under load, and an invalid config.
mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use common::*;
use nix::sys::signal::{kill, Signal};

#[test]
fn reload_from_directory_to_memory_under_load_loses_no_request() {
    let content = tempfile::tempdir().unwrap();
    let files = make_content(content.path());
    let origin = Origin::serve(content.path());
    let mut setup = Setup::new(Backend::Directory(content.path().to_path_buf()));
    setup.origin = Some(origin.url());
    let run = Run::start(setup.clone());

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let (flag, count) = (Arc::clone(&stop), Arc::clone(&done));
    let (proxy, loop_files) = (run.proxy, files.clone());
    let clients = std::thread::spawn(move || {
        let (mut n, mut failures) = (0u64, Vec::new());
        while !flag.load(Ordering::Relaxed) {
            for (path, body) in &loop_files {
                n += 1;
                count.fetch_add(1, Ordering::Relaxed);
                match getfile(proxy, path) {
                    Ok(Reply::Ok(got)) if got == *body => {}
                    other => failures.push(format!("{path}: {other:?}")),
                }
            }
        }
        (n, failures)
    });

    let requests = || done.load(Ordering::Relaxed);
    wait_for("the client loop to get going", DEADLINE, || {
        (requests() >= 20).then_some(())
    });
    setup.backend = Backend::Memory;
    std::fs::write(&run.config, setup.render(&run.run_dir)).unwrap();
    let out = gfsupervisor(&["reload"], &run.config);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("applied"),
        "{}",
        output_text(&out)
    );
    wait_for("every cache to run the memory backend", DEADLINE, || {
        let status = run.status();
        let caches: Vec<_> = status["children"]
            .as_array()?
            .iter()
            .filter(|c| c["role"] == "cache")
            .cloned()
            .collect();
        (status["backend"] == "memory"
            && caches.len() == 2
            && caches
                .iter()
                .all(|c| c["state"] == "running" && c["backend"] == "memory"))
        .then_some(())
    });
    wait_for("/readyz after the reload", DEADLINE, || {
        run.ready().then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    let (n, failures) = clients.join().unwrap();
    assert!(n > 0);
    assert!(
        failures.is_empty(),
        "{} of {n} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let proxy = run.child("proxy", 0);
    assert_eq!(
        proxy["restarts"], 0,
        "a backend change does not restart the proxy: {proxy}"
    );
    let text = run.metrics_text();
    assert_eq!(
        metric_value(&text, "gfcache_supervisor_reloads_total{result=\"ok\"}"),
        Some(1.0),
        "{text}"
    );
}

#[test]
fn an_invalid_reload_keeps_the_running_config() {
    let content = tempfile::tempdir().unwrap();
    let files = make_content(content.path());
    let setup = Setup::new(Backend::Directory(content.path().to_path_buf()));
    let run = Run::start(setup.clone());
    let good = std::fs::read_to_string(&run.config).unwrap();
    let bad = good.replace("backend = \"directory\"", "backend = \"floppy\"");
    let line = bad.lines().position(|l| l.contains("floppy")).unwrap() + 1;
    std::fs::write(&run.config, &bad).unwrap();

    // The command reports the problem itself.
    let out = gfsupervisor(&["reload"], &run.config);
    assert!(!out.status.success(), "{}", output_text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cache.backend") && err.contains(&format!("line {line}")),
        "{err}"
    );

    // A SIGHUP makes the supervisor try, log, and keep the running config.
    let pids_before = child_pids(&run.status());
    kill(run.pid(), Signal::SIGHUP).unwrap();
    let reload = wait_for("the rejected reload in the status", DEADLINE, || {
        let status = run.status();
        status["last_reload"].is_object().then_some(status)
    });
    assert_eq!(reload["last_reload"]["ok"], false, "{reload}");
    assert!(
        reload["last_reload"]["message"]
            .as_str()
            .unwrap()
            .contains("cache.backend"),
        "{reload}"
    );
    assert_eq!(reload["backend"], "directory");
    assert_eq!(child_pids(&reload), pids_before, "no child was restarted");
    for (path, body) in &files {
        assert_eq!(run.get(path), Ok(Reply::Ok(body.clone())));
    }
    let text = run.metrics_text();
    assert_eq!(
        metric_value(&text, "gfcache_supervisor_reloads_total{result=\"failed\"}"),
        Some(1.0),
        "{text}"
    );
    assert!(run.log_text().contains("reload rejected"));
}

#[test]
fn a_reload_reports_settings_that_need_a_full_restart_and_restarts_the_proxy_for_its_settings() {
    let content = tempfile::tempdir().unwrap();
    let files = make_content(content.path());
    let origin_dir = tempfile::tempdir().unwrap();
    std::fs::write(origin_dir.path().join("late.txt"), b"late").unwrap();
    let origin = Origin::serve(origin_dir.path());
    let mut setup = Setup::new(Backend::Directory(content.path().to_path_buf()));
    let run = Run::start(setup.clone());
    assert_eq!(
        run.get("/late.txt"),
        Ok(Reply::FileNotFound),
        "no origin yet"
    );
    let caches_before: Vec<_> = (0..2)
        .map(|s| run.child("cache", s)["pid"].clone())
        .collect();
    // A new segment count cannot be applied live; a new origin restarts only the proxy.
    setup.segments = 4;
    setup.origin = Some(origin.url());
    std::fs::write(&run.config, setup.render(&run.run_dir)).unwrap();
    let out = gfsupervisor(&["reload"], &run.config);
    assert!(out.status.success(), "{}", output_text(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("ipc.segments") && said.contains("full restart"),
        "{said}"
    );
    let proxy = wait_for("the proxy to restart", DEADLINE, || {
        let p = run.child("proxy", 0);
        (p["restarts"] == 1 && p["state"] == "running").then_some(p)
    });
    assert!(proxy["pid"].is_i64());
    let caches_after: Vec<_> = (0..2)
        .map(|s| run.child("cache", s)["pid"].clone())
        .collect();
    assert_eq!(caches_before, caches_after, "the caches were not restarted");
    wait_for("/readyz", DEADLINE, || run.ready().then_some(()));
    assert_eq!(run.get(&files[0].0), Ok(Reply::Ok(files[0].1.clone())));
    // The new proxy has the origin: a path only the origin has is now served.
    let reply = run.get("/late.txt");
    assert_eq!(reply, Ok(Reply::Ok(b"late".to_vec())));
}
