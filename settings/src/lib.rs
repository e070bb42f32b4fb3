//! The vocabulary of gfcache's settings, shared by every crate that owns some.
//!
//! Each component owns its settings: one type (a serde struct), one default (its `Default`
//! impl) and one validator (a `validate` method that reports [`Problems`]). This crate gives
//! them the common parts, so that a size or a duration reads and reports the same everywhere:
//!
//! - [`size`] and [`duration`]: serde field adapters. A size is an integer of bytes or a string
//!   with a unit (`"64KiB"`, `"1 MiB"`, `"1MB"`: binary units for `KiB`/`MiB`, powers of 1000
//!   for `KB`/`MB`), parsed by `bytesize`. A duration is a string (`"100ms"`, `"5s"`,
//!   `"1h 30m"`), parsed by `humantime`. Both serialize back losslessly.
//! - [`Problem`] and [`Problems`]: what a validator found, keyed by the setting's path inside
//!   its owner's section. The supervisor prefixes the section and adds the file and line.
//!
//! ```
//! use std::time::Duration;
//! #[derive(serde::Deserialize)]
//! struct Example {
//!     #[serde(with = "settings::size")]
//!     capacity: u64,
//!     #[serde(with = "settings::duration")]
//!     timeout: Duration,
//! }
//! let e: Example = toml::from_str("capacity = \"64KiB\"\ntimeout = \"1500ms\"").unwrap();
//! assert_eq!((e.capacity, e.timeout), (65536, Duration::from_millis(1500)));
//!
//! let mut problems = settings::Problems::default();
//! problems.check_range("threads", 0, 1, 1024);
//! assert_eq!(problems.list()[0].to_string(), "threads: must be between 1 and 1024 (got 0)");
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::fmt;
use std::time::Duration;

/// One problem a validator found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The setting's key path inside its owner's section, e.g. `origin` or `memory.capacity`.
    pub key: String,
    /// What is wrong, and where it helps, what to do.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// The problems of one validation, collected so that all are reported at once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Problems(Vec<Problem>);

impl Problems {
    /// Records a problem with `key`.
    pub fn add(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            key: key.into(),
            message: message.into(),
        });
    }

    /// Records a problem unless `min <= value <= max`.
    pub fn check_range<T: PartialOrd + fmt::Display>(
        &mut self,
        key: &str,
        value: T,
        min: T,
        max: T,
    ) {
        if value < min || value > max {
            self.add(
                key,
                format!("must be between {min} and {max} (got {value})"),
            );
        }
    }

    /// Records a problem unless `min <= bytes <= max`, in size units.
    pub fn check_size(&mut self, key: &str, bytes: u64, min: u64, max: u64) {
        if bytes < min || bytes > max {
            self.add(
                key,
                format!(
                    "must be between {} and {} (got {})",
                    format_size(min),
                    format_size(max),
                    format_size(bytes)
                ),
            );
        }
    }

    /// Records a problem if `value` is zero.
    pub fn check_nonzero(&mut self, key: &str, value: Duration) {
        if value.is_zero() {
            self.add(key, "must be greater than 0");
        }
    }

    /// Adds another owner's problems, their keys under `prefix` (e.g. `memory`).
    pub fn extend_under(&mut self, prefix: &str, other: Problems) {
        for problem in other.0 {
            self.add(format!("{prefix}.{}", problem.key), problem.message);
        }
    }

    /// Whether nothing was found.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The problems found.
    pub fn list(&self) -> &[Problem] {
        &self.0
    }

    /// `Ok` when nothing was found.
    pub fn into_result(self) -> Result<(), Vec<Problem>> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self.0)
        }
    }
}

impl IntoIterator for Problems {
    type Item = Problem;
    type IntoIter = std::vec::IntoIter<Problem>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// Formats a byte count with a binary unit when exact (`65536` -> `64KiB`).
pub fn format_size(bytes: u64) -> String {
    for (unit, shift) in [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    format!("{bytes}B")
}

/// Parses a size as the config files write it: digits are bytes; a unit follows bytesize's
/// rules (`KiB`, `MiB`, ... binary; `KB`, `MB`, ... powers of 1000).
pub fn parse_size(text: &str) -> Result<u64, String> {
    text.trim()
        .parse::<bytesize::ByteSize>()
        .map(|size| size.as_u64())
        .map_err(|e| format!("{text:?} is not a size ({e}; examples: 4096, \"64KiB\", \"1MiB\")"))
}

/// Parses a duration as the config files write it (`"100ms"`, `"5s"`, `"1m 30s"`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        format!("{text:?} is not a duration ({e}; examples: \"100ms\", \"5s\", \"1m\")")
    })
}

