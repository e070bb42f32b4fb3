//! Black-box tests of the metrics endpoint: promtool finds nothing, counters move.
mod common;

use common::*;

#[test]
fn metrics_pass_promtool_and_counters_move_with_requests() {
    let content = tempfile::tempdir().unwrap();
    let files = make_content(content.path());
    let run = Run::start(Setup::new(Backend::Directory(content.path().to_path_buf())));
    assert_eq!(http_get(run.metrics, "/healthz").unwrap().0, 200);
    assert_eq!(http_get(run.metrics, "/nope").unwrap().0, 404);

    let before = run.metrics_text();
    let ok_before = metric_value(&before, "gfcache_requests_total{status=\"ok\"}").unwrap_or(0.0);
    let bytes_before = metric_value(&before, "gfcache_response_bytes_total").unwrap_or(0.0);
    let mut served = 0u64;
    for (path, body) in &files {
        assert_eq!(run.get(path), Ok(Reply::Ok(body.clone())));
        served += body.len() as u64;
    }
    assert_eq!(run.get("/missing"), Ok(Reply::FileNotFound));
    // A connection that sends nothing is counted as reading its header while it is open.
    let idle = std::net::TcpStream::connect(run.proxy).unwrap();
    let after = wait_for("the counters to move", DEADLINE, || {
        let text = run.metrics_text();
        let ok = metric_value(&text, "gfcache_requests_total{status=\"ok\"}")?;
        let reading = metric_value(&text, "gfcache_connections{state=\"reading_header\"}")?;
        (ok >= ok_before + files.len() as f64 && reading >= 1.0).then_some(text)
    });
    drop(idle);
    assert!(
        metric_value(&after, "gfcache_response_bytes_total").unwrap()
            >= bytes_before + served as f64,
        "{after}"
    );
    assert!(
        metric_value(&after, "gfcache_requests_total{status=\"file_not_found\"}").unwrap() >= 1.0,
        "{after}"
    );
    assert!(
        metric_value(&after, "gfcache_cache_lookups_total{result=\"hit\"}").unwrap()
            >= files.len() as f64,
        "{after}"
    );
    assert!(
        metric_value(
            &after,
            "gfcache_request_duration_seconds_count{outcome=\"hit\"}"
        )
        .unwrap()
            >= files.len() as f64,
        "{after}"
    );
    for name in [
        "gfcache_child_up{role=\"proxy\",slot=\"0\"}",
        "gfcache_child_up{role=\"cache\",slot=\"1\"}",
        "gfcache_child_restarts_total{role=\"cache\",slot=\"0\"}",
        "gfcache_backend_objects{slot=\"0\"}",
        "gfcache_backend_bytes{slot=\"0\"}",
        "gfcache_backend_evictions_total{slot=\"0\"}",
        "gfcache_segments{state=\"free\"}",
        "gfcache_connections{state=\"reading_header\"}",
        "gfcache_connections{state=\"waiting_for_worker\"}",
        "gfcache_connections{state=\"sending\"}",
        "gfcache_connections{state=\"idle\"}",
        "gfcache_connections{state=\"closing\"}",
        "gfcache_connections_refused_total",
        "gfcache_header_timeouts_total",
        "gfcache_send_timeouts_total",
        "gfcache_ready",
        "process_resident_memory_bytes",
    ] {
        assert!(
            metric_value(&after, name).is_some(),
            "{name} missing:\n{after}"
        );
    }
    let served_by_caches: f64 = (0..2)
        .filter_map(|s| {
            metric_value(
                &after,
                &format!("gfcache_cache_requests_total{{slot=\"{s}\",result=\"hit\"}}"),
            )
        })
        .sum();
    assert!(served_by_caches >= files.len() as f64, "{after}");

    match supervisor::promtool::check_metrics(&after) {
        Ok(()) => {}
        Err(supervisor::promtool::PromtoolError::Missing) if std::env::var_os("CI").is_none() => {
            eprintln!("note: promtool is not on PATH: skipping `promtool check metrics` (required when CI is set)");
        }
        Err(e) => panic!("{e}\n{after}"),
    }
}
