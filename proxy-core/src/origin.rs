//! The HTTP origin: a blocking ureq client with bounded connect, total and redirect budgets,
//! and the mapping of its answers to GetFile outcomes.
//!
//! [`Origin::fetch`] GETs a path, conditionally when given the [`Validators`] of a stored copy,
//! and answers [`OriginAnswer`]: a body to read (200), `NotModified` (304, to a conditional
//! request only) or `NotFound` (404, 410), each with the origin's caching-relevant headers raw
//! ([`OriginHeaders`]): what they mean is the freshness logic's business, not the client's.
//!
//! The client does its I/O on the calling thread: [`OriginBody::read`] is a `read(2)` on the
//! origin's socket (through TLS for HTTPS) and a copy out of the client's input buffer, with no
//! runtime thread and no channel between the socket and the reader. Idle connections are kept
//! for the next fetch.
//!
//! HTTPS origins are verified against the built-in web PKI roots plus, when configured, the
//! certificates of an extra PEM file ([`CaBundle`]), for origins behind an internal CA.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig};

use crate::dfs_origin::{DfsAnswer, DfsOrigin};
use crate::error::Error;
use crate::path::CanonicalPath;

/// Bytes the client reads from the origin's socket at a time (its input buffer).
const INPUT_BUFFER: usize = 256 * 1024;

/// Idle origin connections kept for reuse (and at most as many per host): as many as requests
/// a proxy serves at once in the common case, so that concurrent misses do not reconnect.
const IDLE_CONNECTIONS: usize = 64;

/// Settings of the origin client.
#[derive(Clone, Debug)]
pub struct OriginConfig {
    /// Base URL (`http://host:port[/prefix]` or `https://...`).
    pub base: String,
    /// TCP (and TLS) connect timeout.
    pub connect_timeout: Duration,
    /// Deadline of one whole fetch, body included.
    pub total_timeout: Duration,
    /// Redirects followed at most.
    pub max_redirects: usize,
    /// A PEM file of root certificates trusted in addition to the built-in ones.
    pub ca_file: Option<PathBuf>,
}

/// Why an origin CA file cannot be used. Every variant names the file.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum CaFileError {
    /// The file could not be read.
    #[error("cannot read origin CA file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the read reported.
        #[source]
        source: std::io::Error,
    },
    /// The file is not PEM, or a certificate in it is not a usable X.509 certificate.
    #[error("origin CA file {} is not a valid PEM certificate bundle: {source}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What the PEM or certificate parser reported.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The file holds no `CERTIFICATE` block.
    #[error("origin CA file {} holds no PEM certificate", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
}

impl CaFileError {
    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            CaFileError::Read { path, .. }
            | CaFileError::Invalid { path, .. }
            | CaFileError::NoCertificate { path } => path,
        }
    }
}

impl From<CaFileError> for Error {
    fn from(error: CaFileError) -> Error {
        Error::Config(error.to_string())
    }
}

/// The extra root certificates of one PEM file (one or more `CERTIFICATE` blocks), checked to
/// be usable as trust anchors.
#[derive(Clone, Debug)]
pub struct CaBundle {
    certificates: Vec<Certificate<'static>>,
}

impl CaBundle {
    /// Reads and checks `path`: it must be readable, PEM, and hold at least one certificate
    /// that TLS accepts as a root.
    pub fn load(path: &Path) -> Result<CaBundle, CaFileError> {
        let pem = std::fs::read(path).map_err(|source| CaFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let invalid = |source: Box<dyn std::error::Error + Send + Sync>| CaFileError::Invalid {
            path: path.to_path_buf(),
            source,
        };
        let mut certificates = Vec::new();
        for item in ureq::tls::parse_pem(&pem) {
            // Keys and other blocks are no roots; a file of nothing else holds no certificate.
            if let PemItem::Certificate(certificate) = item.map_err(|e| invalid(Box::new(e)))? {
                certificates.push(certificate);
            }
        }
        if certificates.is_empty() {
            return Err(CaFileError::NoCertificate {
                path: path.to_path_buf(),
            });
        }
        // PEM parsing does not look inside the DER; making a trust anchor does, so a damaged
        // certificate is reported now, naming the file, rather than ignored by the TLS setup.
        let mut store = rustls::RootCertStore::empty();
        for certificate in &certificates {
            let der = rustls::pki_types::CertificateDer::from(certificate.der());
            store.add(der).map_err(|e| invalid(Box::new(e)))?;
        }
        Ok(CaBundle { certificates })
    }

    /// How many certificates the file holds.
    pub fn certificate_count(&self) -> usize {
        self.certificates.len()
    }
}

/// Checks an origin base URL: absolute `http` or `https` with a host, no query, fragment or
/// credentials.
pub fn check_base(base: &str) -> Result<(), String> {
    let parsed = url::Url::parse(base).map_err(|e| format!("origin {base:?}: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(format!(
            "origin {base:?} is not an http:// or https:// URL with a host"
        ));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(format!("origin {base:?} must not have a query or fragment"));
    }
    // Credentials in a URL end up in logs and error messages; the client sends none.
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(format!(
            "origin {base:?} must not carry a user name or password"
        ));
    }
    Ok(())
}

