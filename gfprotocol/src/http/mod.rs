//! HTTP/1.1 for gfcache's HTTP front end: a strict, stateless request-head parser and the
//! pieces of an answer. No sockets here: the front door feeds bytes in and writes bytes out.
//!
//! - [`parse_request`] reads a request head from the bytes received so far
//!   ([`Parsed::Incomplete`] until the empty line) and returns an [`HttpRequest`] or an
//!   [`HttpError`] that names its status (400, 405, 414, 431) and always closes the connection.
//!   `httparse` parses; this module adds what a server in front of a cache must also refuse
//!   (bare LF, obsolete folding, Content-Length/Transfer-Encoding smuggling, target forms other
//!   than `/path`, encoded slashes) and the limits in [`Limits`], enforced before the head is
//!   complete.
//! - [`parse_range`] turns a Range value into a [`RangeAnswer`]; [`not_modified`] and
//!   [`if_range_allows`] evaluate the conditional fields against an [`etag_of`] and a
//!   Last-Modified time.
//! - [`ResponseHead`] writes a status line and fields into a `Vec<u8>`; [`body_follows`] says
//!   whether a body goes after it, and [`write_error_response`] writes the whole answer to a
//!   refused head.
//!
//! The rules and the error mapping are listed in `docs/http.md`.
//!
//! ```
//! use gfprotocol::http::{
//!     body_follows, etag_of, not_modified, parse_range, parse_request, Limits, Parsed,
//!     RangeAnswer, ResponseHead, StatusCode,
//! };
//!
//! let head = b"GET /movie.mp4 HTTP/1.1\r\nHost: cdn\r\nRange: bytes=100-\r\n\r\n";
//! let Parsed::Complete { request, head_len } = parse_request(head, &Limits::default())? else {
//!     panic!("the head is complete");
//! };
//! assert_eq!(head_len, head.len());
//! let (etag, object_len) = (etag_of(1), 1000);
//! assert!(!not_modified(&request, &etag, None));
//! let answer = parse_range(request.range.as_deref().unwrap_or(""), object_len);
//! assert_eq!(answer, RangeAnswer::Partial { first: 100, last: 999 });
//!
//! let mut out = Vec::new();
//! ResponseHead::new(StatusCode::PartialContent)
//!     .content_length(900)
//!     .content_range(100, 999, object_len)
//!     .content_type_for(&request.path)
//!     .etag(&etag)
//!     .connection(request.version, request.keep_alive)
//!     .write(&mut out);
//! assert!(out.starts_with(b"HTTP/1.1 206 Partial Content\r\n"));
//! assert!(body_follows(request.method, StatusCode::PartialContent));
//! # Ok::<(), gfprotocol::http::HttpError>(())
//! ```

mod conditional;
mod error;
mod framing;
mod range;
mod request;
mod response;
mod target;
#[cfg(test)]
mod tests;

pub use conditional::{etag_of, if_range_allows, not_modified};
pub use error::{HttpError, SyntaxPart};
pub use range::{parse_range, RangeAnswer};
pub use request::{
    parse_request, HttpRequest, Limits, Method, Parsed, RequestBody, Version, DEFAULT_MAX_HEAD,
    DEFAULT_MAX_HEADERS, DEFAULT_MAX_TARGET,
};
pub use response::{
    body_follows, content_type_of, write_error_response, write_text_response, CacheStatus,
    ResponseHead, StatusCode, DEFAULT_CONTENT_TYPE, TEXT_PLAIN,
};
pub use target::decode_path;
