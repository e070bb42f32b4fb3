//! Black-box tests of the HTTP/1.1 front end (`proxy.http_listen`): a real gfsupervisor driven
//! by real clients (curl, Python's http.client) and, for what no client sends, by raw sockets.
//! Every run stops with `stop_and_check_nothing_left` (or the `Run` guard's cleanup).
mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const GFSERVER: &str = env!("CARGO_BIN_EXE_gfserver");

// ---------------------------------------------------------------------------------------------
// Content and runs

/// The common content tree, plus a file beside the root that no request may reach.
struct Content {
    dir: tempfile::TempDir,
    files: Vec<(String, Vec<u8>)>,
}

impl Content {
    fn new() -> Content {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        std::fs::create_dir(&root).expect("mkdir root");
        let files = make_content(&root);
        std::fs::write(dir.path().join("secret.txt"), b"outside the root\n").expect("secret");
        Content { dir, files }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn body(&self, path: &str) -> &[u8] {
        self.files
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, b)| b.as_slice())
            .unwrap_or_else(|| panic!("no {path} in the content"))
    }

    fn file(&self, path: &str) -> PathBuf {
        self.root().join(path.trim_start_matches('/'))
    }

    /// Writes `/large.bin`, larger than the socket buffers of both ends together, so that
    /// most of its answer is still queued in the server when a client stops reading.
    fn add_large(&self) -> Vec<u8> {
        let large: Vec<u8> = (0..LARGE_LEN)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        std::fs::write(self.file(LARGE), &large).expect("write large.bin");
        large
    }
}

const LARGE: &str = "/large.bin";
const LARGE_LEN: u32 = 8 << 20;

const BIG: &str = "/img/big.bin";

/// A directory-backed run with the HTTP front end and `extra` lines in `[proxy]`.
fn directory_run(content: &Content, extra: &[&str]) -> (Run, SocketAddr) {
    let mut setup = Setup::new(Backend::Directory(content.root())).with_http();
    setup.proxy_extra = extra.iter().map(|l| l.to_string()).collect();
    start(setup)
}

fn start(setup: Setup) -> (Run, SocketAddr) {
    let run = Run::start(setup);
    let http = run.http.expect("the setup has http_listen");
    (run, http)
}

// ---------------------------------------------------------------------------------------------
// curl

/// One transfer of a curl run: `-w '%{json}%{header_json}'` and the body written by `-o`.
struct Transfer {
    info: serde_json::Value,
    headers: serde_json::Value,
    body: Vec<u8>,
}

impl Transfer {
    fn code(&self) -> u64 {
        self.info["http_code"].as_u64().unwrap_or(0)
    }

    /// The first value of a response header (curl lowercases the names).
    fn header(&self, name: &str) -> Option<String> {
        self.headers[name][0].as_str().map(str::to_string)
    }

    fn connects(&self) -> u64 {
        self.info["num_connects"].as_u64().unwrap_or(0)
    }

    fn local_port(&self) -> u64 {
        self.info["local_port"].as_u64().unwrap_or(0)
    }
}

static BODY_FILES: AtomicUsize = AtomicUsize::new(0);

/// Runs `curl args... URL...` (one connection cache for all URLs, as curl does) and returns a
/// transfer per URL. Panics if curl fails.
fn curl(out_dir: &Path, args: &[&str], urls: &[String]) -> Vec<Transfer> {
    let mut command = Command::new("curl");
    command
        .args(["--silent", "--show-error", "--max-time", "20"])
        .args(["--write-out", "%{json}%{header_json}"])
        .args(args);
    let mut bodies = Vec::new();
    for url in urls {
        let body = out_dir.join(format!(
            "body-{}",
            BODY_FILES.fetch_add(1, Ordering::Relaxed)
        ));
        command.arg("--output").arg(&body).arg(url);
        bodies.push(body);
    }
    let out = command
        .output()
        .expect("run curl (the tests need curl on PATH; .ci/run installs it)");
    assert!(
        out.status.success(),
        "curl {args:?} {urls:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let values: Vec<serde_json::Value> = serde_json::Deserializer::from_slice(&out.stdout)
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("curl's write-out is JSON");
    assert_eq!(values.len(), 2 * urls.len(), "{values:?}");
    values
        .chunks(2)
        .zip(bodies)
        .map(|(pair, body)| Transfer {
            info: pair[0].clone(),
            headers: pair[1].clone(),
            body: std::fs::read(body).unwrap_or_default(),
        })
        .collect()
}

fn url(addr: SocketAddr, path: &str) -> String {
    format!("http://{addr}{path}")
}

/// One curl transfer of `path`.
fn curl_one(out_dir: &Path, args: &[&str], addr: SocketAddr, path: &str) -> Transfer {
    curl(out_dir, args, &[url(addr, path)])
        .pop()
        .expect("one transfer")
}

// ---------------------------------------------------------------------------------------------
// Raw sockets

/// A parsed response: status, headers (names lowercased) and body.
#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

/// Parses one response from the start of `buf`: `Some((response, bytes used))` once complete.
/// `head_only`: the answer to a HEAD (no body whatever Content-Length says).
fn parse_response(buf: &[u8], head_only: bool) -> Result<Option<(Response, usize)>, String> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| "head not UTF-8".to_string())?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("bad header line {line:?}"))?;
        headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
    }
    let mut response = Response {
        status,
        headers,
        body: Vec::new(),
    };
    let body_len = match (
        head_only || status == 304,
        response.header("content-length"),
    ) {
        (true, _) | (false, None) => 0,
        (false, Some(len)) => len.parse().map_err(|_| format!("bad length {len:?}"))?,
    };
    let start = end + 4;
    if buf.len() < start + body_len {
        return Ok(None);
    }
    response.body = buf[start..start + body_len].to_vec();
    Ok(Some((response, start + body_len)))
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("read timeout");
    stream
}

/// Reads until `heads.len()` responses are complete (`heads[i]`: the i-th answers a HEAD).
/// Bytes past them stay in `buf`.
fn read_responses(stream: &mut TcpStream, buf: &mut Vec<u8>, heads: &[bool]) -> Vec<Response> {
    let deadline = Instant::now() + DEADLINE;
    let mut responses = Vec::new();
    let mut chunk = [0u8; 65536];
    while responses.len() < heads.len() {
        match parse_response(buf, heads[responses.len()]).expect("a well-formed response") {
            Some((response, used)) => {
                buf.drain(..used);
                responses.push(response);
                continue;
            }
            None => assert!(
                Instant::now() < deadline,
                "no complete response in time: {:?}",
                String::from_utf8_lossy(buf)
            ),
        }
        match stream.read(&mut chunk) {
            Ok(0) => panic!(
                "connection closed after {} of {} responses; pending {:?}",
                responses.len(),
                heads.len(),
                String::from_utf8_lossy(buf)
            ),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    responses
}

/// Reads until the server closes: the bytes, or an error if it does not close in time (or
/// resets the connection).
fn read_to_eof(stream: &mut TcpStream, limit: Duration) -> Result<Vec<u8>, String> {
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("not closed within {limit:?} ({} bytes)", out.len()));
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(|e| e.to_string())?;
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return Err(format!("{e} after {} bytes", out.len())),
        }
    }
}

/// The body of a 200 answer read raw (`what` names it in a failure).
fn ok_body<'b>(bytes: &'b [u8], what: &str) -> &'b [u8] {
    assert!(
        bytes.starts_with(b"HTTP/1.1 200 OK\r\n"),
        "{what}: not a 200"
    );
    let end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("{what}: no end of head"));
    &bytes[end + 4..]
}

/// Sends `request` on a new connection and reads everything until the server closes.
fn exchange_until_close(addr: SocketAddr, request: &[u8]) -> Result<Vec<u8>, String> {
    let mut stream = connect(addr);
    // The server may refuse the head before it has read all of it (a 431); what it still
    // receives is drained, so the answer arrives anyway.
    let _ = stream.write_all(request);
    read_to_eof(&mut stream, DEADLINE)
}

