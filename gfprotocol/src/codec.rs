//! Incremental, strict decoders and encoders for GetFile headers.
//!
//! Both decoders are byte-level state machines: they may be fed any split of the input (one
//! byte at a time, or a header and its body in one read) and reject a malformed header at the
//! first byte that cannot be part of a valid one, so a server never waits for a terminator that
//! cannot make the header valid.

use std::fmt;

use crate::{ResponseHeader, Status, MAX_PATH_LEN};

/// The literal that starts every request.
const REQUEST_PREFIX: &[u8] = b"GETFILE GET ";
/// The literal that starts every response.
const RESPONSE_PREFIX: &[u8] = b"GETFILE ";
/// Longest status name (`FILE_NOT_FOUND`).
const MAX_STATUS_LEN: usize = 14;
/// Longest length field accepted: `u64::MAX` has 20 digits.
const MAX_LENGTH_DIGITS: u8 = 20;

/// Why a header was rejected.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// The scheme is not `GETFILE` (wrong word or wrong case).
    #[error("wrong scheme (expected GETFILE)")]
    WrongScheme,
    /// The method is not `GET`.
    #[error("wrong method (expected GET)")]
    WrongMethod,
    /// A missing, doubled or misplaced space between fields.
    #[error("bad field separator")]
    BadSeparator,
    /// The path does not start with `/`.
    #[error("path does not start with '/'")]
    PathNotAbsolute,
    /// The path is longer than [`MAX_PATH_LEN`].
    #[error("path longer than {MAX_PATH_LEN} bytes")]
    PathTooLong,
    /// The path contains a forbidden byte (NUL).
    #[error("forbidden byte {0:#04x} in path")]
    BadPathByte(u8),
    /// The path is not UTF-8.
    #[error("path is not UTF-8")]
    NonUtf8Path,
    /// A lone CR or LF, or junk between or instead of the two CRLFs.
    #[error("bad header terminator (expected \\r\\n\\r\\n)")]
    BadTerminator,
    /// The response status is not one of OK, FILE_NOT_FOUND, ERROR, INVALID.
    #[error("unknown status")]
    UnknownStatus,
    /// An OK response without a length.
    #[error("OK without a length")]
    MissingLength,
    /// The length is not a decimal number.
    #[error("non-numeric length")]
    NonNumericLength,
    /// The length does not fit in a u64.
    #[error("length overflows u64")]
    LengthOverflow,
    /// A length after a status other than OK.
    #[error("length on a non-OK status")]
    LengthOnNonOk,
    /// The stream ended (or timed out) before the header terminator.
    #[error("incomplete header")]
    Incomplete,
}

/// A request decoded by [`RequestDecoder`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHeader {
    /// The path, starting with '/'.
    pub path: String,
}

/// Where the request decoder is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RequestState {
    /// Matching `GETFILE GET ` (index into the literal).
    Prefix(usize),
    /// Expecting the path's leading '/'.
    PathStart,
    /// Inside the path.
    Path,
    /// After a single trailing space (lenient mode only).
    TrailingSpace,
    /// After the first CR.
    Cr1,
    /// After the first CRLF.
    Lf1,
    /// After CRLF CR.
    Cr2,
    /// A header was returned; the decoder must be reset before reuse.
    Done,
    /// An error was returned.
    Failed(Malformed),
}

/// Decodes `GETFILE GET <path>\r\n\r\n` incrementally.
///
/// ```
/// use gfprotocol::codec::RequestDecoder;
/// let mut decoder = RequestDecoder::new();
/// assert_eq!(decoder.feed(b"GETFILE GET /a").unwrap(), None);
/// let (header, used) = decoder.feed(b"\r\n\r\nrest").unwrap().unwrap();
/// assert_eq!((header.path.as_str(), used), ("/a", 4));
/// ```
#[derive(Clone, Debug)]
pub struct RequestDecoder {
    state: RequestState,
    path: Vec<u8>,
    lenient: bool,
}

