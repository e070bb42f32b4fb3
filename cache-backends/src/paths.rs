//! Object paths: which GetFile paths can name an object in a file tree or a pack.

/// Longest path accepted (GETFILE.md's limit).
pub const MAX_PATH_LEN: usize = 4096;

/// The path without its leading `/` when `path` is a canonical object path, else `None`.
///
/// Canonical: starts with `/`, at most [`MAX_PATH_LEN`] bytes, made of non-empty components
/// separated by single `/`, none of them `.` or `..`, and no space, CR, LF or NUL anywhere.
/// `//x`, `/a/../x`, `/./x`, `/x/` and `/` are not canonical: the directory and pack backends
/// simply do not find them, so no spelling of a path can reach outside the tree.
pub fn relative_object_path(path: &str) -> Option<&str> {
    if path.len() > MAX_PATH_LEN {
        return None;
    }
    let relative = path.strip_prefix('/')?;
    if relative.is_empty()
        || relative
            .bytes()
            .any(|b| matches!(b, b' ' | b'\r' | b'\n' | 0))
    {
        return None;
    }
    let all_components_plain = relative
        .split('/')
        .all(|component| !matches!(component, "" | "." | ".."));
    all_components_plain.then_some(relative)
}

/// Whether `path` is a canonical object path (see [`relative_object_path`]).
pub fn is_object_path(path: &str) -> bool {
    relative_object_path(path).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_paths_are_accepted() {
        assert_eq!(relative_object_path("/a"), Some("a"));
        assert_eq!(relative_object_path("/a/b.txt"), Some("a/b.txt"));
        assert_eq!(relative_object_path("/.hidden/..x"), Some(".hidden/..x"));
    }

    #[test]
    fn other_spellings_are_rejected() {
        for bad in [
            "",
            "/",
            "a",
            "//x",
            "/../x",
            "/a/../../x",
            "/a/../x",
            "/./x",
            "/x/",
            "/x//y",
            "/a b",
            "/a\r",
            "/a\n",
            "/a\0",
        ] {
            assert_eq!(relative_object_path(bad), None, "{bad:?}");
        }
        let long = format!("/{}", "a".repeat(MAX_PATH_LEN));
        assert_eq!(relative_object_path(&long), None);
        let longest = format!("/{}", "a".repeat(MAX_PATH_LEN - 1));
        assert!(is_object_path(&longest));
    }
}
