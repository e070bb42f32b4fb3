//! The request target: origin form only, split into a percent-decoded path and a raw query.

use super::HttpError;

/// A request target in origin form (`/path?query`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Target {
    pub(super) path: String,
    pub(super) query: Option<String>,
}

/// Splits and decodes a target as `httparse` returned it (visible ASCII or bytes >= 0x80).
///
/// This is a reverse proxy: absolute form (`http://host/x`), authority form (`host:443`) and
/// asterisk form (`*`) are refused, and so is a `#` (user agents never send fragments).
pub(super) fn parse_target(raw: &str) -> Result<Target, HttpError> {
    if !raw.starts_with('/') {
        return Err(HttpError::TargetForm);
    }
    if raw.contains('#') {
        return Err(HttpError::Fragment);
    }
    let (raw_path, query) = match raw.split_once('?') {
        Some((path, query)) => (path, Some(query.to_owned())),
        None => (raw, None),
    };
    let path = decode_path(raw_path)?;
    Ok(Target { path, query })
}

/// Percent-decodes a path. A `%` must start two hex digits; `%2F` is refused (decoding it would
/// turn data into a path separator, and keeping it would give one file two spellings); the
/// decoded bytes must be UTF-8 without control bytes.
pub fn decode_path(raw: &str) -> Result<String, HttpError> {
    let mut decoded = Vec::with_capacity(raw.len());
    let mut bytes = raw.bytes();
    while let Some(byte) = bytes.next() {
        let byte = if byte == b'%' {
            let high = bytes.next().and_then(hex_value);
            let low = bytes.next().and_then(hex_value);
            match (high, low) {
                (Some(high), Some(low)) if ((high << 4) | low) == b'/' => {
                    return Err(HttpError::EncodedSlash)
                }
                (Some(high), Some(low)) => (high << 4) | low,
                _ => return Err(HttpError::BadPercentEscape),
            }
        } else {
            byte
        };
        if byte.is_ascii_control() {
            return Err(HttpError::ControlInPath);
        }
        decoded.push(byte);
    }
    let path = String::from_utf8(decoded).map_err(|_| HttpError::NotUtf8)?;
    if path.starts_with('/') {
        Ok(path)
    } else {
        Err(HttpError::TargetForm)
    }
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path_of(raw: &str) -> Result<String, HttpError> {
        parse_target(raw).map(|t| t.path)
    }

    #[test]
    fn splits_path_and_query() {
        assert_eq!(
            parse_target("/a/b?x=1&y=%2F"),
            Ok(Target {
                path: "/a/b".into(),
                query: Some("x=1&y=%2F".into())
            })
        );
        assert_eq!(parse_target("/?").map(|t| t.query), Ok(Some(String::new())));
        assert_eq!(parse_target("/a").map(|t| t.query), Ok(None));
    }

    #[test]
    fn decodes_escapes() {
        assert_eq!(path_of("/a%20b"), Ok("/a b".into()));
        assert_eq!(path_of("/%C3%A9t%c3%a9"), Ok("/été".into()));
        assert_eq!(path_of("/%2e%2E/x"), Ok("/../x".into()));
        assert_eq!(path_of("/été"), Ok("/été".into()));
        assert_eq!(path_of("/%25"), Ok("/%".into()));
    }

    #[test]
    fn refuses_bad_paths() {
        for (raw, error) in [
            ("http://host/x", HttpError::TargetForm),
            ("host:443", HttpError::TargetForm),
            ("*", HttpError::TargetForm),
            ("", HttpError::TargetForm),
            ("/a#b", HttpError::Fragment),
            ("/a?b#c", HttpError::Fragment),
            ("/a%2Fb", HttpError::EncodedSlash),
            ("/a%2fb", HttpError::EncodedSlash),
            ("/a%", HttpError::BadPercentEscape),
            ("/a%4", HttpError::BadPercentEscape),
            ("/a%g0", HttpError::BadPercentEscape),
            ("/a%0g", HttpError::BadPercentEscape),
            ("/a%00", HttpError::ControlInPath),
            ("/a%0D%0A", HttpError::ControlInPath),
            ("/a%0a", HttpError::ControlInPath),
            ("/a%09", HttpError::ControlInPath),
            ("/a%7f", HttpError::ControlInPath),
            ("/a%ff", HttpError::NotUtf8),
            ("/a%C3", HttpError::NotUtf8),
        ] {
            assert_eq!(path_of(raw), Err(error), "{raw}");
        }
    }
}
