//! Validators and conditional requests (RFC 9110 sections 8.8 and 13) for GET and HEAD.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::HttpRequest;

/// The strong ETag of an object version: its 16 hex digits in quotes, e.g.
/// `"00000000000000ff"`.
pub fn etag_of(version: u64) -> String {
    format!("\"{version:016x}\"")
}

/// Whether a GET or HEAD is answered 304 Not Modified (RFC 9110 section 13.2.2, steps 3 and 4).
///
/// If-None-Match, when present, decides alone (If-Modified-Since is then ignored): `*`, or any
/// listed tag equal to `etag` by the weak comparison (`W/` ignored on both sides), means not
/// modified. Otherwise If-Modified-Since means not modified when `last_modified`, truncated to
/// whole seconds, is not after it; an unparsable date, or no `last_modified`, means modified.
///
/// ```
/// use gfprotocol::http::{etag_of, not_modified, parse_request, Limits, Parsed};
/// let head = b"GET /a HTTP/1.1\r\nHost: x\r\nIf-None-Match: W/\"0000000000000007\"\r\n\r\n";
/// let Ok(Parsed::Complete { request, .. }) = parse_request(head, &Limits::default()) else {
///     panic!("a complete head");
/// };
/// assert!(not_modified(&request, &etag_of(7), None));
/// assert!(!not_modified(&request, &etag_of(8), None));
/// ```
pub fn not_modified(request: &HttpRequest, etag: &str, last_modified: Option<SystemTime>) -> bool {
    if let Some(list) = &request.if_none_match {
        return list.trim() == "*" || entity_tags(list).any(|tag| weak_eq(tag, etag));
    }
    let Some(since) = request
        .if_modified_since
        .as_deref()
        .and_then(|value| httpdate::parse_http_date(value.trim()).ok())
    else {
        return false;
    };
    match (last_modified.and_then(whole_seconds), whole_seconds(since)) {
        (Some(modified), Some(since)) => modified <= since,
        _ => false,
    }
}

/// Whether the Range of `request` may be honoured (RFC 9110 section 13.1.5): true without
/// If-Range, or when If-Range names this representation: an entity tag equal to `etag` by the
/// strong comparison (neither weak), or an HTTP-date equal to `last_modified` to the second,
/// when that Last-Modified is strong (at least a second in the past, section 8.8.2.2). When
/// false the Range is ignored and the whole object is sent with 200.
pub fn if_range_allows(
    request: &HttpRequest,
    etag: &str,
    last_modified: Option<SystemTime>,
) -> bool {
    let Some(value) = request.if_range.as_deref().map(str::trim) else {
        return true;
    };
    if value.starts_with('"') || value.starts_with("W/") {
        let mut tags = entity_tags(value);
        return match (tags.next(), tags.next()) {
            (Some(tag), None) => strong_eq(tag, etag),
            _ => false,
        };
    }
    let (Ok(date), Some(modified)) = (httpdate::parse_http_date(value), last_modified) else {
        return false;
    };
    let strong = SystemTime::now()
        .duration_since(modified)
        .is_ok_and(|age| age >= Duration::from_secs(1));
    strong && whole_seconds(date).is_some() && whole_seconds(date) == whole_seconds(modified)
}

fn whole_seconds(time: SystemTime) -> Option<u64> {
    time.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs())
}

/// The entity tags of a list (`W/"a", "b"`), each with its `W/` if any; stops at the first
/// element that is not an entity tag.
fn entity_tags(list: &str) -> impl Iterator<Item = &str> {
    let mut rest = list;
    std::iter::from_fn(move || {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        let weak = rest.starts_with("W/");
        let opaque = rest.strip_prefix("W/").unwrap_or(rest).strip_prefix('"')?;
        let close = opaque.find('"')?;
        let tag_len = close + 2 + if weak { 2 } else { 0 };
        let tag = rest.get(..tag_len)?;
        rest = rest.get(tag_len..)?;
        Some(tag)
    })
}

fn opaque(tag: &str) -> &str {
    tag.strip_prefix("W/").unwrap_or(tag)
}

fn weak_eq(a: &str, b: &str) -> bool {
    opaque(a) == opaque(b)
}

