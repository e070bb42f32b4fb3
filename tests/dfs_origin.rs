//! The cache tier in front of gfdfs: `proxy.origin = "dfs://HOST:PORT"`, with a real `gfdfs
//! server` and a real gfsupervisor run. A miss is fetched over gRPC and filled; a store or a
//! delete in the DFS reaches GetFile and HTTP clients through the Watch stream's purges; when
//! the DFS is down the cached copies are still served.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{wait_for, Backend, Reply, Run, Setup};

const GFDFS: &str = env!("CARGO_BIN_EXE_gfdfs");

/// A `gfdfs server` on 127.0.0.1 port 0, killed on drop.
struct DfsServer {
    child: Child,
    addr: SocketAddr,
}

impl DfsServer {
    fn start(root: &Path) -> DfsServer {
        DfsServer::start_at(root, "127.0.0.1:0")
    }

    fn start_at(root: &Path, listen: &str) -> DfsServer {
        let mut child = Command::new(GFDFS)
            .args(["server", "--root"])
            .arg(root)
            .args(["--listen", listen])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn gfdfs server");
        let stdout = child.stdout.take().expect("stdout");
        let line = BufReader::new(stdout)
            .lines()
            .next()
            .expect("a line from the server")
            .expect("utf-8");
        let addr = line
            .strip_prefix("listening on ")
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("{line:?} names no address"));
        DfsServer { child, addr }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for DfsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn gfdfs(server: &DfsServer, args: &[&str]) {
    let out = Command::new(GFDFS)
        .args(args)
        .args(["--server", &server.addr.to_string()])
        .output()
        .expect("run gfdfs");
    assert!(
        out.status.success(),
        "gfdfs {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn store(server: &DfsServer, dir: &Path, path: &str, bytes: &[u8]) {
    let local = dir.join("upload");
    std::fs::write(&local, bytes).expect("write the upload");
    gfdfs(
        server,
        &["store", local.to_str().expect("utf-8"), "--as", path],
    );
}

/// Polls until `path` answers `expected`; returns how long it took.
fn until_served(run: &Run, path: &str, expected: &Reply, what: &str) -> Duration {
    let started = Instant::now();
    wait_for(what, Duration::from_secs(20), || {
        (run.get(path).ok().as_ref() == Some(expected)).then_some(())
    });
    started.elapsed()
}

#[test]
fn a_dfs_origin_serves_fills_and_follows_stores_and_deletes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("dfs-root");
    std::fs::create_dir(&root).expect("dfs root");
    let mut server = DfsServer::start(&root);
    store(&server, dir.path(), "/docs/a.txt", b"first version\r\n");
    store(&server, dir.path(), "/b.bin", &[0u8, 1, 2, 255]);

    let mut setup = Setup::new(Backend::Memory).with_http();
    setup.origin = Some(format!("dfs://{}", server.addr));
    let run = Run::start(setup);

    // A miss through gRPC, then a hit (one fill; the second GET does not reach the DFS).
    assert_eq!(
        run.get("/docs/a.txt").expect("get"),
        Reply::Ok(b"first version\r\n".to_vec())
    );
    wait_for("the fill", Duration::from_secs(20), || {
        let text = run.metrics_text();
        (common::metric_value(&text, "gfcache_fills_total{result=\"stored\"}") >= Some(1.0))
            .then_some(())
    });
    assert_eq!(
        run.get("/b.bin").expect("get"),
        Reply::Ok(vec![0u8, 1, 2, 255])
    );
    assert_eq!(run.get("/missing").expect("get"), Reply::FileNotFound);
    // A name gfdfs reserves for itself is refused by the server: no such file for a client.
    assert_eq!(
        run.get("/.gfdfs/tombstones.json").expect("get"),
        Reply::FileNotFound
    );
    let http = run.http.expect("http listener");
    let (status, body) = common::http_get(http, "/docs/a.txt").expect("http get");
    assert_eq!((status, body.as_str()), (200, "first version\r\n"));

    // A store in the DFS reaches the clients through the watch stream's purge.
    store(&server, dir.path(), "/docs/a.txt", b"second version");
    let took = until_served(
        &run,
        "/docs/a.txt",
        &Reply::Ok(b"second version".to_vec()),
        "the stored version",
    );
    eprintln!("a store reached the clients in {took:?}");
    let (_, body) = common::http_get(http, "/docs/a.txt").expect("http get");
    assert_eq!(body, "second version");

    // A delete too.
    gfdfs(&server, &["delete", "/docs/a.txt"]);
    let took = until_served(&run, "/docs/a.txt", &Reply::FileNotFound, "the delete");
    eprintln!("a delete reached the clients in {took:?}");

    // The DFS goes down: what is cached is still served.
    server.kill();
    assert_eq!(
        run.get("/b.bin").expect("get"),
        Reply::Ok(vec![0u8, 1, 2, 255])
    );
    common::stop_and_check_nothing_left(run);
}

#[test]
fn a_dfs_origin_that_is_no_url_is_a_config_error_naming_the_key() {
    let mut setup = Setup::new(Backend::Memory);
    setup.origin = Some("dfs://host-without-port".into());
    let run = Run::prepare(setup);
    let out = common::gfsupervisor(&["check-config"], &run.config);
    assert!(!out.status.success());
    let text = common::output_text(&out);
    assert!(text.contains("origin"), "{text}");
    assert!(text.contains("dfs://HOST:PORT"), "{text}");
}

#[test]
fn a_dfs_server_that_stops_answering_is_an_origin_timeout() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;

    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("dfs-root");
    std::fs::create_dir(&root).expect("dfs root");
    let server = DfsServer::start(&root);
    store(&server, dir.path(), "/first.txt", b"first");
    store(&server, dir.path(), "/second.txt", b"second");

