//! Per-object metadata: what the proxy needs to decide freshness and to answer HTTP validators,
//! stored beside each object by every backend and carried by ipc as opaque bytes.
//!
//! The backends store it (memory: in the entry; writable directory: a sidecar file naming the
//! inode it belongs to; read-only directory and pack: made up from the file's or the pack's
//! facts, see [`ObjectMeta::for_content`]). The proxy fills it from the origin's answer and
//! decides what it means (`proxy_core::freshness`); this module only says what the fields are
//! and how they travel.
//!
//! Wire form (little-endian): `u8` format version (1), `u8` flags, `u16` HTTP status, six `u64`
//! (stored at, initial age, fresh for, stale-while-revalidate, stale-if-error, last modified),
//! then the ETag and the Content-Type, each a `u16` length and that many bytes of visible ASCII.
//! A flag bit says whether each optional number is present. Decoding checks every byte: the
//! bytes come from another process.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Longest ETag or Content-Type kept; a longer one is not stored (the object is stored
/// without it).
pub const MAX_TEXT_LEN: usize = 512;

const FORMAT: u8 = 1;
const FIXED_LEN: usize = 4 + 6 * 8;

const HAS_FRESH_FOR: u8 = 1;
const HAS_SWR: u8 = 1 << 1;
const HAS_SIE: u8 = 1 << 2;
const MUST_REVALIDATE: u8 = 1 << 3;
const HAS_LAST_MODIFIED: u8 = 1 << 4;
const LOCAL_ETAG: u8 = 1 << 5;
const KNOWN_FLAGS: u8 = (1 << 6) - 1;

/// What is known of one stored object besides its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    /// The HTTP status it stands for: 200, or 404 / 410 for a negative entry (no body).
    pub status: u16,
    /// When the response was received, in seconds since the Unix epoch (RFC 9111 response_time).
    pub stored_at: u64,
    /// Its age when received, in seconds (RFC 9111 corrected_initial_age).
    pub initial_age: u64,
    /// Its freshness lifetime in seconds; `None`: it never goes stale (content the operator put
    /// there, without a TTL).
    pub fresh_for: Option<u64>,
    /// Seconds past expiry it may be served while it is refreshed in the background (RFC 5861);
    /// `None`: the proxy's setting applies.
    pub stale_while_revalidate: Option<u64>,
    /// Seconds past expiry it may be served while the origin fails (RFC 5861); `None`: the
    /// proxy's setting applies.
    pub stale_if_error: Option<u64>,
    /// It must not be served stale at all (must-revalidate, proxy-revalidate, no-cache).
    pub must_revalidate: bool,
    /// The entity tag, quotes included (`"abc"`), if any.
    pub etag: Option<String>,
    /// The entity tag is the cache's own (made up for content put in place): clients get it,
    /// the origin is never asked about it.
    pub local_etag: bool,
    /// Last-Modified, in seconds since the Unix epoch, if known.
    pub last_modified: Option<u64>,
    /// The origin's Content-Type, if any.
    pub content_type: Option<String>,
}

/// Why metadata bytes could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("object metadata: {0}")]
pub struct MetaError(String);

impl ObjectMeta {
    /// Metadata of a 200 stored now that never goes stale and carries no validators.
    pub fn fresh_forever(now: SystemTime) -> ObjectMeta {
        ObjectMeta {
            status: 200,
            stored_at: unix_secs(now),
            initial_age: 0,
            fresh_for: None,
            stale_while_revalidate: None,
            stale_if_error: None,
            must_revalidate: false,
            etag: None,
            local_etag: false,
            last_modified: None,
            content_type: None,
        }
    }

