//! Response heads: the status line and the fields gfcache sends, written into a `Vec<u8>`.

use std::cell::RefCell;
use std::fmt::Display;
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use super::{HttpError, Method, Version};

/// The Content-Type of a text answer (errors and other short bodies).
pub const TEXT_PLAIN: &str = "text/plain; charset=utf-8";
/// The Content-Type of an object whose extension says nothing.
pub const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// The Content-Type of a path from its extension (mime_guess's first guess), or
/// [`DEFAULT_CONTENT_TYPE`].
pub fn content_type_of(path: &str) -> &'static str {
    mime_guess::from_path(path)
        .first_raw()
        .unwrap_or(DEFAULT_CONTENT_TYPE)
}

/// The statuses gfcache answers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StatusCode {
    /// 200: the whole object.
    Ok,
    /// 206: one range of the object.
    PartialContent,
    /// 304: the client's copy is current.
    NotModified,
    /// 400: a refused request head.
    BadRequest,
    /// 404: no such object.
    NotFound,
    /// 405: a method other than GET and HEAD (sent with `Allow: GET, HEAD`).
    MethodNotAllowed,
    /// 408: the request head did not arrive within the header timeout.
    RequestTimeout,
    /// 414: a request target over the limit.
    UriTooLong,
    /// 416: a range past the end of the object.
    RangeNotSatisfiable,
    /// 431: a head over the limit.
    RequestHeaderFieldsTooLarge,
    /// 500: a fault of the server itself.
    InternalServerError,
    /// 502: the origin answered wrongly.
    BadGateway,
    /// 503: no capacity to answer now.
    ServiceUnavailable,
    /// 504: the origin did not answer in time.
    GatewayTimeout,
}

impl StatusCode {
    /// The three-digit code.
    pub fn as_u16(self) -> u16 {
        self.code_and_reason().0
    }

    /// The reason phrase of RFC 9110.
    pub fn reason(self) -> &'static str {
        self.code_and_reason().1
    }

    /// The short text/plain body of an answer with this status: `"404 Not Found\n"`.
    pub fn text_body(self) -> &'static str {
        self.code_and_reason().2
    }

    fn code_and_reason(self) -> (u16, &'static str, &'static str) {
        match self {
            StatusCode::Ok => (200, "OK", "200 OK\n"),
            StatusCode::PartialContent => (206, "Partial Content", "206 Partial Content\n"),
            StatusCode::NotModified => (304, "Not Modified", ""),
            StatusCode::BadRequest => (400, "Bad Request", "400 Bad Request\n"),
            StatusCode::NotFound => (404, "Not Found", "404 Not Found\n"),
            StatusCode::MethodNotAllowed => (405, "Method Not Allowed", "405 Method Not Allowed\n"),
            StatusCode::RequestTimeout => (408, "Request Timeout", "408 Request Timeout\n"),
            StatusCode::UriTooLong => (414, "URI Too Long", "414 URI Too Long\n"),
            StatusCode::RangeNotSatisfiable => {
                (416, "Range Not Satisfiable", "416 Range Not Satisfiable\n")
            }
            StatusCode::RequestHeaderFieldsTooLarge => (
                431,
                "Request Header Fields Too Large",
                "431 Request Header Fields Too Large\n",
            ),
            StatusCode::InternalServerError => {
                (500, "Internal Server Error", "500 Internal Server Error\n")
            }
            StatusCode::BadGateway => (502, "Bad Gateway", "502 Bad Gateway\n"),
            StatusCode::ServiceUnavailable => {
                (503, "Service Unavailable", "503 Service Unavailable\n")
            }
            StatusCode::GatewayTimeout => (504, "Gateway Timeout", "504 Gateway Timeout\n"),
        }
    }
}

/// Where the body came from, sent as `X-Cache`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheStatus {
    /// `X-Cache: HIT`: served from a cache.
    Hit,
    /// `X-Cache: MISS`: fetched from the origin.
    Miss,
}

