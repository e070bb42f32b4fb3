//! HTTPS origins: a real TLS server on 127.0.0.1 with a certificate made by the test, trusted
//! through `origin_ca_file` or not trusted at all.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use gfprotocol::Status;
use ipc::Region;
use proxy_core::metrics::Counter;
use proxy_core::origin::{CaBundle, CaFileError};
use proxy_core::{Error, Proxy};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::common::{self, Backend, Rig};

/// A certificate for the names the test origin is reached by, with its key.
struct TestCertificate {
    pem: String,
    der: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

impl TestCertificate {
    fn self_signed() -> TestCertificate {
        let names = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
        let certified = rcgen::generate_simple_self_signed(names).expect("generate a certificate");
        TestCertificate {
            pem: certified.cert.pem(),
            der: certified.cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der()).into(),
        }
    }
}

/// What the origin's connections ended with.
#[derive(Default)]
struct Seen {
    /// Requests read after a completed handshake, per path.
    requests: HashMap<String, usize>,
    /// Handshakes that failed, with the TLS error the server saw.
    failed_handshakes: Vec<rustls::Error>,
}

/// An HTTPS origin on 127.0.0.1:0: serves `body` at `path` (200 with a Content-Length), 404
/// for any other path, one request per connection.
struct TlsOrigin {
    addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TlsOrigin {
    fn start(certificate: &TestCertificate, path: &str, body: Arc<Vec<u8>>) -> TlsOrigin {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(vec![certificate.der.clone()], certificate.key.clone_key())
            .expect("server certificate");
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (seen, stop, path) = (Arc::clone(&seen), Arc::clone(&stop), path.to_owned());
            thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    serve_connection(&config, stream, &path, &body, &seen);
                }
            })
        };
        TlsOrigin {
            addr,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    /// `https://127.0.0.1:port`.
    fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    fn requests(&self, path: &str) -> usize {
        let seen = self.seen.lock().expect("seen");
        seen.requests.get(path).copied().unwrap_or(0)
    }

    fn failed_handshakes(&self) -> Vec<rustls::Error> {
        self.seen.lock().expect("seen").failed_handshakes.clone()
    }
}

impl Drop for TlsOrigin {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept so that the thread sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve_connection(
    config: &Arc<rustls::ServerConfig>,
    stream: TcpStream,
    path: &str,
    body: &[u8],
    seen: &Mutex<Seen>,
) {
    // A client that stalls must not hold the (serial) accept loop for long.
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    let Ok(connection) = rustls::ServerConnection::new(Arc::clone(config)) else {
        return;
    };
    let mut tls = rustls::StreamOwned::new(connection, stream);
    // The handshake runs inside the first read.
    let head = match read_head(&mut tls) {
        Ok(head) => head,
        Err(error) => {
            let tls_error = error
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .cloned();
            if let Some(tls_error) = tls_error {
                seen.lock().expect("seen").failed_handshakes.push(tls_error);
            }
            return;
        }
    };
    let requested = head
        .lines()
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .unwrap_or("")
        .to_owned();
    *seen
        .lock()
        .expect("seen")
        .requests
        .entry(requested.clone())
        .or_insert(0) += 1;
    let (status, payload) = if requested == path {
        ("200 OK", body)
    } else {
        ("404 Not Found", &[][..])
    };
    let answer = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        payload.len()
    );
    // The proxy may have gone already; nothing to report then.
    let _ = tls.write_all(answer.as_bytes());
    let _ = tls.write_all(payload);
    tls.conn.send_close_notify();
    let _ = tls.flush();
}

/// Reads up to the blank line that ends a request head.
fn read_head(tls: &mut impl Read) -> std::io::Result<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tls.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(buf.get(..n).unwrap_or_default());
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// Writes `text` to `name` under `dir`.
fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let file = dir.join(name);
    std::fs::write(&file, text).expect("write file");
    file
}

#[test]
fn an_https_origin_signed_by_a_configured_ca_is_fetched_filled_and_then_hit() {
    let certificate = TestCertificate::self_signed();
    // Over one TLS record and over one 256 KiB segment.
    let body = Arc::new(common::content(21, 300 * 1024 + 3));
    let origin = TlsOrigin::start(&certificate, "/a", Arc::clone(&body));
    let dir = tempfile::tempdir().expect("tempdir");
    // A bundle: an unrelated root first, then the origin's.
    let unrelated = TestCertificate::self_signed();
    let bundle = format!("{}{}", unrelated.pem, certificate.pem);
    let ca_file = write_file(dir.path(), "origin-ca.pem", &bundle);
    assert_eq!(
        CaBundle::load(&ca_file)
            .expect("the bundle loads")
            .certificate_count(),
        2
    );
    let mut config = common::proxy_config(Some(origin.url()));
    config.settings.origin_ca_file = Some(ca_file);
    let rig = Rig::start(8, &[Backend::Memory], config);
    let addr = rig.addr();

    // Miss -> HTTPS origin -> fill -> the next request is a hit.
    common::fetch_ok(&addr, "/a", &body);
    assert_eq!(rig.counter(Counter::LookupMisses), 1);
    rig.wait_counter(Counter::OriginOk, 1);
    common::wait_for("the fill of /a", Duration::from_secs(20), || {
        rig.counter(Counter::FillsStored) >= 1
    });
    common::fetch_ok(&addr, "/a", &body);
    assert_eq!(origin.requests("/a"), 1);
    assert_eq!(rig.counter(Counter::LookupHits), 1);

    // A 404 over TLS is FILE_NOT_FOUND, as over plain HTTP.
    common::fetch_status(&addr, "/missing", Status::FileNotFound);
    rig.wait_counter(Counter::OriginNotFound, 1);
    assert_eq!(origin.requests("/missing"), 1);
    assert_eq!(rig.counter(Counter::OriginError), 0);
    assert!(origin.failed_handshakes().is_empty());
    rig.wait_pool_full();
}