    /// Metadata made up for content an operator put in place (a directory's file, a pack's
    /// entry): Last-Modified from `modified`, an ETag from the modification time and the size
    /// (as nginx makes one), fresh for `ttl` from `placed` (when it was put in place: the file's
    /// mtime, the pack's build), never stale without a TTL.
    pub fn for_content(
        modified: Option<SystemTime>,
        len: u64,
        ttl: Option<Duration>,
        placed: SystemTime,
    ) -> ObjectMeta {
        let last_modified = modified.map(unix_secs);
        ObjectMeta {
            fresh_for: ttl.map(|ttl| ttl.as_secs()),
            etag: Some(format!("\"{:x}-{len:x}\"", last_modified.unwrap_or(0))),
            local_etag: true,
            last_modified,
            ..ObjectMeta::fresh_forever(placed)
        }
    }

    /// The wire form.
    pub fn encode(&self) -> Vec<u8> {
        let etag = fitting_text(self.etag.as_deref());
        let content_type = fitting_text(self.content_type.as_deref());
        let mut out = Vec::with_capacity(FIXED_LEN + 4 + etag.len() + content_type.len());
        let mut flags = 0;
        for (bit, present) in [
            (HAS_FRESH_FOR, self.fresh_for.is_some()),
            (HAS_SWR, self.stale_while_revalidate.is_some()),
            (HAS_SIE, self.stale_if_error.is_some()),
            (MUST_REVALIDATE, self.must_revalidate),
            (HAS_LAST_MODIFIED, self.last_modified.is_some()),
            (LOCAL_ETAG, self.local_etag),
        ] {
            if present {
                flags |= bit;
            }
        }
        out.push(FORMAT);
        out.push(flags);
        out.extend_from_slice(&self.status.to_le_bytes());
        for number in [
            Some(self.stored_at),
            Some(self.initial_age),
            self.fresh_for,
            self.stale_while_revalidate,
            self.stale_if_error,
            self.last_modified,
        ] {
            out.extend_from_slice(&number.unwrap_or(0).to_le_bytes());
        }
        for text in [etag, content_type] {
            out.extend_from_slice(&(text.len() as u16).to_le_bytes());
            out.extend_from_slice(text.as_bytes());
        }
        out
    }

    /// Reads the wire form, checking every field.
    pub fn decode(bytes: &[u8]) -> Result<ObjectMeta, MetaError> {
        let mut reader = Reader { bytes };
        let format = reader.u8()?;
        if format != FORMAT {
            return Err(MetaError(format!("format {format}, expected {FORMAT}")));
        }
        let flags = reader.u8()?;
        if flags & !KNOWN_FLAGS != 0 {
            return Err(MetaError(format!("unknown flags {flags:#04x}")));
        }
        let status = u16::from_le_bytes(reader.array()?);
        if !matches!(status, 200 | 404 | 410) {
            return Err(MetaError(format!("status {status} is never stored")));
        }
        let mut numbers = [0u64; 6];
        for number in &mut numbers {
            *number = u64::from_le_bytes(reader.array()?);
        }
        let [stored_at, initial_age, fresh_for, swr, sie, last_modified] = numbers;
        let present = |bit: u8, value: u64| (flags & bit != 0).then_some(value);
        let meta = ObjectMeta {
            status,
            stored_at,
            initial_age,
            fresh_for: present(HAS_FRESH_FOR, fresh_for),
            stale_while_revalidate: present(HAS_SWR, swr),
            stale_if_error: present(HAS_SIE, sie),
            must_revalidate: flags & MUST_REVALIDATE != 0,
            local_etag: flags & LOCAL_ETAG != 0,
            last_modified: present(HAS_LAST_MODIFIED, last_modified),
            etag: reader.text("ETag")?,
            content_type: reader.text("Content-Type")?,
        };
        if !reader.bytes.is_empty() {
            return Err(MetaError(format!(
                "{} bytes after the end",
                reader.bytes.len()
            )));
        }
        Ok(meta)
    }
}

/// Refreshed metadata of content that cannot be rewritten (a read-only directory, a pack): an
/// origin's 304 makes such a copy fresh again for this process, by path and version, so that it
/// is revalidated once per lifetime rather than on every request. Bounded: past
/// [`Overlay::LIMIT`] entries it starts over (the copies are revalidated again, nothing is
/// served wrong).
#[derive(Debug, Default)]
pub struct Overlay {
    entries: std::sync::Mutex<std::collections::HashMap<String, (u64, Vec<u8>)>>,
    len: std::sync::atomic::AtomicUsize,
}