    let mut setup = Setup::new(Backend::Memory).with_http();
    setup.origin = Some(format!("dfs://{}", server.addr));
    setup.proxy_extra.push("origin_timeout = \"1s\"".into());
    let run = Run::start(setup);
    let http = run.http.expect("http listener");
    // The proxy's connection to the DFS is up, then the server freezes: its kernel still
    // accepts, nothing answers.
    assert_eq!(common::http_get(http, "/first.txt").expect("get").0, 200);
    let pid = Pid::from_raw(server.child.id() as i32);
    kill(pid, Signal::SIGSTOP).expect("SIGSTOP the gfdfs server");
    let answer = common::http_get(http, "/second.txt");
    let _ = kill(pid, Signal::SIGCONT);
    let (status, body) = answer.expect("an answer, not a hang");
    assert_eq!(status, 504, "{body}");
    common::stop_and_check_nothing_left(run);
}

/// After the DFS restarts, the proxy's watch reconnects and reads the listing again: only what
/// changed while it was down is purged; the rest stays cached.
#[test]
fn a_dfs_restart_purges_only_what_changed_meanwhile() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("dfs-root");
    std::fs::create_dir(&root).expect("dfs root");
    let mut server = DfsServer::start(&root);
    let addr = server.addr.to_string();
    // The listing comes in path order: "a-kept" before "z-changed".
    store(&server, dir.path(), "/a-kept.txt", b"kept");
    store(&server, dir.path(), "/z-changed.txt", b"before");

    let mut setup = Setup::new(Backend::Memory);
    setup.origin = Some(format!("dfs://{addr}"));
    let run = Run::start(setup);
    let stored = || {
        let text = run.metrics_text();
        common::metric_value(&text, "gfcache_fills_total{result=\"stored\"}").unwrap_or(0.0)
    };
    assert_eq!(
        run.get("/a-kept.txt").expect("get"),
        Reply::Ok(b"kept".to_vec())
    );
    assert_eq!(
        run.get("/z-changed.txt").expect("get"),
        Reply::Ok(b"before".to_vec())
    );
    wait_for("both fills", Duration::from_secs(20), || {
        (stored() >= 2.0).then_some(())
    });

    // Changed behind the server's back while it is down: the restarted server indexes it.
    server.kill();
    std::fs::write(root.join("z-changed.txt"), b"after the restart").expect("edit");
    let _server = DfsServer::start_at(&root, &addr);
    until_served(
        &run,
        "/z-changed.txt",
        &Reply::Ok(b"after the restart".to_vec()),
        "the file changed while the DFS was down",
    );
    wait_for("the new fill", Duration::from_secs(20), || {
        (stored() >= 3.0).then_some(())
    });
    // The unchanged file was not purged: it is still a hit, no new fill.
    assert_eq!(
        run.get("/a-kept.txt").expect("get"),
        Reply::Ok(b"kept".to_vec())
    );
    assert_eq!(stored(), 3.0, "the unchanged file was fetched again");
    common::stop_and_check_nothing_left(run);
}