/// What the Connection field says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ConnectionField {
    /// Nothing: HTTP/1.1 keeps the connection by default.
    Omitted,
    /// `Connection: keep-alive`, for an HTTP/1.0 client that asked for it.
    KeepAlive,
    /// `Connection: close`: the server closes after this answer.
    Close,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ContentRange {
    Satisfied { first: u64, last: u64, len: u64 },
    Unsatisfied { len: u64 },
}

/// Whether a body follows the head: never for HEAD (RFC 9110 section 9.3.2) nor for 304
/// (section 15.4.5), else yes.
pub fn body_follows(method: Method, status: StatusCode) -> bool {
    method != Method::Head && status != StatusCode::NotModified
}

/// Builds a response head. Every head starts with the status line (always `HTTP/1.1`, the
/// version this server speaks, RFC 9110 section 6.2), `Date` and `Server: gfcache`; the other
/// fields are sent when set. A 405 always carries `Allow: GET, HEAD`. A 304 leaves out
/// Content-Length, Content-Type, Content-Range and Accept-Ranges even when set: it carries
/// only the validators (RFC 9110 section 15.4.5).
///
/// ```
/// use gfprotocol::http::{etag_of, CacheStatus, ResponseHead, StatusCode, Version};
/// let etag = etag_of(3);
/// let mut out = Vec::new();
/// ResponseHead::new(StatusCode::Ok)
///     .content_length(5)
///     .content_type_for("/index.html")
///     .etag(&etag)
///     .accept_ranges()
///     .x_cache(CacheStatus::Hit)
///     .connection(Version::Http11, true)
///     .write(&mut out);
/// let head = String::from_utf8(out).unwrap();
/// assert!(head.starts_with("HTTP/1.1 200 OK\r\nDate: "));
/// assert!(head.contains("\r\nContent-Type: text/html\r\n"));
/// assert!(head.ends_with("\r\nX-Cache: HIT\r\n\r\n"));
/// ```
#[derive(Clone, Debug)]
#[must_use = "a head does nothing until written"]
pub struct ResponseHead<'a> {
    status: StatusCode,
    content_length: Option<u64>,
    content_type: Option<&'a str>,
    last_modified: Option<SystemTime>,
    age: Option<u64>,
    etag: Option<&'a str>,
    accept_ranges: bool,
    content_range: Option<ContentRange>,
    x_cache: Option<CacheStatus>,
    connection: ConnectionField,
}

impl<'a> ResponseHead<'a> {
    /// A head with only the status line, Date and Server.
    pub fn new(status: StatusCode) -> Self {
        ResponseHead {
            status,
            content_length: None,
            content_type: None,
            last_modified: None,
            age: None,
            etag: None,
            accept_ranges: false,
            content_range: None,
            x_cache: None,
            connection: ConnectionField::Omitted,
        }
    }

    /// `Content-Length`: the length of the body a GET gets (also sent for HEAD).
    pub fn content_length(mut self, length: u64) -> Self {
        self.content_length = Some(length);
        self
    }

    /// `Content-Type` from the extension of `path` ([`content_type_of`]).
    pub fn content_type_for(mut self, path: &str) -> Self {
        self.content_type = Some(content_type_of(path));
        self
    }

    /// `Content-Type` as given (e.g. [`TEXT_PLAIN`], or an origin's, already checked to be
    /// visible ASCII).
    pub fn content_type(mut self, content_type: &'a str) -> Self {
        self.content_type = Some(content_type);
        self
    }

    /// `Age`: seconds since the origin made this answer (RFC 9111 section 5.1).
    pub fn age(mut self, seconds: u64) -> Self {
        self.age = Some(seconds);
        self
    }

    /// `Last-Modified`, as an HTTP-date (whole seconds).
    pub fn last_modified(mut self, time: SystemTime) -> Self {
        self.last_modified = Some(time);
        self
    }