/// A client for one origin: an HTTP server, or a gfdfs server (`dfs://`, answers made to look
/// like HTTP ones, see [`crate::dfs_origin`]). Cheap to share between threads.
#[derive(Clone, Debug)]
pub struct Origin {
    kind: OriginKind,
}

#[derive(Clone, Debug)]
enum OriginKind {
    Http(HttpOrigin),
    Dfs(Arc<DfsOrigin>),
}

/// The HTTP origin's client.
#[derive(Clone)]
struct HttpOrigin {
    agent: ureq::Agent,
    base: String,
    total_timeout: Duration,
}

impl std::fmt::Debug for HttpOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpOrigin")
            .field("base", &self.base)
            .field("total_timeout", &self.total_timeout)
            .finish_non_exhaustive()
    }
}

/// Validators of a stored copy, sent as `If-None-Match` / `If-Modified-Since`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Validators {
    /// The stored ETag, sent as `If-None-Match`.
    pub etag: Option<String>,
    /// The stored Last-Modified, sent as `If-Modified-Since`.
    pub last_modified: Option<String>,
}

impl Validators {
    /// Whether there is anything to send: a request without a validator is not conditional.
    pub fn is_empty(&self) -> bool {
        self.etag.is_none() && self.last_modified.is_none()
    }
}

/// The origin's caching-relevant response headers, raw: each value as the origin sent it, or
/// `None` when absent or not visible ASCII (bytes 0x21-0x7E plus space and tab). Several
/// `Cache-Control` fields are joined with `", "`; of the other headers the first one counts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OriginHeaders {
    /// The HTTP status of the final answer (after redirects).
    pub status: u16,
    /// `Cache-Control`, all fields joined.
    pub cache_control: Option<String>,
    /// `Expires`.
    pub expires: Option<String>,
    /// `Date`.
    pub date: Option<String>,
    /// `Age`.
    pub age: Option<String>,
    /// `ETag`.
    pub etag: Option<String>,
    /// `Last-Modified`.
    pub last_modified: Option<String>,
    /// `Content-Type`.
    pub content_type: Option<String>,
    /// A `Vary` field names `*` (or cannot be read): the answer fits no other request
    /// (RFC 9111 section 4.1), so it is never stored. Other `Vary` fields need nothing: the
    /// proxy sends the origin the same request headers for every client.
    pub varies_on_everything: bool,
}

/// Whether a header value is visible ASCII, with spaces and tabs between the visible bytes.
fn is_visible_ascii(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| b == b' ' || b == b'\t' || (0x21..=0x7e).contains(&b))
}

