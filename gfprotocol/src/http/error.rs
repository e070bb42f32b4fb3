//! Why a request head was refused, and the status each refusal is answered with.

use super::response::StatusCode;

/// The part of the head that `httparse` found malformed.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyntaxPart {
    /// The method or the request target (a byte that is not allowed there, or a missing space).
    RequestLine,
    /// The protocol version (anything but `HTTP/1.0` and `HTTP/1.1`).
    Version,
    /// A header field name.
    HeaderName,
    /// A header field value (a control byte in it).
    HeaderValue,
    /// A line ending.
    LineEnding,
}

impl SyntaxPart {
    fn as_str(self) -> &'static str {
        match self {
            SyntaxPart::RequestLine => "malformed request line",
            SyntaxPart::Version => "unsupported or malformed HTTP version",
            SyntaxPart::HeaderName => "malformed header field name",
            SyntaxPart::HeaderValue => "malformed header field value",
            SyntaxPart::LineEnding => "malformed line ending",
        }
    }
}

impl From<httparse::Error> for SyntaxPart {
    fn from(error: httparse::Error) -> Self {
        match error {
            httparse::Error::HeaderName => SyntaxPart::HeaderName,
            httparse::Error::HeaderValue => SyntaxPart::HeaderValue,
            httparse::Error::NewLine => SyntaxPart::LineEnding,
            httparse::Error::Version => SyntaxPart::Version,
            // `Status` is a response error; `TooManyHeaders` is mapped before this (431).
            _ => SyntaxPart::RequestLine,
        }
    }
}

/// A request head that is refused. Every refusal is answered with [`HttpError::status`] and
/// then the connection is closed ([`HttpError::closes_connection`]): after a bad head the
/// server cannot know where the next request would start.
///
/// The `Display` text is the short reason, also sent as the text/plain body of the answer
/// (see [`write_error_response`](super::write_error_response)).
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// `httparse` refused the head.
    #[error("{}", .0.as_str())]
    Syntax(SyntaxPart),
    /// A LF not preceded by CR, or a CR not followed by LF, in the head.
    #[error("bare LF or CR where CRLF belongs")]
    BareLineEnding,
    /// A header line that starts with a space or a tab (obsolete line folding).
    #[error("obsolete line folding")]
    ObsoleteFolding,
    /// Whitespace between a header field name and its colon.
    #[error("whitespace before a header colon")]
    SpaceBeforeColon,
    /// A method other than GET, HEAD and CONNECT (answered 405 with `Allow: GET, HEAD`).
    #[error("method not allowed")]
    MethodNotAllowed,
    /// CONNECT: this is a reverse proxy, not a tunnel.
    #[error("CONNECT is not supported")]
    Connect,
    /// A request target in absolute, authority or asterisk form (only origin form, `/path`).
    #[error("request target must be a path")]
    TargetForm,
    /// A request target longer than [`Limits::max_target`](super::Limits::max_target).
    #[error("request target too long")]
    TargetTooLong,
    /// A head longer than [`Limits::max_head`](super::Limits::max_head).
    #[error("request head too large")]
    HeadTooLarge,
    /// More header lines than [`Limits::max_headers`](super::Limits::max_headers).
    #[error("too many header fields")]
    TooManyHeaders,
    /// An HTTP/1.1 request without a Host field.
    #[error("missing Host")]
    HostMissing,
    /// More than one Host field.
    #[error("more than one Host")]
    HostDuplicated,
    /// A Host value that cannot be `host[:port]`.
    #[error("invalid Host")]
    HostInvalid,
    /// A field that may appear once (Range, If-Modified-Since, If-Range) appeared twice.
    #[error("duplicated {0} field")]
    DuplicateField(&'static str),
    /// Both Content-Length and Transfer-Encoding (a request smuggling vector).
    #[error("both Content-Length and Transfer-Encoding")]
    LengthAndTransferEncoding,
    /// A Content-Length that is not one decimal number (a list, a sign, too large...).
    #[error("invalid Content-Length")]
    InvalidContentLength,
    /// Two Content-Length fields with different values.
    #[error("conflicting Content-Length fields")]
    ConflictingContentLength,
    /// A Transfer-Encoding other than exactly `chunked`, or any in an HTTP/1.0 request.
    #[error("unsupported Transfer-Encoding")]
    UnsupportedTransferEncoding,
    /// A `%` not followed by two hex digits in the path.
    #[error("bad percent-escape in path")]
    BadPercentEscape,
    /// The decoded path holds a control byte (NUL, CR, LF, DEL...).
    #[error("control byte in path")]
    ControlInPath,
    /// The path holds `%2F`: an encoded slash is refused rather than guessed at.
    #[error("encoded slash in path")]
    EncodedSlash,
    /// The target holds a `#`: a fragment is never sent to a server.
    #[error("fragment in request target")]
    Fragment,
    /// The decoded path, the query or a field this crate reads is not UTF-8.
    #[error("not UTF-8")]
    NotUtf8,
    /// The connection ended in the middle of a request head.
    #[error("request head cut short")]
    Truncated,
}

impl HttpError {
    /// The status code this refusal is answered with (400, 405, 414 or 431).
    pub fn status(&self) -> u16 {
        self.status_code().as_u16()
    }

    /// The status this refusal is answered with, for [`ResponseHead`](super::ResponseHead).
    pub fn status_code(&self) -> StatusCode {
        match self {
            HttpError::MethodNotAllowed => StatusCode::MethodNotAllowed,
            HttpError::TargetTooLong => StatusCode::UriTooLong,
            HttpError::HeadTooLarge | HttpError::TooManyHeaders => {
                StatusCode::RequestHeaderFieldsTooLarge
            }
            _ => StatusCode::BadRequest,
        }
    }

    /// Whether the connection is closed after the answer: always, since the framing of
    /// whatever follows a refused head is unknown.
    pub fn closes_connection(&self) -> bool {
        true
    }
}