fn strong_eq(a: &str, b: &str) -> bool {
    !a.starts_with("W/") && !b.starts_with("W/") && a == b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{Method, RequestBody, Version};

    fn request() -> HttpRequest {
        HttpRequest {
            method: Method::Get,
            path: "/a".into(),
            query: None,
            version: Version::Http11,
            keep_alive: true,
            body: RequestBody::None,
            host: Some("x".into()),
            range: None,
            if_range: None,
            if_none_match: None,
            if_modified_since: None,
        }
    }

    fn with_inm(value: &str) -> HttpRequest {
        HttpRequest {
            if_none_match: Some(value.into()),
            ..request()
        }
    }

    fn with_ims(value: &str) -> HttpRequest {
        HttpRequest {
            if_modified_since: Some(value.into()),
            ..request()
        }
    }

    /// 1994-11-06T08:49:37Z, the date of RFC 9110's examples.
    fn example_time() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(784_111_777)
    }

    #[test]
    fn etag_is_sixteen_hex_digits_in_quotes() {
        assert_eq!(etag_of(0), "\"0000000000000000\"");
        assert_eq!(etag_of(u64::MAX), "\"ffffffffffffffff\"");
        assert_eq!(etag_of(0xab), "\"00000000000000ab\"");
    }

    #[test]
    fn if_none_match() {
        let etag = etag_of(5);
        for (value, hit) in [
            ("\"0000000000000005\"", true),
            ("W/\"0000000000000005\"", true),
            ("\"x\", \"0000000000000005\"", true),
            ("\"x\",W/\"0000000000000005\"", true),
            ("\"a,b\", \"0000000000000005\"", true),
            (" * ", true),
            ("\"0000000000000006\"", false),
            ("0000000000000005", false),
            ("\"x\", junk, \"0000000000000005\"", false),
            ("", false),
        ] {
            assert_eq!(not_modified(&with_inm(value), &etag, None), hit, "{value}");
        }
        assert!(not_modified(
            &with_inm("\"0000000000000005\""),
            &format!("W/{etag}"),
            None
        ));
    }

    #[test]
    fn if_none_match_wins_over_if_modified_since() {
        let both = HttpRequest {
            if_modified_since: Some("Sun, 06 Nov 1994 08:49:37 GMT".into()),
            ..with_inm("\"other\"")
        };
        assert!(!not_modified(&both, &etag_of(1), Some(example_time())));
    }

    #[test]
    fn if_modified_since() {
        let at = example_time();
        let imf = "Sun, 06 Nov 1994 08:49:37 GMT";
        let etag = etag_of(1);
        assert!(not_modified(&with_ims(imf), &etag, Some(at)));
        assert!(not_modified(
            &with_ims(imf),
            &etag,
            Some(at + Duration::from_millis(999))
        ));
        assert!(not_modified(
            &with_ims(imf),
            &etag,
            Some(at - Duration::from_secs(3600))
        ));
        assert!(!not_modified(
            &with_ims(imf),
            &etag,
            Some(at + Duration::from_secs(1))
        ));
        assert!(!not_modified(&with_ims(imf), &etag, None));
        // The obsolete formats RFC 9110 section 5.6.7 asks recipients to accept.
        for obsolete in ["Sunday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 1994"] {
            assert!(
                not_modified(&with_ims(obsolete), &etag, Some(at)),
                "{obsolete}"
            );
        }
        for junk in ["yesterday", "", "Sun, 06 Nov 1994 08:49:37 GMT, x"] {
            assert!(!not_modified(&with_ims(junk), &etag, Some(at)), "{junk}");
        }
    }

    #[test]
    fn if_range() {
        let etag = etag_of(9);
        let at = example_time();
        let with = |value: &str| HttpRequest {
            if_range: Some(value.into()),
            ..request()
        };
        assert!(if_range_allows(&request(), &etag, None));
        assert!(if_range_allows(&with("\"0000000000000009\""), &etag, None));
        assert!(!if_range_allows(&with("\"0000000000000008\""), &etag, None));
        assert!(!if_range_allows(
            &with("W/\"0000000000000009\""),
            &etag,
            None
        ));
        assert!(!if_range_allows(
            &with("\"0000000000000009\", \"x\""),
            &etag,
            None
        ));
        let date = with("Sun, 06 Nov 1994 08:49:37 GMT");
        assert!(if_range_allows(&date, &etag, Some(at)));
        assert!(!if_range_allows(
            &date,
            &etag,
            Some(at + Duration::from_secs(1))
        ));
        assert!(!if_range_allows(&date, &etag, None));
        assert!(!if_range_allows(&with("garbage"), &etag, Some(at)));
        let just_now = SystemTime::now();
        let fresh = with(&httpdate::fmt_http_date(just_now));
        assert!(!if_range_allows(&fresh, &etag, Some(just_now)));
    }
}