impl OriginHeaders {
    /// Collects the headers of an answer from `(name, value)` pairs (names in any case).
    fn collect<'a>(status: u16, fields: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Self {
        let mut headers = OriginHeaders {
            status,
            ..OriginHeaders::default()
        };
        // A field with a byte outside visible ASCII poisons its header: a half-read value could
        // mean something else than what the origin said.
        let mut cache_control: Option<Option<String>> = None;
        for (name, value) in fields {
            let text = is_visible_ascii(value)
                .then(|| std::str::from_utf8(value).ok())
                .flatten()
                .map(|text| text.trim_matches([' ', '\t']).to_owned());
            let slot = match name.to_ascii_lowercase().as_str() {
                "cache-control" => {
                    cache_control = Some(match (cache_control.take(), text) {
                        (None, text) => text,
                        (Some(Some(mut joined)), Some(text)) => {
                            joined.push_str(", ");
                            joined.push_str(&text);
                            Some(joined)
                        }
                        (Some(_), _) => None,
                    });
                    continue;
                }
                "expires" => &mut headers.expires,
                "date" => &mut headers.date,
                "age" => &mut headers.age,
                "etag" => &mut headers.etag,
                "last-modified" => &mut headers.last_modified,
                "content-type" => &mut headers.content_type,
                "vary" => {
                    let star = |text: &String| text.split(',').any(|name| name.trim() == "*");
                    headers.varies_on_everything |= text.as_ref().is_none_or(star);
                    continue;
                }
                _ => continue,
            };
            if slot.is_none() {
                *slot = text;
            }
        }
        headers.cache_control = cache_control.flatten();
        headers
    }

    fn from_response(status: u16, map: &ureq::http::HeaderMap) -> OriginHeaders {
        OriginHeaders::collect(
            status,
            map.iter()
                .map(|(name, value)| (name.as_str(), value.as_bytes())),
        )
    }
}

/// What the origin answered.
#[derive(Debug)]
pub enum OriginAnswer {
    /// 200: the body follows.
    Found(Box<OriginBody>),
    /// 304 to a conditional request: the stored copy is still good; these headers refresh it.
    NotModified(OriginHeaders),
    /// 404 or 410 (the status is in the headers).
    NotFound(OriginHeaders),
}

/// The body of a 200 answer, read as it arrives.
pub struct OriginBody {
    reader: BodyReader,
    headers: OriginHeaders,
    url: String,
    len: Option<u64>,
    /// Bytes read so far.
    received: u64,
    deadline: Instant,
}

impl std::fmt::Debug for OriginBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OriginBody")
            .field("url", &self.url)
            .field("headers", &self.headers)
            .field("len", &self.len)
            .field("received", &self.received)
            .finish_non_exhaustive()
    }
}

/// Where an origin body's bytes come from.
enum BodyReader {
    Http(ureq::BodyReader<'static>),
    Dfs(Box<dfs::blocking::FetchReader>),
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            BodyReader::Http(reader) => reader.read(buf),
            BodyReader::Dfs(reader) => reader.read(buf),
        }
    }
}

impl Origin {
    /// The client of an HTTP origin: see [`HttpOrigin::new`].
    pub fn new(config: &OriginConfig) -> Result<Origin, Error> {
        Ok(Origin {
            kind: OriginKind::Http(HttpOrigin::new(config)?),
        })
    }

    /// The client of a gfdfs origin at `base` (`dfs://HOST:PORT`), each call bounded by
    /// `timeout`. Connects on first use.
    pub fn dfs(base: &str, timeout: Duration) -> Result<Origin, Error> {
        Ok(Origin {
            kind: OriginKind::Dfs(Arc::new(DfsOrigin::new(base, timeout)?)),
        })
    }

    /// The gfdfs origin, when it is one (its changes invalidate the caches).
    pub fn as_dfs(&self) -> Option<&DfsOrigin> {
        match &self.kind {
            OriginKind::Dfs(dfs) => Some(dfs),
            OriginKind::Http(_) => None,
        }
    }

    /// The URL fetched for `path`.
    pub fn url_for(&self, path: &CanonicalPath) -> String {
        match &self.kind {
            OriginKind::Http(http) => http.url_for(path),
            OriginKind::Dfs(dfs) => dfs.url_for(path),
        }
    }

    /// GETs `path`, conditionally when `validators` are given. 200 gives the body to read;
    /// 404/410 `NotFound`; 304 `NotModified`, but only to a conditional request. Any other
    /// status, a transport error or a timeout is an error.
    pub fn fetch(
        &self,
        path: &CanonicalPath,
        validators: Option<&Validators>,
    ) -> Result<OriginAnswer, Error> {
        match &self.kind {
            OriginKind::Http(http) => http.fetch(path, validators),
            OriginKind::Dfs(dfs) => fetch_dfs(dfs, path, validators),
        }
    }
}

