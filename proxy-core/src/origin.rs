//! The HTTP origin: a blocking reqwest client with bounded connect, total and redirect budgets,
//! and the mapping of its answers to GetFile outcomes.
//!
//! [`Origin::fetch`] GETs a path, conditionally when given the [`Validators`] of a stored copy,
//! and answers [`OriginAnswer`]: a body to read (200), `NotModified` (304, to a conditional
//! request only) or `NotFound` (404, 410), each with the origin's caching-relevant headers raw
//! ([`OriginHeaders`]): what they mean is the freshness logic's business, not the client's.
//!
//! HTTPS origins are verified against the built-in web PKI roots plus, when configured, the
//! certificates of an extra PEM file ([`CaBundle`]), for origins behind an internal CA.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::path::CanonicalPath;

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
        source: reqwest::Error,
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
    certificates: Vec<reqwest::Certificate>,
}

impl CaBundle {
    /// Reads and checks `path`: it must be readable, PEM, and hold at least one certificate
    /// that TLS accepts as a root.
    pub fn load(path: &Path) -> Result<CaBundle, CaFileError> {
        let pem = std::fs::read(path).map_err(|source| CaFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let invalid = |source| CaFileError::Invalid {
            path: path.to_path_buf(),
            source,
        };
        let certificates = reqwest::Certificate::from_pem_bundle(&pem).map_err(invalid)?;
        if certificates.is_empty() {
            return Err(CaFileError::NoCertificate {
                path: path.to_path_buf(),
            });
        }
        // PEM parsing does not look inside the DER; building a TLS config does, so a damaged
        // certificate is reported now, naming the file, rather than as an opaque client error.
        certificates
            .iter()
            .cloned()
            .fold(
                reqwest::Client::builder().tls_built_in_root_certs(false),
                reqwest::ClientBuilder::add_root_certificate,
            )
            .build()
            .map_err(invalid)?;
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
    let parsed = reqwest::Url::parse(base).map_err(|e| format!("origin {base:?}: {e}"))?;
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

/// A client for one origin. Cheap to share between threads.
#[derive(Clone, Debug)]
pub struct Origin {
    client: reqwest::blocking::Client,
    base: String,
    total_timeout: Duration,
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
                _ => continue,
            };
            if slot.is_none() {
                *slot = text;
            }
        }
        headers.cache_control = cache_control.flatten();
        headers
    }

    fn from_reqwest(status: u16, map: &reqwest::header::HeaderMap) -> OriginHeaders {
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
#[derive(Debug)]
pub struct OriginBody {
    response: reqwest::blocking::Response,
    headers: OriginHeaders,
    url: String,
    len: Option<u64>,
    deadline: Instant,
}

impl Origin {
    /// Builds the client. The base must be an absolute `http` or `https` URL. Proxy environment
    /// variables are ignored: the origin is named explicitly. HTTPS is verified against the
    /// built-in web PKI roots and the certificates of `ca_file`, if any.
    pub fn new(config: &OriginConfig) -> Result<Origin, Error> {
        check_base(&config.base).map_err(Error::Config)?;
        if config.total_timeout.is_zero() || config.connect_timeout.is_zero() {
            return Err(Error::Config("origin timeouts must be above zero".into()));
        }
        let extra_roots = match &config.ca_file {
            Some(path) => CaBundle::load(path)?.certificates,
            None => Vec::new(),
        };
        let client = extra_roots
            .into_iter()
            .fold(
                reqwest::blocking::Client::builder(),
                reqwest::blocking::ClientBuilder::add_root_certificate,
            )
            .connect_timeout(config.connect_timeout)
            .timeout(config.total_timeout)
            .redirect(reqwest::redirect::Policy::limited(config.max_redirects))
            .no_proxy()
            .build()
            .map_err(|e| Error::Config(format!("origin client: {e}")))?;
        Ok(Origin {
            client,
            base: config.base.trim_end_matches('/').to_owned(),
            total_timeout: config.total_timeout,
        })
    }

    /// The URL fetched for `path`.
    pub fn url_for(&self, path: &CanonicalPath) -> String {
        format!("{}{}", self.base, path.url_encoded())
    }

    /// GETs `path`, conditionally when `validators` are given (`If-None-Match`,
    /// `If-Modified-Since`). 200 gives the body to read; 404/410 `NotFound`; 304 `NotModified`,
    /// but only to a conditional request. Any other status (a 304 nobody asked for included), a
    /// transport error or a timeout is an error.
    pub fn fetch(
        &self,
        path: &CanonicalPath,
        validators: Option<&Validators>,
    ) -> Result<OriginAnswer, Error> {
        let url = self.url_for(path);
        let deadline = Instant::now() + self.total_timeout;
        // The per-request timeout is a total deadline in reqwest, body included.
        let mut request = self.client.get(&url).timeout(self.total_timeout);
        let conditional = validators.filter(|v| !v.is_empty());
        if let Some(validators) = conditional {
            if let Some(etag) = &validators.etag {
                request = request.header(reqwest::header::IF_NONE_MATCH, etag);
            }
            if let Some(modified) = &validators.last_modified {
                request = request.header(reqwest::header::IF_MODIFIED_SINCE, modified);
            }
        }
        let response = request.send().map_err(|e| transport(&url, e))?;
        let status = response.status().as_u16();
        let headers = OriginHeaders::from_reqwest(status, response.headers());
        match status {
            200 => {
                let len = response.content_length();
                Ok(OriginAnswer::Found(Box::new(OriginBody {
                    response,
                    headers,
                    url,
                    len,
                    deadline,
                })))
            }
            304 if conditional.is_some() => Ok(OriginAnswer::NotModified(headers)),
            404 | 410 => Ok(OriginAnswer::NotFound(headers)),
            _ => Err(Error::OriginStatus { url, status }),
        }
    }
}

fn transport(url: &str, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::OriginTransport {
        url: url.to_owned(),
        source: Box::new(e),
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
                std::io::Error::new(std::io::ErrorKind::TimedOut, "origin total timeout"),
            ));
        }
        self.response.read(buf).map_err(|e| transport(&self.url, e))
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
    }
}
