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
pub struct CanonicalPath(String);

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
        Ok(CanonicalPath(canonical))
    }

    /// The canonical text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path percent-encoded for a URL: everything but RFC 3986 path characters is escaped,
    /// `%`, `?` and `#` included, so that the origin sees the same file name.
    pub fn url_encoded(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789ABCDEF";
        let mut out = String::with_capacity(self.0.len());
        for byte in self.0.bytes() {
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
