//! Black-box tests of `gfsupervisor start/stop/status/cleanup/check-config` with each backend.
mod common;

use common::*;

fn assert_serves_content(run: &Run, files: &[(String, Vec<u8>)]) {
    for (path, body) in files {
        match run.get(path) {
            Ok(Reply::Ok(got)) => assert!(
                got == *body,
                "{path}: wrong body ({} bytes, expected {})",
                got.len(),
                body.len()
            ),
            other => panic!("{path}: {other:?}"),
        }
    }
}

#[test]
fn directory_backend_serves_and_stop_leaves_no_ipc_object() {
    let content = tempfile::tempdir().unwrap();
    let files = make_content(content.path());
    let run = Run::start(Setup::new(Backend::Directory(content.path().to_path_buf())));
    assert_serves_content(&run, &files);
    assert_eq!(run.get("/no/such/file"), Ok(Reply::FileNotFound));

    let status = run.status();
    assert_eq!(status["backend"], "directory");
    assert_eq!(status["pid"].as_i64(), Some(i64::from(run.pid().as_raw())));
    let children = status["children"].as_array().unwrap();
    assert_eq!(children.len(), 3, "{status}");
    for c in children {
        assert_eq!(c["state"], "running", "{status}");
        assert_eq!(c["restarts"], 0, "{status}");
        assert!(c["role"] == "proxy" || c["role"] == "cache", "{status}");
        assert!(c["slot"].is_u64() && c["pid"].is_i64(), "{status}");
    }
    // The status file is rewritten every second: the count catches up.
    wait_for("the proxy's request count in status", DEADLINE, || {
        let proxy = run.child("proxy", 0);
        (proxy["requests"].as_u64()? > files.len() as u64).then_some(())
    });

    let table = gfsupervisor(&["status"], &run.config);
    assert!(table.status.success(), "{}", output_text(&table));
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("proxy") && table.contains("cache") && table.contains("running"),
        "{table}"
    );
    stop_and_check_nothing_left(run);
}

#[test]
fn memory_backend_fills_from_the_origin_and_sigterm_leaves_no_ipc_object() {
    let content = tempfile::tempdir().unwrap();
    let files = make_content(content.path());
    let origin = Origin::serve(content.path());
    let mut setup = Setup::new(Backend::Memory);
    setup.origin = Some(origin.url());
    let mut run = Run::start(setup);
    assert_serves_content(&run, &files);
    assert!(
        origin.hits.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "misses went to the origin"
    );
    // Once filled, the caches answer: the hit counter moves.
    wait_for("a cache hit", DEADLINE, || {
        assert_serves_content(&run, &files);
        let text = run.metrics_text();
        metric_value(&text, "gfcache_cache_lookups_total{result=\"hit\"}").filter(|v| *v > 0.0)
    });
    assert_eq!(run.status()["backend"], "memory");

    let ledger = run.ledger();
    let pids = child_pids(&run.status());
    let exit = run.stop_with_sigterm();
    assert!(exit.success(), "exit {exit}; log:\n{}", run.log_text());
    assert_eq!(surviving_objects(&ledger), Vec::new());
    assert!(pids.iter().all(|&p| process_gone(p)));
}

#[test]
fn pack_backend_serves_and_stop_leaves_no_ipc_object() {
    let gfpack = env!("CARGO_BIN_EXE_gfpack");
    let content = tempfile::tempdir().unwrap();
    let files = make_content(content.path());
    let work = tempfile::tempdir().unwrap();
    let pack = work.path().join("content.pack");
    let out = std::process::Command::new(gfpack)
        .arg("build")
        .arg(content.path())
        .arg("-o")
        .arg(&pack)
        .output()
        .unwrap();
    assert!(out.status.success(), "gfpack build: {}", output_text(&out));
    let run = Run::start(Setup::new(Backend::Pack(pack)));
    assert_serves_content(&run, &files);
    assert_eq!(run.get("/missing.txt"), Ok(Reply::FileNotFound));
    assert_eq!(run.status()["backend"], "pack");
    stop_and_check_nothing_left(run);
}

#[test]
fn a_second_start_on_the_same_run_directory_is_refused() {
    let content = tempfile::tempdir().unwrap();
    make_content(content.path());
    let mut run = Run::start(Setup::new(Backend::Directory(content.path().to_path_buf())));
    let second = gfsupervisor(&["start"], &run.config);
    assert!(!second.status.success(), "{}", output_text(&second));
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("in use"), "{err}");
    assert!(
        err.contains(&run.pid().to_string()),
        "names the running pid: {err}"
    );
    assert!(
        err.contains(&run.run_dir.display().to_string()),
        "names the run dir: {err}"
    );
    // cleanup refuses too while the run is alive, and the run is unharmed.
    let cleanup = gfsupervisor(&["cleanup"], &run.config);
    assert!(!cleanup.status.success(), "{}", output_text(&cleanup));
    run.assert_alive();
    assert!(run.ready());
    assert_eq!(
        run.get("/hello.txt"),
        Ok(Reply::Ok(b"hello, gfcache\n".to_vec()))
    );
}

