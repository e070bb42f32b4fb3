//! Validation and normalisation of request paths.
//!
//! A GetFile path names a file. Before it becomes a cache key or an origin URL it is made
//! canonical, so that `/a//b`, `/a/./b` and `/a/c/../b` are one object, and no spelling can climb
//! above the root.

use std::fmt;

/// Longest path accepted (bytes), the GetFile limit.
pub const MAX_PATH_LEN: usize = gfprotocol::MAX_PATH_LEN;

/// Why a path was refused.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Longer than [`MAX_PATH_LEN`].
    #[error("path of {len} bytes is longer than {MAX_PATH_LEN}")]
    TooLong {
        /// Its length.
        len: usize,
    },
    /// Does not start with `/`.
    #[error("path does not start with '/'")]
    NotAbsolute,
    /// Contains a byte no GetFile path may hold (space, CR, LF, NUL or another control byte).
    #[error("path contains the forbidden byte {byte:#04x}")]
    ForbiddenByte {
        /// The byte.
        byte: u8,
    },
    /// A `..` climbs above the root.
    #[error("path climbs above the root with '..'")]
    EscapesRoot,
}

/// A validated, canonical path: starts with `/`, no empty, `.` or `..` segments, no trailing
/// `/` (except the root itself), at most [`MAX_PATH_LEN`] bytes, no control bytes or spaces.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CanonicalPath(String, Option<usize>);

impl CanonicalPath {
    /// Validates and normalises `raw`.
    ///
    /// ```
    /// use proxy_core::path::{CanonicalPath, PathError};
    /// assert_eq!(CanonicalPath::parse("/a//b/./c/../d").unwrap().as_str(), "/a/b/d");
    /// assert_eq!(CanonicalPath::parse("/../etc/passwd"), Err(PathError::EscapesRoot));
    /// ```
    pub fn parse(raw: &str) -> Result<CanonicalPath, PathError> {
        if raw.len() > MAX_PATH_LEN {
            return Err(PathError::TooLong { len: raw.len() });
        }
        if !raw.starts_with('/') {
            return Err(PathError::NotAbsolute);
        }
        if let Some(byte) = raw.bytes().find(|b| *b <= b' ' || *b == 0x7f) {
            return Err(PathError::ForbiddenByte { byte });
        }
        let mut segments: Vec<&str> = Vec::new();
        for segment in raw.split('/') {
            match segment {
                "" | "." => {}
                ".." => {
                    if segments.pop().is_none() {
                        return Err(PathError::EscapesRoot);
                    }
                }
                other => segments.push(other),
            }
        }
        let mut canonical = String::with_capacity(raw.len());
        for segment in &segments {
            canonical.push('/');
            canonical.push_str(segment);
        }
        if canonical.is_empty() {
            canonical.push('/');
        }
        Ok(CanonicalPath(canonical, None))
    }

    /// The same path with an HTTP query string (raw, as the client sent it) made part of the
    /// object's name (`proxy.http_cache_query`): the cache key becomes `/path?query`, and the
    /// origin is asked for the same query. A query with a byte a URL cannot carry as is
    /// (control, space, `#`) or that makes the key too long is refused.
    pub fn with_query(self, query: &str) -> Result<CanonicalPath, PathError> {
        if let Some(byte) = query
            .bytes()
            .find(|b| *b <= b' ' || *b == 0x7f || *b == b'#' || !b.is_ascii())
        {
            return Err(PathError::ForbiddenByte { byte });
        }
        let len = self.0.len() + 1 + query.len();
        if len > MAX_PATH_LEN {
            return Err(PathError::TooLong { len });
        }
        let path_len = self.0.len();
        let mut key = self.0;
        key.push('?');
        key.push_str(query);
        Ok(CanonicalPath(key, Some(path_len)))
    }