/// A gfdfs fetch as an origin answer.
fn fetch_dfs(
    dfs: &DfsOrigin,
    path: &CanonicalPath,
    validators: Option<&Validators>,
) -> Result<OriginAnswer, Error> {
    let deadline = Instant::now() + dfs.timeout();
    Ok(match dfs.fetch(path, validators)? {
        DfsAnswer::Found { len, headers, body } => OriginAnswer::Found(Box::new(OriginBody {
            reader: BodyReader::Dfs(body),
            headers,
            url: dfs.url_for(path),
            len: Some(len),
            received: 0,
            deadline,
        })),
        DfsAnswer::NotModified(headers) => OriginAnswer::NotModified(headers),
        DfsAnswer::NotFound(headers) => OriginAnswer::NotFound(headers),
    })
}

impl HttpOrigin {
    /// Builds the client. The base must be an absolute `http` or `https` URL. Proxy environment
    /// variables are ignored: the origin is named explicitly. HTTPS is verified against the
    /// built-in web PKI roots and the certificates of `ca_file`, if any.
    fn new(config: &OriginConfig) -> Result<HttpOrigin, Error> {
        check_base(&config.base).map_err(Error::Config)?;
        if config.total_timeout.is_zero() || config.connect_timeout.is_zero() {
            return Err(Error::Config("origin timeouts must be above zero".into()));
        }
        let roots = match &config.ca_file {
            // The client takes one set of roots: the built-in ones (as certificates) and the
            // file's.
            Some(path) => {
                let extra = CaBundle::load(path)?.certificates;
                let built_in = webpki_root_certs::TLS_SERVER_ROOT_CERTS
                    .iter()
                    .map(|der| Certificate::from_der(der.as_ref()));
                RootCerts::Specific(Arc::new(built_in.chain(extra).collect()))
            }
            None => RootCerts::WebPki,
        };
        let max_redirects = u32::try_from(config.max_redirects)
            .map_err(|_| Error::Config("origin_max_redirects is too large".into()))?;
        let agent = ureq::Agent::config_builder()
            .tls_config(TlsConfig::builder().root_certs(roots).build())
            .proxy(None)
            .http_status_as_error(false)
            .max_redirects(max_redirects)
            .max_redirects_will_error(true)
            .timeout_connect(Some(config.connect_timeout))
            // End to end, the body included; OriginBody::read checks the same deadline.
            .timeout_global(Some(config.total_timeout))
            .input_buffer_size(INPUT_BUFFER)
            .max_idle_connections(IDLE_CONNECTIONS)
            .max_idle_connections_per_host(IDLE_CONNECTIONS)
            .build()
            .new_agent();
        Ok(HttpOrigin {
            agent,
            base: config.base.trim_end_matches('/').to_owned(),
            total_timeout: config.total_timeout,
        })
    }

    /// The URL fetched for `path`.
    fn url_for(&self, path: &CanonicalPath) -> String {
        format!("{}{}", self.base, path.url_encoded())
    }

    /// GETs `path`, conditionally when `validators` are given (`If-None-Match`,
    /// `If-Modified-Since`). 200 gives the body to read; 404/410 `NotFound`; 304 `NotModified`,
    /// but only to a conditional request. Any other status (a 304 nobody asked for included), a
    /// transport error or a timeout is an error.
    fn fetch(
        &self,
        path: &CanonicalPath,
        validators: Option<&Validators>,
    ) -> Result<OriginAnswer, Error> {
        let url = self.url_for(path);
        let deadline = Instant::now() + self.total_timeout;
        let mut request = self.agent.get(&url);
        let conditional = validators.filter(|v| !v.is_empty());
        if let Some(validators) = conditional {
            if let Some(etag) = &validators.etag {
                request = request.header("If-None-Match", etag);
            }
            if let Some(modified) = &validators.last_modified {
                request = request.header("If-Modified-Since", modified);
            }
        }
        let response = request.call().map_err(|e| transport(&url, e))?;
        let status = response.status().as_u16();
        let headers = OriginHeaders::from_response(status, response.headers());
        match status {
            200 => {
                let len = response.body().content_length();
                Ok(OriginAnswer::Found(Box::new(OriginBody {
                    reader: BodyReader::Http(response.into_body().into_reader()),
                    headers,
                    url,
                    len,
                    received: 0,
                    deadline,
                })))
            }
            304 if conditional.is_some() => Ok(OriginAnswer::NotModified(headers)),
            404 | 410 => Ok(OriginAnswer::NotFound(headers)),
            _ => Err(Error::OriginStatus { url, status }),
        }
    }
}

