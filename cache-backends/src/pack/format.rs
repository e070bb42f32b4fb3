//! The pack file format, version 2, which also reads version 1 (docs/pack-format.md is the
//! reference). Version 2 adds the pack's freshness lifetime to the header and each object's
//! modification time and Content-Type to its index entry.
//!
//! ```text
//! [header: 4096 bytes][object 0, at a 4096 multiple][pad][object 1]...[index][footer: 48 bytes]
//! ```
//!
//! All integers are little-endian; all checksums are CRC32C. Decoding never trusts a length or
//! an offset: every one is checked against the file with checked arithmetic, and every problem
//! is a [`FormatError`] saying what is wrong.

/// First bytes of a pack.
pub const MAGIC: [u8; 8] = *b"GFPACK\0\0";
/// Last bytes of a pack's footer, before its checksum.
pub const FOOTER_MAGIC: [u8; 8] = *b"GFPKEND\0";
/// The format version this code writes.
pub const VERSION: u32 = 2;
/// The oldest format version this code reads.
pub const OLDEST_VERSION: u32 = 1;
/// Longest Content-Type an index entry holds.
pub const MAX_CONTENT_TYPE_LEN: usize = 255;
/// Objects start at multiples of this.
pub const PAGE_SIZE: u64 = 4096;
/// Header length (one page).
pub const HEADER_LEN: u64 = PAGE_SIZE;
/// Footer length.
pub const FOOTER_LEN: u64 = 48;
/// Fixed bytes of an index entry beside its path: path length u16, offset u64, length u64,
/// CRC32C u32.
pub const ENTRY_FIXED_LEN: u64 = 2 + 8 + 8 + 4;
/// Smallest possible pack: a header and a footer around an empty index.
pub const MIN_PACK_LEN: u64 = HEADER_LEN + FOOTER_LEN;

/// Header layout: magic 0..8, version 8..12, flags 12..16, page size 16..20; version 2 then has
/// the TTL in seconds plus one (0: none) at 20..28; the CRC32C of the fields follows them (at
/// 20..24 in version 1, 28..32 in version 2), then zeros to the end of the page.
const HEADER_FIELDS_LEN_V1: usize = 20;
const HEADER_FIELDS_LEN: usize = 28;

/// What a header says beside its checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The format version (1 or 2).
    pub version: u32,
    /// How long the pack's objects stay fresh, in seconds (`gfpack build --ttl`); `None`: they
    /// never go stale.
    pub ttl: Option<u64>,
}

/// What is wrong with a pack (the caller adds the file name).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FormatError(pub String);

impl std::fmt::Display for FormatError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn fail<T>(what: impl Into<String>) -> Result<T, FormatError> {
    Err(FormatError(what.into()))
}

/// The footer: where the index is and how to check it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Footer {
    /// Offset of the index.
    pub index_offset: u64,
    /// Length of the index in bytes.
    pub index_len: u64,
    /// Number of index entries.
    pub object_count: u64,
    /// CRC32C of the index bytes.
    pub index_crc: u32,
}

/// One index entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    /// The object's GetFile path.
    pub path: String,
    /// Offset of its first byte (a multiple of [`PAGE_SIZE`]).
    pub offset: u64,
    /// Its length.
    pub len: u64,
    /// CRC32C of its bytes.
    pub crc: u32,
    /// The source file's modification time, seconds since the Unix epoch (version 2).
    pub modified: Option<u64>,
    /// Its Content-Type (version 2).
    pub content_type: Option<String>,
}

/// `value` rounded up to a multiple of [`PAGE_SIZE`], `None` on overflow.
pub fn align_up(value: u64) -> Option<u64> {
    value
        .checked_add(PAGE_SIZE - 1)
        .map(|value| value / PAGE_SIZE * PAGE_SIZE)
}

/// The header page of a version 2 pack whose objects stay fresh for `ttl` seconds.
pub fn encode_header(ttl: Option<u64>) -> Vec<u8> {
    let mut header = vec![0u8; HEADER_LEN as usize];
    let mut fields = Vec::with_capacity(HEADER_FIELDS_LEN + 4);
    fields.extend_from_slice(&MAGIC);
    fields.extend_from_slice(&VERSION.to_le_bytes());
    fields.extend_from_slice(&0u32.to_le_bytes());
    fields.extend_from_slice(&(PAGE_SIZE as u32).to_le_bytes());
    let ttl_word = ttl.map_or(0, |ttl| ttl.saturating_add(1));
    fields.extend_from_slice(&ttl_word.to_le_bytes());
    let crc = crc32c::crc32c(&fields);
    fields.extend_from_slice(&crc.to_le_bytes());
    header[..fields.len()].copy_from_slice(&fields);
    header
}