/// Exactly one response and the close; panics otherwise.
fn one_response_then_close(addr: SocketAddr, request: &[u8], what: &str) -> Response {
    let bytes = exchange_until_close(addr, request).unwrap_or_else(|e| panic!("{what}: {e}"));
    let (response, used) = parse_response(&bytes, false)
        .unwrap_or_else(|e| panic!("{what}: {e}"))
        .unwrap_or_else(|| panic!("{what}: incomplete {:?}", String::from_utf8_lossy(&bytes)));
    assert_eq!(
        used,
        bytes.len(),
        "{what}: bytes after the answer: {:?}",
        String::from_utf8_lossy(&bytes[used..])
    );
    response
}

fn get(path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: gfcache\r\n{extra}\r\n")
}

fn head(path: &str, extra: &str) -> String {
    format!("HEAD {path} HTTP/1.1\r\nHost: gfcache\r\n{extra}\r\n")
}

// ---------------------------------------------------------------------------------------------
// Metrics

/// Waits until `gfcache_http_responses_total{status}` reaches each expected count, then
/// checks that none went past it, and returns the scrape.
fn wait_http_counts(run: &Run, expected: &[(u16, u64)]) -> String {
    let value = |text: &str, status: u16| {
        metric_value(
            text,
            &format!("gfcache_http_responses_total{{status=\"{status}\"}}"),
        )
        .unwrap_or(0.0) as u64
    };
    let text = wait_for("the HTTP counters to move", DEADLINE, || {
        let text = run.metrics_text();
        expected
            .iter()
            .all(|&(status, count)| value(&text, status) >= count)
            .then_some(text)
    });
    for &(status, count) in expected {
        assert_eq!(value(&text, status), count, "status {status}:\n{text}");
    }
    text
}

fn sum_metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

fn check_promtool(text: &str) {
    match supervisor::promtool::check_metrics(text) {
        Ok(()) => {}
        Err(supervisor::promtool::PromtoolError::Missing) if std::env::var_os("CI").is_none() => {
            eprintln!("note: promtool is not on PATH: skipping `promtool check metrics` (required when CI is set)");
        }
        Err(e) => panic!("{e}\n{text}"),
    }
}

// ---------------------------------------------------------------------------------------------
// curl

#[test]
fn curl_reuses_one_connection_and_gets_every_file_byte_exact() {
    let content = Content::new();
    let (run, http) = directory_run(&content, &[]);
    let paths: Vec<&str> = content.files.iter().map(|(p, _)| p.as_str()).collect();
    let urls: Vec<String> = paths.iter().map(|p| url(http, p)).collect();
    let transfers = curl(run.dir.path(), &[], &urls);
    for (path, t) in paths.iter().zip(&transfers) {
        assert_eq!(t.code(), 200, "{path}: {}", t.headers);
        assert_eq!(t.body, content.body(path), "{path}");
        assert_eq!(
            t.header("content-length"),
            Some(content.body(path).len().to_string()),
            "{path}"
        );
        assert_eq!(t.header("server").as_deref(), Some("gfcache"));
        assert_eq!(t.header("x-cache").as_deref(), Some("HIT"), "{path}");
        assert!(t.header("etag").is_some() && t.header("last-modified").is_some());
        assert_eq!(
            t.header("connection"),
            None,
            "HTTP/1.1 kept open says nothing"
        );
    }
    let connects: u64 = transfers.iter().map(Transfer::connects).sum();
    assert_eq!(connects, 1, "one connection for {} URLs", urls.len());
    let port = transfers[0].local_port();
    assert!(transfers.iter().all(|t| t.local_port() == port));
    // GetFile and HTTP answer from the same caches.
    for path in &paths {
        assert_eq!(run.get(path), Ok(Reply::Ok(content.body(path).to_vec())));
    }
    let missing = curl_one(run.dir.path(), &[], http, "/no/such/file.txt");
    assert_eq!(missing.code(), 404);
    assert_eq!(missing.body, b"404 Not Found\n");
    stop_and_check_nothing_left(run);
}

#[test]
fn curl_ranges_answer_206_416_or_the_whole_object() {
    let content = Content::new();
    let (run, http) = directory_run(&content, &[]);
    let big = content.body(BIG);
    let len = big.len();
    let dir = run.dir.path();
    let cases: [(&str, &str, usize, usize); 6] = [
        (BIG, "0-99", 0, 100),
        (BIG, "100-", 100, len),
        (BIG, "-50", len - 50, len),
        // Across the 64 KiB chunks of a 128 KiB segment.
        (BIG, "60000-200000", 60000, 200_001),
        (BIG, "299999-299999", 299_999, len),
        // Past the end of a small file: clamped.
        ("/hello.txt", "0-99", 0, 15),
    ];
    for (path, range, first, end) in cases {
        let t = curl_one(dir, &["--range", range], http, path);
        let whole = content.body(path);
        assert_eq!(t.code(), 206, "{range}: {}", t.headers);
        assert_eq!(t.body, &whole[first..end], "{path} {range}");
        assert_eq!(
            t.header("content-range"),
            Some(format!("bytes {first}-{}/{}", end - 1, whole.len())),
            "{range}"
        );
        assert_eq!(t.header("content-length"), Some((end - first).to_string()));
        assert_eq!(t.header("x-cache").as_deref(), Some("HIT"));
    }
    let unsatisfiable = curl_one(dir, &["--range", "400000-"], http, BIG);
    assert_eq!(unsatisfiable.code(), 416, "{}", unsatisfiable.headers);
    assert_eq!(
        unsatisfiable.header("content-range"),
        Some(format!("bytes */{len}"))
    );
    let empty = curl_one(dir, &["--range", "0-10"], http, "/empty.txt");
    assert_eq!(empty.code(), 416, "any range of an empty object");
    assert_eq!(empty.header("content-range").as_deref(), Some("bytes */0"));
    // Several ranges: the whole object (no multipart/byteranges).
    let several = curl_one(dir, &["--range", "0-1,5-6"], http, BIG);
    assert_eq!(several.code(), 200);
    assert_eq!(several.body, big);
    // A range that does not parse is ignored.
    let reversed = curl_one(dir, &["--header", "Range: bytes=9-1"], http, BIG);
    assert_eq!(reversed.code(), 200);
    assert_eq!(reversed.body, big);
    // Ranges on one connection, each byte-exact.
    let urls = vec![url(http, BIG); 3];
    let kept = curl(dir, &["--range", "1000-1999"], &urls);
    assert_eq!(kept.iter().map(Transfer::connects).sum::<u64>(), 1);
    for t in &kept {
        assert_eq!(t.code(), 206);
        assert_eq!(t.body, &big[1000..2000]);
    }
    stop_and_check_nothing_left(run);
}

#[test]
fn curl_head_answers_the_get_head_without_a_body_and_costs_the_cache_no_error() {
    let content = Content::new();
    let (run, http) = directory_run(&content, &[]);
    let dir = run.dir.path();
    let heads = 4;
    let urls = vec![url(http, BIG); heads];
    let transfers = curl(dir, &["--head"], &urls);
    let get = curl_one(dir, &[], http, BIG);
    for t in &transfers {
        assert_eq!(t.code(), 200);
        assert_eq!(t.info["size_download"], 0, "no body: {}", t.info);
        assert_eq!(t.info["method"], "HEAD");
        for name in [
            "content-length",
            "etag",
            "last-modified",
            "content-type",
            "x-cache",
        ] {
            assert_eq!(t.header(name), get.header(name), "{name}");
        }
        assert_eq!(t.header("content-length"), Some("300000".to_string()));
        assert_eq!(t.header("accept-ranges").as_deref(), Some("bytes"));
    }
    assert_eq!(transfers.iter().map(Transfer::connects).sum::<u64>(), 1);
    assert_eq!(get.body, content.body(BIG));
    // Every HEAD and the GET reached a cache; none of them counts as a failed transfer there
    // (a HEAD asks for no bytes, rather than dropping a transfer mid-object).
    let text = wait_for("the caches to count the requests", DEADLINE, || {
        let text = run.metrics_text();
        let counted = sum_metric(&text, "gfcache_cache_requests_total{");
        (counted >= (heads + 1) as f64).then_some(text)
    });
    let errors: f64 = (0..2)
        .filter_map(|slot| {
            metric_value(
                &text,
                &format!("gfcache_cache_requests_total{{slot=\"{slot}\",result=\"error\"}}"),
            )
        })
        .sum();
    assert_eq!(errors, 0.0, "{text}");
    assert!(
        !run.log_text().contains("request failed"),
        "{}",
        run.log_text()
    );
    stop_and_check_nothing_left(run);
}

