//! Freshness as RFC 9111 (HTTP caching) and RFC 5861 (stale-while-revalidate, stale-if-error)
//! have it, for a shared cache: what of an origin answer may be stored and for how long, how old
//! a stored copy is, and what a request may do with it.
//!
//! The decisions are the same for GetFile and HTTP clients (GetFile carries no headers: the
//! proxy decides). A copy without metadata is content the operator put in place and never goes
//! stale; a copy with `fresh_for: None` likewise.

use std::time::{Duration, SystemTime};

use cache_backends::meta::unix_secs;
use cache_backends::ObjectMeta;

use crate::origin::{OriginHeaders, Validators};
use crate::ProxySettings;

/// The freshness settings of the `[proxy]` section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rules {
    /// Lifetime of an answer that says nothing.
    pub default_ttl: Duration,
    /// Lifetime of a 404 / 410 that says nothing; `None`: those are never stored.
    pub negative_ttl: Option<Duration>,
    /// Stale-while-revalidate window when the origin gives none.
    pub stale_while_revalidate: Duration,
    /// Stale-if-error window when the origin gives none.
    pub stale_if_error: Duration,
}

impl Rules {
    /// The rules of `settings`.
    pub fn of(settings: &ProxySettings) -> Rules {
        Rules {
            default_ttl: settings.default_ttl,
            negative_ttl: settings.negative_ttl,
            stale_while_revalidate: settings.stale_while_revalidate,
            stale_if_error: settings.stale_if_error,
        }
    }
}

/// The directives of a Cache-Control field a shared cache acts on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct CacheControl {
    no_store: bool,
    private: bool,
    no_cache: bool,
    must_revalidate: bool,
    /// `Some(0)` for a value that is not a number (RFC 9111 section 4.2.1: treat as stale).
    s_maxage: Option<u64>,
    max_age: Option<u64>,
    stale_while_revalidate: Option<u64>,
    stale_if_error: Option<u64>,
}

impl CacheControl {
    fn parse(field: Option<&str>) -> CacheControl {
        let mut cc = CacheControl::default();
        for directive in field.unwrap_or_default().split(',') {
            let (name, value) = match directive.split_once('=') {
                Some((name, value)) => (name.trim(), Some(value.trim().trim_matches('"'))),
                None => (directive.trim(), None),
            };
            let seconds = || Some(value.and_then(|v| v.parse::<u64>().ok()).unwrap_or(0));
            match name.to_ascii_lowercase().as_str() {
                "no-store" => cc.no_store = true,
                // `private="field"` and `no-cache="field"` name fields; a cache that does not
                // strip fields treats them as the whole answer (the conservative reading).
                "private" => cc.private = true,
                "no-cache" => cc.no_cache = true,
                "must-revalidate" | "proxy-revalidate" => cc.must_revalidate = true,
                "s-maxage" => cc.s_maxage = seconds(),
                "max-age" => cc.max_age = seconds(),
                "stale-while-revalidate" => cc.stale_while_revalidate = seconds(),
                "stale-if-error" => cc.stale_if_error = seconds(),
                _ => {}
            }
        }
        cc
    }
}

/// What the origin's answer allows: to store it (with this metadata), or not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Storable {
    /// Store it with this metadata.
    Yes(ObjectMeta),
    /// Serve it to this request only: no-store, private, `Vary: *`, or a status that is not
    /// stored.
    No,
}

/// Decides whether an answer of `headers.status` (200, 404, 410) may be stored, and with which
/// metadata: `requested` is when the request went out, `received` when the answer came.
pub fn storable(
    headers: &OriginHeaders,
    requested: SystemTime,
    received: SystemTime,
    rules: &Rules,
) -> Storable {
    let cc = CacheControl::parse(headers.cache_control.as_deref());
    if cc.no_store || cc.private || headers.varies_on_everything {
        return Storable::No;
    }
    let default = match headers.status {
        200 => rules.default_ttl,
        404 | 410 => match rules.negative_ttl {
            Some(ttl) => ttl,
            None => return Storable::No,
        },
        _ => return Storable::No,
    };
    let date = headers.date.as_deref().and_then(parse_http_date);
    let fresh_for = match (cc.s_maxage, cc.max_age, headers.expires.as_deref()) {
        (Some(seconds), _, _) | (None, Some(seconds), _) => seconds,
        (None, None, Some(expires)) => match parse_http_date(expires) {
            // Expires minus Date (the origin's clock on both sides).
            Some(expires) => expires.saturating_sub(date.unwrap_or_else(|| unix_secs(received))),
            // An invalid Expires (often "0") means already expired.
            None => 0,
        },
        (None, None, None) => default.as_secs(),
    };
    Storable::Yes(ObjectMeta {
        status: headers.status,
        stored_at: unix_secs(received),
        initial_age: initial_age(headers, date, requested, received),
        // no-cache: stored, but never used without revalidating.
        fresh_for: Some(if cc.no_cache { 0 } else { fresh_for }),
        stale_while_revalidate: cc.stale_while_revalidate,
        stale_if_error: cc.stale_if_error,
        must_revalidate: cc.must_revalidate || cc.no_cache,
        etag: headers.etag.clone().filter(|etag| etag.len() <= 512),
        local_etag: false,
        last_modified: headers.last_modified.as_deref().and_then(parse_http_date),
        content_type: headers.content_type.clone(),
    })
}