    /// The canonical text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path percent-encoded for a URL: everything but RFC 3986 path characters is escaped,
    /// `%`, `?` and `#` included, so that the origin sees the same file name.
    pub fn url_encoded(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789ABCDEF";
        let (path, query) = match self.1 {
            Some(path_len) => (
                self.0.get(..path_len).unwrap_or_default(),
                self.0.get(path_len..),
            ),
            None => (self.0.as_str(), None),
        };
        let mut out = String::with_capacity(self.0.len());
        for byte in path.bytes() {
            let keep = byte.is_ascii_alphanumeric()
                || matches!(
                    byte,
                    b'/' | b'-'
                        | b'.'
                        | b'_'
                        | b'~'
                        | b'!'
                        | b'$'
                        | b'&'
                        | b'\''
                        | b'('
                        | b')'
                        | b'*'
                        | b'+'
                        | b','
                        | b';'
                        | b'='
                        | b':'
                        | b'@'
                );
            if keep {
                out.push(char::from(byte));
            } else {
                out.push('%');
                out.push(char::from(HEX[usize::from(byte >> 4)]));
                out.push(char::from(HEX[usize::from(byte & 0x0f)]));
            }
        }
        // The query goes as the client sent it (checked by `with_query`).
        out.push_str(query.unwrap_or_default());
        out
    }
}

impl fmt::Display for CanonicalPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(raw: &str) -> Result<String, PathError> {
        CanonicalPath::parse(raw).map(|p| p.0)
    }

    #[test]
    fn a_query_joins_the_key_and_goes_to_the_origin_as_sent() {
        let path = CanonicalPath::parse("/a b/../é.txt".replace(' ', "").as_str()).unwrap();
        let keyed = path.with_query("v=1&x=%2F").unwrap();
        assert_eq!(keyed.as_str(), "/é.txt?v=1&x=%2F");
        assert_eq!(keyed.url_encoded(), "/%C3%A9.txt?v=1&x=%2F");
        let plain = CanonicalPath::parse("/a").unwrap();
        for bad in ["a b", "a#b", "a\u{7f}", "é"] {
            assert!(plain.clone().with_query(bad).is_err(), "{bad:?}");
        }
        let long = "x".repeat(MAX_PATH_LEN);
        assert!(matches!(
            plain.with_query(&long),
            Err(PathError::TooLong { .. })
        ));
    }

    #[test]
    fn normalises_separators_and_dots() {
        assert_eq!(canon("/a/b.txt").as_deref(), Ok("/a/b.txt"));
        assert_eq!(canon("//a///b/").as_deref(), Ok("/a/b"));
        assert_eq!(canon("/./a/./b").as_deref(), Ok("/a/b"));
        assert_eq!(canon("/a/x/../b").as_deref(), Ok("/a/b"));
        assert_eq!(canon("/a/..").as_deref(), Ok("/"));
        assert_eq!(canon("/").as_deref(), Ok("/"));
        assert_eq!(canon("/...").as_deref(), Ok("/..."));
        assert_eq!(canon("/a..b").as_deref(), Ok("/a..b"));
    }

    #[test]
    fn refuses_escapes_and_bad_bytes() {
        assert_eq!(canon("/.."), Err(PathError::EscapesRoot));
        assert_eq!(canon("/a/../../b"), Err(PathError::EscapesRoot));
        assert_eq!(canon("a/b"), Err(PathError::NotAbsolute));
        assert_eq!(canon(""), Err(PathError::NotAbsolute));
        assert_eq!(canon("/a b"), Err(PathError::ForbiddenByte { byte: b' ' }));
        assert_eq!(canon("/a\0b"), Err(PathError::ForbiddenByte { byte: 0 }));
        assert_eq!(
            canon("/a\nb"),
            Err(PathError::ForbiddenByte { byte: b'\n' })
        );
    }

    #[test]
    fn bounds_the_length() {
        let longest = format!("/{}", "x".repeat(MAX_PATH_LEN - 1));
        assert_eq!(canon(&longest).map(|p| p.len()), Ok(MAX_PATH_LEN));
        let too_long = format!("/{}", "x".repeat(MAX_PATH_LEN));
        assert_eq!(
            canon(&too_long),
            Err(PathError::TooLong {
                len: MAX_PATH_LEN + 1
            })
        );
    }

    #[test]
    fn url_encoding_keeps_path_characters_and_escapes_the_rest() {
        let path = CanonicalPath::parse("/dir/a-b_c~d.txt").unwrap();
        assert_eq!(path.url_encoded(), "/dir/a-b_c~d.txt");
        let path = CanonicalPath::parse("/q?x=1#frag%20é").unwrap();
        assert_eq!(path.url_encoded(), "/q%3Fx=1%23frag%2520%C3%A9");
    }

    #[test]
    fn canonical_form_is_a_fixed_point() {
        for raw in ["/a//b/./c/../d", "/", "/x/y/", "/é/ü"] {
            let once = canon(raw).unwrap();
            assert_eq!(canon(&once).as_deref(), Ok(once.as_str()));
        }
    }
}