#[test]
fn curl_conditionals_answer_304_while_the_file_is_unchanged() {
    let content = Content::new();
    let (run, http) = directory_run(&content, &[]);
    let dir = run.dir.path();
    let path = "/docs/readme.txt";
    let first = curl_one(dir, &[], http, path);
    let etag = first.header("etag").expect("an ETag");
    assert!(
        etag.starts_with('"') && etag.ends_with('"'),
        "strong: {etag}"
    );
    let file = content.file(path);
    let file_arg = file.to_str().expect("UTF-8 temp path");

    // -z FILE: If-Modified-Since the file's own mtime.
    let since = curl_one(dir, &["--time-cond", file_arg], http, path);
    assert_eq!(since.code(), 304, "{}", since.headers);
    assert!(since.body.is_empty());
    assert_eq!(since.header("etag"), Some(etag.clone()));
    assert_eq!(since.header("last-modified"), first.header("last-modified"));
    assert_eq!(since.header("content-length"), None);
    let long_ago = curl_one(
        dir,
        &["--time-cond", "Sat, 01 Jan 2000 00:00:00 GMT"],
        http,
        path,
    );
    assert_eq!(long_ago.code(), 200);
    assert_eq!(long_ago.body, content.body(path));

    let inm = format!("If-None-Match: {etag}");
    let matched = curl_one(dir, &["--header", &inm], http, path);
    assert_eq!(matched.code(), 304);
    assert!(matched.body.is_empty());
    let listed = format!("If-None-Match: \"0000000000000000\", W/{etag}");
    assert_eq!(
        curl_one(dir, &["--header", &listed], http, path).code(),
        304
    );
    let other = curl_one(
        dir,
        &["--header", "If-None-Match: \"0000000000000000\""],
        http,
        path,
    );
    assert_eq!(other.code(), 200);
    assert_eq!(other.body, content.body(path));

    // If-Range: the range only while the ETag still names this version.
    let if_range = format!("If-Range: {etag}");
    let ranged = curl_one(dir, &["--range", "0-9", "--header", &if_range], http, path);
    assert_eq!(ranged.code(), 206);
    assert_eq!(ranged.body, &content.body(path)[..10]);
    let stale = curl_one(
        dir,
        &[
            "--range",
            "0-9",
            "--header",
            "If-Range: \"0000000000000000\"",
        ],
        http,
        path,
    );
    assert_eq!(stale.code(), 200);
    assert_eq!(stale.body, content.body(path));

    // A changed file is another version: the old ETag no longer matches, once the proxy's hot
    // copy of the old one is past proxy.hot_cache_ttl (1 s).
    let changed = b"a new version of the file\n".repeat(7);
    std::fs::write(&file, &changed).expect("rewrite");
    let after = wait_for("the changed file to be served", DEADLINE, || {
        let t = curl_one(dir, &["--header", &inm], http, path);
        (t.code() != 304).then_some(t)
    });
    assert_eq!(after.code(), 200, "{}", after.headers);
    assert_eq!(after.body, changed);
    assert_ne!(after.header("etag"), Some(etag));
    stop_and_check_nothing_left(run);
}

#[test]
fn curl_http10_closes_unless_it_asks_for_keep_alive() {
    let content = Content::new();
    let (run, http) = directory_run(&content, &[]);
    let dir = run.dir.path();
    let urls = vec![url(http, "/hello.txt"), url(http, "/index.html")];
    let closed = curl(dir, &["--http1.0"], &urls);
    assert_eq!(closed.iter().map(Transfer::connects).sum::<u64>(), 2);
    for t in &closed {
        assert_eq!(t.code(), 200);
        assert_eq!(t.header("connection").as_deref(), Some("close"));
    }
    let kept = curl(
        dir,
        &["--http1.0", "--header", "Connection: keep-alive"],
        &urls,
    );
    assert_eq!(kept.iter().map(Transfer::connects).sum::<u64>(), 1);
    for (t, path) in kept.iter().zip(["/hello.txt", "/index.html"]) {
        assert_eq!(t.code(), 200);
        assert_eq!(t.header("connection").as_deref(), Some("keep-alive"));
        assert_eq!(t.body, content.body(path));
    }
    // The status line is always HTTP/1.1, the version the server speaks.
    assert_eq!(kept[0].info["http_version"], "1.1");
    stop_and_check_nothing_left(run);
}

// ---------------------------------------------------------------------------------------------
// Python http.client

const PYTHON_CLIENT: &str = r#"
import http.client, json, sys
port, requests = int(sys.argv[1]), json.loads(sys.argv[2])
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
out = []
for method, path, headers in requests:
    conn.request(method, path, headers=headers)
    local_port = conn.sock.getsockname()[1]
    response = conn.getresponse()
    body = response.read()
    out.append({"status": response.status, "local_port": local_port, "body": body.hex(),
                "headers": {k.lower(): v for k, v in response.getheaders()}})
conn.close()
print(json.dumps(out))
"#;

#[test]
fn python_http_client_keeps_one_connection_for_get_head_range_and_404() {
    let content = Content::new();
    let (run, http) = directory_run(&content, &[]);
    let requests = serde_json::json!([
        ["GET", "/hello.txt", {}],
        ["HEAD", BIG, {}],
        ["GET", BIG, {"Range": "bytes=10-19"}],
        ["GET", "/missing.txt", {}],
        ["GET", "/docs/readme.txt", {}],
    ]);
    let out = Command::new("python3")
        .arg("-c")
        .arg(PYTHON_CLIENT)
        .arg(http.port().to_string())
        .arg(requests.to_string())
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "python3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answers: Vec<serde_json::Value> =
        serde_json::from_slice(&out.stdout).expect("the script prints JSON");
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let expect = [
        (200, hex(content.body("/hello.txt"))),
        (200, String::new()),
        (206, hex(&content.body(BIG)[10..20])),
        (404, hex(b"404 Not Found\n")),
        (200, hex(content.body("/docs/readme.txt"))),
    ];
    for (answer, (status, body)) in answers.iter().zip(expect) {
        assert_eq!(answer["status"], status, "{answer}");
        assert_eq!(answer["body"], body, "{answer}");
    }
    assert_eq!(answers[1]["headers"]["content-length"], "300000");
    assert_eq!(answers[2]["headers"]["content-range"], "bytes 10-19/300000");
    let port = &answers[0]["local_port"];
    assert!(
        answers.iter().all(|a| &a["local_port"] == port),
        "one connection: {answers:?}"
    );
    stop_and_check_nothing_left(run);
}

// ---------------------------------------------------------------------------------------------
// Raw sockets: pipelining, refusals, bodies, timeouts

/// Sends `burst` (pipelined requests, the last one closing) at once and parses the answers up
/// to the close, one per entry of `heads` (true: the answer to a HEAD); nothing may follow.
fn burst_answers(stream: &mut TcpStream, burst: &str, heads: &[bool]) -> Vec<Response> {
    stream.write_all(burst.as_bytes()).expect("send the burst");
    let bytes = read_to_eof(stream, DEADLINE).expect("closed after the last");
    let mut rest = bytes.as_slice();
    let mut answers = Vec::new();
    for &head_only in heads {
        let (response, used) = parse_response(rest, head_only)
            .expect("well-formed")
            .unwrap_or_else(|| panic!("{} answers only", answers.len()));
        rest = &rest[used..];
        answers.push(response);
    }
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(rest));
    answers
}