/// Checks the header page and says what it holds.
pub fn decode_header(header: &[u8]) -> Result<Header, FormatError> {
    if header.len() as u64 != HEADER_LEN {
        return fail(format!(
            "header is {} bytes, expected {HEADER_LEN}",
            header.len()
        ));
    }
    if read_array::<8>(header, 0)? != MAGIC {
        return fail("not a gfpack file (bad magic)");
    }
    let version = read_u32(header, 8)?;
    if !(OLDEST_VERSION..=VERSION).contains(&version) {
        return fail(format!(
            "format version {version} is not supported (this gfcache reads versions \
             {OLDEST_VERSION} to {VERSION})"
        ));
    }
    let fields_len = match version {
        1 => HEADER_FIELDS_LEN_V1,
        _ => HEADER_FIELDS_LEN,
    };
    let used_len = fields_len + 4;
    let stored_crc = read_u32(header, fields_len)?;
    let fields = header.get(..fields_len).unwrap_or_default();
    if crc32c::crc32c(fields) != stored_crc {
        return fail("header checksum mismatch");
    }
    let flags = read_u32(header, 12)?;
    if flags != 0 {
        return fail(format!("unknown header flags {flags:#x}"));
    }
    let page_size = read_u32(header, 16)?;
    if u64::from(page_size) != PAGE_SIZE {
        return fail(format!(
            "page size {page_size} is not supported (expected {PAGE_SIZE})"
        ));
    }
    if let Some(position) = header
        .get(used_len..)
        .unwrap_or_default()
        .iter()
        .position(|&byte| byte != 0)
    {
        return fail(format!(
            "header byte {} is not zero (reserved)",
            position + used_len
        ));
    }
    let ttl = match version {
        1 => None,
        _ => read_u64(header, HEADER_FIELDS_LEN_V1)?.checked_sub(1),
    };
    Ok(Header { version, ttl })
}

/// Footer layout: index offset 0..8, index length 8..16, object count 16..24, index CRC32C
/// 24..28, reserved zero 28..32, footer magic 32..40, CRC32C of 0..40 at 40..44, reserved zero
/// 44..48.
pub fn encode_footer(footer: &Footer) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(FOOTER_LEN as usize);
    bytes.extend_from_slice(&footer.index_offset.to_le_bytes());
    bytes.extend_from_slice(&footer.index_len.to_le_bytes());
    bytes.extend_from_slice(&footer.object_count.to_le_bytes());
    bytes.extend_from_slice(&footer.index_crc.to_le_bytes());
    bytes.extend_from_slice(&0u32.to_le_bytes());
    bytes.extend_from_slice(&FOOTER_MAGIC);
    let crc = crc32c::crc32c(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes.extend_from_slice(&0u32.to_le_bytes());
    bytes
}

/// Decodes and checks the footer's own bytes (not yet against the file).
pub fn decode_footer(bytes: &[u8]) -> Result<Footer, FormatError> {
    if bytes.len() as u64 != FOOTER_LEN {
        return fail(format!(
            "footer is {} bytes, expected {FOOTER_LEN}",
            bytes.len()
        ));
    }
    if read_array::<8>(bytes, 32)? != FOOTER_MAGIC {
        return fail("bad footer magic (truncated or not a gfpack file)");
    }
    let stored_crc = read_u32(bytes, 40)?;
    if crc32c::crc32c(bytes.get(..40).unwrap_or_default()) != stored_crc {
        return fail("footer checksum mismatch");
    }
    if read_u32(bytes, 28)? != 0 || read_u32(bytes, 44)? != 0 {
        return fail("footer reserved bytes are not zero");
    }
    Ok(Footer {
        index_offset: read_u64(bytes, 0)?,
        index_len: read_u64(bytes, 8)?,
        object_count: read_u64(bytes, 16)?,
        index_crc: read_u32(bytes, 24)?,
    })
}

/// Checks the footer against a file of `file_len` bytes: the index must lie between the
/// header and the footer, with nothing after it.
pub fn check_footer_placement(footer: &Footer, file_len: u64) -> Result<(), FormatError> {
    let footer_offset = file_len.checked_sub(FOOTER_LEN);
    let index_end = footer.index_offset.checked_add(footer.index_len);
    if footer.index_offset < HEADER_LEN || footer_offset.is_none() || index_end != footer_offset {
        return fail(format!(
            "index at {}+{} does not end where the footer starts ({} byte file)",
            footer.index_offset, footer.index_len, file_len
        ));
    }
    let most_entries = footer.index_len / ENTRY_FIXED_LEN;
    if footer.object_count > most_entries {
        return fail(format!(
            "{} objects cannot fit a {} byte index",
            footer.object_count, footer.index_len
        ));
    }
    Ok(())
}

