//! Where a request head ends, and the framing checks `httparse` leaves to its caller.
//!
//! `httparse` accepts a bare LF as a line ending; RFC 9112 section 2.2 lets a server do so, but
//! a proxy in front of gfcache that does not would see a different message (request smuggling),
//! so every line of the head must end in CRLF. This scan also enforces the size limits while
//! the head is still incomplete, so a client cannot make the server buffer without bound.

use super::{HttpError, Limits};

/// Where the head is, as far as the bytes so far tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Framing {
    /// No empty line yet; nothing seen so far breaks a rule.
    Incomplete,
    /// The head is `buf[..head_len]`, ending with the empty line.
    Complete { head_len: usize },
}

/// Scans the head lines in `buf` (within `limits.max_head`), checking line endings, folding,
/// the space before a colon, the target length and the number of header lines.
pub(super) fn scan(buf: &[u8], limits: &Limits) -> Result<Framing, HttpError> {
    let window = buf.get(..buf.len().min(limits.max_head)).unwrap_or(buf);
    let mut line_start = leading_empty_lines(window);
    let mut header_lines = 0usize;
    let mut is_request_line = true;
    loop {
        let rest = window.get(line_start..).unwrap_or_default();
        let Some(offset) = rest.iter().position(|&b| b == b'\n') else {
            check_partial_line(rest, is_request_line, limits)?;
            return if window.len() >= limits.max_head {
                Err(HttpError::HeadTooLarge)
            } else {
                Ok(Framing::Incomplete)
            };
        };
        let line = rest
            .get(..offset)
            .and_then(|l| l.strip_suffix(b"\r"))
            .ok_or(HttpError::BareLineEnding)?;
        if line.contains(&b'\r') {
            return Err(HttpError::BareLineEnding);
        }
        line_start += offset + 1;
        if is_request_line {
            check_target_length(line, limits)?;
            is_request_line = false;
        } else if line.is_empty() {
            return Ok(Framing::Complete {
                head_len: line_start,
            });
        } else {
            check_header_line(line)?;
            header_lines += 1;
            if header_lines > limits.max_headers {
                return Err(HttpError::TooManyHeaders);
            }
        }
    }
}

/// Bytes of CRLFs before the request line, which RFC 9112 section 2.2 asks a server to ignore.
fn leading_empty_lines(window: &[u8]) -> usize {
    let mut start = 0;
    while window.get(start..start + 2) == Some(b"\r\n") {
        start += 2;
    }
    start
}

/// A line whose LF has not arrived: a CR may only be its last byte, and a request line is
/// refused as soon as its target is over the limit.
fn check_partial_line(
    line: &[u8],
    is_request_line: bool,
    limits: &Limits,
) -> Result<(), HttpError> {
    let body = line.strip_suffix(b"\r").unwrap_or(line);
    if body.contains(&b'\r') {
        return Err(HttpError::BareLineEnding);
    }
    if is_request_line {
        check_target_length(body, limits)?;
    }
    Ok(())
}

/// The target runs from after the first space to the next space (or the end of what arrived).
/// Without a space yet the whole line counts, so a line of any shape is bounded.
fn check_target_length(line: &[u8], limits: &Limits) -> Result<(), HttpError> {
    let target = match line.iter().position(|&b| b == b' ') {
        Some(space) => {
            let after = line.get(space + 1..).unwrap_or_default();
            let end = after.iter().position(|&b| b == b' ').unwrap_or(after.len());
            after.get(..end).unwrap_or_default()
        }
        None => line,
    };
    if target.len() > limits.max_target {
        Err(HttpError::TargetTooLong)
    } else {
        Ok(())
    }
}

/// A header line may not start with whitespace (obs-fold) nor have whitespace before its
/// colon (RFC 9112 sections 5.1 and 5.2). The rest of its grammar is httparse's.
fn check_header_line(line: &[u8]) -> Result<(), HttpError> {
    if matches!(line.first(), Some(b' ' | b'\t')) {
        return Err(HttpError::ObsoleteFolding);
    }
    if let Some(colon) = line.iter().position(|&b| b == b':') {
        if matches!(
            colon.checked_sub(1).and_then(|i| line.get(i)),
            Some(b' ' | b'\t')
        ) {
            return Err(HttpError::SpaceBeforeColon);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_target: 16,
            max_head: 64,
            max_headers: 2,
        }
    }

    #[test]
    fn complete_head_ends_after_the_empty_line() {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody";
        assert_eq!(
            scan(head, &limits()),
            Ok(Framing::Complete { head_len: 27 })
        );
    }

    #[test]
    fn leading_crlfs_are_part_of_the_head() {
        let head = b"\r\n\r\nGET / HTTP/1.0\r\n\r\n";
        assert_eq!(
            scan(head, &limits()),
            Ok(Framing::Complete {
                head_len: head.len()
            })
        );
    }

    #[test]
    fn incomplete_until_the_empty_line() {
        for head in [
            &b""[..],
            b"GET",
            b"GET / HTTP/1.1\r",
            b"GET / HTTP/1.1\r\nHost: a\r\n\r",
        ] {
            assert_eq!(scan(head, &limits()), Ok(Framing::Incomplete));
        }
    }

    #[test]
    fn line_ending_errors() {
        for head in [
            &b"GET / HTTP/1.1\n"[..],
            b"GET / HTTP/1.1\r\nHost: a\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n\n",
            b"GET /\r HTTP/1.1",
            b"GET / HTTP/1.1\r\nA: b\rc\r\n",
            b"\n",
        ] {
            assert_eq!(
                scan(head, &limits()),
                Err(HttpError::BareLineEnding),
                "{head:?}"
            );
        }
    }

    #[test]
    fn limits_apply_before_the_end() {
        let long_target = format!("GET /{}", "a".repeat(16));
        assert_eq!(
            scan(long_target.as_bytes(), &limits()),
            Err(HttpError::TargetTooLong)
        );
        let no_space = "A".repeat(17);
        assert_eq!(
            scan(no_space.as_bytes(), &limits()),
            Err(HttpError::TargetTooLong)
        );
        let big = format!("GET / HTTP/1.1\r\nA: {}", "b".repeat(60));
        assert_eq!(
            scan(big.as_bytes(), &limits()),
            Err(HttpError::HeadTooLarge)
        );
        let many = b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n";
        assert_eq!(scan(many, &limits()), Err(HttpError::TooManyHeaders));
    }

    #[test]
    fn head_of_exactly_max_head_bytes_is_accepted() {
        let mut head = b"GET / HTTP/1.1\r\nA: ".to_vec();
        head.resize(60, b'x');
        head.extend_from_slice(b"\r\n\r\n");
        assert_eq!(head.len(), 64);
        assert_eq!(
            scan(&head, &limits()),
            Ok(Framing::Complete { head_len: 64 })
        );
        head.insert(20, b'x');
        assert_eq!(scan(&head, &limits()), Err(HttpError::HeadTooLarge));
    }

    #[test]
    fn folding_and_space_before_colon() {
        assert_eq!(
            scan(b"GET / HTTP/1.1\r\nA: b\r\n c\r\n", &limits()),
            Err(HttpError::ObsoleteFolding)
        );
        assert_eq!(
            scan(b"GET / HTTP/1.1\r\nHost : a\r\n", &limits()),
            Err(HttpError::SpaceBeforeColon)
        );
        assert_eq!(
            scan(b"GET / HTTP/1.1\r\nHost\t: a\r\n", &limits()),
            Err(HttpError::SpaceBeforeColon)
        );
    }
}