#[test]
fn pipelined_requests_are_answered_in_order_byte_exact() {
    let content = Content::new();
    let (run, http) = directory_run(&content, &[]);
    let mut stream = connect(http);
    let burst = [
        get("/hello.txt", ""),
        get(BIG, ""),
        head("/docs/readme.txt", ""),
        get(BIG, "Range: bytes=299990-\r\n"),
        get("/missing", ""),
        get("/index.html", "Connection: close\r\n"),
    ]
    .concat();
    let answers = burst_answers(
        &mut stream,
        &burst,
        &[false, false, true, false, false, false],
    );
    let statuses: Vec<u16> = answers.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 200, 200, 206, 404, 200]);
    assert_eq!(answers[0].body, content.body("/hello.txt"));
    assert_eq!(answers[1].body, content.body(BIG));
    assert_eq!(answers[2].header("content-length"), Some("2500"));
    assert_eq!(answers[3].body, &content.body(BIG)[299_990..]);
    assert_eq!(answers[5].body, content.body("/index.html"));
    assert!(answers[..5].iter().all(|r| !r.closes()));
    assert!(answers[5].closes());

    // Pipelined in pieces that split heads anywhere.
    let mut stream = connect(http);
    let two = [get("/hello.txt", ""), get("/index.html", "")].concat();
    for piece in two.as_bytes().chunks(7) {
        stream.write_all(piece).expect("send a piece");
    }
    let mut buf = Vec::new();
    let answers = read_responses(&mut stream, &mut buf, &[false, false]);
    assert_eq!(answers[0].body, content.body("/hello.txt"));
    assert_eq!(answers[1].body, content.body("/index.html"));
    stop_and_check_nothing_left(run);
}

/// A client that asks again the moment it has its answer is answered from the proxy's hot
/// copies, whether the front door or a worker holds its connection at that moment: its object
/// goes to its cache once, not once per request. Pipelined requests behind one the request path
/// answers are answered in order, held ones included, and a held last one closes as asked.
#[test]
fn a_client_that_asks_again_at_once_is_answered_from_the_hot_copy() {
    let content = Content::new();
    let (run, http) = directory_run(&content, &["hot_cache_ttl = \"1h\""]);
    let mut stream = connect(http);
    let mut buf = Vec::new();
    const AGAIN: u64 = 100;
    for _ in 0..=AGAIN {
        stream
            .write_all(get("/hello.txt", "").as_bytes())
            .expect("send");
        let answer = read_responses(&mut stream, &mut buf, &[false]);
        assert_eq!(answer[0].status, 200);
        assert_eq!(answer[0].body, content.body("/hello.txt"));
    }
    let counts = |text: &str| {
        let hits = metric_value(text, "gfcache_cache_lookups_total{result=\"hit\"}").unwrap_or(0.0);
        let hot = metric_value(text, "gfcache_hot_hits_total").unwrap_or(0.0);
        (hits as u64, hot as u64)
    };
    let text = wait_for("every request counted", DEADLINE, || {
        let text = run.metrics_text();
        (counts(&text).0 > AGAIN).then_some(text)
    });
    // The first request took the copy from the cache; every later one was answered from it.
    assert_eq!(counts(&text), (AGAIN + 1, AGAIN), "{text}");

    let burst = [
        get("/missing", ""),
        get("/hello.txt", ""),
        get("/hello.txt", "Range: bytes=1-3\r\n"),
        head("/hello.txt", ""),
        get("/hello.txt", "Connection: close\r\n"),
    ]
    .concat();
    let answers = burst_answers(
        &mut connect(http),
        &burst,
        &[false, false, false, true, false],
    );
    let statuses: Vec<u16> = answers.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [404, 200, 206, 200, 200]);
    let hello = content.body("/hello.txt");
    assert_eq!(answers[1].body, hello);
    assert_eq!(answers[2].body, &hello[1..4]);
    assert_eq!(answers[4].body, hello);
    assert!(answers[..4].iter().all(|r| !r.closes()));
    assert!(answers[4].closes());
    stop_and_check_nothing_left(run);
}

#[test]
fn malformed_requests_are_refused_and_the_connection_closed() {
    let content = Content::new();
    let (run, http) = directory_run(&content, &[]);
    let long_target = format!("/{}", "a".repeat(9 * 1024));
    let big_field = format!("X-Big: {}\r\n", "b".repeat(17 * 1024));
    let cases: Vec<(&str, String, u16)> = vec![
        ("garbage", "\x16\x03\x01 hello there\r\n\r\n".into(), 400),
        (
            "bare LF",
            "GET /hello.txt HTTP/1.1\nHost: x\n\n".into(),
            400,
        ),
        (
            "obs-fold",
            get("/hello.txt", "X-Folded: a\r\n  continued\r\n"),
            400,
        ),
        (
            "CL+TE",
            get(
                "/hello.txt",
                "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
            ),
            400,
        ),
        (
            "two Content-Lengths",
            get("/hello.txt", "Content-Length: 5\r\nContent-Length: 6\r\n"),
            400,
        ),
        (
            "absolute form",
            "GET http://gfcache/hello.txt HTTP/1.1\r\nHost: gfcache\r\n\r\n".into(),
            400,
        ),
        (
            "CONNECT",
            "CONNECT gfcache:443 HTTP/1.1\r\nHost: gfcache:443\r\n\r\n".into(),
            400,
        ),
        ("no Host", "GET /hello.txt HTTP/1.1\r\n\r\n".into(), 400),
        (
            "HTTP/2.0",
            "GET /hello.txt HTTP/2.0\r\nHost: x\r\n\r\n".into(),
            400,
        ),
        ("9 KiB target", get(&long_target, ""), 414),
        ("17 KiB header", get("/hello.txt", &big_field), 431),
        (
            "DELETE",
            "DELETE /hello.txt HTTP/1.1\r\nHost: gfcache\r\n\r\n".into(),
            405,
        ),
        (
            "lowercase get",
            "get /hello.txt HTTP/1.1\r\nHost: gfcache\r\n\r\n".into(),
            405,
        ),
        ("encoded slash", get("/docs%2Freadme.txt", ""), 400),
        ("encoded NUL", get("/hello.txt%00.png", ""), 400),
        ("bad escape", get("/hello%zz.txt", ""), 400),
        ("fragment", get("/hello.txt#top", ""), 400),
    ];
    for (what, request, status) in &cases {
        let response = one_response_then_close(http, request.as_bytes(), what);
        assert_eq!(response.status, *status, "{what}: {response:?}");
        assert!(response.closes(), "{what}: {response:?}");
        let reason = String::from_utf8_lossy(&response.body);
        assert!(reason.starts_with(&status.to_string()), "{what}: {reason}");
        if *status == 405 {
            assert_eq!(response.header("allow"), Some("GET, HEAD"), "{what}");
        }
    }
    // A refusal after a good request on the same connection: the good one is answered.
    let mut stream = connect(http);
    let request = [get("/hello.txt", ""), get("/x%2Fy", "")].concat();
    stream.write_all(request.as_bytes()).expect("send");
    let bytes = read_to_eof(&mut stream, DEADLINE).expect("closed");
    let (ok, used) = parse_response(&bytes, false).unwrap().expect("first");
    let (refused, _) = parse_response(&bytes[used..], false)
        .unwrap()
        .expect("second");
    assert_eq!((ok.status, refused.status), (200, 400));
    assert_eq!(ok.body, content.body("/hello.txt"));
    // The server still serves.
    assert_eq!(
        curl_one(run.dir.path(), &[], http, "/hello.txt").body,
        content.body("/hello.txt")
    );
    let count = |status: u16| {
        (cases.iter().filter(|c| c.2 == status).count() + usize::from(status == 400)) as u64
    };
    wait_http_counts(
        &run,
        &[
            (400, count(400)),
            (405, count(405)),
            (414, count(414)),
            (431, count(431)),
            (200, 2),
        ],
    );
    stop_and_check_nothing_left(run);
}

#[test]
fn decoded_dot_dot_never_leaves_the_root() {
    let content = Content::new();
    let (run, http) = directory_run(&content, &[]);
    for target in [
        "/%2E%2E/secret.txt",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/../secret.txt",
        "/docs/../../secret.txt",
        "/docs/%2E%2E/%2E%2E/secret.txt",
        "/%2E%2E/%2E%2E/etc/passwd",
    ] {
        let request = get(target, "Connection: close\r\n");
        let response = one_response_then_close(http, request.as_bytes(), target);
        assert_eq!(response.status, 404, "{target}: {response:?}");
        assert!(
            !String::from_utf8_lossy(&response.body).contains("outside"),
            "{target}"
        );
    }
    stop_and_check_nothing_left(run);
}