#[test]
fn an_invalid_config_is_refused_naming_key_and_line() {
    let content = tempfile::tempdir().unwrap();
    make_content(content.path());
    let run = Run::prepare(Setup::new(Backend::Directory(content.path().to_path_buf())));
    let text = std::fs::read_to_string(&run.config).unwrap();
    assert_eq!(
        text.lines().nth(2),
        Some("threads = 4"),
        "line 3 holds proxy.threads"
    );
    std::fs::write(&run.config, text.replacen("threads = 4", "threads = 0", 1)).unwrap();
    for command in ["check-config", "start"] {
        let out = gfsupervisor(&[command], &run.config);
        assert!(!out.status.success(), "{command}: {}", output_text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("proxy.threads") && err.contains("line 3"),
            "{command}: {err}"
        );
    }
    std::fs::write(
        &run.config,
        text.replacen("threads = 4", "threads = 4\ncolour = \"blue\"", 1),
    )
    .unwrap();
    let out = gfsupervisor(&["check-config"], &run.config);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("colour") && err.contains("line 4"),
        "{err}"
    );
    assert!(
        !run.run_dir.join("lock").exists() || ipc::lock_holder(&run.run_dir).unwrap().is_none()
    );
    std::fs::write(&run.config, &text).unwrap();
    let ok = gfsupervisor(&["check-config"], &run.config);
    assert!(ok.status.success(), "{}", output_text(&ok));
}

#[test]
fn commands_without_a_running_supervisor_say_so() {
    let content = tempfile::tempdir().unwrap();
    let run = Run::prepare(Setup::new(Backend::Directory(content.path().to_path_buf())));
    for command in ["status", "stop", "reload"] {
        let out = gfsupervisor(&[command], &run.config);
        assert!(!out.status.success(), "{command}: {}", output_text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("no gfsupervisor is running"),
            "{command}: {}",
            output_text(&out)
        );
    }
    let cleanup = gfsupervisor(&["cleanup"], &run.config);
    assert!(cleanup.status.success(), "{}", output_text(&cleanup));
}

#[test]
fn systemd_is_told_ready_and_stopping_and_sigint_stops_cleanly() {
    let content = tempfile::tempdir().unwrap();
    let files = make_content(content.path());
    let mut run = Run::prepare(Setup::new(Backend::Directory(content.path().to_path_buf())));
    let socket_path = run.dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(DEADLINE)).unwrap();
    run.spawn_with_env(&[("NOTIFY_SOCKET", socket_path.as_os_str())]);
    let mut buf = [0u8; 256];
    let n = socket.recv(&mut buf).expect("a notification");
    assert_eq!(&buf[..n], b"READY=1");
    // READY=1 comes only once everything serves.
    assert!(run.ready());
    let (path, body) = &files[0];
    assert_eq!(run.get(path), Ok(Reply::Ok(body.clone())));
    let ledger = run.ledger();
    nix::sys::signal::kill(run.pid(), nix::sys::signal::Signal::SIGINT).unwrap();
    let n = socket.recv(&mut buf).expect("a notification");
    assert_eq!(&buf[..n], b"STOPPING=1");
    let exit = run.wait_exit();
    assert!(exit.success(), "exit {exit}; log:\n{}", run.log_text());
    assert_eq!(surviving_objects(&ledger), Vec::new());
}

#[test]
fn two_proxies_share_the_port() {
    let content = tempfile::tempdir().unwrap();
    let files = make_content(content.path());
    let mut setup = Setup::new(Backend::Directory(content.path().to_path_buf()));
    setup.proxies = 2;
    let run = Run::start(setup);
    let status = run.status();
    let proxies = status["children"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["role"] == "proxy")
        .count();
    assert_eq!(proxies, 2, "{status}");
    for _ in 0..10 {
        assert_serves_content(&run, &files);
    }
    stop_and_check_nothing_left(run);
}

#[test]
fn an_origin_that_refuses_is_logged_at_warn_with_the_path_and_the_reason() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let refused = closed.local_addr().unwrap();
    drop(closed);
    let mut setup = Setup::new(Backend::Memory);
    setup.origin = Some(format!("http://{refused}"));
    let run = Run::start(setup);
    for _ in 0..20 {
        assert_eq!(run.get("/nowhere.txt"), Ok(Reply::Error));
    }
    let line = wait_for("the origin failure in the log", DEADLINE, || {
        run.log_text()
            .lines()
            .find(|l| l.contains("origin failed"))
            .map(str::to_owned)
    });
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("/nowhere.txt"), "{line}");
    assert!(line.to_lowercase().contains("refused"), "{line}");
    // Twenty failures within a second: at most two lines, not twenty.
    let lines = run.log_text().matches("origin failed").count();
    assert!(lines <= 2, "{lines} warnings for one dead origin");
    stop_and_check_nothing_left(run);
}
