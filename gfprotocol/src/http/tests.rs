//! parse_request on raw bytes: every refusal, the fields it reads, and properties over splits.

use proptest::prelude::*;

use super::*;

fn parse(bytes: &[u8]) -> Result<Parsed, HttpError> {
    parse_request(bytes, &Limits::default())
}

fn request_of(bytes: &[u8]) -> HttpRequest {
    match parse(bytes) {
        Ok(Parsed::Complete { request, head_len }) => {
            assert_eq!(head_len, bytes.len(), "{}", String::from_utf8_lossy(bytes));
            request
        }
        other => panic!("{}: {other:?}", String::from_utf8_lossy(bytes)),
    }
}

/// A complete HTTP/1.1 GET of `/` with `fields` (CRLF-terminated lines) after Host.
fn get_with(fields: &str) -> Vec<u8> {
    format!("GET / HTTP/1.1\r\nHost: h\r\n{fields}\r\n").into_bytes()
}

#[test]
fn a_plain_get() {
    let request = request_of(b"GET /a/b.txt?x=1 HTTP/1.1\r\nHost: example.com:8080\r\n\r\n");
    assert_eq!(
        request,
        HttpRequest {
            method: Method::Get,
            path: "/a/b.txt".into(),
            query: Some("x=1".into()),
            version: Version::Http11,
            keep_alive: true,
            body: RequestBody::None,
            host: Some("example.com:8080".into()),
            range: None,
            if_range: None,
            if_none_match: None,
            if_modified_since: None,
        }
    );
}

#[test]
fn head_and_fields_read_raw() {
    let request = request_of(
        b"HEAD /%7Euser/x%20y HTTP/1.1\r\nhost: h\r\nRANGE: bytes=0-9\r\n\
          If-Range: \"abc\"\r\nIf-None-Match: \"a\"\r\nif-none-match: W/\"b\"\r\n\
          If-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT\r\nX-Other: whatever\r\n\r\n",
    );
    assert_eq!(request.method, Method::Head);
    assert_eq!(request.path, "/~user/x y");
    assert_eq!(request.range.as_deref(), Some("bytes=0-9"));
    assert_eq!(request.if_range.as_deref(), Some("\"abc\""));
    assert_eq!(request.if_none_match.as_deref(), Some("\"a\", W/\"b\""));
    assert_eq!(
        request.if_modified_since.as_deref(),
        Some("Sun, 06 Nov 1994 08:49:37 GMT")
    );
}

#[test]
fn keep_alive_by_version_and_connection() {
    for (version, connection, keep) in [
        ("1.1", None, true),
        ("1.1", Some("close"), false),
        ("1.1", Some("Close"), false),
        ("1.1", Some("keep-alive, close"), false),
        ("1.1", Some("Upgrade ,  CLOSE"), false),
        ("1.1", Some("keep-alive"), true),
        ("1.1", Some("closed"), true),
        ("1.0", None, false),
        ("1.0", Some("keep-alive"), true),
        ("1.0", Some("Keep-Alive"), true),
        ("1.0", Some("foo,keep-alive"), true),
        ("1.0", Some("keep-alive, close"), false),
        ("1.0", Some("close"), false),
    ] {
        let field = connection.map_or(String::new(), |c| format!("Connection: {c}\r\n"));
        let head = format!("GET / HTTP/{version}\r\nHost: h\r\n{field}\r\n");
        assert_eq!(request_of(head.as_bytes()).keep_alive, keep, "{head}");
    }
    // Two Connection lines are one list.
    let two = get_with("Connection: keep-alive\r\nConnection: close\r\n");
    assert!(!request_of(&two).keep_alive);
}

#[test]
fn http10_needs_no_host() {
    let request = request_of(b"GET /x HTTP/1.0\r\n\r\n");
    assert_eq!((request.version, request.host), (Version::Http10, None));
    let with_host = request_of(b"GET /x HTTP/1.0\r\nHost: h\r\n\r\n");
    assert_eq!(with_host.host.as_deref(), Some("h"));
}