#[test]
fn idle_keep_alive_connection_is_closed_after_the_timeout() {
    let content = Content::new();
    let (run, http) = directory_run(&content, &["http_keepalive_timeout = \"1s\""]);
    let mut stream = connect(http);
    let mut buf = Vec::new();
    for path in ["/hello.txt", "/index.html"] {
        stream.write_all(get(path, "").as_bytes()).expect("send");
        let answer = read_responses(&mut stream, &mut buf, &[false]).remove(0);
        assert_eq!(answer.status, 200);
        assert!(!answer.closes());
        assert_eq!(answer.body, content.body(path));
    }
    let idle_since = Instant::now();
    let rest = read_to_eof(&mut stream, DEADLINE).expect("closed when idle");
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    // Closed by the idle timeout, not right after the answer.
    assert!(
        idle_since.elapsed() >= Duration::from_millis(500),
        "closed after {:?}",
        idle_since.elapsed()
    );
    stop_and_check_nothing_left(run);
}

#[test]
fn header_not_complete_in_time_is_answered_408() {
    let content = Content::new();
    let (run, http) = directory_run(&content, &["header_timeout = \"1s\""]);
    let response = one_response_then_close(http, b"GET /hello.txt HTTP/1.1\r\nHost: x\r\n", "408");
    assert_eq!(response.status, 408, "{response:?}");
    assert!(response.closes());
    // The same on a kept-alive connection, for its next request.
    let mut stream = connect(http);
    let mut buf = Vec::new();
    stream
        .write_all(get("/hello.txt", "").as_bytes())
        .expect("send");
    assert_eq!(
        read_responses(&mut stream, &mut buf, &[false])[0].status,
        200
    );
    stream
        .write_all(b"GET /hello.txt HTTP/1.1\r\n")
        .expect("send half a head");
    let bytes = read_to_eof(&mut stream, DEADLINE).expect("closed");
    let (late, _) = parse_response(&bytes, false).unwrap().expect("an answer");
    assert_eq!(late.status, 408);
    // Half a head that came in one write with the request before it: the worker answers the
    // request, finds the half head while it lingers, hands it back to the front door with the
    // connection, and the front door's deadline ends it.
    let mut stream = connect(http);
    let mut buf = Vec::new();
    let pipelined = format!(
        "{}GET /hello.txt HTTP/1.1\r\nHost: x\r\n",
        get("/hello.txt", "")
    );
    stream.write_all(pipelined.as_bytes()).expect("send");
    assert_eq!(
        read_responses(&mut stream, &mut buf, &[false])[0].status,
        200
    );
    let bytes = read_to_eof(&mut stream, DEADLINE).expect("closed");
    let bytes = [buf, bytes].concat();
    let (late, _) = parse_response(&bytes, false).unwrap().expect("an answer");
    assert_eq!(late.status, 408);
    wait_http_counts(&run, &[(408, 3), (200, 2)]);
    stop_and_check_nothing_left(run);
}

#[test]
fn max_requests_per_connection_closes_after_the_last() {
    let content = Content::new();
    let (run, http) = directory_run(&content, &["http_max_requests_per_connection = 3"]);
    let mut stream = connect(http);
    let mut buf = Vec::new();
    for n in 1..=3 {
        stream
            .write_all(get("/hello.txt", "").as_bytes())
            .expect("send");
        let answer = read_responses(&mut stream, &mut buf, &[false]).remove(0);
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body, content.body("/hello.txt"));
        assert_eq!(answer.closes(), n == 3, "answer {n}: {answer:?}");
    }
    assert_eq!(read_to_eof(&mut stream, DEADLINE), Ok(Vec::new()));
    // Pipelined past the limit: three answers, then the close.
    let mut stream = connect(http);
    let burst = get("/index.html", "").repeat(5);
    stream.write_all(burst.as_bytes()).expect("send");
    let bytes = read_to_eof(&mut stream, DEADLINE).expect("closed");
    let mut rest = bytes.as_slice();
    for n in 1..=3 {
        let (answer, used) = parse_response(rest, false).unwrap().expect("an answer");
        assert_eq!(answer.body, content.body("/index.html"));
        assert_eq!(answer.closes(), n == 3);
        rest = &rest[used..];
    }
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(rest));
    stop_and_check_nothing_left(run);
}

/// The state and send queue of the server's end of the connection to `client`, from
/// /proc/net/tcp (`None` once the socket is gone).
fn server_end(server: SocketAddr, client: SocketAddr) -> Option<(String, u64)> {
    let hex = |addr: SocketAddr| format!("0100007F:{:04X}", addr.port());
    let (local, remote) = (hex(server), hex(client));
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(1) != Some(&local.as_str()) || fields.get(2) != Some(&remote.as_str()) {
            return None;
        }
        let queued = fields.get(4)?.split(':').next()?;
        Some((
            fields.get(3)?.to_string(),
            u64::from_str_radix(queued, 16).ok()?,
        ))
    })
}

/// A close the server decides (here: the last request a connection may make) lingers, unlike
/// one the client asked for: a pipelining client's next request, sent while the end of a large
/// answer is still queued in the server's kernel, must not reset the connection and destroy
/// that end. The client sends it the moment the server has closed its side (FIN_WAIT1 in
/// /proc/net/tcp, data still queued), then reads: the whole answer, then the close.
#[test]
fn a_request_sent_as_the_server_closes_does_not_cut_the_answer_before_it() {
    let content = Content::new();
    let large = content.add_large();
    let (run, http) = directory_run(&content, &["http_max_requests_per_connection = 1"]);
    let mut stream = connect(http);
    let client = stream.local_addr().expect("local address");
    stream.write_all(get(LARGE, "").as_bytes()).expect("send");
    let mut bytes = Vec::new();
    // Large reads: each check reads all of /proc/net/tcp, thousands of lines while other
    // tests hold their connections.
    let mut chunk = vec![0u8; 256 << 10];
    let deadline = Instant::now() + DEADLINE;
    // FIN_WAIT1: the server's side is closed while the end of the answer is still queued.
    while server_end(http, client).is_none_or(|(state, _)| state != "04") {
        assert!(
            Instant::now() < deadline,
            "the server never closed its side"
        );
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            Err(e) => panic!("read: {e}"),
        }
    }
    let queued = server_end(http, client).map_or(0, |(_, queued)| queued);
    stream
        .write_all(get("/hello.txt", "").as_bytes())
        .expect("send the next request");
    let rest = read_to_eof(&mut stream, DEADLINE).unwrap_or_else(|e| {
        panic!("the answer was cut ({queued} bytes were queued at the server's close): {e}")
    });
    bytes.extend_from_slice(&rest);
    let (answer, used) = parse_response(&bytes, false)
        .expect("well-formed")
        .expect("the whole answer");
    assert_eq!(answer.status, 200);
    assert!(answer.body == large, "{} body bytes", answer.body.len());
    assert!(answer.closes());
    assert_eq!(used, bytes.len(), "the next request was not answered");
    stop_and_check_nothing_left(run);
}

/// Clients that pipeline hot hits (more than their socket takes, so the rest of an answer goes
/// to a worker) and vanish after a few bytes cost nothing lasting: every connection is gone
/// from the gauges, the hot copy still answers byte-exact, and nothing is left behind.
#[test]
fn clients_vanishing_mid_hot_hit_leave_nothing_behind() {
    let content = Content::new();
    let (run, http) = directory_run(
        &content,
        &["hot_cache_ttl = \"1h\"", "hot_object_max_size = \"1MiB\""],
    );
    const PATH: &str = "/docs/readme.txt";
    let body = content.body(PATH);
    let mut buf = Vec::new();
    let mut stream = connect(http);
    stream.write_all(get(PATH, "").as_bytes()).expect("send");
    assert_eq!(
        read_responses(&mut stream, &mut buf, &[false])[0].body,
        body
    );
    drop(stream);

    // 2000 answers of 2.5 KiB: more than both socket buffers take.
    let burst = get(PATH, "").repeat(2000);
    for _ in 0..20 {
        let mut vanishing = connect(http);
        let mut writer = vanishing.try_clone().expect("clone");
        let requests = burst.clone();
        // The requests may not all fit before the proxy stops reading them: sent aside.
        let sending = std::thread::spawn(move || {
            let _ = writer.write_all(requests.as_bytes());
        });
        let mut first = [0u8; 4096];
        vanishing.read_exact(&mut first).expect("the first bytes");
        assert!(first.starts_with(b"HTTP/1.1 200 "));
        // Closed with answers unread: the proxy's next write fails (a reset).
        let _ = vanishing.shutdown(Shutdown::Both);
        drop(vanishing);
        sending.join().expect("the sender");
    }
    let open = |text: &str| sum_metric(text, "gfcache_connections{");
    let text = wait_for("every vanished connection closed", DEADLINE, || {
        let text = run.metrics_text();
        (open(&text) == 0.0).then_some(text)
    });
    let hot = metric_value(&text, "gfcache_hot_hits_total").unwrap_or(0.0);
    assert!(hot > 20.0, "the pipelined answers were hot hits: {hot}");
    for _ in 0..5 {
        let mut stream = connect(http);
        let mut buf = Vec::new();
        stream.write_all(get(PATH, "").as_bytes()).expect("send");
        assert_eq!(
            read_responses(&mut stream, &mut buf, &[false])[0].body,
            body
        );
    }
    stop_and_check_nothing_left(run);
}