    /// `ETag`, sent as given (see [`etag_of`](super::etag_of)).
    pub fn etag(mut self, etag: &'a str) -> Self {
        self.etag = Some(etag);
        self
    }

    /// `Accept-Ranges: bytes`.
    pub fn accept_ranges(mut self) -> Self {
        self.accept_ranges = true;
        self
    }

    /// `Content-Range: bytes first-last/len`, for a 206.
    pub fn content_range(mut self, first: u64, last: u64, len: u64) -> Self {
        self.content_range = Some(ContentRange::Satisfied { first, last, len });
        self
    }

    /// `Content-Range: bytes */len`, for a 416.
    pub fn unsatisfied_range(mut self, len: u64) -> Self {
        self.content_range = Some(ContentRange::Unsatisfied { len });
        self
    }

    /// `X-Cache: HIT` or `X-Cache: MISS`.
    pub fn x_cache(mut self, status: CacheStatus) -> Self {
        self.x_cache = Some(status);
        self
    }

    /// The Connection field for a connection that stays open (`keep_alive`) or closes after
    /// this answer: `close` when closing, `keep-alive` for an HTTP/1.0 client kept open, none
    /// for HTTP/1.1 kept open.
    pub fn connection(mut self, version: Version, keep_alive: bool) -> Self {
        self.connection = match (keep_alive, version) {
            (false, _) => ConnectionField::Close,
            (true, Version::Http10) => ConnectionField::KeepAlive,
            (true, Version::Http11) => ConnectionField::Omitted,
        };
        self
    }

    /// `Connection: close`.
    pub fn close(mut self) -> Self {
        self.connection = ConnectionField::Close;
        self
    }

    /// The status this head carries.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// Appends the head, through the empty line, to `out`.
    pub fn write(&self, out: &mut Vec<u8>) {
        self.write_at(out, SystemTime::now());
    }