impl Default for RequestDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl RequestDecoder {
    /// A strict decoder: exactly the grammar of GETFILE.md.
    pub fn new() -> Self {
        RequestDecoder {
            state: RequestState::Prefix(0),
            path: Vec::new(),
            lenient: false,
        }
    }

    /// A decoder that also accepts one space between the path and the terminator, as some old
    /// clients send (GETFILE.md allows a server to accept it).
    pub fn lenient() -> Self {
        RequestDecoder {
            lenient: true,
            ..Self::new()
        }
    }

    /// Feeds bytes. Returns the header and how many bytes of `input` it used once the
    /// terminator arrived (the rest of `input` follows the header), `None` while incomplete.
    pub fn feed(&mut self, input: &[u8]) -> Result<Option<(RequestHeader, usize)>, Malformed> {
        let mut index = 0;
        while let Some(&byte) = input.get(index) {
            if self.state == RequestState::Path {
                // Fast path: copy the run of ordinary path bytes at once.
                let rest = input.get(index..).unwrap_or_default();
                let run = rest
                    .iter()
                    .position(|b| matches!(b, b' ' | b'\r' | b'\n' | 0))
                    .unwrap_or(rest.len());
                if run > 0 {
                    if self.path.len() + run > MAX_PATH_LEN {
                        return Err(self.fail(Malformed::PathTooLong));
                    }
                    self.path
                        .extend_from_slice(rest.get(..run).unwrap_or_default());
                    index += run;
                    continue;
                }
            }
            index += 1;
            match self.step(byte) {
                Ok(true) => {
                    let path = String::from_utf8(std::mem::take(&mut self.path))
                        .map_err(|_| self.fail(Malformed::NonUtf8Path))?;
                    return Ok(Some((RequestHeader { path }, index)));
                }
                Ok(false) => {}
                Err(e) => return Err(self.fail(e)),
            }
        }
        Ok(None)
    }

    /// Reports the end of the stream: an error unless a header was already returned.
    pub fn finish(&self) -> Result<(), Malformed> {
        match self.state {
            RequestState::Done => Ok(()),
            RequestState::Failed(e) => Err(e),
            _ => Err(Malformed::Incomplete),
        }
    }

    /// Whether no byte has been fed yet.
    pub fn is_empty(&self) -> bool {
        self.state == RequestState::Prefix(0)
    }

    fn fail(&mut self, error: Malformed) -> Malformed {
        self.state = RequestState::Failed(error);
        error
    }

    /// Advances by one byte; `Ok(true)` when the header is complete.
    fn step(&mut self, byte: u8) -> Result<bool, Malformed> {
        use RequestState as S;
        self.state = match self.state {
            S::Prefix(i) => {
                let expected = REQUEST_PREFIX.get(i).copied();
                if expected == Some(byte) {
                    if i + 1 == REQUEST_PREFIX.len() {
                        S::PathStart
                    } else {
                        S::Prefix(i + 1)
                    }
                } else {
                    return Err(prefix_error(i, byte));
                }
            }
            S::PathStart => match byte {
                b'/' => {
                    self.path.push(byte);
                    S::Path
                }
                b' ' => return Err(Malformed::BadSeparator),
                _ => return Err(Malformed::PathNotAbsolute),
            },
            S::Path => match byte {
                b'\r' => S::Cr1,
                b'\n' => return Err(Malformed::BadTerminator),
                b' ' if self.lenient => S::TrailingSpace,
                b' ' => return Err(Malformed::BadSeparator),
                0 => return Err(Malformed::BadPathByte(0)),
                _ if self.path.len() >= MAX_PATH_LEN => return Err(Malformed::PathTooLong),
                _ => {
                    self.path.push(byte);
                    S::Path
                }
            },
            S::TrailingSpace => match byte {
                b'\r' => S::Cr1,
                _ => return Err(Malformed::BadSeparator),
            },
            S::Cr1 => expect(byte, b'\n', S::Lf1)?,
            S::Lf1 => expect(byte, b'\r', S::Cr2)?,
            S::Cr2 => {
                expect(byte, b'\n', S::Done)?;
                self.state = S::Done;
                return Ok(true);
            }
            // Feeding after the end is a protocol misuse by the caller: nothing more is a header.
            S::Done => return Err(Malformed::BadTerminator),
            S::Failed(e) => return Err(e),
        };
        Ok(false)
    }
}