#[test]
fn small_request_body_is_discarded_and_the_connection_kept() {
    let content = Content::new();
    let (run, http) = directory_run(&content, &[]);
    let mut stream = connect(http);
    let mut buf = Vec::new();
    stream
        .write_all(get("/hello.txt", "Content-Length: 5\r\n").as_bytes())
        .expect("send the head");
    stream.write_all(b"ab").expect("send part of the body");
    // The rest of the body and the next request in one write: the body is not a request.
    let next = format!("cde{}", get("/index.html", ""));
    stream.write_all(next.as_bytes()).expect("send");
    let answers = read_responses(&mut stream, &mut buf, &[false, false]);
    assert_eq!(answers[0].status, 200);
    assert_eq!(answers[0].body, content.body("/hello.txt"));
    assert!(!answers[0].closes());
    assert_eq!(answers[1].status, 200);
    assert_eq!(answers[1].body, content.body("/index.html"));
    assert!(!answers[1].closes());
    stop_and_check_nothing_left(run);
}

#[test]
fn large_or_chunked_request_body_gets_its_whole_answer_then_a_close() {
    let content = Content::new();
    let (run, http) = directory_run(&content, &[]);
    let bodies: [(&str, Vec<u8>); 2] = [
        ("Content-Length: 100000\r\n", vec![b'x'; 100_000]),
        (
            "Transfer-Encoding: chunked\r\n",
            b"5\r\nhello\r\n".repeat(10_000),
        ),
    ];
    for (answered, (field, body)) in (1..).zip(&bodies) {
        let mut stream = connect(http);
        // A small receive buffer, not read until the proxy has answered: most of the answer
        // is still queued in the proxy when it closes. Closing over the unread request body
        // would be a reset, which destroys that part; the answer must arrive whole.
        nix::sys::socket::setsockopt(&stream, nix::sys::socket::sockopt::RcvBuf, &16384)
            .expect("SO_RCVBUF");
        let mut request = get(BIG, field).into_bytes();
        request.extend_from_slice(body);
        stream.write_all(&request).expect("send");
        wait_http_counts(&run, &[(200, answered)]);
        let bytes = read_to_eof(&mut stream, DEADLINE).unwrap_or_else(|e| panic!("{field:?}: {e}"));
        let (answer, used) = parse_response(&bytes, false)
            .unwrap()
            .unwrap_or_else(|| panic!("{field:?}: {} bytes only", bytes.len()));
        assert_eq!(answer.status, 200);
        assert!(answer.closes(), "{field:?}");
        assert!(
            answer.body == content.body(BIG),
            "{field:?}: the whole answer"
        );
        assert_eq!(used, bytes.len());
    }
    stop_and_check_nothing_left(run);
}

#[test]
fn slow_http_readers_do_not_hold_up_other_clients() {
    let content = Content::new();
    let large = content.add_large();
    let (run, http) = directory_run(&content, &[]);
    // More readers that stop reading than the proxy has worker threads (4) and segments (8).
    let mut stalled: Vec<TcpStream> = (0..10)
        .map(|_| {
            let mut stream = connect(http);
            stream
                .write_all(get(LARGE, "Connection: close\r\n").as_bytes())
                .expect("send");
            stream
        })
        .collect();
    // Each got the start of its answer: its request is being served.
    for stream in &mut stalled {
        let mut first = [0u8; 16];
        stream.read_exact(&mut first).expect("the answer starts");
        assert_eq!(&first, b"HTTP/1.1 200 OK\r");
    }
    for round in 0..3 {
        let urls: Vec<String> = content.files.iter().map(|(p, _)| url(http, p)).collect();
        for (t, (path, body)) in curl(run.dir.path(), &[], &urls).iter().zip(&content.files) {
            assert_eq!(t.code(), 200, "round {round} {path}");
            assert_eq!(&t.body, body, "round {round} {path}");
        }
    }
    for mut stream in stalled {
        let bytes = read_to_eof(&mut stream, DEADLINE).expect("the rest");
        // The first 16 bytes of the head were read above.
        let end = bytes
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("head")
            + 4;
        assert!(
            bytes[end..] == large[..],
            "{} body bytes",
            bytes.len() - end
        );
    }
    stop_and_check_nothing_left(run);
}

/// A file edited under a read-only directory while the proxy holds a hot copy of it (README:
/// "seen within `hot_cache_ttl`"): in place with the same length, then by a rename. Every
/// answer meanwhile is the old file or the new one, never a mix, and once the new one is
/// served the old one never comes back.
#[test]
fn a_file_edited_under_its_hot_copy_is_served_new_once_the_copy_expires() {
    let content = Content::new();
    let (run, http) = directory_run(&content, &["hot_cache_ttl = \"1s\""]);
    let path = "/hello.txt";
    let mut current = content.body(path).to_vec();
    let mut stream = connect(http);
    let mut buf = Vec::new();
    let mut ask = |stream: &mut TcpStream| {
        stream.write_all(get(path, "").as_bytes()).expect("send");
        let answer = read_responses(stream, &mut buf, &[false]);
        assert_eq!(answer[0].status, 200);
        answer[0].body.clone()
    };
    wait_for("a hot hit", DEADLINE, || {
        assert_eq!(ask(&mut stream), current);
        let hot = metric_value(&run.metrics_text(), "gfcache_hot_hits_total").unwrap_or(0.0);
        (hot >= 1.0).then_some(())
    });
    for (round, in_place) in [(1u8, true), (2, false)] {
        let new: Vec<u8> = current.iter().map(|b| b ^ (0x20 + round)).collect();
        let file = content.file(path);
        match in_place {
            true => std::fs::OpenOptions::new()
                .write(true)
                .open(&file)
                .and_then(|mut f| f.write_all(&new))
                .expect("edit in place"),
            false => {
                let staged = content.file("/hello.txt.new");
                std::fs::write(&staged, &new).expect("stage");
                std::fs::rename(&staged, &file).expect("rename over");
            }
        }
        let mut seen_new = false;
        wait_for("the edited file", Duration::from_secs(10), || {
            let body = ask(&mut stream);
            match (body == new, body == current) {
                (true, _) => seen_new = true,
                (false, true) => assert!(!seen_new, "round {round}: the old file came back"),
                (false, false) => panic!("round {round}: neither version: {body:?}"),
            }
            seen_new.then_some(())
        });
        // A few more: the new one stays.
        for _ in 0..5 {
            assert_eq!(ask(&mut stream), new, "round {round}");
        }
        current = new;
    }
    stop_and_check_nothing_left(run);
}

/// A client that reads slowly but steadily gets the whole answer, however long it takes: the
/// proxy's `send_timeout` (1 s here) ends a write that makes no progress, not a long transfer.
/// 8 MiB through a 64 KiB receive buffer with a pause of 100 ms after each 256 KiB takes
/// about three times the timeout; no single write waits longer than a pause.
#[test]
fn a_slow_but_steady_http_reader_is_served_whole_past_the_send_timeout() {
    use nix::sys::socket::{setsockopt, sockopt::RcvBuf};
    let content = Content::new();
    let large = content.add_large();
    let (run, http) = directory_run(&content, &["send_timeout = \"1s\""]);
    let mut reader = connect(http);
    setsockopt(&reader, RcvBuf, &(64 << 10)).expect("SO_RCVBUF");
    reader
        .write_all(get(LARGE, "Connection: close\r\n").as_bytes())
        .expect("send");
    let started = Instant::now();
    // About 2.5 MB/s.
    let bytes = read_at_pace(&mut reader, 256 << 10, Duration::from_millis(100));
    let took = started.elapsed();
    let body = ok_body(&bytes, "the slow reader");
    assert!(
        body == &large[..],
        "{} body bytes of {}, or different ones",
        body.len(),
        large.len()
    );
    // The case this test is about: the transfer outlasted the send timeout.
    assert!(
        took > Duration::from_secs(2),
        "the transfer took only {took:?}; the reader was not slow enough to test the timeout"
    );
    stop_and_check_nothing_left(run);
}