/// Appends one version 2 index entry.
pub fn encode_entry(entry: &IndexEntry, out: &mut Vec<u8>) -> Result<(), FormatError> {
    let path_len = u16::try_from(entry.path.len())
        .map_err(|_| FormatError(format!("path of {} bytes is too long", entry.path.len())))?;
    let content_type = entry.content_type.as_deref().unwrap_or_default();
    let type_len = u8::try_from(content_type.len())
        .ok()
        .filter(|_| crate::meta::is_visible_ascii(content_type))
        .ok_or_else(|| FormatError(format!("content type {content_type:?} cannot be stored")))?;
    out.extend_from_slice(&path_len.to_le_bytes());
    out.extend_from_slice(entry.path.as_bytes());
    out.extend_from_slice(&entry.offset.to_le_bytes());
    out.extend_from_slice(&entry.len.to_le_bytes());
    out.extend_from_slice(&entry.crc.to_le_bytes());
    out.extend_from_slice(
        &entry
            .modified
            .map_or(0, |m| m.saturating_add(1))
            .to_le_bytes(),
    );
    out.push(type_len);
    out.extend_from_slice(content_type.as_bytes());
    Ok(())
}

/// Reads the fields version 2 adds to an entry at `cursor`: the modification time and the
/// Content-Type. Returns them and the bytes they took.
fn decode_entry_v2(
    index: &[u8],
    cursor: usize,
) -> Result<(Option<u64>, Option<String>, usize), FormatError> {
    let modified = read_u64(index, cursor)?.checked_sub(1);
    let type_len = usize::from(read_array::<1>(index, cursor + 8)?[0]);
    let start = cursor + 9;
    let bytes = start
        .checked_add(type_len)
        .and_then(|end| index.get(start..end))
        .ok_or_else(|| FormatError("content type runs past the end of the index".into()))?;
    let content_type = std::str::from_utf8(bytes)
        .ok()
        .filter(|text| crate::meta::is_visible_ascii(text))
        .ok_or_else(|| FormatError("content type is not visible ASCII".into()))?;
    let content_type = (!content_type.is_empty()).then(|| content_type.to_owned());
    Ok((modified, content_type, 9 + type_len))
}

/// Decodes an index of `count` entries that must use exactly all of `index`'s bytes, and checks
/// every entry: a canonical object path, paths strictly ascending, offsets aligned and past the
/// header, objects in path order without overlap, every object ending by `objects_end` (the
/// index offset).
pub fn decode_index(
    index: &[u8],
    version: u32,
    count: u64,
    objects_end: u64,
) -> Result<Vec<IndexEntry>, FormatError> {
    let mut entries: Vec<IndexEntry> =
        Vec::with_capacity(usize::try_from(count).unwrap_or(0).min(index.len()));
    let mut cursor = 0usize;
    let mut previous_end = HEADER_LEN;
    for number in 0..count {
        let bad = |what: &str| FormatError(format!("index entry {number}: {what}"));
        let path_len = usize::from(u16::from_le_bytes(read_array::<2>(index, cursor)?));
        cursor += 2;
        let path_bytes = cursor
            .checked_add(path_len)
            .and_then(|end| index.get(cursor..end))
            .ok_or_else(|| bad("path runs past the end of the index"))?;
        let path = std::str::from_utf8(path_bytes).map_err(|_| bad("path is not UTF-8"))?;
        if !crate::paths::is_object_path(path) {
            return Err(bad(&format!("{path:?} is not a canonical object path")));
        }
        cursor += path_len;
        let offset = read_u64(index, cursor)?;
        let len = read_u64(index, cursor + 8)?;
        let crc = read_u32(index, cursor + 16)?;
        cursor += 20;
        let (modified, content_type) = match version {
            1 => (None, None),
            _ => {
                let (modified, content_type, used) = decode_entry_v2(index, cursor)
                    .map_err(|error| bad(&format!("{path}: {}", error.0)))?;
                cursor += used;
                (modified, content_type)
            }
        };
        if let Some(previous) = entries.last() {
            if previous.path.as_str() >= path {
                return Err(bad(&format!(
                    "{path:?} is not after {:?} (paths must be sorted and unique)",
                    previous.path
                )));
            }
        }
        if offset % PAGE_SIZE != 0 {
            return Err(bad(&format!("{path}: offset {offset} is not page-aligned")));
        }
        if offset < previous_end {
            return Err(bad(&format!(
                "{path}: offset {offset} overlaps the header or the previous object"
            )));
        }
        let end = offset
            .checked_add(len)
            .filter(|&end| end <= objects_end)
            .ok_or_else(|| {
                bad(&format!(
                    "{path}: {offset}+{len} runs past the objects area (ends at {objects_end})"
                ))
            })?;
        previous_end = end;
        entries.push(IndexEntry {
            path: path.to_string(),
            offset,
            len,
            crc,
            modified,
            content_type,
        });
    }
    if cursor != index.len() {
        return fail(format!(
            "index has {} bytes after its {count} entries",
            index.len().saturating_sub(cursor)
        ));
    }
    Ok(entries)
}