/// The DFS dies in the middle of a large fetch: the client is cut short (it never gets a whole
/// but wrong body), nothing is stored, and once the DFS is back the next request gets the
/// whole file.
#[test]
fn a_dfs_server_killed_mid_fetch_cuts_the_client_short_and_stores_nothing() {
    use std::io::{Read, Write};

    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("dfs-root");
    std::fs::create_dir(&root).expect("dfs root");
    let mut server = DfsServer::start(&root);
    let addr = server.addr.to_string();
    let big: Vec<u8> = (0..32u32 << 20).map(|i| (i % 251) as u8).collect();
    store(&server, dir.path(), "/big.bin", &big);

    let mut setup = Setup::new(Backend::Memory).with_http();
    setup.origin = Some(format!("dfs://{addr}"));
    let run = Run::start(setup);
    let http = run.http.expect("http listener");
    let metric = |name: &str| common::metric_value(&run.metrics_text(), name).unwrap_or(0.0);

    // The client reads the head and a first MiB, then stops reading: the proxy's fetch stalls
    // on the full socket, mid-file, and the DFS dies there.
    let mut client = std::net::TcpStream::connect(http).expect("connect");
    client
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    client
        .write_all(b"GET /big.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .expect("send");
    let mut first = vec![0u8; 1 << 20];
    client
        .read_exact(&mut first)
        .expect("the head and a first MiB");
    let head_end = first
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head")
        + 4;
    let head = String::from_utf8_lossy(&first[..head_end]).to_string();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.contains(&format!("Content-Length: {}", big.len())),
        "{head}"
    );
    server.kill();
    let mut rest = Vec::new();
    let _ = client.read_to_end(&mut rest);
    let body: Vec<u8> = first[head_end..].iter().chain(&rest).copied().collect();
    assert!(
        body.len() < big.len(),
        "the client got {} bytes of a file the DFS died sending",
        body.len()
    );
    assert_eq!(
        body,
        big[..body.len()],
        "the bytes that came are the file's"
    );
    wait_for("the fill dropped", Duration::from_secs(20), || {
        (metric("gfcache_fills_total{result=\"dropped\"}") >= 1.0).then_some(())
    });
    assert_eq!(metric("gfcache_fills_total{result=\"stored\"}"), 0.0);

    // Back again: the next request is a miss that gets the whole file.
    let _server = DfsServer::start_at(&root, &addr);
    let whole = wait_for("the whole file", Duration::from_secs(20), || {
        run.get("/big.bin")
            .ok()
            .filter(|reply| *reply == Reply::Ok(big.clone()))
    });
    assert_eq!(whole, Reply::Ok(big.clone()));
    common::stop_and_check_nothing_left(run);
}

/// A file edited, then removed, by hand under the running server's root (not through gfdfs):
/// the next Fetch notices, sends the new bytes and tells the watchers, so the cached copy is
/// purged; after the removal the path is not found.
#[test]
fn a_file_edited_under_the_dfs_root_is_noticed_at_the_next_fetch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("dfs-root");
    std::fs::create_dir(&root).expect("dfs root");
    let server = DfsServer::start(&root);
    store(&server, dir.path(), "/e.txt", b"before");
    let mut setup = Setup::new(Backend::Memory);
    setup.origin = Some(format!("dfs://{}", server.addr));
    let run = Run::start(setup);
    assert_eq!(
        run.get("/e.txt").expect("get"),
        Reply::Ok(b"before".to_vec())
    );

    let edited = b"edited by hand under the root".to_vec();
    std::fs::write(root.join("e.txt"), &edited).expect("edit by hand");
    let out = dir.path().join("fetched");
    gfdfs(
        &server,
        &["fetch", "e.txt", "-o", out.to_str().expect("utf-8")],
    );
    assert_eq!(std::fs::read(&out).expect("fetched"), edited);
    until_served(&run, "/e.txt", &Reply::Ok(edited), "the edited file");

    std::fs::remove_file(root.join("e.txt")).expect("remove by hand");
    let fetch = Command::new(GFDFS)
        .args(["fetch", "e.txt", "-o"])
        .arg(&out)
        .args(["--server", &server.addr.to_string()])
        .output()
        .expect("run gfdfs fetch");
    assert!(!fetch.status.success(), "a removed file was fetched");
    until_served(&run, "/e.txt", &Reply::FileNotFound, "the removed file");
    common::stop_and_check_nothing_left(run);
}