/// Bytes a client sends after a request that asked for the close (junk, or a pipelined request
/// the server will not answer) do not cut the answer: closing a socket with unread bytes resets
/// the connection, and a reset destroys whatever of the answer the kernel still queues, so the
/// server must drain them rather than close at once. 8 MiB is more than the socket buffers
/// hold, so most of the answer is still queued when the server is done writing.
#[test]
fn bytes_after_a_close_request_do_not_cut_its_answer() {
    let content = Content::new();
    let large = content.add_large();
    let (run, http) = directory_run(&content, &[]);
    for trailer in [
        vec![b'x'; 64 << 10],
        get("/a.txt", "").into_bytes(),
        b"\x00\xff garbage \r\n\r\n".to_vec(),
    ] {
        let mut stream = connect(http);
        let mut request = get(LARGE, "Connection: close\r\n").into_bytes();
        request.extend_from_slice(&trailer);
        stream.write_all(&request).expect("send");
        let bytes = read_to_eof(&mut stream, DEADLINE)
            .unwrap_or_else(|e| panic!("after {} trailing bytes: {e}", trailer.len()));
        let what = format!("{} trailing bytes", trailer.len());
        let body = ok_body(&bytes, &what);
        assert!(
            body == &large[..],
            "{what}: {} body bytes of {}, then the close",
            body.len(),
            large.len()
        );
    }
    stop_and_check_nothing_left(run);
}

/// A file changed under a read-only directory while a client is being sent it: edited in place,
/// the client gets a prefix of the old bytes (cut short where the change was noticed), never a
/// body that mixes the old and the new bytes; replaced by a rename, the whole old file. The
/// next request gets the new file. 32 MiB through a 64 KiB receive window, so most of the file
/// is still to be read from the cache when the change comes.
#[test]
fn a_file_changed_mid_transfer_is_never_served_mixed() {
    const LEN: usize = 32 << 20;
    let content = Content::new();
    let (run, http) = directory_run(&content, &[]);
    for (name, in_place) in [("/edited.bin", true), ("/renamed.bin", false)] {
        let old: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
        let new: Vec<u8> = (0..LEN).map(|i| (i % 241) as u8 ^ 0x5a).collect();
        std::fs::write(content.file(name), &old).expect("write");
        let body = body_while_changing(http, name, || match in_place {
            // Same inode, no truncation, every byte different.
            true => std::fs::OpenOptions::new()
                .write(true)
                .open(content.file(name))
                .and_then(|mut file| file.write_all(&new))
                .expect("edit in place"),
            false => {
                let temp = content.file(&format!("{name}.new"));
                std::fs::write(&temp, &new).expect("write the new file");
                std::fs::rename(&temp, content.file(name)).expect("rename over");
            }
        });
        assert!(
            body.len() <= LEN,
            "{name}: {} body bytes of {LEN}",
            body.len()
        );
        // Replaced by a rename, the old file stays open for the transfer: it is sent whole.
        if !in_place {
            assert_eq!(body.len(), LEN, "{name}: the transfer was cut");
        }
        let first_wrong = body.iter().zip(&old).position(|(got, was)| got != was);
        assert_eq!(
            first_wrong,
            None,
            "{name}: the body ({} bytes) left the old file at byte {first_wrong:?}",
            body.len()
        );
        let request = get(name, "Connection: close\r\n");
        let after = one_response_then_close(http, request.as_bytes(), name);
        assert_eq!(after.status, 200);
        assert!(
            after.body == new,
            "{name}: the next request did not get the new file"
        );
    }
    stop_and_check_nothing_left(run);
}

/// The body of a GET of `path` read through a 64 KiB window, with `change` run after its
/// first MiB.
fn body_while_changing(http: SocketAddr, path: &str, change: impl FnOnce()) -> Vec<u8> {
    use nix::sys::socket::{setsockopt, sockopt::RcvBuf};
    let mut reader = connect(http);
    setsockopt(&reader, RcvBuf, &(64 << 10)).expect("SO_RCVBUF");
    reader
        .write_all(get(path, "Connection: close\r\n").as_bytes())
        .expect("send");
    let mut bytes = vec![0u8; 1 << 20];
    reader.read_exact(&mut bytes).expect("the first MiB");
    change();
    bytes.extend_from_slice(&read_to_eof(&mut reader, DEADLINE).unwrap_or_default());
    ok_body(&bytes, path).to_vec()
}

// ---------------------------------------------------------------------------------------------
// With an origin

/// `/fail/...` answers 500, `/hang/...` never answers, the rest comes from `root`.
fn failing_origin(root: &Path) -> Origin {
    Origin::scripted(
        root,
        Arc::new(|path: &str| {
            if path.starts_with("/fail/") {
                OriginReply::Status(500)
            } else if path.starts_with("/hang/") {
                OriginReply::Hang
            } else {
                OriginReply::File
            }
        }),
    )
}

fn origin_run(origin: &Origin, extra: &[&str]) -> (Run, SocketAddr) {
    let mut setup = Setup::new(Backend::Memory).with_http();
    setup.origin = Some(origin.url());
    setup.proxy_extra = extra.iter().map(|l| l.to_string()).collect();
    start(setup)
}

#[test]
fn origin_failures_answer_502_and_504_and_its_404_a_404() {
    let content = Content::new();
    let origin = failing_origin(&content.root());
    let (run, http) = origin_run(&origin, &["origin_timeout = \"1s\""]);
    let dir = run.dir.path();
    let failed = curl_one(dir, &[], http, "/fail/x.txt");
    assert_eq!(failed.code(), 502, "{}", failed.headers);
    assert_eq!(failed.body, b"502 Bad Gateway\n");
    let hung = curl_one(dir, &[], http, "/hang/x.txt");
    assert_eq!(hung.code(), 504, "{}", hung.headers);
    assert_eq!(hung.body, b"504 Gateway Timeout\n");
    let missing = curl_one(dir, &[], http, "/not/there.txt");
    assert_eq!(missing.code(), 404);
    // An error answer keeps the connection.
    let urls = vec![url(http, "/fail/y.txt"), url(http, "/hello.txt")];
    let kept = curl(dir, &[], &urls);
    assert_eq!((kept[0].code(), kept[1].code()), (502, 200));
    assert_eq!(kept.iter().map(Transfer::connects).sum::<u64>(), 1);
    wait_http_counts(&run, &[(502, 2), (504, 1), (404, 1), (200, 1)]);
    stop_and_check_nothing_left(run);
}

#[test]
fn x_cache_says_miss_then_hit_and_ranges_apply_to_hits_only() {
    let content = Content::new();
    let origin = Origin::serve(&content.root());
    let (run, http) = origin_run(&origin, &[]);
    let dir = run.dir.path();
    let big = content.body(BIG);
    // A miss answers 200 with the whole object, whatever the range; it has no validators yet.
    let miss = curl_one(dir, &["--range", "0-99"], http, BIG);
    assert_eq!(miss.code(), 200, "{}", miss.headers);
    assert_eq!(miss.header("x-cache").as_deref(), Some("MISS"));
    assert_eq!(miss.header("etag"), None);
    assert_eq!(miss.body, big);
    let hit = wait_for("the fill to land", DEADLINE, || {
        let t = curl_one(dir, &["--range", "0-99"], http, BIG);
        (t.header("x-cache").as_deref() == Some("HIT")).then_some(t)
    });
    assert_eq!(hit.code(), 206);
    assert_eq!(hit.body, &big[..100]);
    assert!(hit.header("etag").is_some());
    let fetched = origin.hits.load(Ordering::Relaxed);
    // A HEAD miss fetches (and fills) the object too, and sends no body.
    let head = curl_one(dir, &["--head"], http, "/docs/readme.txt");
    assert_eq!(head.code(), 200);
    assert_eq!(head.header("x-cache").as_deref(), Some("MISS"));
    assert_eq!(head.header("content-length"), Some("2500".to_string()));
    assert_eq!(head.info["size_download"], 0);
    assert_eq!(origin.hits.load(Ordering::Relaxed), fetched + 1);
    let filled = wait_for("the HEAD's fill to land", DEADLINE, || {
        let t = curl_one(dir, &[], http, "/docs/readme.txt");
        (t.header("x-cache").as_deref() == Some("HIT")).then_some(t)
    });
    assert_eq!(filled.body, content.body("/docs/readme.txt"));
    stop_and_check_nothing_left(run);
}