/// The error for a mismatch at `index` of `GETFILE GET `.
fn prefix_error(index: usize, byte: u8) -> Malformed {
    match index {
        0..=7 => Malformed::WrongScheme,
        // "GETFILE  GET": a second space where the method should start.
        8 if byte == b' ' => Malformed::BadSeparator,
        _ => Malformed::WrongMethod,
    }
}

fn expect<S>(byte: u8, wanted: u8, next: S) -> Result<S, Malformed> {
    if byte == wanted {
        Ok(next)
    } else {
        Err(Malformed::BadTerminator)
    }
}

/// Where the response decoder is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ResponseState {
    /// Matching `GETFILE ` (index into the literal).
    Prefix(usize),
    /// Reading the status name (`len` bytes so far, in `status`).
    Status { len: usize },
    /// After `OK `: expecting the first digit.
    LengthStart,
    /// Inside the length.
    Length { value: u64, digits: u8 },
    /// After a non-OK status and a space.
    AfterNonOkSpace(ResponseHeader),
    /// After a non-OK status and ` 0`, which a public C server sends (GETFILE.md allows it).
    NonOkZero(ResponseHeader),
    /// After the first CR; the header so far.
    Cr1(ResponseHeader),
    /// After the first CRLF.
    Lf1(ResponseHeader),
    /// After CRLF CR.
    Cr2(ResponseHeader),
    /// A header was returned.
    Done,
    /// An error was returned.
    Failed(Malformed),
}

/// Decodes `GETFILE <STATUS> [<length>]\r\n\r\n` incrementally.
///
/// ```
/// use gfprotocol::{codec::ResponseDecoder, ResponseHeader};
/// let mut decoder = ResponseDecoder::new();
/// let (header, used) = decoder.feed(b"GETFILE OK 3\r\n\r\nabc").unwrap().unwrap();
/// assert_eq!(header, ResponseHeader::Ok { length: 3 });
/// assert_eq!(used, 16);
/// ```
#[derive(Clone, Debug)]
pub struct ResponseDecoder {
    state: ResponseState,
    status: [u8; MAX_STATUS_LEN],
}

impl Default for ResponseDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ResponseDecoder {
    /// A fresh decoder.
    pub fn new() -> Self {
        ResponseDecoder {
            state: ResponseState::Prefix(0),
            status: [0; MAX_STATUS_LEN],
        }
    }

    /// Feeds bytes. Returns the header and how many bytes of `input` it used once the
    /// terminator arrived (the rest is body), `None` while incomplete.
    pub fn feed(&mut self, input: &[u8]) -> Result<Option<(ResponseHeader, usize)>, Malformed> {
        for (index, &byte) in input.iter().enumerate() {
            match self.step(byte) {
                Ok(Some(header)) => return Ok(Some((header, index + 1))),
                Ok(None) => {}
                Err(e) => {
                    self.state = ResponseState::Failed(e);
                    return Err(e);
                }
            }
        }
        Ok(None)
    }

    /// Reports the end of the stream: an error unless a header was already returned.
    pub fn finish(&self) -> Result<(), Malformed> {
        match self.state {
            ResponseState::Done => Ok(()),
            ResponseState::Failed(e) => Err(e),
            _ => Err(Malformed::Incomplete),
        }
    }

    fn status_name(&self, len: usize) -> &[u8] {
        self.status.get(..len).unwrap_or(&[])
    }