/// RFC 9111 section 4.2.3: the corrected initial age, in seconds.
fn initial_age(
    headers: &OriginHeaders,
    date: Option<u64>,
    requested: SystemTime,
    received: SystemTime,
) -> u64 {
    let response_time = unix_secs(received);
    let apparent_age = date.map_or(0, |date| response_time.saturating_sub(date));
    let age_value = headers
        .age
        .as_deref()
        .and_then(|age| age.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let response_delay = received
        .duration_since(requested)
        .map_or(0, |delay| delay.as_secs());
    apparent_age.max(age_value.saturating_add(response_delay))
}

/// The metadata after a 304: the stored validators and type, with the freshness the 304 gives
/// (RFC 9111 section 4.3.4: its header fields update the stored ones).
pub fn refreshed(
    stored: &ObjectMeta,
    headers: &OriginHeaders,
    requested: SystemTime,
    received: SystemTime,
    rules: &Rules,
) -> Option<ObjectMeta> {
    let origin_etag = stored.etag.clone().filter(|_| !stored.local_etag);
    let as_200 = OriginHeaders {
        status: stored.status,
        etag: headers.etag.clone().or(origin_etag),
        content_type: stored.content_type.clone(),
        ..headers.clone()
    };
    match storable(&as_200, requested, received, rules) {
        Storable::Yes(mut meta) => {
            if meta.last_modified.is_none() {
                meta.last_modified = stored.last_modified;
            }
            if meta.etag.is_none() && stored.local_etag {
                meta.etag = stored.etag.clone();
                meta.local_etag = true;
            }
            Some(meta)
        }
        Storable::No => None,
    }
}

/// How old a stored copy is at `now`, in seconds (RFC 9111 section 4.2.3).
pub fn current_age(meta: &ObjectMeta, now: SystemTime) -> u64 {
    let resident = unix_secs(now).saturating_sub(meta.stored_at);
    meta.initial_age.saturating_add(resident)
}

/// When `meta` goes stale (it is fresh strictly before); `None` for a copy that never does.
pub fn expires_at(meta: &ObjectMeta) -> Option<SystemTime> {
    let fresh_for = meta.fresh_for?;
    let expires = meta
        .stored_at
        .saturating_add(fresh_for)
        .saturating_sub(meta.initial_age);
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(expires))
}

/// What a request may do with a stored copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Serve it.
    Fresh,
    /// Serve it at once and refresh it in the background (stale-while-revalidate).
    ServeAndRefresh,
    /// Revalidate it with the origin first.
    Revalidate,
}

/// The verdict on `meta` at `now`.
pub fn verdict(meta: &ObjectMeta, now: SystemTime, rules: &Rules) -> Verdict {
    let Some(fresh_for) = meta.fresh_for else {
        return Verdict::Fresh;
    };
    let age = current_age(meta, now);
    if age < fresh_for {
        return Verdict::Fresh;
    }
    let window = meta
        .stale_while_revalidate
        .unwrap_or(rules.stale_while_revalidate.as_secs());
    if !meta.must_revalidate && age < fresh_for.saturating_add(window) {
        return Verdict::ServeAndRefresh;
    }
    Verdict::Revalidate
}

/// Whether the stale copy `meta` may be served at `now` because the origin failed
/// (stale-if-error).
pub fn may_serve_on_error(meta: &ObjectMeta, now: SystemTime, rules: &Rules) -> bool {
    if meta.must_revalidate {
        return false;
    }
    let Some(fresh_for) = meta.fresh_for else {
        return true;
    };
    let window = meta
        .stale_if_error
        .unwrap_or(rules.stale_if_error.as_secs());
    current_age(meta, now) < fresh_for.saturating_add(window)
}

/// The validators of a stored copy, for a conditional request; `None` when it has none.
pub fn validators(meta: &ObjectMeta) -> Option<Validators> {
    let validators = Validators {
        // A made-up ETag means nothing to the origin.
        etag: meta.etag.clone().filter(|_| !meta.local_etag),
        last_modified: meta.last_modified.map(http_date),
    };
    (!validators.is_empty()).then_some(validators)
}

/// An HTTP date in seconds since the Unix epoch.
pub fn parse_http_date(text: &str) -> Option<u64> {
    httpdate::parse_http_date(text.trim()).ok().map(unix_secs)
}