fn read_array<const N: usize>(bytes: &[u8], at: usize) -> Result<[u8; N], FormatError> {
    at.checked_add(N)
        .and_then(|end| bytes.get(at..end))
        .and_then(|slice| <[u8; N]>::try_from(slice).ok())
        .ok_or_else(|| FormatError(format!("truncated: {N} bytes at {at} are missing")))
}

fn read_u32(bytes: &[u8], at: usize) -> Result<u32, FormatError> {
    read_array::<4>(bytes, at).map(u32::from_le_bytes)
}

fn read_u64(bytes: &[u8], at: usize) -> Result<u64, FormatError> {
    read_array::<8>(bytes, at).map(u64::from_le_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checksum_is_standard_crc32c() {
        // The check value docs/pack-format.md quotes, so other tools can read packs.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn header_round_trips_and_rejects_other_versions() {
        let mut header = encode_header(Some(600));
        assert_eq!(
            decode_header(&header),
            Ok(Header {
                version: 2,
                ttl: Some(600)
            })
        );
        assert_eq!(decode_header(&encode_header(None)).unwrap().ttl, None);
        header[8] = 3;
        let error = decode_header(&header).unwrap_err();
        assert!(error.0.contains("version 3"), "{error}");
    }

    /// Packs written before version 2 still open: their header has no TTL and their entries no
    /// modification time or type.
    #[test]
    fn version_1_headers_and_entries_still_decode() {
        let mut fields = Vec::new();
        fields.extend_from_slice(&MAGIC);
        fields.extend_from_slice(&1u32.to_le_bytes());
        fields.extend_from_slice(&0u32.to_le_bytes());
        fields.extend_from_slice(&(PAGE_SIZE as u32).to_le_bytes());
        let crc = crc32c::crc32c(&fields);
        fields.extend_from_slice(&crc.to_le_bytes());
        let mut header = vec![0u8; HEADER_LEN as usize];
        header[..fields.len()].copy_from_slice(&fields);
        assert_eq!(
            decode_header(&header),
            Ok(Header {
                version: 1,
                ttl: None
            })
        );
        let mut index = Vec::new();
        index.extend_from_slice(&2u16.to_le_bytes());
        index.extend_from_slice(b"/a");
        index.extend_from_slice(&4096u64.to_le_bytes());
        index.extend_from_slice(&3u64.to_le_bytes());
        index.extend_from_slice(&7u32.to_le_bytes());
        let entries = decode_index(&index, 1, 1, 8192).unwrap();
        assert_eq!(entries[0].modified, None);
        assert_eq!(entries[0].content_type, None);
        assert_eq!(entries[0].crc, 7);
    }

    #[test]
    fn footer_round_trips() {
        let footer = Footer {
            index_offset: 8192,
            index_len: 30,
            object_count: 1,
            index_crc: 7,
        };
        let bytes = encode_footer(&footer);
        assert_eq!(bytes.len() as u64, FOOTER_LEN);
        assert_eq!(decode_footer(&bytes), Ok(footer));
        assert_eq!(
            check_footer_placement(&footer, 8192 + 30 + FOOTER_LEN),
            Ok(())
        );
        assert!(check_footer_placement(&footer, 8192 + 31 + FOOTER_LEN).is_err());
    }

    #[test]
    fn index_rejects_unsorted_and_overlapping_entries() {
        let entry = |path: &str, offset, len| IndexEntry {
            path: path.into(),
            offset,
            len,
            crc: 0,
            modified: Some(1_700_000_000),
            content_type: Some("text/plain".into()),
        };
        let encode = |entries: &[IndexEntry]| {
            let mut out = Vec::new();
            for entry in entries {
                encode_entry(entry, &mut out).unwrap();
            }
            out
        };
        let good = [
            entry("/a", 4096, 10),
            entry("/b", 8192, 0),
            entry("/c", 8192, 5),
        ];
        assert_eq!(
            decode_index(&encode(&good), VERSION, 3, 8197).unwrap(),
            good
        );
        let unsorted = [entry("/b", 4096, 1), entry("/a", 8192, 1)];
        assert!(decode_index(&encode(&unsorted), VERSION, 2, 9000).is_err());
        let overlapping = [entry("/a", 4096, 5000), entry("/b", 8192, 1)];
        assert!(decode_index(&encode(&overlapping), VERSION, 2, 9000).is_err());
        let past_end = [entry("/a", 4096, 5000)];
        assert!(decode_index(&encode(&past_end), VERSION, 1, 9000).is_err());
        let escaping = [entry("/../a", 4096, 1)];
        assert!(decode_index(&encode(&escaping), VERSION, 1, 9000).is_err());
    }
}