    fn step(&mut self, byte: u8) -> Result<Option<ResponseHeader>, Malformed> {
        use ResponseState as S;
        self.state = match self.state {
            S::Prefix(i) => {
                if RESPONSE_PREFIX.get(i).copied() != Some(byte) {
                    return Err(Malformed::WrongScheme);
                }
                if i + 1 == RESPONSE_PREFIX.len() {
                    S::Status { len: 0 }
                } else {
                    S::Prefix(i + 1)
                }
            }
            S::Status { len } => match byte {
                b'A'..=b'Z' | b'_' => {
                    let slot = self.status.get_mut(len).ok_or(Malformed::UnknownStatus)?;
                    *slot = byte;
                    S::Status { len: len + 1 }
                }
                b' ' | b'\r' => {
                    let name = self.status_name(len);
                    let status = parse_status(name).ok_or(if len == 0 && byte == b' ' {
                        Malformed::BadSeparator
                    } else {
                        Malformed::UnknownStatus
                    })?;
                    match (status, byte) {
                        (Status::Ok, b' ') => S::LengthStart,
                        (Status::Ok, _) => return Err(Malformed::MissingLength),
                        (other, b' ') => S::AfterNonOkSpace(non_ok_header(other)),
                        (other, _) => S::Cr1(non_ok_header(other)),
                    }
                }
                b'\n' => return Err(Malformed::BadTerminator),
                _ => return Err(Malformed::UnknownStatus),
            },
            S::LengthStart => match byte {
                b'0'..=b'9' => S::Length {
                    value: u64::from(byte - b'0'),
                    digits: 1,
                },
                b' ' => return Err(Malformed::BadSeparator),
                b'\r' => return Err(Malformed::MissingLength),
                _ => return Err(Malformed::NonNumericLength),
            },
            S::Length { value, digits } => match byte {
                b'0'..=b'9' => {
                    if digits >= MAX_LENGTH_DIGITS {
                        return Err(Malformed::LengthOverflow);
                    }
                    let value = value
                        .checked_mul(10)
                        .and_then(|v| v.checked_add(u64::from(byte - b'0')))
                        .ok_or(Malformed::LengthOverflow)?;
                    S::Length {
                        value,
                        digits: digits + 1,
                    }
                }
                b'\r' => S::Cr1(ResponseHeader::Ok { length: value }),
                b' ' => return Err(Malformed::BadSeparator),
                b'\n' => return Err(Malformed::BadTerminator),
                _ => return Err(Malformed::NonNumericLength),
            },
            S::AfterNonOkSpace(h) => match byte {
                b'0' => S::NonOkZero(h),
                b'1'..=b'9' => return Err(Malformed::LengthOnNonOk),
                _ => return Err(Malformed::BadSeparator),
            },
            S::NonOkZero(h) => match byte {
                b'\r' => {
                    tracing::debug!(header = ?h, "a non-OK status with a length of 0, read as that status");
                    S::Cr1(h)
                }
                b'0'..=b'9' => return Err(Malformed::LengthOnNonOk),
                _ => return Err(Malformed::NonNumericLength),
            },
            S::Cr1(h) => expect(byte, b'\n', S::Lf1(h))?,
            S::Lf1(h) => expect(byte, b'\r', S::Cr2(h))?,
            S::Cr2(h) => {
                expect(byte, b'\n', S::Done)?;
                self.state = S::Done;
                return Ok(Some(h));
            }
            S::Done => return Err(Malformed::BadTerminator),
            S::Failed(e) => return Err(e),
        };
        Ok(None)
    }
}

fn parse_status(name: &[u8]) -> Option<Status> {
    match name {
        b"OK" => Some(Status::Ok),
        b"FILE_NOT_FOUND" => Some(Status::FileNotFound),
        b"ERROR" => Some(Status::Error),
        b"INVALID" => Some(Status::Invalid),
        _ => None,
    }
}

fn non_ok_header(status: Status) -> ResponseHeader {
    match status {
        Status::FileNotFound => ResponseHeader::FileNotFound,
        Status::Error => ResponseHeader::Error,
        // OK never reaches here (it needs a length); INVALID is the safe answer.
        Status::Invalid | Status::Ok => ResponseHeader::Invalid,
    }
}