    /// [`write`](Self::write) with `now` as the Date.
    pub fn write_at(&self, out: &mut Vec<u8>, now: SystemTime) {
        let status = self.status;
        // Writing into a Vec cannot fail; the results are io::Result only by the trait.
        let _ = write!(out, "HTTP/1.1 {} {}\r\n", status.as_u16(), status.reason());
        with_http_date(now, |date| field(out, "Date", date));
        out.extend_from_slice(b"Server: gfcache\r\n");
        let representation = status != StatusCode::NotModified;
        if let (true, Some(length)) = (representation, self.content_length) {
            field(out, "Content-Length", length);
        }
        if let (true, Some(content_type)) = (representation, self.content_type) {
            field(out, "Content-Type", content_type);
        }
        if let Some(time) = self.last_modified {
            field(out, "Last-Modified", httpdate::fmt_http_date(time));
        }
        if let Some(etag) = self.etag {
            field(out, "ETag", etag);
        }
        if let Some(age) = self.age {
            field(out, "Age", age);
        }
        if representation && self.accept_ranges {
            out.extend_from_slice(b"Accept-Ranges: bytes\r\n");
        }
        match (representation, self.content_range) {
            (true, Some(ContentRange::Satisfied { first, last, len })) => {
                let _ = write!(out, "Content-Range: bytes {first}-{last}/{len}\r\n");
            }
            (true, Some(ContentRange::Unsatisfied { len })) => {
                let _ = write!(out, "Content-Range: bytes */{len}\r\n");
            }
            _ => {}
        }
        if status == StatusCode::MethodNotAllowed {
            out.extend_from_slice(b"Allow: GET, HEAD\r\n");
        }
        match self.x_cache {
            Some(CacheStatus::Hit) => out.extend_from_slice(b"X-Cache: HIT\r\n"),
            Some(CacheStatus::Miss) => out.extend_from_slice(b"X-Cache: MISS\r\n"),
            None => {}
        }
        match self.connection {
            ConnectionField::Close => out.extend_from_slice(b"Connection: close\r\n"),
            ConnectionField::KeepAlive => out.extend_from_slice(b"Connection: keep-alive\r\n"),
            ConnectionField::Omitted => {}
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// Appends a whole answer with a short text/plain body: `head` with its Content-Type and
/// Content-Length set for `text`, then `text` itself when [`body_follows`] for `method`.
pub fn write_text_response(out: &mut Vec<u8>, head: ResponseHead<'_>, text: &str, method: Method) {
    let status = head.status;
    head.content_type(TEXT_PLAIN)
        .content_length(text.len() as u64)
        .write(out);
    if body_follows(method, status) {
        out.extend_from_slice(text.as_bytes());
    }
}

/// Appends the whole answer to a refused request head: its status (with `Allow` for 405),
/// `Connection: close`, and `"<code> <reason>: <why>\n"` as the body. The body is always sent:
/// the method of a refused head is not known for sure, and the connection closes after it.
pub fn write_error_response(out: &mut Vec<u8>, error: &HttpError) {
    let status = error.status_code();
    let text = format!("{} {}: {error}\n", status.as_u16(), status.reason());
    write_text_response(out, ResponseHead::new(status).close(), &text, Method::Get);
}

fn field(out: &mut Vec<u8>, name: &str, value: impl Display) {
    let _ = write!(out, "{name}: {value}\r\n");
}

thread_local! {
    /// The Date value of the current second: formatting an HTTP-date costs more than the rest
    /// of a head, and every answer in a second carries the same one.
    static DATE: RefCell<Option<(u64, String)>> = const { RefCell::new(None) };
}

fn with_http_date<R>(now: SystemTime, use_date: impl FnOnce(&str) -> R) -> R {
    let Ok(since_epoch) = now.duration_since(UNIX_EPOCH) else {
        return use_date(&httpdate::fmt_http_date(now));
    };
    let second = since_epoch.as_secs();
    DATE.with_borrow_mut(|cached| {
        let date = match cached {
            Some((at, date)) if *at == second => date,
            _ => &mut cached.insert((second, httpdate::fmt_http_date(now))).1,
        };
        use_date(date)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// 1994-11-06T08:49:37Z.
    fn example_time() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(784_111_777)
    }

    fn written(head: ResponseHead<'_>) -> String {
        let mut out = Vec::new();
        head.write_at(&mut out, example_time());
        String::from_utf8(out).expect("heads are ASCII")
    }

    const PREFIX_DATE: &str = "Date: Sun, 06 Nov 1994 08:49:37 GMT\r\nServer: gfcache\r\n";

    #[test]
    fn status_lines() {
        for (status, code, line) in [
            (StatusCode::Ok, 200, "HTTP/1.1 200 OK\r\n"),
            (
                StatusCode::PartialContent,
                206,
                "HTTP/1.1 206 Partial Content\r\n",
            ),
            (
                StatusCode::NotModified,
                304,
                "HTTP/1.1 304 Not Modified\r\n",
            ),
            (StatusCode::BadRequest, 400, "HTTP/1.1 400 Bad Request\r\n"),
            (StatusCode::NotFound, 404, "HTTP/1.1 404 Not Found\r\n"),
            (
                StatusCode::MethodNotAllowed,
                405,
                "HTTP/1.1 405 Method Not Allowed\r\n",
            ),
            (StatusCode::UriTooLong, 414, "HTTP/1.1 414 URI Too Long\r\n"),
            (
                StatusCode::RangeNotSatisfiable,
                416,
                "HTTP/1.1 416 Range Not Satisfiable\r\n",
            ),
            (
                StatusCode::RequestHeaderFieldsTooLarge,
                431,
                "HTTP/1.1 431 Request Header Fields Too Large\r\n",
            ),
            (
                StatusCode::InternalServerError,
                500,
                "HTTP/1.1 500 Internal Server Error\r\n",
            ),
            (StatusCode::BadGateway, 502, "HTTP/1.1 502 Bad Gateway\r\n"),
            (
                StatusCode::ServiceUnavailable,
                503,
                "HTTP/1.1 503 Service Unavailable\r\n",
            ),
            (
                StatusCode::GatewayTimeout,
                504,
                "HTTP/1.1 504 Gateway Timeout\r\n",
            ),
        ] {
            assert_eq!(status.as_u16(), code);
            let head = written(ResponseHead::new(status));
            assert!(head.starts_with(line), "{head}");
            assert!(head.contains(PREFIX_DATE), "{head}");
            assert!(head.ends_with("\r\n\r\n"), "{head}");
        }
    }

    #[test]
    fn full_object_head() {
        let head = written(
            ResponseHead::new(StatusCode::Ok)
                .content_length(1234)
                .content_type_for("/docs/a.txt")
                .last_modified(example_time() + Duration::from_millis(900))
                .etag("\"00000000000000ff\"")
                .accept_ranges()
                .x_cache(CacheStatus::Miss)
                .connection(Version::Http11, true),
        );
        assert_eq!(
            head,
            format!(
                "HTTP/1.1 200 OK\r\n{PREFIX_DATE}Content-Length: 1234\r\n\
                 Content-Type: text/plain\r\nLast-Modified: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
                 ETag: \"00000000000000ff\"\r\nAccept-Ranges: bytes\r\nX-Cache: MISS\r\n\r\n"
            )
        );
    }

    #[test]
    fn content_types() {
        for (path, expected) in [
            ("/a.html", "text/html"),
            ("/a/b.PNG", "image/png"),
            ("/a.json", "application/json"),
            ("/noext", DEFAULT_CONTENT_TYPE),
            ("/a.unknownextension", DEFAULT_CONTENT_TYPE),
            ("/", DEFAULT_CONTENT_TYPE),
        ] {
            let head = written(ResponseHead::new(StatusCode::Ok).content_type_for(path));
            assert!(
                head.contains(&format!("\r\nContent-Type: {expected}\r\n")),
                "{path}: {head}"
            );
        }
    }

    #[test]
    fn ranges() {
        let partial = written(
            ResponseHead::new(StatusCode::PartialContent)
                .content_length(10)
                .content_range(5, 14, 100),
        );
        assert!(
            partial.contains("\r\nContent-Range: bytes 5-14/100\r\n"),
            "{partial}"
        );
        let unsatisfied =
            written(ResponseHead::new(StatusCode::RangeNotSatisfiable).unsatisfied_range(100));
        assert!(
            unsatisfied.contains("\r\nContent-Range: bytes */100\r\n"),
            "{unsatisfied}"
        );
    }

    #[test]
    fn not_modified_carries_validators_only() {
        let head = written(
            ResponseHead::new(StatusCode::NotModified)
                .content_length(1234)
                .content_type_for("/a.html")
                .last_modified(example_time())
                .etag("\"1\"")
                .accept_ranges()
                .content_range(0, 1, 2),
        );
        assert_eq!(
            head,
            format!(
                "HTTP/1.1 304 Not Modified\r\n{PREFIX_DATE}\
                 Last-Modified: Sun, 06 Nov 1994 08:49:37 GMT\r\nETag: \"1\"\r\n\r\n"
            )
        );
    }

    #[test]
    fn connection_field() {
        let keep10 = written(ResponseHead::new(StatusCode::Ok).connection(Version::Http10, true));
        assert!(
            keep10.ends_with("\r\nConnection: keep-alive\r\n\r\n"),
            "{keep10}"
        );
        let keep11 = written(ResponseHead::new(StatusCode::Ok).connection(Version::Http11, true));
        assert!(!keep11.contains("Connection"), "{keep11}");
        for version in [Version::Http10, Version::Http11] {
            let close = written(ResponseHead::new(StatusCode::Ok).connection(version, false));
            assert!(close.ends_with("\r\nConnection: close\r\n\r\n"), "{close}");
        }
        let closed = written(ResponseHead::new(StatusCode::Ok).close());
        assert!(
            closed.ends_with("\r\nConnection: close\r\n\r\n"),
            "{closed}"
        );
    }

    #[test]
    fn method_not_allowed_carries_allow() {
        let head = written(ResponseHead::new(StatusCode::MethodNotAllowed));
        assert!(head.contains("\r\nAllow: GET, HEAD\r\n"), "{head}");
        let other = written(ResponseHead::new(StatusCode::NotFound));
        assert!(!other.contains("Allow"), "{other}");
    }

    #[test]
    fn bodies_follow_except_for_head_and_304() {
        assert!(body_follows(Method::Get, StatusCode::Ok));
        assert!(body_follows(Method::Get, StatusCode::NotFound));
        assert!(!body_follows(Method::Head, StatusCode::Ok));
        assert!(!body_follows(Method::Head, StatusCode::NotFound));
        assert!(!body_follows(Method::Get, StatusCode::NotModified));
    }

    fn split_response(out: &[u8]) -> (String, String) {
        let text = String::from_utf8(out.to_vec()).expect("ASCII");
        let (head, body) = text.split_once("\r\n\r\n").expect("a head");
        (format!("{head}\r\n\r\n"), body.to_owned())
    }

    #[test]
    fn text_responses() {
        let mut out = Vec::new();
        let head = ResponseHead::new(StatusCode::NotFound).connection(Version::Http11, true);
        write_text_response(
            &mut out,
            head.clone(),
            StatusCode::NotFound.text_body(),
            Method::Get,
        );
        let (get_head, body) = split_response(&out);
        assert_eq!(body, "404 Not Found\n");
        assert!(
            get_head.contains("\r\nContent-Length: 14\r\n"),
            "{get_head}"
        );
        assert!(get_head.contains("\r\nContent-Type: text/plain; charset=utf-8\r\n"));

        let mut out = Vec::new();
        write_text_response(
            &mut out,
            head,
            StatusCode::NotFound.text_body(),
            Method::Head,
        );
        let (head_head, body) = split_response(&out);
        assert_eq!(body, "");
        assert!(
            head_head.contains("\r\nContent-Length: 14\r\n"),
            "{head_head}"
        );
    }

    #[test]
    fn error_responses() {
        let mut out = Vec::new();
        write_error_response(&mut out, &HttpError::MethodNotAllowed);
        let (head, body) = split_response(&out);
        assert!(
            head.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{head}"
        );
        assert!(head.contains("\r\nAllow: GET, HEAD\r\n"), "{head}");
        assert!(head.contains("\r\nConnection: close\r\n"), "{head}");
        assert_eq!(body, "405 Method Not Allowed: method not allowed\n");
        assert!(head.contains(&format!("\r\nContent-Length: {}\r\n", body.len())));

        let mut out = Vec::new();
        write_error_response(&mut out, &HttpError::DuplicateField("Range"));
        let (head, body) = split_response(&out);
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head}");
        assert_eq!(body, "400 Bad Request: duplicated Range field\n");
    }

    #[test]
    fn date_is_current_and_cached_per_second() {
        let now = SystemTime::now();
        let mut first = Vec::new();
        ResponseHead::new(StatusCode::Ok).write_at(&mut first, now);
        let (head, _) = split_response(&first);
        let date = head
            .lines()
            .find_map(|line| line.strip_prefix("Date: "))
            .expect("a Date field");
        let parsed = httpdate::parse_http_date(date).expect("an HTTP-date");
        let whole = |t: SystemTime| t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).ok();
        assert_eq!(whole(parsed), whole(now));
        // Another second gets its own date: the cached one is not reused for it.
        let later = written(ResponseHead::new(StatusCode::Ok));
        assert!(later.contains(PREFIX_DATE), "{later}");
    }
}
