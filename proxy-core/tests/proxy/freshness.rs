//! Freshness against a real HTTP origin whose caching headers each test sets: what is stored,
//! for how long, revalidation (304 keeps the body, 200 replaces it), stale-while-revalidate,
//! stale-if-error, negative caching, collapsing of revalidations, metadata across a cache
//! restart. GetFile clients: the proxy decides (GetFile carries no headers).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use gfprotocol::Status;
use proxy_core::metrics::Counter;

use crate::common::{self, Backend, CacheChild, Fetched, Rig};

/// One resource the origin serves.
#[derive(Clone)]
struct Resource {
    status: u16,
    body: Arc<Vec<u8>>,
    etag: Option<String>,
    headers: Vec<(String, String)>,
}

#[derive(Default)]
struct OriginState {
    resources: HashMap<String, Resource>,
    full: HashMap<String, usize>,
    conditional: HashMap<String, usize>,
    /// Every answer is this status (the origin failing).
    failing: Option<u16>,
    /// Conditional requests wait until this is cleared.
    hold_conditional: bool,
}

/// A tiny_http origin on 127.0.0.1:0 that answers If-None-Match with 304 and counts full and
/// conditional requests per path.
struct FreshOrigin {
    addr: SocketAddr,
    server: Option<Arc<tiny_http::Server>>,
    state: Arc<(Mutex<OriginState>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl FreshOrigin {
    fn start() -> FreshOrigin {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("origin bind"));
        let addr = server.server_addr().to_ip().expect("an IP origin");
        let state: Arc<(Mutex<OriginState>, Condvar)> = Arc::default();
        let thread = {
            let server = Arc::clone(&server);
            let state = Arc::clone(&state);
            thread::spawn(move || {
                for request in server.incoming_requests() {
                    let state = Arc::clone(&state);
                    thread::spawn(move || answer(request, &state));
                }
            })
        };
        FreshOrigin {
            addr,
            server: Some(server),
            state,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn with_state<T>(&self, f: impl FnOnce(&mut OriginState) -> T) -> T {
        let (state, changed) = &*self.state;
        let result = f(&mut state.lock().expect("origin state"));
        changed.notify_all();
        result
    }

    /// Serves `body` at `path` with these caching headers and, if given, this ETag.
    fn set(&self, path: &str, body: &[u8], etag: Option<&str>, headers: &[(&str, &str)]) {
        let resource = Resource {
            status: 200,
            body: Arc::new(body.to_vec()),
            etag: etag.map(str::to_owned),
            headers: headers
                .iter()
                .map(|(name, value)| (name.to_string(), value.to_string()))
                .collect(),
        };
        self.with_state(|state| state.resources.insert(path.to_owned(), resource));
    }

    fn set_status(&self, path: &str, status: u16) {
        self.with_state(|state| {
            let resource = Resource {
                status,
                body: Arc::default(),
                etag: None,
                headers: Vec::new(),
            };
            state.resources.insert(path.to_owned(), resource)
        });
    }

    fn fail_with(&self, status: Option<u16>) {
        self.with_state(|state| state.failing = status);
    }

    fn hold_conditional(&self, hold: bool) {
        self.with_state(|state| state.hold_conditional = hold);
    }

    fn full(&self, path: &str) -> usize {
        self.with_state(|state| state.full.get(path).copied().unwrap_or(0))
    }

    fn conditional(&self, path: &str) -> usize {
        self.with_state(|state| state.conditional.get(path).copied().unwrap_or(0))
    }

    /// Closes the listening socket: connections are refused from now on.
    fn stop(&mut self) {
        self.hold_conditional(false);
        if let Some(server) = self.server.take() {
            server.unblock();
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

impl Drop for FreshOrigin {
    fn drop(&mut self) {
        self.stop();
    }
}

fn header(name: &str, value: &str) -> tiny_http::Header {
    tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("header")
}

fn answer(request: tiny_http::Request, state: &(Mutex<OriginState>, Condvar)) {
    let path = request.url().to_owned();
    let field = |name: &'static str| {
        request
            .headers()
            .iter()
            .find(|h| h.field.equiv(name))
            .map(|h| h.value.as_str().to_owned())
    };
    let if_none_match = field("If-None-Match");
    let if_modified_since = field("If-Modified-Since");
    let conditional = if_none_match.is_some() || if_modified_since.is_some();
    let (lock, changed) = state;
    let mut guard = lock.lock().expect("origin state");
    let counts = match conditional {
        true => &mut guard.conditional,
        false => &mut guard.full,
    };
    *counts.entry(path.clone()).or_insert(0) += 1;
    while conditional && guard.hold_conditional {
        guard = changed.wait(guard).expect("origin state");
    }
    if let Some(status) = guard.failing {
        drop(guard);
        let _ = request.respond(tiny_http::Response::empty(status));
        return;
    }
    let Some(resource) = guard.resources.get(&path).cloned() else {
        drop(guard);
        let _ = request.respond(tiny_http::Response::empty(404));
        return;
    };
    drop(guard);
    let last_modified = resource
        .headers
        .iter()
        .find(|(name, _)| name == "Last-Modified")
        .and_then(|(_, value)| httpdate::parse_http_date(value).ok());
    let unmodified_since = match (&if_none_match, &if_modified_since, last_modified) {
        (None, Some(since), Some(modified)) => httpdate::parse_http_date(since)
            .ok()
            .is_some_and(|since| modified <= since),
        _ => false,
    };
    let not_modified =
        (resource.etag.is_some() && if_none_match == resource.etag) || unmodified_since;
    let (status, body) = match not_modified {
        true => (304, Vec::new()),
        false => (resource.status, resource.body.to_vec()),
    };
    let mut response = tiny_http::Response::from_data(body)
        .with_status_code(status)
        .with_chunked_threshold(usize::MAX);
    if let Some(etag) = &resource.etag {
        response.add_header(header("ETag", etag));
    }
    for (name, value) in &resource.headers {
        response.add_header(header(name, value));
    }
    let _ = request.respond(response);
}

fn rig_for(origin: &FreshOrigin, tune: impl FnOnce(&mut proxy_core::ProxySettings)) -> Rig {
    let mut config = common::proxy_config(Some(origin.url()));
    config.settings.default_ttl = Duration::ZERO;
    tune(&mut config.settings);
    Rig::start(16, &[Backend::Memory], config)
}

fn fetch_body(rig: &Rig, path: &str) -> Vec<u8> {
    match common::fetch(&rig.addr(), path) {
        Fetched::Ok(body) => body,
        other => panic!("{path}: expected OK, got {other:?}"),
    }
}

/// Fetches `path` once, as a miss that is filled, and waits for the fill.
fn fill(rig: &Rig, path: &str, expected: &[u8]) {
    let stored = rig.counter(Counter::FillsStored);
    assert_eq!(fetch_body(rig, path), expected);
    rig.wait_counter(Counter::FillsStored, stored + 1);
}

#[test]
fn max_age_s_maxage_and_expires_keep_a_copy_fresh() {
    let origin = FreshOrigin::start();
    let later = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(3600));
    origin.set("/max-age", b"m", None, &[("Cache-Control", "max-age=3600")]);
    origin.set(
        "/s-maxage",
        b"s",
        None,
        &[("Cache-Control", "max-age=0, s-maxage=3600")],
    );
    origin.set("/expires", b"e", None, &[("Expires", &later)]);
    let rig = rig_for(&origin, |_| {});
    for (path, body) in [("/max-age", b"m"), ("/s-maxage", b"s"), ("/expires", b"e")] {
        fill(&rig, path, body);
        for _ in 0..3 {
            assert_eq!(fetch_body(&rig, path), body);
        }
        assert_eq!(origin.full(path), 1, "{path}: one origin request");
        assert_eq!(origin.conditional(path), 0, "{path}");
    }
}

#[test]
fn no_store_private_and_vary_star_are_fetched_every_time_and_never_stored() {
    let origin = FreshOrigin::start();
    origin.set("/no-store", b"n", None, &[("Cache-Control", "no-store")]);
    origin.set(
        "/private",
        b"p",
        None,
        &[("Cache-Control", "private, max-age=600")],
    );
    let rig = rig_for(&origin, |settings| {
        settings.default_ttl = Duration::from_secs(3600)
    });
    // `Vary: *`: the answer fits no other request (RFC 9111 section 4.1).
    origin.set(
        "/vary-star",
        b"v",
        None,
        &[("Cache-Control", "max-age=600"), ("Vary", "Accept, *")],
    );
    for (path, body) in [
        ("/no-store", b"n"),
        ("/private", b"p"),
        ("/vary-star", b"v"),
    ] {
        for _ in 0..3 {
            assert_eq!(fetch_body(&rig, path), body);
        }
        assert_eq!(origin.full(path), 3, "{path}");
    }
    assert_eq!(rig.counter(Counter::FillsStored), 0);
}

#[test]
fn no_cache_and_a_zero_default_ttl_revalidate_every_time_and_a_304_keeps_the_body() {
    let origin = FreshOrigin::start();
    let body = common::content(7, 300 * 1024);
    origin.set(
        "/no-cache",
        &body,
        Some("\"v1\""),
        &[("Cache-Control", "no-cache, max-age=600")],
    );
    origin.set("/silent", &body, Some("\"v1\""), &[]);
    let rig = rig_for(&origin, |_| {});
    for path in ["/no-cache", "/silent"] {
        fill(&rig, path, &body);
        let stored = rig.counter(Counter::FillsStored);
        for round in 1..=3 {
            assert_eq!(fetch_body(&rig, path), body, "{path} round {round}");
            assert_eq!(
                origin.conditional(path),
                round,
                "{path}: a revalidation each time"
            );
        }
        assert_eq!(origin.full(path), 1, "{path}: the body moved once");
        assert_eq!(
            rig.counter(Counter::FillsStored),
            stored,
            "a 304 fills nothing"
        );
    }
    assert_eq!(rig.counter(Counter::OriginNotModified), 6);
    assert_eq!(rig.counter(Counter::LookupRevalidated), 6);
}

#[test]
fn default_ttl_keeps_a_silent_answer_that_long() {
    let origin = FreshOrigin::start();
    origin.set("/silent", b"quiet", Some("\"q\""), &[]);
    let rig = rig_for(&origin, |settings| {
        settings.default_ttl = Duration::from_secs(3600)
    });
    fill(&rig, "/silent", b"quiet");
    assert_eq!(fetch_body(&rig, "/silent"), b"quiet");
    assert_eq!(
        (origin.full("/silent"), origin.conditional("/silent")),
        (1, 0)
    );
}

#[test]
fn a_change_at_the_origin_after_expiry_reaches_the_clients() {
    let origin = FreshOrigin::start();
    origin.set(
        "/page",
        b"version one",
        Some("\"1\""),
        &[("Cache-Control", "max-age=0")],
    );
    let rig = rig_for(&origin, |_| {});
    fill(&rig, "/page", b"version one");
    origin.set(
        "/page",
        b"version two!",
        Some("\"2\""),
        &[("Cache-Control", "max-age=0")],
    );
    let stored = rig.counter(Counter::FillsStored);
    assert_eq!(fetch_body(&rig, "/page"), b"version two!");
    rig.wait_counter(Counter::FillsStored, stored + 1);
    // The new copy is what the next revalidation keeps.
    assert_eq!(fetch_body(&rig, "/page"), b"version two!");
    assert_eq!(origin.conditional("/page"), 2);
    assert_eq!(rig.counter(Counter::OriginNotModified), 1);
}

#[test]
fn stale_while_revalidate_serves_at_once_and_refreshes_once_in_the_background() {
    let origin = FreshOrigin::start();
    origin.set(
        "/swr",
        b"stale but quick",
        Some("\"s\""),
        &[("Cache-Control", "max-age=0, stale-while-revalidate=600")],
    );
    let rig = rig_for(&origin, |_| {});
    fill(&rig, "/swr", b"stale but quick");
    // The refresh hangs at the origin: every request meanwhile is still answered at once.
    origin.hold_conditional(true);
    for _ in 0..10 {
        assert_eq!(fetch_body(&rig, "/swr"), b"stale but quick");
    }
    common::wait_for("the background refresh", Duration::from_secs(20), || {
        origin.conditional("/swr") == 1
    });
    assert_eq!(rig.counter(Counter::LookupStale), 10);
    origin.hold_conditional(false);
    rig.wait_counter(Counter::OriginNotModified, 1);
    assert_eq!(rig.counter(Counter::BackgroundRefreshes), 1);
    assert_eq!((origin.full("/swr"), origin.conditional("/swr")), (1, 1));
}

#[test]
fn stale_if_error_serves_the_copy_while_the_origin_fails_or_is_down() {
    let mut origin = FreshOrigin::start();
    origin.set(
        "/sie",
        b"still here",
        Some("\"e\""),
        &[("Cache-Control", "max-age=0")],
    );
    origin.set(
        "/strict",
        b"strict",
        Some("\"t\""),
        &[("Cache-Control", "max-age=0, must-revalidate")],
    );
    let rig = rig_for(&origin, |_| {});
    fill(&rig, "/sie", b"still here");
    fill(&rig, "/strict", b"strict");
    origin.fail_with(Some(503));
    assert_eq!(fetch_body(&rig, "/sie"), b"still here");
    // must-revalidate forbids a stale copy: the failure shows.
    common::fetch_status(&rig.addr(), "/strict", Status::Error);
    origin.stop();
    assert_eq!(fetch_body(&rig, "/sie"), b"still here");
    common::fetch_status(&rig.addr(), "/strict", Status::Error);
    assert_eq!(rig.counter(Counter::LookupStale), 2);
}

#[test]
fn a_stale_copy_past_stale_if_error_is_not_served() {
    let origin = FreshOrigin::start();
    origin.set(
        "/old",
        b"old",
        Some("\"o\""),
        &[("Cache-Control", "max-age=0, stale-if-error=0")],
    );
    let rig = rig_for(&origin, |_| {});
    fill(&rig, "/old", b"old");
    origin.fail_with(Some(500));
    common::fetch_status(&rig.addr(), "/old", Status::Error);
}

#[test]
fn negative_answers_are_stored_only_with_negative_ttl() {
    let origin = FreshOrigin::start();
    origin.set_status("/gone", 404);
    origin.set_status("/removed", 410);
    let plain = rig_for(&origin, |_| {});
    for _ in 0..2 {
        common::fetch_status(&plain.addr(), "/gone", Status::FileNotFound);
    }
    assert_eq!(origin.full("/gone"), 2);
    drop(plain);

    let negative = rig_for(&origin, |settings| {
        settings.negative_ttl = Some(Duration::from_secs(600))
    });
    for path in ["/gone", "/removed"] {
        let before = origin.full(path);
        common::fetch_status(&negative.addr(), path, Status::FileNotFound);
        common::wait_for("the negative entry", Duration::from_secs(20), || {
            negative.counter(Counter::FillsStored) >= 1
        });
        common::fetch_status(&negative.addr(), path, Status::FileNotFound);
        assert_eq!(
            origin.full(path),
            before + 1,
            "{path}: answered from the cache"
        );
    }
}

#[test]
fn a_hundred_requests_for_one_expired_object_make_one_origin_request() {
    let origin = FreshOrigin::start();
    let body = common::content(9, 64 * 1024);
    origin.set(
        "/hot",
        &body,
        Some("\"h\""),
        &[("Cache-Control", "max-age=0")],
    );
    let rig = rig_for(&origin, |settings| settings.threads = 128);
    fill(&rig, "/hot", &body);
    origin.hold_conditional(true);
    let addr = rig.addr();
    let clients: Vec<_> = (0..100)
        .map(|_| {
            let addr = addr.clone();
            thread::spawn(move || common::fetch(&addr, "/hot"))
        })
        .collect();
    common::wait_for(
        "99 requests waiting on the leader",
        Duration::from_secs(30),
        || rig.counter(Counter::Collapsed) >= 99,
    );
    origin.hold_conditional(false);
    for client in clients {
        match client.join().expect("client") {
            Fetched::Ok(got) => assert!(got == body),
            other => panic!("expected OK, got {other:?}"),
        }
    }
    assert_eq!((origin.full("/hot"), origin.conditional("/hot")), (1, 1));
}

#[test]
fn metadata_survives_a_cache_restart_in_a_writable_directory() {
    let origin = FreshOrigin::start();
    origin.set(
        "/kept",
        b"kept across restarts",
        Some("\"k\""),
        &[("Cache-Control", "max-age=3600")],
    );
    let root = tempfile::TempDir::new().expect("temp dir");
    let backend = Backend::WritableDirectory(root.path().to_path_buf());
    let mut config = common::proxy_config(Some(origin.url()));
    config.settings.default_ttl = Duration::ZERO;
    let mut rig = Rig::start(16, std::slice::from_ref(&backend), config);
    fill(&rig, "/kept", b"kept across restarts");
    rig.caches.clear();
    rig.caches
        .push(CacheChild::start(&rig.region, 0, 1, &backend));
    // Still fresh for an hour: no origin request, even though default_ttl is 0.
    assert_eq!(fetch_body(&rig, "/kept"), b"kept across restarts");
    assert_eq!((origin.full("/kept"), origin.conditional("/kept")), (1, 0));
}

/// One HTTP/1.1 GET over a raw socket; the response head and body.
fn http_get(addr: SocketAddr, path: &str, extra: &str) -> (String, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{extra}\r\n"
    )
    .expect("request");
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes).expect("response");
    let split = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head");
    let head = String::from_utf8_lossy(&bytes[..split]).into_owned();
    (head, bytes[split + 4..].to_vec())
}

#[test]
fn http_answers_carry_the_origin_validators_type_and_age() {
    let origin = FreshOrigin::start();
    origin.set(
        "/styled",
        b"body { }",
        Some("\"css-1\""),
        &[
            ("Cache-Control", "max-age=3600"),
            ("Content-Type", "text/css"),
            ("Age", "100"),
            ("Last-Modified", "Tue, 01 Dec 2026 10:00:00 GMT"),
        ],
    );
    let mut config = common::proxy_config(Some(origin.url()));
    config.settings.http_listen = Some("127.0.0.1:0".parse().expect("addr"));
    let rig = Rig::start(16, &[Backend::Memory], config);
    let http = rig
        .proxy
        .as_ref()
        .and_then(|proxy| proxy.http_addr())
        .expect("an HTTP listener");
    let (miss, body) = http_get(http, "/styled", "");
    assert_eq!(body, b"body { }");
    assert!(miss.contains("\r\nETag: \"css-1\""), "{miss}");
    assert!(miss.contains("\r\nContent-Type: text/css"), "{miss}");
    rig.wait_counter(Counter::FillsStored, 1);
    let (hit, _) = http_get(http, "/styled", "");
    assert!(hit.contains("\r\nX-Cache: HIT"), "{hit}");
    assert!(hit.contains("\r\nETag: \"css-1\""), "{hit}");
    assert!(hit.contains("\r\nContent-Type: text/css"), "{hit}");
    assert!(
        hit.contains("\r\nLast-Modified: Tue, 01 Dec 2026 10:00:00 GMT"),
        "{hit}"
    );
    let age: u64 = hit
        .lines()
        .find_map(|line| line.strip_prefix("Age: "))
        .and_then(|age| age.trim().parse().ok())
        .expect("an Age field");
    assert!((100..200).contains(&age), "age {age}");
    let (not_modified, _) = http_get(http, "/styled", "If-None-Match: \"css-1\"\r\n");
    assert!(not_modified.starts_with("HTTP/1.1 304"), "{not_modified}");
}

#[test]
fn a_pack_built_with_a_ttl_is_revalidated_once_stale_and_kept_fresh_by_the_304() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let tree = dir.path().join("tree");
    std::fs::create_dir(&tree).expect("tree");
    std::fs::write(tree.join("p.txt"), b"packed").expect("file");
    let modified = std::fs::metadata(tree.join("p.txt"))
        .and_then(|meta| meta.modified())
        .expect("mtime");
    let pack = dir.path().join("content.pack");
    let options = cache_backends::BuildOptions {
        ttl: Some(Duration::ZERO),
    };
    cache_backends::build_pack_with(&tree, &pack, &options).expect("build the pack");
    let origin = FreshOrigin::start();
    let last_modified = httpdate::fmt_http_date(modified);
    origin.set(
        "/p.txt",
        b"packed",
        Some("\"the-origin-s-own\""),
        &[
            ("Cache-Control", "max-age=3600"),
            ("Last-Modified", &last_modified),
        ],
    );
    let mut config = common::proxy_config(Some(origin.url()));
    config.settings.default_ttl = Duration::ZERO;
    let rig = Rig::start(16, &[Backend::Pack(pack)], config);
    // Stale from the start (--ttl 0s): revalidated with If-Modified-Since (the pack's made-up
    // ETag is never sent), kept by the 304, then fresh for the hour it gave.
    for _ in 0..3 {
        assert_eq!(fetch_body(&rig, "/p.txt"), b"packed");
    }
    assert_eq!(
        (origin.full("/p.txt"), origin.conditional("/p.txt")),
        (0, 1)
    );
    assert_eq!(rig.counter(Counter::LookupRevalidated), 1);
    assert_eq!(rig.counter(Counter::LookupHits), 2);
}