/// Checks that `path` may be sent in a request (GETFILE.md rules).
pub fn validate_path(path: &str) -> Result<(), Malformed> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(Malformed::PathNotAbsolute);
    }
    if bytes.len() > MAX_PATH_LEN {
        return Err(Malformed::PathTooLong);
    }
    match bytes.iter().find(|b| matches!(b, b' ' | b'\r' | b'\n' | 0)) {
        Some(b' ') => Err(Malformed::BadSeparator),
        Some(b'\r' | b'\n') => Err(Malformed::BadTerminator),
        Some(&b) => Err(Malformed::BadPathByte(b)),
        None => Ok(()),
    }
}

/// Encodes a request for `path` after validating it.
pub fn encode_request(path: &str) -> Result<Vec<u8>, Malformed> {
    validate_path(path)?;
    let mut out = Vec::with_capacity(REQUEST_PREFIX.len() + path.len() + 4);
    out.extend_from_slice(REQUEST_PREFIX);
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    Ok(out)
}

impl Status {
    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::FileNotFound => "FILE_NOT_FOUND",
            Status::Error => "ERROR",
            Status::Invalid => "INVALID",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ResponseHeader {
    /// The status of this header.
    pub fn status(&self) -> Status {
        match self {
            ResponseHeader::Ok { .. } => Status::Ok,
            ResponseHeader::FileNotFound => Status::FileNotFound,
            ResponseHeader::Error => Status::Error,
            ResponseHeader::Invalid => Status::Invalid,
        }
    }

    /// The wire form, terminator included.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            ResponseHeader::Ok { length } => format!("GETFILE OK {length}\r\n\r\n").into_bytes(),
            other => format!("GETFILE {}\r\n\r\n", other.status()).into_bytes(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_request(input: &[u8]) -> Result<Option<(RequestHeader, usize)>, Malformed> {
        RequestDecoder::new().feed(input)
    }

    fn decode_response(input: &[u8]) -> Result<Option<(ResponseHeader, usize)>, Malformed> {
        ResponseDecoder::new().feed(input)
    }

    fn request_error(input: &[u8]) -> Malformed {
        match decode_request(input) {
            Err(e) => e,
            other => panic!("{:?} accepted: {other:?}", String::from_utf8_lossy(input)),
        }
    }

    fn response_error(input: &[u8]) -> Malformed {
        match decode_response(input) {
            Err(e) => e,
            other => panic!("{:?} accepted: {other:?}", String::from_utf8_lossy(input)),
        }
    }

    #[test]
    fn request_valid() {
        let (h, used) = decode_request(b"GETFILE GET /a/b.txt\r\n\r\nXYZ")
            .unwrap()
            .unwrap();
        assert_eq!(h.path, "/a/b.txt");
        assert_eq!(used, 24);
    }

    #[test]
    fn request_wrong_scheme_and_method() {
        assert_eq!(request_error(b"HTTP/1.1 GET /"), Malformed::WrongScheme);
        assert_eq!(request_error(b"GETFILES GET /"), Malformed::WrongScheme);
        assert_eq!(request_error(b"GETFILE PUT /x"), Malformed::WrongMethod);
        assert_eq!(request_error(b"GETFILE GETS /x"), Malformed::WrongMethod);
        assert_eq!(request_error(b"GETFILE GE /x"), Malformed::WrongMethod);
    }

    #[test]
    fn request_lower_case() {
        assert_eq!(request_error(b"getfile get /x"), Malformed::WrongScheme);
        assert_eq!(request_error(b"GETFILE get /x"), Malformed::WrongMethod);
    }

    #[test]
    fn request_double_space() {
        assert_eq!(request_error(b"GETFILE  GET /x"), Malformed::BadSeparator);
        assert_eq!(request_error(b"GETFILE GET  /x"), Malformed::BadSeparator);
        assert_eq!(
            request_error(b"GETFILE GET /x \r\n\r\n"),
            Malformed::BadSeparator
        );
        assert_eq!(
            RequestDecoder::lenient()
                .feed(b"GETFILE GET /x  \r\n\r\n")
                .unwrap_err(),
            Malformed::BadSeparator
        );
    }

    #[test]
    fn request_lenient_trailing_space() {
        let (h, _) = RequestDecoder::lenient()
            .feed(b"GETFILE GET /x \r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.path, "/x");
    }

    #[test]
    fn request_lone_lf_or_cr() {
        assert_eq!(
            request_error(b"GETFILE GET /x\n\n"),
            Malformed::BadTerminator
        );
        assert_eq!(
            request_error(b"GETFILE GET /x\r\n\n"),
            Malformed::BadTerminator
        );
        assert_eq!(
            request_error(b"GETFILE GET /x\rab"),
            Malformed::BadTerminator
        );
        assert_eq!(
            request_error(b"GETFILE GET /x\r\n\rX"),
            Malformed::BadTerminator
        );
    }

    #[test]
    fn request_junk_between_crlfs() {
        assert_eq!(
            request_error(b"GETFILE GET /x\r\nHost: y\r\n\r\n"),
            Malformed::BadTerminator
        );
    }

    #[test]
    fn request_path_without_slash() {
        assert_eq!(
            request_error(b"GETFILE GET x\r\n\r\n"),
            Malformed::PathNotAbsolute
        );
        assert_eq!(
            request_error(b"GETFILE GET \r\n\r\n"),
            Malformed::PathNotAbsolute
        );
    }

    #[test]
    fn request_path_bytes() {
        assert_eq!(
            request_error(b"GETFILE GET /a\0b\r\n\r\n"),
            Malformed::BadPathByte(0)
        );
        assert_eq!(
            request_error(b"GETFILE GET /\xff\r\n\r\n"),
            Malformed::NonUtf8Path
        );
    }

    fn request_with_path_len(len: usize) -> Vec<u8> {
        let mut path = vec![b'a'; len];
        path[0] = b'/';
        let mut req = b"GETFILE GET ".to_vec();
        req.extend_from_slice(&path);
        req.extend_from_slice(b"\r\n\r\n");
        req
    }

    #[test]
    fn request_path_length_limit() {
        let (h, _) = decode_request(&request_with_path_len(4096))
            .unwrap()
            .unwrap();
        assert_eq!(h.path.len(), 4096);
        assert_eq!(
            request_error(&request_with_path_len(4097)),
            Malformed::PathTooLong
        );
        // Rejected as soon as byte 4097 arrives, before any terminator.
        let mut decoder = RequestDecoder::new();
        let long = request_with_path_len(4097);
        assert_eq!(decoder.feed(&long[..12 + 4096]).unwrap(), None);
        assert_eq!(
            decoder.feed(&long[12 + 4096..12 + 4097]).unwrap_err(),
            Malformed::PathTooLong
        );
    }

    #[test]
    fn request_incomplete() {
        let mut d = RequestDecoder::new();
        assert!(d.is_empty());
        assert_eq!(d.feed(b"GETFILE GET /x\r\n").unwrap(), None);
        assert!(!d.is_empty());
        assert_eq!(d.finish(), Err(Malformed::Incomplete));
    }

    #[test]
    fn request_encode_validates() {
        assert_eq!(encode_request("/a").unwrap(), b"GETFILE GET /a\r\n\r\n");
        assert_eq!(encode_request("a"), Err(Malformed::PathNotAbsolute));
        assert_eq!(encode_request("/a b"), Err(Malformed::BadSeparator));
        assert_eq!(encode_request("/a\nb"), Err(Malformed::BadTerminator));
        assert_eq!(
            encode_request(&"/".repeat(4097)),
            Err(Malformed::PathTooLong)
        );
        assert!(encode_request(&"/".repeat(4096)).is_ok());
    }

    #[test]
    fn response_valid() {
        for (input, header) in [
            (
                &b"GETFILE OK 0\r\n\r\n"[..],
                ResponseHeader::Ok { length: 0 },
            ),
            (
                b"GETFILE OK 18446744073709551615\r\n\r\n",
                ResponseHeader::Ok { length: u64::MAX },
            ),
            (
                b"GETFILE FILE_NOT_FOUND\r\n\r\n",
                ResponseHeader::FileNotFound,
            ),
            (b"GETFILE ERROR\r\n\r\n", ResponseHeader::Error),
            (b"GETFILE INVALID\r\n\r\n", ResponseHeader::Invalid),
        ] {
            let (h, used) = decode_response(input).unwrap().unwrap();
            assert_eq!((h, used), (header, input.len()));
            assert_eq!(h.encode(), input);
        }
    }

    #[test]
    fn response_non_ok_with_a_zero_length_is_that_status() {
        // GETFILE.md's one exception, for a public C server; servers never send it.
        for (input, header) in [
            (
                &b"GETFILE FILE_NOT_FOUND 0\r\n\r\n"[..],
                ResponseHeader::FileNotFound,
            ),
            (b"GETFILE ERROR 0\r\n\r\n", ResponseHeader::Error),
            (b"GETFILE INVALID 0\r\n\r\n", ResponseHeader::Invalid),
        ] {
            assert_eq!(decode_response(input), Ok(Some((header, input.len()))));
        }
    }

    #[test]
    fn response_body_containing_terminator() {
        let input = b"GETFILE OK 8\r\n\r\nab\r\n\r\ncd";
        let (h, used) = decode_response(input).unwrap().unwrap();
        assert_eq!(h, ResponseHeader::Ok { length: 8 });
        assert_eq!(&input[used..], b"ab\r\n\r\ncd");
    }

    #[test]
    fn response_malformed() {
        for (input, error) in [
            (&b"HTTP/1.0 200 OK\r\n\r\n"[..], Malformed::WrongScheme),
            (b"getfile OK 1\r\n\r\n", Malformed::WrongScheme),
            (b"GETFILE ok 1\r\n\r\n", Malformed::UnknownStatus),
            (b"GETFILE FOUND\r\n\r\n", Malformed::UnknownStatus),
            (
                b"GETFILE VERY_LONG_STATUS_NAME\r\n\r\n",
                Malformed::UnknownStatus,
            ),
            (b"GETFILE  OK 1\r\n\r\n", Malformed::BadSeparator),
            (b"GETFILE OK  1\r\n\r\n", Malformed::BadSeparator),
            (b"GETFILE OK 1 \r\n\r\n", Malformed::BadSeparator),
            (b"GETFILE OK\r\n\r\n", Malformed::MissingLength),
            (b"GETFILE OK \r\n\r\n", Malformed::MissingLength),
            (b"GETFILE OK abc\r\n\r\n", Malformed::NonNumericLength),
            (b"GETFILE OK 12a\r\n\r\n", Malformed::NonNumericLength),
            (b"GETFILE OK -1\r\n\r\n", Malformed::NonNumericLength),
            (
                b"GETFILE OK 18446744073709551616\r\n\r\n",
                Malformed::LengthOverflow,
            ),
            (
                b"GETFILE OK 99999999999999999999999\r\n\r\n",
                Malformed::LengthOverflow,
            ),
            (
                b"GETFILE OK 000000000000000000001\r\n\r\n",
                Malformed::LengthOverflow,
            ),
            (
                b"GETFILE FILE_NOT_FOUND 12\r\n\r\n",
                Malformed::LengthOnNonOk,
            ),
            (b"GETFILE ERROR 00\r\n\r\n", Malformed::LengthOnNonOk),
            (b"GETFILE ERROR 0x\r\n\r\n", Malformed::NonNumericLength),
            (b"GETFILE INVALID \r\n\r\n", Malformed::BadSeparator),
            (b"GETFILE OK 1\n\n", Malformed::BadTerminator),
            (b"GETFILE OK 1\r\n\n", Malformed::BadTerminator),
            (b"GETFILE OK 1\rx", Malformed::BadTerminator),
            (b"GETFILE OK 1\r\nX\r\n\r\n", Malformed::BadTerminator),
            (b"GETFILE ERROR\n", Malformed::BadTerminator),
        ] {
            assert_eq!(
                response_error(input),
                error,
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn response_incomplete() {
        let mut d = ResponseDecoder::new();
        assert_eq!(d.feed(b"GETFILE OK 12\r\n\r").unwrap(), None);
        assert_eq!(d.finish(), Err(Malformed::Incomplete));
    }

    fn any_response() -> impl Strategy<Value = ResponseHeader> {
        prop_oneof![
            any::<u64>().prop_map(|length| ResponseHeader::Ok { length }),
            Just(ResponseHeader::FileNotFound),
            Just(ResponseHeader::Error),
            Just(ResponseHeader::Invalid),
        ]
    }

    fn any_path() -> impl Strategy<Value = String> {
        // Valid paths: '/' then printable bytes other than space, up to the limit.
        prop_oneof![
            "/[!-~]{0,64}",
            "/[a-z/é\\t]{0,200}",
            (4000usize..=4096).prop_map(|n| format!("/{}", "x".repeat(n - 1))),
        ]
    }

    proptest! {
        #[test]
        fn response_roundtrip_any_split(
            header in any_response(),
            body in proptest::collection::vec(any::<u8>(), 0..64),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let mut wire = header.encode();
            let header_len = wire.len();
            wire.extend_from_slice(&body);
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(wire.len() + 1)).collect();
            cuts.push(0);
            cuts.push(wire.len());
            cuts.sort_unstable();
            let mut decoder = ResponseDecoder::new();
            let mut found = None;
            for pair in cuts.windows(2) {
                let chunk = &wire[pair[0]..pair[1]];
                if let Some((h, used)) = decoder.feed(chunk).unwrap() {
                    found = Some((h, pair[0] + used));
                    break;
                }
            }
            prop_assert_eq!(found, Some((header, header_len)));
        }

        #[test]
        fn request_roundtrip_any_split(
            path in any_path(),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let wire = encode_request(&path).unwrap();
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(wire.len() + 1)).collect();
            cuts.push(0);
            cuts.push(wire.len());
            cuts.sort_unstable();
            let mut decoder = RequestDecoder::new();
            let mut found = None;
            for pair in cuts.windows(2) {
                if let Some((h, used)) = decoder.feed(&wire[pair[0]..pair[1]]).unwrap() {
                    found = Some((h.path, pair[0] + used));
                }
            }
            prop_assert_eq!(found, Some((path, wire.len())));
        }

        #[test]
        fn request_whole_equals_byte_by_byte(
            tail in proptest::collection::vec(
                prop_oneof![Just(b' '), Just(b'\r'), Just(b'\n'), Just(0u8), Just(b'/'), Just(b'a')],
                0..40,
            ),
        ) {
            let mut input = b"GETFILE GET /".to_vec();
            input.extend_from_slice(&tail);
            let whole = RequestDecoder::lenient().feed(&input);
            let mut decoder = RequestDecoder::lenient();
            let mut one_by_one = Ok(None);
            for (i, b) in input.iter().enumerate() {
                match decoder.feed(std::slice::from_ref(b)) {
                    Ok(None) => {}
                    Ok(Some((h, used))) => {
                        one_by_one = Ok(Some((h, i + used)));
                        break;
                    }
                    Err(e) => {
                        one_by_one = Err(e);
                        break;
                    }
                }
            }
            prop_assert_eq!(whole, one_by_one);
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = RequestDecoder::new().feed(&bytes);
            let _ = RequestDecoder::lenient().feed(&bytes);
            let _ = ResponseDecoder::new().feed(&bytes);
        }

        #[test]
        fn mutated_headers_never_panic(
            header in any_response(),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        ) {
            let mut wire = header.encode();
            for (at, byte) in flips {
                let i = at.index(wire.len());
                wire[i] = byte;
            }
            let mut decoder = ResponseDecoder::new();
            for b in &wire {
                if decoder.feed(std::slice::from_ref(b)).is_err() {
                    break;
                }
            }
        }
    }
}