/// An origin transport error. A timeout becomes an `io::Error` of kind `TimedOut` (the client's
/// error inside), which is what `Error::is_origin_timeout` looks for.
fn transport(url: &str, e: ureq::Error) -> Error {
    let source: Box<dyn std::error::Error + Send + Sync> = match e {
        ureq::Error::Io(io) => Box::new(io),
        timeout @ ureq::Error::Timeout(_) => {
            Box::new(std::io::Error::new(std::io::ErrorKind::TimedOut, timeout))
        }
        other => Box::new(other),
    };
    Error::OriginTransport {
        url: url.to_owned(),
        source,
    }
}

impl OriginBody {
    /// The answer's caching-relevant headers.
    pub fn headers(&self) -> &OriginHeaders {
        &self.headers
    }

    /// The announced length (Content-Length), if any.
    pub fn content_length(&self) -> Option<u64> {
        self.len
    }

    /// The URL this body comes from.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Reads the next bytes into `buf`; `Ok(0)` at the end. Fails past the total deadline.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        if Instant::now() >= self.deadline {
            return Err(transport(
                &self.url,
                ureq::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "origin total timeout",
                )),
            ));
        }
        let n = self
            .reader
            .read(buf)
            .map_err(|e| transport(&self.url, ureq::Error::from(e)))?;
        self.received += n as u64;
        if n > 0 && self.len == Some(self.received) {
            // The client hands the connection back for reuse when a read finds the body
            // complete; callers that stop at the Content-Length never make that read.
            let _ = self.reader.read(&mut [0u8; 1]);
        }
        Ok(n)
    }

    /// Reads a body without a Content-Length whole, up to `limit` bytes.
    pub fn read_to_end_bounded(&mut self, limit: u64) -> Result<Vec<u8>, Error> {
        let mut body = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = self.read(&mut buf)?;
            if n == 0 {
                return Ok(body);
            }
            let piece = buf.get(..n).unwrap_or_default();
            if u64::try_from(body.len() + n).unwrap_or(u64::MAX) > limit {
                return Err(Error::OriginTooLarge {
                    url: self.url.clone(),
                    limit,
                });
            }
            body.extend_from_slice(piece);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::net::TcpListener;
    use std::thread::{self, JoinHandle};

    use super::*;

    /// One answer of a test origin: status, headers, body.
    type Canned = (u16, Vec<(&'static str, &'static str)>, &'static [u8]);

    /// The request headers one request arrived with, names in lower case.
    type Seen = Vec<(String, String)>;

    /// A tiny_http origin on 127.0.0.1:0 that answers its requests with `answers`, in order,
    /// then stops; the thread gives back the headers of each request.
    fn origin_answering(answers: Vec<Canned>) -> (String, JoinHandle<Vec<Seen>>) {
        let server = tiny_http::Server::http("127.0.0.1:0").expect("bind");
        let addr = server.server_addr().to_ip().expect("an IP address");
        let thread = thread::spawn(move || {
            let mut seen = Vec::new();
            for (status, headers, body) in answers {
                let Ok(Some(request)) = server.recv_timeout(Duration::from_secs(20)) else {
                    break;
                };
                seen.push(
                    request
                        .headers()
                        .iter()
                        .map(|h| {
                            (
                                h.field.as_str().as_str().to_ascii_lowercase(),
                                h.value.to_string(),
                            )
                        })
                        .collect(),
                );
                let mut response = tiny_http::Response::from_data(body.to_vec())
                    .with_status_code(status)
                    .with_chunked_threshold(usize::MAX);
                for (name, value) in headers {
                    let header = tiny_http::Header::from_bytes(name, value).expect("header");
                    response.add_header(header);
                }
                let _ = request.respond(response);
            }
            seen
        });
        (format!("http://{addr}"), thread)
    }

    fn client(base: &str) -> Origin {
        Origin::new(&OriginConfig {
            base: base.to_owned(),
            connect_timeout: Duration::from_secs(5),
            total_timeout: Duration::from_secs(20),
            max_redirects: 3,
            ca_file: None,
        })
        .expect("origin client")
    }

    fn path(raw: &str) -> CanonicalPath {
        CanonicalPath::parse(raw).expect("path")
    }

    fn header<'s>(seen: &'s Seen, name: &str) -> Option<&'s str> {
        seen.iter()
            .find(|(field, _)| field == name)
            .map(|(_, value)| value.as_str())
    }

    fn read_all(body: &mut OriginBody) -> Vec<u8> {
        let mut all = Vec::new();
        let mut buf = [0u8; 1000];
        loop {
            let n = body.read(&mut buf).expect("read");
            if n == 0 {
                return all;
            }
            all.extend_from_slice(&buf[..n]);
        }
    }

    #[test]
    fn a_200_carries_its_caching_headers_and_its_body() {
        let (base, origin) = origin_answering(vec![(
            200,
            vec![
                ("Cache-Control", "max-age=60"),
                ("Cache-Control", "s-maxage=30, stale-while-revalidate=5"),
                ("Expires", "Thu, 01 Jan 2099 00:00:00 GMT"),
                ("Date", "Wed, 02 Dec 2026 04:00:00 GMT"),
                ("Age", "12"),
                ("ETag", "\"v1\""),
                ("Last-Modified", "Tue, 01 Dec 2026 10:00:00 GMT"),
                ("Content-Type", "text/plain; charset=utf-8"),
            ],
            b"hello",
        )]);
        let answer = client(&base).fetch(&path("/a"), None).expect("fetch");
        let OriginAnswer::Found(mut body) = answer else {
            panic!("expected a body, got {answer:?}");
        };
        assert_eq!(
            body.headers(),
            &OriginHeaders {
                status: 200,
                cache_control: Some("max-age=60, s-maxage=30, stale-while-revalidate=5".into()),
                expires: Some("Thu, 01 Jan 2099 00:00:00 GMT".into()),
                date: Some("Wed, 02 Dec 2026 04:00:00 GMT".into()),
                age: Some("12".into()),
                etag: Some("\"v1\"".into()),
                last_modified: Some("Tue, 01 Dec 2026 10:00:00 GMT".into()),
                content_type: Some("text/plain; charset=utf-8".into()),
                varies_on_everything: false,
            }
        );
        assert_eq!(body.content_length(), Some(5));
        assert_eq!(read_all(&mut body), b"hello");
        // An unconditional request carries no validator.
        let seen = origin.join().expect("origin");
        assert_eq!(header(&seen[0], "if-none-match"), None);
        assert_eq!(header(&seen[0], "if-modified-since"), None);
    }

    #[test]
    fn a_conditional_request_sends_its_validators_and_takes_a_304() {
        let (base, origin) = origin_answering(vec![
            (
                304,
                vec![("ETag", "\"v1\""), ("Cache-Control", "max-age=120")],
                b"",
            ),
            (304, vec![], b""),
            (200, vec![("ETag", "\"v2\"")], b"changed"),
        ]);
        let origin_client = client(&base);
        let both = Validators {
            etag: Some("\"v1\"".into()),
            last_modified: Some("Tue, 01 Dec 2026 10:00:00 GMT".into()),
        };
        match origin_client
            .fetch(&path("/a"), Some(&both))
            .expect("fetch")
        {
            OriginAnswer::NotModified(headers) => {
                assert_eq!(headers.status, 304);
                assert_eq!(headers.etag.as_deref(), Some("\"v1\""));
                assert_eq!(headers.cache_control.as_deref(), Some("max-age=120"));
            }
            other => panic!("expected NotModified, got {other:?}"),
        }
        let modified_only = Validators {
            etag: None,
            last_modified: Some("Tue, 01 Dec 2026 10:00:00 GMT".into()),
        };
        let answer = origin_client.fetch(&path("/a"), Some(&modified_only));
        assert!(matches!(answer, Ok(OriginAnswer::NotModified(_))));
        // A changed object: the 200 replaces the copy.
        let etag_only = Validators {
            etag: Some("\"v1\"".into()),
            last_modified: None,
        };
        match origin_client
            .fetch(&path("/a"), Some(&etag_only))
            .expect("fetch")
        {
            OriginAnswer::Found(mut body) => {
                assert_eq!(body.headers().etag.as_deref(), Some("\"v2\""));
                assert_eq!(read_all(&mut body), b"changed");
            }
            other => panic!("expected a body, got {other:?}"),
        }
        let seen = origin.join().expect("origin");
        assert_eq!(header(&seen[0], "if-none-match"), Some("\"v1\""));
        assert_eq!(
            header(&seen[0], "if-modified-since"),
            Some("Tue, 01 Dec 2026 10:00:00 GMT")
        );
        assert_eq!(header(&seen[1], "if-none-match"), None);
        assert_eq!(
            header(&seen[1], "if-modified-since"),
            Some("Tue, 01 Dec 2026 10:00:00 GMT")
        );
        assert_eq!(header(&seen[2], "if-none-match"), Some("\"v1\""));
        assert_eq!(header(&seen[2], "if-modified-since"), None);
    }

    #[test]
    fn a_304_nobody_asked_for_is_an_origin_error() {
        let (base, origin) = origin_answering(vec![(304, vec![], b""), (304, vec![], b"")]);
        let origin_client = client(&base);
        // No validators, and validators with nothing in them: neither request is conditional.
        for validators in [None, Some(&Validators::default())] {
            match origin_client.fetch(&path("/a"), validators) {
                Err(Error::OriginStatus { status: 304, url }) => assert!(url.ends_with("/a")),
                other => panic!("expected an origin status error, got {other:?}"),
            }
        }
        let seen = origin.join().expect("origin");
        assert_eq!(seen.len(), 2);
        assert!(seen
            .iter()
            .all(|s| header(s, "if-none-match").is_none()
                && header(s, "if-modified-since").is_none()));
    }

    #[test]
    fn not_found_answers_keep_their_status_and_headers() {
        let (base, origin) = origin_answering(vec![
            (404, vec![("Cache-Control", "max-age=10")], b"no such file"),
            (410, vec![("Expires", "Thu, 01 Jan 2099 00:00:00 GMT")], b""),
            (500, vec![("Cache-Control", "no-store")], b""),
        ]);
        let origin_client = client(&base);
        match origin_client.fetch(&path("/a"), None).expect("fetch") {
            OriginAnswer::NotFound(headers) => {
                assert_eq!(headers.status, 404);
                assert_eq!(headers.cache_control.as_deref(), Some("max-age=10"));
            }
            other => panic!("expected NotFound, got {other:?}"),
        }
        match origin_client.fetch(&path("/b"), None).expect("fetch") {
            OriginAnswer::NotFound(headers) => {
                assert_eq!(headers.status, 410);
                assert_eq!(
                    headers.expires.as_deref(),
                    Some("Thu, 01 Jan 2099 00:00:00 GMT")
                );
            }
            other => panic!("expected NotFound, got {other:?}"),
        }
        assert!(matches!(
            origin_client.fetch(&path("/c"), None),
            Err(Error::OriginStatus { status: 500, .. })
        ));
        origin.join().expect("origin");
    }

    #[test]
    fn header_values_outside_visible_ascii_are_dropped() {
        // A raw origin: tiny_http sends ASCII only, and the point is the bytes beyond it.
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let raw = thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = std::io::Read::read(&mut stream, &mut buf).expect("read");
                assert!(n > 0, "the client closed early");
                head.extend_from_slice(&buf[..n]);
            }
            let mut answer = Vec::new();
            answer.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n");
            answer.extend_from_slice(b"ETag: \"caf\xc3\xa9\"\r\n");
            answer.extend_from_slice(b"Cache-Control: max-age=60\r\n");
            answer.extend_from_slice(b"Cache-Control: private=\"\xff\"\r\n");
            answer.extend_from_slice(b"Content-Type: text/plain\r\n");
            answer.extend_from_slice(b"Connection: close\r\n\r\nok");
            stream.write_all(&answer).expect("write");
        });
        let answer = client(&format!("http://{addr}"))
            .fetch(&path("/a"), None)
            .expect("fetch");
        let OriginAnswer::Found(mut body) = answer else {
            panic!("expected a body, got {answer:?}");
        };
        let headers = body.headers().clone();
        assert_eq!(read_all(&mut body), b"ok");
        raw.join().expect("raw origin");
        assert_eq!(headers.etag, None);
        // One bad field poisons the joined header: half of it could mean something else.
        assert_eq!(headers.cache_control, None);
        assert_eq!(headers.content_type.as_deref(), Some("text/plain"));
    }

    /// A raw origin on 127.0.0.1:0 that answers every request on a connection with `body`
    /// (keep-alive); the thread gives back how many connections it accepted.
    fn keep_alive_origin(body: &'static [u8], requests: usize) -> (String, JoinHandle<usize>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let thread = thread::spawn(move || {
            let mut connections = 0;
            let mut answered = 0;
            while answered < requests {
                let Ok((mut stream, _)) = listener.accept() else {
                    break;
                };
                connections += 1;
                let mut pending = Vec::new();
                let mut buf = [0u8; 4096];
                while answered < requests {
                    if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        pending.drain(..end + 4);
                        let head =
                            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                        if stream
                            .write_all(head.as_bytes())
                            .and_then(|()| stream.write_all(body))
                            .is_err()
                        {
                            break;
                        }
                        answered += 1;
                        continue;
                    }
                    match std::io::Read::read(&mut stream, &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => pending.extend_from_slice(&buf[..n]),
                    }
                }
            }
            connections
        });
        (format!("http://{addr}"), thread)
    }

    #[test]
    fn a_body_read_to_its_length_hands_the_connection_back_for_the_next_fetch() {
        let (base, origin) = keep_alive_origin(b"0123456789", 3);
        let origin_client = client(&base);
        for _ in 0..3 {
            let answer = origin_client.fetch(&path("/a"), None).expect("fetch");
            let OriginAnswer::Found(mut body) = answer else {
                panic!("expected a body, got {answer:?}");
            };
            // Read exactly the Content-Length, as the miss path does, never past it.
            let mut buf = [0u8; 10];
            let mut got = 0;
            while got < 10 {
                let n = body.read(&mut buf[got..]).expect("read");
                assert!(n > 0, "the body ended early");
                got += n;
            }
            assert_eq!(&buf, b"0123456789");
        }
        assert_eq!(
            origin.join().expect("origin"),
            1,
            "one connection for three fetches"
        );
    }

    #[test]
    fn an_origin_that_does_not_answer_in_time_is_a_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let origin_client = Origin::new(&OriginConfig {
            base: format!("http://{addr}"),
            connect_timeout: Duration::from_secs(5),
            total_timeout: Duration::from_millis(300),
            max_redirects: 0,
            ca_file: None,
        })
        .expect("origin client");
        // Accepted by the kernel's backlog, never answered.
        match origin_client.fetch(&path("/a"), None) {
            Err(error) => assert!(error.is_origin_timeout(), "not a timeout: {error}"),
            Ok(answer) => panic!("expected a timeout, got {answer:?}"),
        }
        drop(listener);
    }

    #[test]
    fn collecting_headers_joins_cache_control_and_keeps_the_first_of_the_others() {
        let fields: [(&str, &[u8]); 6] = [
            ("ETag", b"\"a\""),
            ("etag", b"\"b\""),
            ("CACHE-CONTROL", b" no-cache "),
            ("Cache-Control", b"max-age=0"),
            ("Age", b"1\x01"),
            ("X-Other", b"\xff"),
        ];
        let headers = OriginHeaders::collect(200, fields);
        assert_eq!(headers.etag.as_deref(), Some("\"a\""));
        assert_eq!(
            headers.cache_control.as_deref(),
            Some("no-cache, max-age=0")
        );
        assert_eq!(headers.age, None);
        assert_eq!(headers.status, 200);
        assert!(!headers.varies_on_everything);
    }

    #[test]
    fn a_vary_star_in_any_field_or_an_unreadable_vary_varies_on_everything() {
        let vary = |values: &[&'static [u8]]| {
            OriginHeaders::collect(200, values.iter().map(|v| ("Vary", *v))).varies_on_everything
        };
        assert!(!vary(&[b"Accept-Encoding"]));
        assert!(!vary(&[b"Accept-Encoding, Accept-Language"]));
        assert!(vary(&[b"*"]));
        assert!(vary(&[b"Accept-Encoding", b"Accept , *"]));
        assert!(vary(&[b"Accept\xff"]));
    }
}