/// Seconds since the Unix epoch as an HTTP date.
pub fn http_date(secs: u64) -> String {
    httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn rules() -> Rules {
        Rules {
            default_ttl: Duration::ZERO,
            negative_ttl: None,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::from_secs(3600),
        }
    }

    fn answer(cache_control: &str) -> OriginHeaders {
        OriginHeaders {
            status: 200,
            cache_control: (!cache_control.is_empty()).then(|| cache_control.into()),
            date: Some(http_date(NOW)),
            ..OriginHeaders::default()
        }
    }

    fn stored(headers: &OriginHeaders) -> ObjectMeta {
        match storable(headers, at(NOW), at(NOW), &rules()) {
            Storable::Yes(meta) => meta,
            Storable::No => panic!("not storable"),
        }
    }

    #[test]
    fn s_maxage_wins_over_max_age_which_wins_over_expires() {
        let mut headers = answer("max-age=60, s-maxage=120");
        headers.expires = Some(http_date(NOW + 30));
        assert_eq!(stored(&headers).fresh_for, Some(120));
        headers.cache_control = Some("max-age=60".into());
        assert_eq!(stored(&headers).fresh_for, Some(60));
        headers.cache_control = None;
        assert_eq!(stored(&headers).fresh_for, Some(30));
        headers.expires = Some("0".into());
        assert_eq!(
            stored(&headers).fresh_for,
            Some(0),
            "an invalid Expires is expired"
        );
        headers.expires = None;
        assert_eq!(stored(&headers).fresh_for, Some(0), "default_ttl");
    }

    #[test]
    fn no_store_and_private_are_never_stored_and_no_cache_always_revalidates() {
        for cc in [
            "no-store",
            "private",
            "Private, max-age=60",
            "max-age=5, NO-STORE",
        ] {
            let verdict = storable(&answer(cc), at(NOW), at(NOW), &rules());
            assert_eq!(verdict, Storable::No, "{cc}");
        }
        let meta = stored(&answer("no-cache, max-age=600"));
        assert_eq!(verdict(&meta, at(NOW), &rules()), Verdict::Revalidate);
        assert!(!may_serve_on_error(&meta, at(NOW), &rules()));
    }

    #[test]
    fn age_counts_the_origin_age_and_the_time_in_the_cache() {
        let mut headers = answer("max-age=100");
        headers.age = Some("30".into());
        let meta = stored(&headers);
        assert_eq!(meta.initial_age, 30);
        assert_eq!(current_age(&meta, at(NOW + 10)), 40);
        assert_eq!(verdict(&meta, at(NOW + 69), &rules()), Verdict::Fresh);
        assert_eq!(verdict(&meta, at(NOW + 70), &rules()), Verdict::Revalidate);
        // A Date in the past (a clock behind, or a slow path) makes it older too.
        headers.age = None;
        headers.date = Some(http_date(NOW - 50));
        assert_eq!(stored(&headers).initial_age, 50);
    }

    #[test]
    fn stale_windows_from_the_origin_or_the_settings() {
        let meta = stored(&answer("max-age=10, stale-while-revalidate=20"));
        assert_eq!(
            verdict(&meta, at(NOW + 15), &rules()),
            Verdict::ServeAndRefresh
        );
        assert_eq!(verdict(&meta, at(NOW + 30), &rules()), Verdict::Revalidate);
        let meta = stored(&answer("max-age=10"));
        assert!(may_serve_on_error(&meta, at(NOW + 3000), &rules()));
        assert!(!may_serve_on_error(&meta, at(NOW + 3700), &rules()));
        let meta = stored(&answer("max-age=10, stale-if-error=5"));
        assert!(!may_serve_on_error(&meta, at(NOW + 16), &rules()));
        let meta = stored(&answer("max-age=10, must-revalidate"));
        assert!(!may_serve_on_error(&meta, at(NOW + 11), &rules()));
    }

    #[test]
    fn negative_answers_are_stored_only_with_negative_ttl() {
        let mut headers = answer("");
        headers.status = 404;
        assert_eq!(storable(&headers, at(NOW), at(NOW), &rules()), Storable::No);
        let rules = Rules {
            negative_ttl: Some(Duration::from_secs(30)),
            ..rules()
        };
        let Storable::Yes(meta) = storable(&headers, at(NOW), at(NOW), &rules) else {
            panic!("a 404 with negative_ttl is stored");
        };
        assert_eq!((meta.status, meta.fresh_for), (404, Some(30)));
    }

    #[test]
    fn a_304_refreshes_freshness_and_keeps_the_validators() {
        let mut headers = answer("max-age=10");
        headers.etag = Some("\"v1\"".into());
        headers.content_type = Some("text/css".into());
        let old = stored(&headers);
        let not_modified = OriginHeaders {
            status: 304,
            cache_control: Some("max-age=99".into()),
            ..OriginHeaders::default()
        };
        let new = refreshed(&old, &not_modified, at(NOW + 50), at(NOW + 50), &rules()).unwrap();
        assert_eq!(new.fresh_for, Some(99));
        assert_eq!(new.stored_at, NOW + 50);
        assert_eq!(new.etag.as_deref(), Some("\"v1\""));
        assert_eq!(new.content_type.as_deref(), Some("text/css"));
        assert_eq!(new.status, 200);
    }

    #[test]
    fn a_copy_without_a_lifetime_never_goes_stale() {
        let meta = ObjectMeta::fresh_forever(at(0));
        assert_eq!(verdict(&meta, at(NOW), &rules()), Verdict::Fresh);
    }
}