#[test]
fn empty_host_is_allowed() {
    assert_eq!(
        request_of(b"GET / HTTP/1.1\r\nHost:\r\n\r\n")
            .host
            .as_deref(),
        Some("")
    );
    assert_eq!(
        request_of(b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n")
            .host
            .as_deref(),
        Some("[::1]:80")
    );
}

#[test]
fn field_values_lose_surrounding_whitespace() {
    let request = request_of(
        b"GET / HTTP/1.1\r\nHost:  h \r\nContent-Length:\t5 \r\nRange: bytes=1-2\t\r\nConnection:close\r\n\r\n",
    );
    assert_eq!(request.host.as_deref(), Some("h"));
    assert_eq!(request.body, RequestBody::Length(5));
    assert_eq!(request.range.as_deref(), Some("bytes=1-2"));
    assert!(!request.keep_alive);
}

#[test]
fn bodies() {
    for (fields, body) in [
        ("", RequestBody::None),
        ("Content-Length: 0\r\n", RequestBody::None),
        ("Content-Length: 12\r\n", RequestBody::Length(12)),
        (
            "Content-Length: 18446744073709551615\r\n",
            RequestBody::Length(u64::MAX),
        ),
        (
            "Content-Length: 7\r\ncontent-length: 7\r\n",
            RequestBody::Length(7),
        ),
        ("Transfer-Encoding: chunked\r\n", RequestBody::Chunked),
        ("Transfer-Encoding: Chunked\r\n", RequestBody::Chunked),
    ] {
        assert_eq!(request_of(&get_with(fields)).body, body, "{fields}");
    }
}

#[test]
fn head_len_stops_at_the_empty_line() {
    let bytes =
        b"\r\nGET /a HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabcGET /b HTTP/1.1\r\n";
    let Ok(Parsed::Complete { request, head_len }) = parse(bytes) else {
        panic!("complete");
    };
    assert_eq!(&bytes[head_len..head_len + 3], b"abc");
    assert_eq!(
        (request.path.as_str(), request.body),
        ("/a", RequestBody::Length(3))
    );
    let rest = &bytes[head_len + 3..];
    assert_eq!(parse(rest), Ok(Parsed::Incomplete));
}

#[test]
fn incomplete_heads() {
    for bytes in [
        &b""[..],
        b"\r\n",
        b"G",
        b"GET",
        b"GET ",
        b"GET /a",
        b"GET /a HTTP/1.",
        b"GET /a HTTP/1.1\r",
        b"GET /a HTTP/1.1\r\n",
        b"GET /a HTTP/1.1\r\nHost: h",
        b"GET /a HTTP/1.1\r\nHost: h\r\n",
        b"GET /a HTTP/1.1\r\nHost: h\r\n\r",
        // Incomplete, and refused only once complete (these need the whole head).
        b"POST /a HTTP/1.1\r\n",
        b"GET /a HTTP/1.1\r\nHost: a\r\nHost: b\r\n",
    ] {
        assert_eq!(
            parse(bytes),
            Ok(Parsed::Incomplete),
            "{}",
            String::from_utf8_lossy(bytes)
        );
    }
}

/// Every refusal, from raw bytes, with its status.
#[test]
fn every_refusal() {
    let long_target = format!(
        "GET /{} HTTP/1.1\r\nHost: h\r\n\r\n",
        "a".repeat(DEFAULT_MAX_TARGET)
    );
    let long_partial = format!("GET /{}", "a".repeat(DEFAULT_MAX_TARGET));
    let long_method = "A".repeat(DEFAULT_MAX_TARGET + 1);
    let big_head = format!(
        "GET / HTTP/1.1\r\nHost: h\r\nX: {}\r\n\r\n",
        "v".repeat(DEFAULT_MAX_HEAD)
    );
    let big_partial = format!(
        "GET / HTTP/1.1\r\nHost: h\r\nX: {}",
        "v".repeat(DEFAULT_MAX_HEAD)
    );
    let many_fields = format!(
        "GET / HTTP/1.1\r\nHost: h\r\n{}\r\n",
        "X: y\r\n".repeat(DEFAULT_MAX_HEADERS)
    );
    let many_partial = format!(
        "GET / HTTP/1.1\r\nHost: h\r\n{}",
        "X: y\r\n".repeat(DEFAULT_MAX_HEADERS)
    );
    use HttpError as E;
    let cases: Vec<(&[u8], HttpError, u16)> = vec![
        // httparse
        (b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n", E::Syntax(SyntaxPart::RequestLine), 400),
        (b"G(T / HTTP/1.1\r\n", E::Syntax(SyntaxPart::RequestLine), 400),
        (b"GET /\x01 HTTP/1.1\r\n", E::Syntax(SyntaxPart::RequestLine), 400),
        (b"GET /\xff HTTP/1.1\r\nHost: h\r\n\r\n", E::Syntax(SyntaxPart::RequestLine), 400),
        (b"GET / HTTP/2.0\r\nHost: h\r\n\r\n", E::Syntax(SyntaxPart::Version), 400),
        (b"GET / HTTP/1.1 \r\nHost: h\r\n\r\n", E::Syntax(SyntaxPart::LineEnding), 400),
        (b"GET /\r\n\r\n", E::Syntax(SyntaxPart::RequestLine), 400),
        (b"GET / HTTP/1.1\r\nHo(st: h\r\n\r\n", E::Syntax(SyntaxPart::HeaderName), 400),
        (b"GET / HTTP/1.1\r\n: h\r\n\r\n", E::Syntax(SyntaxPart::HeaderName), 400),
        (b"GET / HTTP/1.1\r\nNoColon\r\n\r\n", E::Syntax(SyntaxPart::HeaderName), 400),
        (b"GET / HTTP/1.1\r\nHost: h\x01\r\n\r\n", E::Syntax(SyntaxPart::HeaderValue), 400),
        // line endings
        (b"GET / HTTP/1.1\nHost: h\n\n", E::BareLineEnding, 400),
        (b"GET / HTTP/1.1\r\nHost: h\n\r\n", E::BareLineEnding, 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\n\n", E::BareLineEnding, 400),
        (b"\nGET / HTTP/1.1\r\nHost: h\r\n\r\n", E::BareLineEnding, 400),
        (b"GET / HTTP/1.1\r\rHost: h\r\n\r\n", E::BareLineEnding, 400),
        (b"GET / HTTP/1.1\r\nX: a\rb\r\nHost: h\r\n\r\n", E::BareLineEnding, 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\n\r\r\n", E::BareLineEnding, 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n", E::ObsoleteFolding, 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n\tb\r\n\r\n", E::ObsoleteFolding, 400),
        (b"GET / HTTP/1.1\r\n Host: h\r\n\r\n", E::ObsoleteFolding, 400),
        (b"GET / HTTP/1.1\r\nHost : h\r\n\r\n", E::SpaceBeforeColon, 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length\t: 5\r\n\r\n", E::SpaceBeforeColon, 400),
        // methods
        (b"POST / HTTP/1.1\r\nHost: h\r\n\r\n", E::MethodNotAllowed, 405),
        (b"PUT / HTTP/1.1\r\nHost: h\r\n\r\n", E::MethodNotAllowed, 405),
        (b"DELETE / HTTP/1.1\r\nHost: h\r\n\r\n", E::MethodNotAllowed, 405),
        (b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n", E::MethodNotAllowed, 405),
        (b"get / HTTP/1.1\r\nHost: h\r\n\r\n", E::MethodNotAllowed, 405),
        (b"BREW / HTTP/1.1\r\nHost: h\r\n\r\n", E::MethodNotAllowed, 405),
        (b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n", E::Connect, 400),
        // target forms and path
        (b"GET http://h/x HTTP/1.1\r\nHost: h\r\n\r\n", E::TargetForm, 400),
        (b"GET h:80 HTTP/1.1\r\nHost: h\r\n\r\n", E::TargetForm, 400),
        (b"GET * HTTP/1.1\r\nHost: h\r\n\r\n", E::TargetForm, 400),
        (b"GET a/b HTTP/1.1\r\nHost: h\r\n\r\n", E::TargetForm, 400),
        (b"GET /a#b HTTP/1.1\r\nHost: h\r\n\r\n", E::Fragment, 400),
        (b"GET /a%2Fb HTTP/1.1\r\nHost: h\r\n\r\n", E::EncodedSlash, 400),
        (b"GET /a%2f HTTP/1.1\r\nHost: h\r\n\r\n", E::EncodedSlash, 400),
        (b"GET /a%zz HTTP/1.1\r\nHost: h\r\n\r\n", E::BadPercentEscape, 400),
        (b"GET /a% HTTP/1.1\r\nHost: h\r\n\r\n", E::BadPercentEscape, 400),
        (b"GET /a%00 HTTP/1.1\r\nHost: h\r\n\r\n", E::ControlInPath, 400),
        (b"GET /a%0d%0aX:%20y HTTP/1.1\r\nHost: h\r\n\r\n", E::ControlInPath, 400),
        (b"GET /a%1b HTTP/1.1\r\nHost: h\r\n\r\n", E::ControlInPath, 400),
        (b"GET /a%ff HTTP/1.1\r\nHost: h\r\n\r\n", E::NotUtf8, 400),
        // limits, complete and incomplete
        (long_target.as_bytes(), E::TargetTooLong, 414),
        (long_partial.as_bytes(), E::TargetTooLong, 414),
        (long_method.as_bytes(), E::TargetTooLong, 414),
        (big_head.as_bytes(), E::HeadTooLarge, 431),
        (big_partial.as_bytes(), E::HeadTooLarge, 431),
        (many_fields.as_bytes(), E::TooManyHeaders, 431),
        (many_partial.as_bytes(), E::TooManyHeaders, 431),
        // Host
        (b"GET / HTTP/1.1\r\n\r\n", E::HostMissing, 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", E::HostDuplicated, 400),
        (b"GET / HTTP/1.0\r\nHost: a\r\nhost: b\r\n\r\n", E::HostDuplicated, 400),
        (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", E::HostInvalid, 400),
        (b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", E::HostInvalid, 400),
        (b"GET / HTTP/1.1\r\nHost: user@a\r\n\r\n", E::HostInvalid, 400),
        (b"GET / HTTP/1.1\r\nHost: \xc3\xa9\r\n\r\n", E::HostInvalid, 400),
        // singleton fields
        (&b"GET / HTTP/1.1\r\nHost: h\r\nRange: bytes=0-1\r\nRange: bytes=2-3\r\n\r\n"[..], E::DuplicateField("Range"), 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\nIf-Range: \"a\"\r\nIf-Range: \"a\"\r\n\r\n", E::DuplicateField("If-Range"), 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\nIf-Modified-Since: x\r\nIf-Modified-Since: y\r\n\r\n", E::DuplicateField("If-Modified-Since"), 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\nRange: bytes=\xff\r\n\r\n", E::NotUtf8, 400),
        // smuggling (RFC 9112 section 6.3)
        (b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", E::LengthAndTransferEncoding, 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n", E::LengthAndTransferEncoding, 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", E::ConflictingContentLength, 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\n\r\n", E::InvalidContentLength, 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 5,6\r\n\r\n", E::InvalidContentLength, 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\n", E::InvalidContentLength, 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n", E::InvalidContentLength, 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 0x10\r\n\r\n", E::InvalidContentLength, 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 1 2\r\n\r\n", E::InvalidContentLength, 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length:\r\n\r\n", E::InvalidContentLength, 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 18446744073709551616\r\n\r\n", E::InvalidContentLength, 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n", E::UnsupportedTransferEncoding, 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", E::UnsupportedTransferEncoding, 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", E::UnsupportedTransferEncoding, 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: identity\r\n\r\n", E::UnsupportedTransferEncoding, 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\r\n\r\n", E::UnsupportedTransferEncoding, 400),
        (b"GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", E::UnsupportedTransferEncoding, 400),
    ];
    let mut wrong = Vec::new();
    for (bytes, error, status) in cases {
        let found = parse(bytes);
        let refused_right = found.as_ref().err().is_some_and(|found| {
            *found == error && found.status() == status && found.closes_connection()
        });
        if !refused_right {
            wrong.push(format!(
                "{:?}: {found:?}, not {error:?} ({status})",
                String::from_utf8_lossy(bytes)
            ));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn limits_are_exact() {
    let limits = Limits {
        max_target: 10,
        max_head: 40,
        max_headers: 1,
    };
    let at_target = b"GET /123456789 HTTP/1.1\r\nHost: h\r\n\r\n";
    assert!(matches!(
        parse_request(at_target, &limits),
        Ok(Parsed::Complete { .. })
    ));
    let over_target = b"GET /1234567890 HTTP/1.1\r\nHost: h\r\n\r\n";
    assert_eq!(
        parse_request(over_target, &limits),
        Err(HttpError::TargetTooLong)
    );
    let mut at_head = b"GET / HTTP/1.1\r\nHost: ".to_vec();
    at_head.resize(36, b'h');
    at_head.extend_from_slice(b"\r\n\r\n");
    assert!(matches!(
        parse_request(&at_head, &limits),
        Ok(Parsed::Complete { head_len: 40, .. })
    ));
    at_head.insert(30, b'h');
    assert_eq!(
        parse_request(&at_head, &limits),
        Err(HttpError::HeadTooLarge)
    );
    let two_fields = b"GET / HTTP/1.1\r\nHost: h\r\nX: y\r\n\r\n";
    assert_eq!(
        parse_request(two_fields, &limits),
        Err(HttpError::TooManyHeaders)
    );
}

/// A valid request and the [`HttpRequest`] it must parse to.
#[derive(Clone, Debug)]
struct Valid {
    wire: Vec<u8>,
    head_len: usize,
    request: HttpRequest,
}

fn segment() -> impl Strategy<Value = (String, String)> {
    // (raw, decoded) pieces of a path.
    prop_oneof![
        "[a-zA-Z0-9._~-]{1,8}".prop_map(|s| (s.clone(), s)),
        Just(("%20".to_owned(), " ".to_owned())),
        Just(("%C3%A9".to_owned(), "é".to_owned())),
        Just(("%25".to_owned(), "%".to_owned())),
        Just(("..".to_owned(), "..".to_owned())),
        Just(("é".to_owned(), "é".to_owned())),
    ]
}

fn valid_request() -> impl Strategy<Value = Valid> {
    (
        prop::bool::ANY,
        prop::collection::vec(segment(), 0..5),
        prop::option::of("[a-z0-9=&%+]{0,12}"),
        prop::bool::ANY,
        prop::option::of(prop_oneof![
            Just("close"),
            Just("keep-alive"),
            Just("Keep-Alive, Upgrade")
        ]),
        prop::option::of(prop_oneof![
            Just("bytes=0-99"),
            Just("bytes=-5"),
            Just("bytes=1-,3-4")
        ]),
        prop::option::of(prop_oneof![
            Just(RequestBody::Length(17)),
            Just(RequestBody::Chunked)
        ]),
        prop::collection::vec(("X-[A-Za-z0-9-]{1,10}", "[!-~]([ -~]{0,20}[!-~])?"), 0..4),
        0usize..3,
        prop::collection::vec(any::<u8>(), 0..16),
    )
        .prop_map(
            |(head, segments, query, http11, connection, range, body, extra, crlfs, trailer)| {
                let (raw_path, path) = segments.iter().fold(
                    (String::from("/"), String::from("/")),
                    |(raw, decoded), (r, d)| (format!("{raw}{r}/"), format!("{decoded}{d}/")),
                );
                let method = if head { Method::Head } else { Method::Get };
                let version = if http11 {
                    Version::Http11
                } else {
                    Version::Http10
                };
                let mut text = "\r\n".repeat(crlfs);
                let target = match &query {
                    Some(q) => format!("{raw_path}?{q}"),
                    None => raw_path,
                };
                let version_text = if http11 { "1.1" } else { "1.0" };
                text.push_str(&format!(
                    "{} {target} HTTP/{version_text}\r\n",
                    method.as_str()
                ));
                text.push_str("Host: example.org\r\n");
                for (name, value) in &extra {
                    text.push_str(&format!("{name}: {value}\r\n"));
                }
                if let Some(c) = connection {
                    text.push_str(&format!("Connection: {c}\r\n"));
                }
                if let Some(r) = range {
                    text.push_str(&format!("Range: {r}\r\n"));
                }
                let body = match (body, http11) {
                    (Some(RequestBody::Length(n)), _) => {
                        text.push_str(&format!("Content-Length: {n}\r\n"));
                        RequestBody::Length(n)
                    }
                    (Some(RequestBody::Chunked), true) => {
                        text.push_str("Transfer-Encoding: chunked\r\n");
                        RequestBody::Chunked
                    }
                    _ => RequestBody::None,
                };
                text.push_str("\r\n");
                let keep_alive = match (http11, connection) {
                    (true, Some("close")) => false,
                    (true, _) => true,
                    (false, Some(c)) => c.to_ascii_lowercase().starts_with("keep-alive"),
                    (false, None) => false,
                };
                let head_len = text.len();
                let mut wire = text.into_bytes();
                wire.extend_from_slice(&trailer);
                Valid {
                    wire,
                    head_len,
                    request: HttpRequest {
                        method,
                        path,
                        query,
                        version,
                        keep_alive,
                        body,
                        host: Some("example.org".into()),
                        range: range.map(str::to_owned),
                        if_range: None,
                        if_none_match: None,
                        if_modified_since: None,
                    },
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// The front door calls parse_request on a growing buffer, so a split at any byte is a
    /// prefix: every prefix shorter than the head is Incomplete, every longer one the same
    /// request as the whole.
    #[test]
    fn valid_requests_at_every_split(valid in valid_request()) {
        let whole = parse(&valid.wire);
        prop_assert_eq!(
            &whole,
            &Ok(Parsed::Complete { request: valid.request.clone(), head_len: valid.head_len })
        );
        for end in 0..valid.wire.len() {
            let expected = if end < valid.head_len { &Ok(Parsed::Incomplete) } else { &whole };
            prop_assert_eq!(&parse(&valid.wire[..end]), expected, "split at {}", end);
        }
    }

    /// A refusal never turns into a request when more bytes arrive.
    #[test]
    fn refusals_are_final(
        valid in valid_request(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut wire = valid.wire;
        for (at, byte) in flips {
            let i = at.index(wire.len());
            wire[i] = byte;
        }
        let mut refused = None;
        for end in 0..=wire.len() {
            let result = parse(&wire[..end]);
            if let Some(error) = refused {
                prop_assert!(result.is_err(), "refused with {:?}, then {:?} at {}", error, result, end);
            } else if let Err(error) = result {
                refused = Some(error);
            }
        }
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse(&bytes);
        let tight = Limits { max_target: 8, max_head: 32, max_headers: 2 };
        let _ = parse_request(&bytes, &tight);
    }

    #[test]
    fn random_fields_never_panic(
        lines in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..6),
    ) {
        let mut head = b"GET / HTTP/1.1\r\n".to_vec();
        for line in lines {
            head.extend_from_slice(&line);
            head.extend_from_slice(b"\r\n");
        }
        head.extend_from_slice(b"\r\n");
        let _ = parse(&head);
    }
}