#[test]
fn an_https_origin_with_an_untrusted_certificate_is_an_error() {
    let certificate = TestCertificate::self_signed();
    let body = Arc::new(common::content(22, 10_000));
    let origin = TlsOrigin::start(&certificate, "/a", Arc::clone(&body));
    // No origin_ca_file: only the web PKI roots, which did not sign the test certificate.
    let rig = Rig::start(
        8,
        &[Backend::Memory],
        common::proxy_config(Some(origin.url())),
    );
    let addr = rig.addr();

    common::fetch_status(&addr, "/a", Status::Error);
    rig.wait_counter(Counter::OriginError, 1);
    rig.wait_counter(Counter::RequestsError, 1);
    assert_eq!(rig.counter(Counter::OriginOk), 0);
    assert_eq!(rig.counter(Counter::FillsStored), 0);
    // The client refused the certificate during the handshake: no request got through. (The
    // origin client closes the connection at once; whether the server reads the client's alert
    // first is a race, so only an alert other than UnknownCA would be wrong.)
    assert_eq!(origin.requests("/a"), 0);
    let refused = rustls::Error::AlertReceived(rustls::AlertDescription::UnknownCA);
    assert!(
        origin
            .failed_handshakes()
            .iter()
            .all(|error| *error == refused),
        "handshake errors: {:?}",
        origin.failed_handshakes()
    );
    rig.wait_pool_full();
}

#[test]
fn an_unusable_ca_file_stops_the_proxy_from_starting_and_names_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    // PEM, but a private key rather than a certificate.
    let key = rcgen::KeyPair::generate().expect("key");
    let no_certificate = write_file(dir.path(), "key-only.pem", &key.serialize_pem());
    let not_pem = write_file(dir.path(), "notes.txt", "trust me\n");
    // A CERTIFICATE block whose content is not X.509.
    let damaged = write_file(
        dir.path(),
        "damaged.pem",
        "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
    );
    let missing = dir.path().join("missing.pem");

    // The typed error of each case names the file.
    for file in [&no_certificate, &not_pem] {
        match CaBundle::load(file) {
            Err(error @ CaFileError::NoCertificate { .. }) => {
                assert_eq!(error.path(), file.as_path())
            }
            other => panic!("{}: expected NoCertificate, got {other:?}", file.display()),
        }
    }
    match CaBundle::load(&damaged) {
        Err(error @ CaFileError::Invalid { .. }) => assert_eq!(error.path(), damaged.as_path()),
        other => panic!("damaged: expected Invalid, got {other:?}"),
    }
    match CaBundle::load(&missing) {
        Err(error @ CaFileError::Read { .. }) => assert_eq!(error.path(), missing.as_path()),
        other => panic!("missing: expected Read, got {other:?}"),
    }

    // Proxy::start refuses each, naming the file, and leaves the member Down.
    let region = Arc::new(Region::create(&common::region_config(4, 1, 1), None).expect("region"));
    for file in [&no_certificate, &not_pem, &damaged, &missing] {
        let mut config = common::proxy_config(Some("https://127.0.0.1:1".to_owned()));
        config.settings.origin_ca_file = Some(file.clone());
        match Proxy::start(Arc::clone(&region), config) {
            Err(Error::Config(message)) => assert!(
                message.contains(&file.display().to_string()),
                "{message:?} does not name {}",
                file.display()
            ),
            Err(other) => panic!("{}: expected a config error, got {other}", file.display()),
            Ok(_) => panic!("{}: the proxy started", file.display()),
        }
        assert_eq!(
            region.member_state(ipc::Member::Proxy(ipc::ProxySlot::from_raw(0))),
            ipc::MemberState::Down
        );
    }
}

#[test]
fn only_http_and_https_origins_are_valid() {
    for (origin, valid) in [
        ("http://127.0.0.1:8080", true),
        ("https://origin.example/prefix", true),
        ("HTTPS://origin.example", true),
        ("ftp://origin.example", false),
        ("file:///etc/passwd", false),
        ("https://", false),
        ("127.0.0.1:8080", false),
        ("https://origin.example/?q=1", false),
    ] {
        let config = common::proxy_config(Some(origin.to_owned()));
        match config.validate() {
            Ok(()) => assert!(valid, "{origin} was accepted"),
            Err(Error::Config(message)) => {
                assert!(!valid, "{origin} was refused: {message}");
                assert!(
                    message.contains(origin),
                    "{message:?} does not name {origin}"
                );
            }
            Err(other) => panic!("{origin}: expected a config error, got {other}"),
        }
    }
}
