//! The request head: framing checks, `httparse`, then the fields gfcache reads.

use super::error::SyntaxPart;
use super::framing::{self, Framing};
use super::target::parse_target;
use super::HttpError;

/// Default [`Limits::max_target`]: 8 KiB, as RFC 9112 section 3 recommends at least.
pub const DEFAULT_MAX_TARGET: usize = 8 * 1024;
/// Default [`Limits::max_head`]: 16 KiB.
pub const DEFAULT_MAX_HEAD: usize = 16 * 1024;
/// Default [`Limits::max_headers`].
pub const DEFAULT_MAX_HEADERS: usize = 64;

/// Bounds on a request head, enforced while it is still arriving.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest request target in bytes (before decoding); longer is 414.
    pub max_target: usize,
    /// Longest head in bytes, request line, fields and the empty line included; longer is 431.
    pub max_head: usize,
    /// Most header field lines; more is 431.
    pub max_headers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_target: DEFAULT_MAX_TARGET,
            max_head: DEFAULT_MAX_HEAD,
            max_headers: DEFAULT_MAX_HEADERS,
        }
    }
}

/// The methods gfcache serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    /// `GET`.
    Get,
    /// `HEAD`: the head a GET would get, without its body.
    Head,
}

impl Method {
    /// The method's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
        }
    }
}

/// The protocol version of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Version {
    /// `HTTP/1.0`.
    Http10,
    /// `HTTP/1.1`.
    Http11,
}

/// The body a request announces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestBody {
    /// No body (no Content-Length, or `Content-Length: 0`).
    None,
    /// `Content-Length: n`, n > 0: n bytes follow the head.
    Length(u64),
    /// `Transfer-Encoding: chunked`: a chunked body of unknown length follows.
    Chunked,
}

/// A request head gfcache can answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpRequest {
    /// GET or HEAD.
    pub method: Method,
    /// The percent-decoded path (before `?`): starts with `/`, UTF-8, no control byte, and no
    /// `%2F`. Not normalised: `..` and `//` are left for the caller's containment check.
    pub path: String,
    /// The query as sent (not decoded), without the `?`; `Some("")` for a bare `?`.
    pub query: Option<String>,
    /// HTTP/1.0 or HTTP/1.1.
    pub version: Version,
    /// Whether the connection may serve another request after this one, from the version and
    /// the Connection field alone (the caller still closes after a body it does not read).
    pub keep_alive: bool,
    /// The body the head announces.
    pub body: RequestBody,
    /// The Host value (required, and alone, in HTTP/1.1).
    pub host: Option<String>,
    /// The Range value, raw (see [`parse_range`](super::parse_range)).
    pub range: Option<String>,
    /// The If-Range value, raw (see [`if_range_allows`](super::if_range_allows)).
    pub if_range: Option<String>,
    /// The If-None-Match values, raw, several field lines joined with `", "`.
    pub if_none_match: Option<String>,
    /// The If-Modified-Since value, raw.
    pub if_modified_since: Option<String>,
}

/// The outcome of [`parse_request`] on the bytes received so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// No complete head yet, and nothing so far that makes it invalid: read more.
    Incomplete,
    /// A complete head of `head_len` bytes; the bytes after it are the body, if any, and then
    /// the next request.
    Complete {
        /// The request.
        request: HttpRequest,
        /// Length of the head, leading empty lines and the final CRLF CRLF included.
        head_len: usize,
    },
}

/// Parses a request head from the start of `buf`, the bytes received so far on a connection.
///
/// Call it again with the grown buffer after each read: it keeps no state, and it returns an
/// error as soon as the bytes so far cannot start a valid head (a line ending that is not CRLF,
/// a target over `max_target`, a head over `max_head`, too many fields, a byte `httparse`
/// refuses), so a client cannot make the caller buffer more than `max_head` bytes.
///
/// ```
/// use gfprotocol::http::{parse_request, Limits, Method, Parsed};
/// let limits = Limits::default();
/// assert_eq!(parse_request(b"GET /a%20b HTTP/1.1\r\nHo", &limits), Ok(Parsed::Incomplete));
/// let Ok(Parsed::Complete { request, head_len }) =
///     parse_request(b"GET /a%20b HTTP/1.1\r\nHost: x\r\n\r\nnext", &limits)
/// else {
///     panic!("a complete head");
/// };
/// assert_eq!((request.method, request.path.as_str(), head_len), (Method::Get, "/a b", 32));
/// assert!(request.keep_alive);
/// ```
pub fn parse_request(buf: &[u8], limits: &Limits) -> Result<Parsed, HttpError> {
    let framing = framing::scan(buf, limits)?;
    let head = match framing {
        Framing::Complete { head_len } => buf.get(..head_len),
        Framing::Incomplete => buf.get(..buf.len().min(limits.max_head)),
    }
    .unwrap_or_default();
    let mut headers = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut parsed = httparse::Request::new(&mut headers);
    let status = parsed.parse(head).map_err(|error| match error {
        httparse::Error::TooManyHeaders => HttpError::TooManyHeaders,
        other => HttpError::Syntax(other.into()),
    })?;
    match (framing, status) {
        (Framing::Incomplete, _) => Ok(Parsed::Incomplete),
        (Framing::Complete { head_len }, httparse::Status::Complete(used)) if used == head_len => {
            let request = interpret(&parsed)?;
            Ok(Parsed::Complete { request, head_len })
        }
        // httparse and the framing scan disagree on where the head ends: refuse it.
        (Framing::Complete { .. }, _) => Err(HttpError::Syntax(SyntaxPart::LineEnding)),
    }
}

