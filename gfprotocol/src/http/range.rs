//! The Range field (RFC 9110 section 14), single byte ranges only.

/// What to answer to a Range field for an object of a given length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeAnswer {
    /// 200 with the whole object: the field is not a `bytes` range, is malformed, or asks for
    /// several ranges (answering those would need multipart/byteranges; RFC 9110 section 14.2
    /// lets a server ignore Range).
    Whole,
    /// 206 with bytes `first..=last` and `Content-Range: bytes first-last/len`.
    Partial {
        /// First byte, inclusive.
        first: u64,
        /// Last byte, inclusive (`< len`).
        last: u64,
    },
    /// 416 with `Content-Range: bytes */len`: the range starts at or past the end, is `-0`,
    /// or the object is empty.
    Unsatisfiable,
}

/// Reads a Range value (`bytes=a-b`, `bytes=a-`, `bytes=-n`) against an object of
/// `object_len` bytes. `b` past the end is clamped to the last byte; a suffix longer than the
/// object is the whole object (as a 206). The unit is case-insensitive; whitespace around the
/// range is allowed, inside it not; numbers too large for u64 count as "past the end".
///
/// ```
/// use gfprotocol::http::{parse_range, RangeAnswer};
/// assert_eq!(parse_range("bytes=2-", 10), RangeAnswer::Partial { first: 2, last: 9 });
/// assert_eq!(parse_range("bytes=-3", 10), RangeAnswer::Partial { first: 7, last: 9 });
/// assert_eq!(parse_range("bytes=10-", 10), RangeAnswer::Unsatisfiable);
/// assert_eq!(parse_range("bytes=0-1,4-5", 10), RangeAnswer::Whole);
/// ```
pub fn parse_range(value: &str, object_len: u64) -> RangeAnswer {
    let Some(set) = strip_unit(value.trim()) else {
        return RangeAnswer::Whole;
    };
    // A list may carry empty elements (RFC 9110 section 5.6.1); more than one range is Whole.
    let mut specs = set.split(',').map(str::trim).filter(|s| !s.is_empty());
    let (Some(spec), None) = (specs.next(), specs.next()) else {
        return RangeAnswer::Whole;
    };
    let Some((first, last)) = spec.split_once('-') else {
        return RangeAnswer::Whole;
    };
    match (number(first), number(last)) {
        (Some(first), Some(last)) if first <= last => from_first(first, Some(last), object_len),
        (Some(first), None) if last.is_empty() => from_first(first, None, object_len),
        (None, Some(suffix)) if first.is_empty() => from_suffix(suffix, object_len),
        _ => RangeAnswer::Whole,
    }
}

fn strip_unit(value: &str) -> Option<&str> {
    let (unit, set) = value.split_once('=')?;
    unit.eq_ignore_ascii_case("bytes").then_some(set)
}

/// `1*DIGIT`, saturating at u64::MAX (a position that large is past any object's end).
fn number(digits: &str) -> Option<u64> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(digits.parse().unwrap_or(u64::MAX))
}

fn from_first(first: u64, last: Option<u64>, object_len: u64) -> RangeAnswer {
    if first >= object_len {
        return RangeAnswer::Unsatisfiable;
    }
    let end = object_len - 1;
    RangeAnswer::Partial {
        first,
        last: last.map_or(end, |last| last.min(end)),
    }
}

fn from_suffix(suffix: u64, object_len: u64) -> RangeAnswer {
    if suffix == 0 || object_len == 0 {
        return RangeAnswer::Unsatisfiable;
    }
    RangeAnswer::Partial {
        first: object_len.saturating_sub(suffix),
        last: object_len - 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use RangeAnswer::{Partial, Unsatisfiable, Whole};

    #[test]
    fn single_ranges() {
        for (value, len, answer) in [
            ("bytes=0-0", 10, Partial { first: 0, last: 0 }),
            ("bytes=0-9", 10, Partial { first: 0, last: 9 }),
            ("bytes=3-5", 10, Partial { first: 3, last: 5 }),
            ("bytes=3-500", 10, Partial { first: 3, last: 9 }),
            ("bytes=9-", 10, Partial { first: 9, last: 9 }),
            ("bytes=0-", 10, Partial { first: 0, last: 9 }),
            ("bytes=-1", 10, Partial { first: 9, last: 9 }),
            ("bytes=-10", 10, Partial { first: 0, last: 9 }),
            ("bytes=-11", 10, Partial { first: 0, last: 9 }),
            ("Bytes=1-2", 10, Partial { first: 1, last: 2 }),
            (" bytes= 1-2 ", 10, Partial { first: 1, last: 2 }),
            ("bytes=1-2,", 10, Partial { first: 1, last: 2 }),
            (
                "bytes=2-99999999999999999999999",
                10,
                Partial { first: 2, last: 9 },
            ),
            (
                "bytes=-99999999999999999999999",
                3,
                Partial { first: 0, last: 2 },
            ),
        ] {
            assert_eq!(parse_range(value, len), answer, "{value} of {len}");
        }
    }

    #[test]
    fn unsatisfiable() {
        for (value, len) in [
            ("bytes=10-", 10),
            ("bytes=10-20", 10),
            ("bytes=-0", 10),
            ("bytes=0-", 0),
            ("bytes=0-0", 0),
            ("bytes=-5", 0),
            ("bytes=99999999999999999999999-", 10),
        ] {
            assert_eq!(parse_range(value, len), Unsatisfiable, "{value} of {len}");
        }
    }

    #[test]
    fn ignored() {
        for value in [
            "",
            "bytes",
            "bytes=",
            "bytes=-",
            "bytes=a-b",
            "bytes=5-3",
            "bytes=1 -2",
            "bytes=+1-2",
            "bytes=1-2-3",
            "bytes=0-1,3-4",
            "bytes=0-1, -2",
            "items=0-1",
            "0-1",
            "bytes=0x1-2",
        ] {
            assert_eq!(parse_range(value, 10), Whole, "{value}");
        }
    }

    proptest! {
        #[test]
        fn partial_is_always_inside_the_object(value in "(bytes=)?[0-9-]{0,12}", len in 0u64..50) {
            match parse_range(&value, len) {
                Partial { first, last } => prop_assert!(first <= last && last < len),
                Unsatisfiable | Whole => {}
            }
        }
    }
}