impl Overlay {
    /// Entries kept at most.
    pub const LIMIT: usize = 100_000;

    /// Records `meta` (encoded) for version `version` of `path`.
    pub fn insert(&self, path: &str, version: u64, meta: Vec<u8>) {
        let mut entries = self.lock();
        if entries.len() >= Overlay::LIMIT {
            entries.clear();
        }
        entries.insert(path.to_owned(), (version, meta));
        self.len
            .store(entries.len(), std::sync::atomic::Ordering::Relaxed);
    }

    /// The metadata recorded for version `version` of `path`, if any.
    pub fn get(&self, path: &str, version: u64) -> Option<Vec<u8>> {
        // The common case, nothing ever revalidated: no lock.
        if self.len.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            return None;
        }
        let entries = self.lock();
        let (stored_version, meta) = entries.get(path)?;
        (*stored_version == version).then(|| meta.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, (u64, Vec<u8>)>> {
        // Every update is one map operation: a poisoned lock is still consistent.
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A text field as stored: dropped when too long or not visible ASCII.
fn fitting_text(text: Option<&str>) -> &str {
    match text {
        Some(text) if text.len() <= MAX_TEXT_LEN && is_visible_ascii(text) => text,
        _ => "",
    }
}

/// Visible ASCII and spaces: what a header value of ours may hold.
pub fn is_visible_ascii(text: &str) -> bool {
    text.bytes().all(|b| b == b' ' || b.is_ascii_graphic())
}

/// Seconds since the Unix epoch (0 before it).
pub fn unix_secs(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

struct Reader<'b> {
    bytes: &'b [u8],
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], MetaError> {
        if self.bytes.len() < n {
            return Err(MetaError(format!(
                "cut short: {n} bytes wanted, {} left",
                self.bytes.len()
            )));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, MetaError> {
        Ok(self.take(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], MetaError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn text(&mut self, what: &str) -> Result<Option<String>, MetaError> {
        let len = usize::from(u16::from_le_bytes(self.array()?));
        if len > MAX_TEXT_LEN {
            return Err(MetaError(format!("{what} of {len} bytes")));
        }
        let bytes = self.take(len)?;
        let text = std::str::from_utf8(bytes)
            .ok()
            .filter(|text| is_visible_ascii(text))
            .ok_or_else(|| MetaError(format!("{what} is not visible ASCII")))?;
        Ok((!text.is_empty()).then(|| text.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> ObjectMeta {
        ObjectMeta {
            status: 200,
            stored_at: 1_700_000_000,
            initial_age: 5,
            fresh_for: Some(60),
            stale_while_revalidate: Some(30),
            stale_if_error: None,
            must_revalidate: true,
            etag: Some("\"v1\"".into()),
            local_etag: false,
            last_modified: Some(1_600_000_000),
            content_type: Some("text/plain; charset=utf-8".into()),
        }
    }

    #[test]
    fn round_trips() {
        let meta = sample();
        assert_eq!(ObjectMeta::decode(&meta.encode()), Ok(meta));
        let bare = ObjectMeta::fresh_forever(UNIX_EPOCH);
        assert_eq!(ObjectMeta::decode(&bare.encode()), Ok(bare));
    }

    #[test]
    fn a_header_value_with_control_bytes_is_not_stored() {
        let meta = ObjectMeta {
            etag: Some("\"a\r\nSet-Cookie: x\"".into()),
            ..sample()
        };
        let decoded = ObjectMeta::decode(&meta.encode()).unwrap();
        assert_eq!(decoded.etag, None);
    }

    #[test]
    fn damage_is_an_error_never_a_panic() {
        let bytes = sample().encode();
        for cut in 0..bytes.len() {
            assert!(ObjectMeta::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(ObjectMeta::decode(&extra).is_err());
        let mut status = bytes.clone();
        status[2] = 99;
        assert!(ObjectMeta::decode(&status).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = ObjectMeta::decode(&bytes);
        }
    }
}