/// Turns a head httparse accepted into a request gfcache can answer, or the reason not.
fn interpret(parsed: &httparse::Request<'_, '_>) -> Result<HttpRequest, HttpError> {
    let method = match parsed.method {
        Some("GET") => Method::Get,
        Some("HEAD") => Method::Head,
        Some("CONNECT") => return Err(HttpError::Connect),
        Some(_) => return Err(HttpError::MethodNotAllowed),
        None => return Err(HttpError::Syntax(SyntaxPart::RequestLine)),
    };
    let version = match parsed.version {
        Some(0) => Version::Http10,
        Some(1) => Version::Http11,
        _ => return Err(HttpError::Syntax(SyntaxPart::Version)),
    };
    let target = parse_target(parsed.path.unwrap_or_default())?;
    let fields = Fields::collect(parsed.headers)?;
    if version == Version::Http11 && fields.host.is_none() {
        return Err(HttpError::HostMissing);
    }
    Ok(HttpRequest {
        method,
        path: target.path,
        query: target.query,
        version,
        keep_alive: fields.keep_alive(version),
        body: fields.body(version)?,
        host: fields.host,
        range: fields.range,
        if_range: fields.if_range,
        if_none_match: fields.if_none_match,
        if_modified_since: fields.if_modified_since,
    })
}

/// The header fields gfcache reads, gathered over all field lines.
#[derive(Default)]
struct Fields {
    host: Option<String>,
    content_length: Option<u64>,
    transfer_encoding: Option<String>,
    connection_close: bool,
    connection_keep_alive: bool,
    range: Option<String>,
    if_range: Option<String>,
    if_none_match: Option<String>,
    if_modified_since: Option<String>,
}

impl Fields {
    fn collect(headers: &[httparse::Header<'_>]) -> Result<Fields, HttpError> {
        let mut fields = Fields::default();
        for header in headers {
            fields.add(header.name, header.value)?;
        }
        Ok(fields)
    }

    fn add(&mut self, name: &str, value: &[u8]) -> Result<(), HttpError> {
        let is = |wanted: &str| name.eq_ignore_ascii_case(wanted);
        if is("host") {
            if self.host.is_some() {
                return Err(HttpError::HostDuplicated);
            }
            self.host = Some(host_value(value)?);
        } else if is("content-length") {
            let length = content_length(value)?;
            if self.content_length.is_some_and(|seen| seen != length) {
                return Err(HttpError::ConflictingContentLength);
            }
            self.content_length = Some(length);
        } else if is("transfer-encoding") {
            append_list(&mut self.transfer_encoding, text(value)?);
        } else if is("connection") {
            for option in text(value)?.split(',').map(str::trim) {
                self.connection_close |= option.eq_ignore_ascii_case("close");
                self.connection_keep_alive |= option.eq_ignore_ascii_case("keep-alive");
            }
        } else if is("if-none-match") {
            append_list(&mut self.if_none_match, text(value)?);
        } else if is("range") {
            set_once(&mut self.range, "Range", value)?;
        } else if is("if-range") {
            set_once(&mut self.if_range, "If-Range", value)?;
        } else if is("if-modified-since") {
            set_once(&mut self.if_modified_since, "If-Modified-Since", value)?;
        }
        Ok(())
    }

    /// HTTP/1.1 keeps the connection unless `close`; HTTP/1.0 closes it unless `keep-alive`
    /// (RFC 9112 section 9.3). `close` wins over `keep-alive`.
    fn keep_alive(&self, version: Version) -> bool {
        match version {
            Version::Http11 => !self.connection_close,
            Version::Http10 => self.connection_keep_alive && !self.connection_close,
        }
    }

    /// RFC 9112 section 6.3: Transfer-Encoding with Content-Length is refused (not resolved in
    /// favour of either), as is any transfer coding but a lone `chunked`, and any in HTTP/1.0.
    fn body(&self, version: Version) -> Result<RequestBody, HttpError> {
        match (&self.transfer_encoding, self.content_length) {
            (Some(_), Some(_)) => Err(HttpError::LengthAndTransferEncoding),
            (Some(coding), None) => {
                if version == Version::Http11 && coding.trim().eq_ignore_ascii_case("chunked") {
                    Ok(RequestBody::Chunked)
                } else {
                    Err(HttpError::UnsupportedTransferEncoding)
                }
            }
            (None, Some(0) | None) => Ok(RequestBody::None),
            (None, Some(length)) => Ok(RequestBody::Length(length)),
        }
    }
}

fn text(value: &[u8]) -> Result<&str, HttpError> {
    std::str::from_utf8(value).map_err(|_| HttpError::NotUtf8)
}

/// Several field lines of a list field are one list (RFC 9110 section 5.3).
fn append_list(list: &mut Option<String>, value: &str) {
    match list {
        Some(list) => {
            list.push_str(", ");
            list.push_str(value);
        }
        None => *list = Some(value.to_owned()),
    }
}

fn set_once(slot: &mut Option<String>, name: &'static str, value: &[u8]) -> Result<(), HttpError> {
    if slot.is_some() {
        return Err(HttpError::DuplicateField(name));
    }
    *slot = Some(text(value)?.to_owned());
    Ok(())
}

/// One decimal number: a list (even `5, 5`), a sign, or more than u64 holds is refused.
fn content_length(value: &[u8]) -> Result<u64, HttpError> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return Err(HttpError::InvalidContentLength);
    }
    text(value)?
        .parse()
        .map_err(|_| HttpError::InvalidContentLength)
}

/// `uri-host [ ":" port ]` (RFC 9110 section 7.2): only the characters of a reg-name, an IP
/// literal or a port; empty is allowed.
fn host_value(value: &[u8]) -> Result<String, HttpError> {
    let allowed = |b: &u8| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=:[]".contains(b);
    if value.iter().all(allowed) {
        Ok(text(value)?.to_owned())
    } else {
        Err(HttpError::HostInvalid)
    }
}