#[test]
fn query_string_is_left_out_of_the_cache_key_and_the_origin_request() {
    let content = Content::new();
    let origin = Origin::serve(&content.root());
    let (run, http) = origin_run(&origin, &[]);
    let dir = run.dir.path();
    let first = curl_one(dir, &[], http, "/index.html?v=1");
    assert_eq!(first.code(), 200);
    assert_eq!(first.body, content.body("/index.html"));
    assert_eq!(origin.targets(), ["/index.html"]);
    // Another query names the same object.
    let hit = wait_for("the fill to land", DEADLINE, || {
        let t = curl_one(dir, &[], http, "/index.html?v=2&x=%2F");
        (t.header("x-cache").as_deref() == Some("HIT")).then_some(t)
    });
    assert_eq!(hit.body, content.body("/index.html"));
    assert!(
        origin.targets().iter().all(|t| t == "/index.html"),
        "{:?}",
        origin.targets()
    );
    stop_and_check_nothing_left(run);
}

#[test]
fn with_http_cache_query_the_query_names_the_object_and_reaches_the_origin() {
    let content = Content::new();
    let origin = Origin::serve(&content.root());
    let (run, http) = origin_run(&origin, &["http_cache_query = true"]);
    let dir = run.dir.path();
    for query in ["v=1", "v=2&x=%2F"] {
        let target = format!("/index.html?{query}");
        let miss = curl_one(dir, &[], http, &target);
        assert_eq!(miss.code(), 200);
        assert_eq!(miss.body, content.body("/index.html"));
        // Each query is its own object: filled once, then a hit.
        let hit = wait_for("the fill to land", DEADLINE, || {
            let t = curl_one(dir, &[], http, &target);
            (t.header("x-cache").as_deref() == Some("HIT")).then_some(t)
        });
        assert_eq!(hit.body, content.body("/index.html"));
    }
    assert_eq!(
        origin.targets(),
        ["/index.html?v=1", "/index.html?v=2&x=%2F"],
        "the origin is asked once per query, with the query as sent"
    );
    stop_and_check_nothing_left(run);
}

#[test]
fn no_cache_and_no_origin_answers_503() {
    let content = Content::new();
    let mut setup = Setup::new(Backend::Directory(content.root())).with_http();
    setup.caches = 1;
    setup.max_restarts = 0;
    let (run, http) = start(setup);
    let dir = run.dir.path();
    assert_eq!(curl_one(dir, &[], http, "/hello.txt").code(), 200);
    let cache = run.child("cache", 0);
    let pid = cache["pid"].as_i64().expect("cache pid") as i32;
    kill(Pid::from_raw(pid), Signal::SIGKILL).expect("SIGKILL the cache");
    wait_for("cache 0 to be quarantined", DEADLINE, || {
        (run.child("cache", 0)["state"] == "quarantined").then_some(())
    });
    // A path never fetched (one fetched may still be answered from the proxy's hot copy).
    let unavailable = curl_one(dir, &[], http, "/docs/readme.txt");
    assert_eq!(unavailable.code(), 503, "{}", unavailable.headers);
    assert_eq!(unavailable.body, b"503 Service Unavailable\n");
    // A reload revives the cache, and it serves again.
    let out = gfsupervisor(&["reload"], &run.config);
    assert!(out.status.success(), "{}", output_text(&out));
    wait_for("cache 0 to be revived", DEADLINE, || {
        (run.child("cache", 0)["state"] == "running").then_some(())
    });
    let back = wait_for("a hit again", DEADLINE, || {
        let t = curl_one(dir, &[], http, "/hello.txt");
        (t.code() == 200).then_some(t)
    });
    assert_eq!(back.body, content.body("/hello.txt"));
    stop_and_check_nothing_left(run);
}

// ---------------------------------------------------------------------------------------------
// Metrics

#[test]
fn http_responses_are_counted_by_status_and_pass_promtool() {
    let content = Content::new();
    let (run, http) = directory_run(&content, &[]);
    let dir = run.dir.path();
    let etag = curl_one(dir, &[], http, "/hello.txt")
        .header("etag")
        .expect("etag");
    curl(dir, &[], &[url(http, "/index.html"), url(http, BIG)]);
    curl(dir, &["--range", "0-9"], &[url(http, BIG), url(http, BIG)]);
    curl_one(
        dir,
        &["--header", &format!("If-None-Match: {etag}")],
        http,
        "/hello.txt",
    );
    curl_one(dir, &[], http, "/nope");
    curl_one(dir, &["--range", "999999-"], http, BIG);
    one_response_then_close(http, b"BREW /pot HTTP/1.1\r\nHost: x\r\n\r\n", "405");
    one_response_then_close(http, b"nonsense\r\n\r\n", "400");
    let text = wait_http_counts(
        &run,
        &[
            (200, 3),
            (206, 2),
            (304, 1),
            (404, 1),
            (416, 1),
            (405, 1),
            (400, 1),
            (414, 0),
            (502, 0),
        ],
    );
    assert!(
        text.contains("# TYPE gfcache_http_responses_total counter"),
        "{text}"
    );
    check_promtool(&text);
    stop_and_check_nothing_left(run);
}

// ---------------------------------------------------------------------------------------------
// gfserver --http-listen: the baseline of the benchmarks

/// `gfserver --root ROOT --listen 127.0.0.1:0 --http-listen 127.0.0.1:0`, killed on drop.
struct GfServer {
    child: Child,
    http: SocketAddr,
    /// Kept open: gfserver's stdout must not become a broken pipe.
    _stdout: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
}

impl GfServer {
    fn start(root: &Path) -> GfServer {
        let mut child = Command::new(GFSERVER)
            .arg("--root")
            .arg(root)
            .args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn gfserver");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
        let http = lines
            .by_ref()
            .map_while(Result::ok)
            .find_map(|l| l.strip_prefix("http listening on ").map(str::to_string))
            .and_then(|a| a.parse().ok());
        match http {
            Some(http) => GfServer {
                child,
                http,
                _stdout: lines,
            },
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("gfserver printed no HTTP address");
            }
        }
    }
}

impl Drop for GfServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn gfserver_serves_http_without_validators_or_ranges() {
    let content = Content::new();
    let server = GfServer::start(&content.root());
    let out = tempfile::tempdir().expect("tempdir");
    let urls = vec![url(server.http, BIG), url(server.http, "/hello.txt")];
    let transfers = curl(out.path(), &["--range", "0-9"], &urls);
    assert_eq!(transfers.iter().map(Transfer::connects).sum::<u64>(), 1);
    for (t, path) in transfers.iter().zip([BIG, "/hello.txt"]) {
        assert_eq!(t.code(), 200, "no ranges without a validator");
        assert_eq!(t.body, content.body(path));
        assert_eq!(t.header("etag"), None);
        assert_eq!(t.header("x-cache"), None);
        assert_eq!(t.header("accept-ranges"), None);
        assert_eq!(t.header("server").as_deref(), Some("gfcache"));
    }
    let missing = curl_one(out.path(), &[], server.http, "/missing");
    assert_eq!(missing.code(), 404);
    let escape = one_response_then_close(
        server.http,
        get("/%2E%2E/secret.txt", "Connection: close\r\n").as_bytes(),
        "escape",
    );
    assert_eq!(escape.status, 404);
    let mut stream = connect(server.http);
    stream.shutdown(Shutdown::Write).expect("half-close");
    assert_eq!(read_to_eof(&mut stream, DEADLINE), Ok(Vec::new()));
}