/// Serde adapter for a byte size held as `u64`: reads an integer or a string with a unit,
/// writes an integer (lossless, for the settings a supervisor hands its children).
pub mod size {
    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};
    use std::fmt;

    /// Writes the size as an integer of bytes.
    pub fn serialize<S: Serializer>(bytes: &u64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(*bytes)
    }

    /// Reads an integer of bytes or a string with a unit.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
        deserializer.deserialize_any(SizeVisitor)
    }

    struct SizeVisitor;

    impl Visitor<'_> for SizeVisitor {
        type Value = u64;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a size: an integer of bytes or a string such as \"64KiB\"")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v)
                .map_err(|_| E::custom(format!("a size must not be negative (got {v})")))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
            super::parse_size(v).map_err(E::custom)
        }
    }

    /// The same for an optional size.
    pub mod option {
        use serde::{Deserialize, Deserializer, Serialize, Serializer};

        #[derive(Serialize, Deserialize)]
        #[serde(transparent)]
        struct Size(#[serde(with = "super")] u64);

        /// Writes the size as an integer of bytes, or nothing.
        pub fn serialize<S: Serializer>(
            bytes: &Option<u64>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            bytes.map(Size).serialize(serializer)
        }

        /// Reads an optional size.
        pub fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<u64>, D::Error> {
            Ok(Option::<Size>::deserialize(deserializer)?.map(|s| s.0))
        }
    }
}

/// Serde adapter for a [`Duration`]: reads and writes humantime's text form (`"1s 500ms"`).
pub mod duration {
    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};
    use std::fmt;
    use std::time::Duration;

    /// Writes the duration as humantime text, which reads back exactly.
    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&humantime::format_duration(*value))
    }

    /// Reads a duration string.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        deserializer.deserialize_str(DurationVisitor)
    }

    struct DurationVisitor;

    impl Visitor<'_> for DurationVisitor {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration string such as \"100ms\", \"5s\" or \"1m\"")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
            super::parse_duration(v).map_err(E::custom)
        }
    }

    /// The same for an optional duration.
    pub mod option {
        use serde::{Deserialize, Deserializer, Serialize, Serializer};
        use std::time::Duration;

        #[derive(Serialize, Deserialize)]
        #[serde(transparent)]
        struct Text(#[serde(with = "super")] Duration);

        /// Writes the duration as humantime text, or nothing.
        pub fn serialize<S: Serializer>(
            value: &Option<Duration>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            value.map(Text).serialize(serializer)
        }

        /// Reads an optional duration.
        pub fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<Duration>, D::Error> {
            Ok(Option::<Text>::deserialize(deserializer)?.map(|t| t.0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("1 MiB"), Ok(1 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("1MB"), Ok(1_000_000));
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("5 parsecs").is_err());
        assert!(parse_size("99999999999999999999").is_err());
        assert_eq!(format_size(65536), "64KiB");
        assert_eq!(format_size(1000), "1000B");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("fast").is_err());
    }

    #[test]
    fn adapters_round_trip_through_serde() {
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct S {
            #[serde(with = "size")]
            a: u64,
            #[serde(with = "size::option", default)]
            b: Option<u64>,
            #[serde(with = "duration")]
            d: Duration,
        }
        let s: S = toml::from_str("a = 1000\nb = \"2KiB\"\nd = \"1s 250ms\"").unwrap();
        assert_eq!(
            s,
            S {
                a: 1000,
                b: Some(2048),
                d: Duration::from_millis(1250)
            }
        );
        let text = toml::to_string(&s).unwrap();
        assert_eq!(toml::from_str::<S>(&text).unwrap(), s);
        assert!(toml::from_str::<S>("a = -1\nd = \"1s\"").is_err());
    }
}
