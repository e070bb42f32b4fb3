//! The TOML config: [`RawConfig`] mirrors the file (serde, unknown keys refused, every value
//! spanned), [`Config`] is the validated form built by [`Config::parse`], which reports every
//! problem at once, each naming its key path and line.

use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Spanned;

/// One problem found in a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigIssue {
    /// The key path, e.g. `cache.memory.capacity` (or the section, e.g. `[proxy]`).
    pub key: String,
    /// The 1-based line, when known.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}: {}", self.key, self.message),
            None => write!(f, "{}: {}", self.key, self.message),
        }
    }
}

/// Errors loading a config.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The file was read but is not a valid config.
    #[error("invalid config {}:\n{}", path.display(), render_issues(issues))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem found.
        issues: Vec<ConfigIssue>,
    },
}

fn render_issues(issues: &[ConfigIssue]) -> String {
    issues
        .iter()
        .map(|issue| format!("  {issue}"))
        .collect::<Vec<_>>()
        .join("\n")
}

// ---------------------------------------------------------------------------------------------
// Raw form: mirrors the file.

type Opt<T> = Option<Spanned<T>>;

/// A size: a plain integer of bytes or a string such as `"64KiB"`.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum RawSize {
    /// Bytes.
    Bytes(i64),
    /// Text with a unit.
    Text(String),
}

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// `[proxy]`.
    pub proxy: Spanned<RawProxy>,
    /// `[ipc]`.
    pub ipc: Opt<RawIpc>,
    /// `[cache]`.
    pub cache: Spanned<RawCache>,
    /// `[supervisor]`.
    pub supervisor: Opt<RawSupervisor>,
}

/// `[proxy]` as written.
#[allow(missing_docs)]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProxy {
    pub listen: Spanned<String>,
    pub threads: Opt<i64>,
    pub processes: Opt<i64>,
    pub origin: Opt<String>,
    pub origin_ca_file: Opt<String>,
    pub origin_connect_timeout: Opt<String>,
    pub origin_timeout: Opt<String>,
    pub max_redirects: Opt<i64>,
    pub max_object_size: Opt<RawSize>,
    pub cache_timeout: Opt<String>,
    pub collapse_timeout: Opt<String>,
    pub header_timeout: Opt<String>,
}

/// `[ipc]` as written.
#[allow(missing_docs)]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIpc {
    pub segments: Opt<i64>,
    pub segment_size: Opt<RawSize>,
}

/// `[cache]` as written.
#[allow(missing_docs)]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    pub processes: Opt<i64>,
    pub workers: Opt<i64>,
    pub transfer_timeout: Opt<String>,
    pub backend: Spanned<String>,
    pub directory: Opt<RawDirectory>,
    pub memory: Opt<RawMemory>,
    pub pack: Opt<RawPack>,
}

/// `cache.directory` as written.
#[allow(missing_docs)]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDirectory {
    pub root: Opt<String>,
    pub content: Opt<String>,
    pub writable: Opt<bool>,
    pub max_size: Opt<RawSize>,
}

/// `cache.memory` as written.
#[allow(missing_docs)]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMemory {
    pub capacity: Spanned<RawSize>,
    pub max_object_size: Opt<RawSize>,
}

/// `cache.pack` as written.
#[allow(missing_docs)]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPack {
    pub path: Spanned<String>,
}

/// `[supervisor]` as written.
#[allow(missing_docs)]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSupervisor {
    pub run_dir: Opt<String>,
    pub metrics_listen: Opt<String>,
    pub shutdown_timeout: Opt<String>,
    pub ready_timeout: Opt<String>,
    pub backoff_initial: Opt<String>,
    pub backoff_max: Opt<String>,
    pub backoff_reset_after: Opt<String>,
    pub max_restarts: Opt<i64>,
    pub restart_window: Opt<String>,
    pub revive_after: Opt<String>,
}

// ---------------------------------------------------------------------------------------------
// Validated form.

/// A validated config. Paths are absolute (relative ones were resolved against the current
/// directory when it was loaded).
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The file it came from.
    pub source: PathBuf,
    /// `[proxy]`.
    pub proxy: ProxySettings,
    /// `[ipc]`.
    pub ipc: IpcSettings,
    /// `[cache]`.
    pub cache: CacheSettings,
    /// `[supervisor]`.
    pub supervisor: SupervisorSettings,
}

/// Validated `[proxy]`.
#[allow(missing_docs)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxySettings {
    pub listen: SocketAddr,
    pub threads: usize,
    pub processes: u32,
    pub origin: Option<String>,
    pub origin_ca_file: Option<PathBuf>,
    pub origin_connect_timeout: Duration,
    pub origin_timeout: Duration,
    pub max_redirects: usize,
    pub max_object_size: u64,
    pub cache_timeout: Duration,
    pub collapse_timeout: Duration,
    pub header_timeout: Duration,
}

/// Validated `[ipc]`.
#[allow(missing_docs)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpcSettings {
    pub segments: u32,
    pub segment_size: usize,
}

/// Validated `[cache]`.
#[allow(missing_docs)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheSettings {
    pub processes: u32,
    pub workers: usize,
    pub transfer_timeout: Duration,
    pub backend: BackendSettings,
}

/// The selected backend and its settings.
#[allow(missing_docs)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BackendSettings {
    Directory {
        root: Option<PathBuf>,
        content: Option<PathBuf>,
        writable: bool,
        max_size: Option<u64>,
    },
    Memory {
        capacity: u64,
        max_object_size: u64,
    },
    Pack {
        path: PathBuf,
    },
}

impl BackendSettings {
    /// "directory", "memory" or "pack".
    pub fn kind(&self) -> &'static str {
        match self {
            BackendSettings::Directory { .. } => "directory",
            BackendSettings::Memory { .. } => "memory",
            BackendSettings::Pack { .. } => "pack",
        }
    }

    /// The cache-backends form.
    pub fn to_backend_config(&self) -> cache_backends::BackendConfig {
        match self.clone() {
            BackendSettings::Directory {
                root,
                content,
                writable,
                max_size,
            } => cache_backends::BackendConfig::Directory {
                root,
                content,
                writable,
                max_size,
            },
            BackendSettings::Memory {
                capacity,
                max_object_size,
            } => cache_backends::BackendConfig::Memory {
                capacity,
                max_object_size,
            },
            BackendSettings::Pack { path } => cache_backends::BackendConfig::Pack { path },
        }
    }
}

/// Restart backoff settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackoffSettings {
    /// First delay.
    pub initial: Duration,
    /// Largest delay.
    pub max: Duration,
    /// A child that lived this long starts again from `initial`.
    pub reset_after: Duration,
    /// More than this many restarts within `restart_window` quarantines the slot.
    pub max_restarts: u32,
    /// See `max_restarts`.
    pub restart_window: Duration,
    /// A quarantined slot is started again after this long.
    pub revive_after: Duration,
}

/// Validated `[supervisor]`.
#[allow(missing_docs)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SupervisorSettings {
    pub run_dir: PathBuf,
    pub metrics_listen: Option<SocketAddr>,
    pub shutdown_timeout: Duration,
    pub ready_timeout: Duration,
    pub backoff: BackoffSettings,
}

/// The default config file, relative to the current directory.
pub const DEFAULT_CONFIG_PATH: &str = "etc/gfsupervisor.toml";

impl Config {
    /// Reads and validates `path`; relative paths inside resolve against the current directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let cwd = std::env::current_dir().map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let source = if path.is_absolute() {
            path.to_path_buf()
        } else {
            cwd.join(path)
        };
        Config::parse(&text, &source, &cwd).map_err(|issues| ConfigError::Invalid {
            path: path.to_path_buf(),
            issues,
        })
    }

    /// Validates `text` (the contents of `source`); relative paths resolve against `base`.
    pub fn parse(text: &str, source: &Path, base: &Path) -> Result<Config, Vec<ConfigIssue>> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| vec![toml_issue(text, &e)])?;
        let mut v = Validator {
            text,
            base,
            issues: Vec::new(),
        };
        let proxy = v.proxy(&raw.proxy);
        let ipc = v.ipc(raw.ipc.as_ref());
        let cache = v.cache(&raw.cache);
        let supervisor = v.supervisor(raw.supervisor.as_ref());
        if let Some(metrics) = supervisor.metrics_listen {
            if metrics == proxy.listen && metrics.port() != 0 {
                let span = raw
                    .supervisor
                    .as_ref()
                    .and_then(|s| s.get_ref().metrics_listen.as_ref());
                v.issue(
                    "supervisor.metrics_listen",
                    span.map(|s| s.span()),
                    "must differ from proxy.listen",
                );
            }
        }
        if !v.issues.is_empty() {
            v.issues.sort_by_key(|issue| issue.line);
            return Err(v.issues);
        }
        Ok(Config {
            source: source.to_path_buf(),
            proxy,
            ipc,
            cache,
            supervisor,
        })
    }

    /// The region sizes this config asks for.
    pub fn region_config(&self) -> ipc::RegionConfig {
        ipc::RegionConfig {
            segments: self.ipc.segments,
            segment_size: self.ipc.segment_size,
            cache_slots: self.cache.processes,
            proxy_slots: self.proxy.processes,
        }
    }
}

fn toml_issue(text: &str, error: &toml::de::Error) -> ConfigIssue {
    let span = error.span();
    let mut key = span
        .clone()
        .map(|s| key_at(text, s.start))
        .unwrap_or_else(|| "(top level)".to_string());
    let mut message = error
        .message()
        .trim()
        .replace("expected i64", "expected an integer");
    // serde names the field in the message; make it part of the key path.
    let field = |prefix: &str| {
        message
            .strip_prefix(prefix)
            .and_then(|rest| rest.split('`').next())
            .map(str::to_string)
    };
    let parent = key
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let join = |name: &str| {
        if parent == "(top level)" {
            name.to_string()
        } else {
            format!("{parent}.{name}")
        }
    };
    if let Some(name) = field("missing field `") {
        let section = matches!(name.as_str(), "proxy" | "cache")
            && span.as_ref().is_none_or(|s| s.start == 0);
        key = if section {
            format!("[{name}]")
        } else {
            join(&name)
        };
        message = "is required".to_string();
    } else if let Some(name) = field("unknown field `") {
        if !parent.ends_with(&format!(".{name}")) && parent != name {
            key = join(&name);
        }
        message = message.replacen("unknown field", "unknown key", 1);
    }
    ConfigIssue {
        key,
        line: span.map(|s| line_of(text, s.start)),
        message,
    }
}

/// The 1-based line of byte `offset`.
pub fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()
        .iter()
        .take(end)
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// A best-effort key path for a position: the enclosing `[section]` plus the key on that line.
fn key_at(text: &str, offset: usize) -> String {
    let head = text.get(..offset.min(text.len())).unwrap_or(text);
    let line_start = head.rfind('\n').map_or(0, |i| i + 1);
    let line = text
        .get(line_start..)
        .unwrap_or("")
        .lines()
        .next()
        .unwrap_or("")
        .trim();
    let section = head
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('[') && !l.starts_with("[["))
        .map(|l| {
            l.trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        });
    if line.starts_with('[') {
        return line.to_string();
    }
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"').to_string());
    match (section, key) {
        (Some(s), Some(k)) if !k.is_empty() => format!("{s}.{k}"),
        (Some(s), _) => format!("[{s}]"),
        (None, Some(k)) if !k.is_empty() => k,
        _ => "(top level)".to_string(),
    }
}

/// Parses a size: plain digits are bytes; units B, KiB, MiB, GiB, TiB (also KB/MB/GB = 1000^n,
/// and K/M/G as binary).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    if digits.is_empty() {
        return Err(format!(
            "{text:?} is not a size (examples: 4096, \"64KiB\", \"1MiB\")"
        ));
    }
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is too large"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "k" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        "TiB" | "T" => 1 << 40,
        "KB" | "kB" => 1000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(format!(
                "unknown size unit {other:?} in {text:?} (use B, KiB, MiB, GiB)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Parses a duration: a number followed by ms, s, m or h (e.g. "100ms", "5s", "1m", "1.5s").
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let bad = || format!("{text:?} is not a duration (examples: \"100ms\", \"5s\", \"1m\")");
    let value: f64 = number.parse().map_err(|_| bad())?;
    let seconds_per_unit = match unit.trim() {
        "ms" => 0.001,
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => return Err(bad()),
    };
    let seconds = value * seconds_per_unit;
    if !seconds.is_finite() || seconds > 1e9 {
        return Err(format!("{text:?} is too long"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

struct Validator<'a> {
    text: &'a str,
    base: &'a Path,
    issues: Vec<ConfigIssue>,
}

impl Validator<'_> {
    fn issue(&mut self, key: &str, span: Option<Range<usize>>, message: impl Into<String>) {
        let line = span.map(|s| line_of(self.text, s.start));
        self.issues.push(ConfigIssue {
            key: key.to_string(),
            line,
            message: message.into(),
        });
    }

    fn int<T: TryFrom<i64> + Copy>(
        &mut self,
        key: &str,
        value: &Opt<i64>,
        default: T,
        range: (i64, i64),
    ) -> T {
        let Some(v) = value else { return default };
        let n = *v.get_ref();
        if n < range.0 || n > range.1 {
            self.issue(
                key,
                Some(v.span()),
                format!("must be between {} and {} (got {n})", range.0, range.1),
            );
            return default;
        }
        T::try_from(n).unwrap_or(default)
    }

    fn size(
        &mut self,
        key: &str,
        value: Option<&Spanned<RawSize>>,
        default: u64,
        min: u64,
        max: u64,
    ) -> u64 {
        let Some(v) = value else { return default };
        let parsed = match v.get_ref() {
            RawSize::Bytes(n) => {
                u64::try_from(*n).map_err(|_| format!("must not be negative (got {n})"))
            }
            RawSize::Text(t) => parse_size(t),
        };
        match parsed {
            Ok(n) if n < min || n > max => {
                self.issue(
                    key,
                    Some(v.span()),
                    format!(
                        "must be between {} and {} (got {})",
                        fmt_size(min),
                        fmt_size(max),
                        fmt_size(n)
                    ),
                );
                default
            }
            Ok(n) => n,
            Err(message) => {
                self.issue(key, Some(v.span()), message);
                default
            }
        }
    }

    fn duration(&mut self, key: &str, value: &Opt<String>, default: Duration) -> Duration {
        let Some(v) = value else { return default };
        match parse_duration(v.get_ref()) {
            Ok(d) if d.is_zero() => {
                self.issue(key, Some(v.span()), "must be greater than 0");
                default
            }
            Ok(d) => d,
            Err(message) => {
                self.issue(key, Some(v.span()), message);
                default
            }
        }
    }

    fn addr(&mut self, key: &str, value: &Spanned<String>) -> Option<SocketAddr> {
        match value.get_ref().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                let message = format!(
                    "{:?} is not an address like \"127.0.0.1:10823\"",
                    value.get_ref()
                );
                self.issue(key, Some(value.span()), message);
                None
            }
        }
    }

    fn path(&self, text: &str) -> PathBuf {
        let p = Path::new(text);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    fn proxy(&mut self, raw: &Spanned<RawProxy>) -> ProxySettings {
        let r = raw.get_ref();
        let listen = self
            .addr("proxy.listen", &r.listen)
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)));
        let origin = r.origin.as_ref().and_then(|o| {
            let url = o.get_ref().trim().trim_end_matches('/').to_string();
            match check_origin(&url) {
                Ok(()) => Some(url),
                Err(message) => {
                    self.issue("proxy.origin", Some(o.span()), message);
                    None
                }
            }
        });
        let origin_ca_file = r
            .origin_ca_file
            .as_ref()
            .and_then(|file| self.origin_ca_file(file));
        ProxySettings {
            listen,
            threads: self.int("proxy.threads", &r.threads, 16, (1, 1024)),
            processes: self.int("proxy.processes", &r.processes, 1, (1, 64)),
            origin,
            origin_ca_file,
            origin_connect_timeout: self.duration(
                "proxy.origin_connect_timeout",
                &r.origin_connect_timeout,
                Duration::from_secs(2),
            ),
            origin_timeout: self.duration(
                "proxy.origin_timeout",
                &r.origin_timeout,
                Duration::from_secs(30),
            ),
            max_redirects: self.int("proxy.max_redirects", &r.max_redirects, 5, (0, 20)),
            max_object_size: self.size(
                "proxy.max_object_size",
                r.max_object_size.as_ref(),
                1 << 30,
                1,
                1 << 40,
            ),
            cache_timeout: self.duration(
                "proxy.cache_timeout",
                &r.cache_timeout,
                Duration::from_secs(2),
            ),
            collapse_timeout: self.duration(
                "proxy.collapse_timeout",
                &r.collapse_timeout,
                Duration::from_secs(10),
            ),
            header_timeout: self.duration(
                "proxy.header_timeout",
                &r.header_timeout,
                Duration::from_secs(5),
            ),
        }
    }

    /// A PEM file of extra roots for the origin client: it must hold at least one certificate.
    fn origin_ca_file(&mut self, value: &Spanned<String>) -> Option<PathBuf> {
        const KEY: &str = "proxy.origin_ca_file";
        if value.get_ref().trim().is_empty() {
            self.issue(KEY, Some(value.span()), "must not be empty");
            return None;
        }
        let path = self.path(value.get_ref());
        if !path.is_file() {
            self.issue(
                KEY,
                Some(value.span()),
                format!("{} is not a file", path.display()),
            );
            return None;
        }
        match proxy_core::origin::CaBundle::load(&path) {
            Ok(_) => Some(path),
            Err(error) => {
                self.issue(KEY, Some(value.span()), error.to_string());
                None
            }
        }
    }

    fn ipc(&mut self, raw: Option<&Spanned<RawIpc>>) -> IpcSettings {
        let Some(r) = raw.map(Spanned::get_ref) else {
            return IpcSettings {
                segments: 16,
                segment_size: 1 << 20,
            };
        };
        let segments = self.int("ipc.segments", &r.segments, 16, (1, 4096));
        let size = self.size(
            "ipc.segment_size",
            r.segment_size.as_ref(),
            1 << 20,
            8 << 10,
            1 << 30,
        );
        if !size.is_multiple_of(4096) {
            let span = r.segment_size.as_ref().map(Spanned::span);
            self.issue(
                "ipc.segment_size",
                span,
                format!("must be a multiple of 4KiB (got {size} bytes)"),
            );
        }
        IpcSettings {
            segments,
            segment_size: usize::try_from(size).unwrap_or(1 << 20),
        }
    }

    fn cache(&mut self, raw: &Spanned<RawCache>) -> CacheSettings {
        let r = raw.get_ref();
        let processes = self.int("cache.processes", &r.processes, 2, (1, 64));
        let workers = self.int("cache.workers", &r.workers, 4, (1, 256));
        let transfer_timeout = self.duration(
            "cache.transfer_timeout",
            &r.transfer_timeout,
            Duration::from_secs(5),
        );
        let backend = match r.backend.get_ref().as_str() {
            "directory" => self.directory(raw),
            "memory" => self.memory(raw),
            "pack" => self.pack(raw),
            other => {
                let message = format!(
                    "unknown backend {other:?} (expected \"directory\", \"memory\" or \"pack\")"
                );
                self.issue("cache.backend", Some(r.backend.span()), message);
                None
            }
        };
        let backend = backend.unwrap_or(BackendSettings::Memory {
            capacity: 1,
            max_object_size: 1,
        });
        CacheSettings {
            processes,
            workers,
            transfer_timeout,
            backend,
        }
    }

    fn missing_table(&mut self, raw: &Spanned<RawCache>, table: &str) {
        let r = raw.get_ref();
        let message = format!(
            "backend = {table:?} needs a [cache.{table}] table (e.g. {})",
            match table {
                "directory" => "directory = { root = \"etc/content\" }",
                "memory" => "memory = { capacity = \"256MiB\" }",
                _ => "pack = { path = \"var/content.pack\" }",
            }
        );
        self.issue(&format!("cache.{table}"), Some(r.backend.span()), message);
    }

    fn directory(&mut self, raw: &Spanned<RawCache>) -> Option<BackendSettings> {
        let Some(d) = raw.get_ref().directory.as_ref() else {
            self.missing_table(raw, "directory");
            return None;
        };
        let r = d.get_ref();
        let max_size = r
            .max_size
            .as_ref()
            .map(|m| self.size("cache.directory.max_size", Some(m), 0, 1, u64::MAX));
        let writable = r.writable.as_ref().is_some_and(|w| *w.get_ref());
        let (root, content) = match (&r.root, &r.content) {
            (Some(root), None) => {
                let path = self.path(root.get_ref());
                // A writable root is created at start when missing.
                let creatable = writable && !path.exists();
                if !path.is_dir() && !creatable {
                    self.issue(
                        "cache.directory.root",
                        Some(root.span()),
                        format!("{} is not a directory", path.display()),
                    );
                }
                (Some(path), None)
            }
            (None, Some(content)) => {
                let path = self.path(content.get_ref());
                if !path.is_file() {
                    self.issue(
                        "cache.directory.content",
                        Some(content.span()),
                        format!("{} is not a file", path.display()),
                    );
                }
                if writable {
                    self.issue(
                        "cache.directory.writable",
                        r.writable.as_ref().map(Spanned::span),
                        "needs root (a listing is read-only)",
                    );
                }
                (None, Some(path))
            }
            _ => {
                self.issue(
                    "cache.directory",
                    Some(d.span()),
                    "give exactly one of root and content",
                );
                (None, None)
            }
        };
        if max_size.is_some() && !writable {
            self.issue(
                "cache.directory.max_size",
                r.max_size.as_ref().map(Spanned::span),
                "only applies with writable = true",
            );
        }
        Some(BackendSettings::Directory {
            root,
            content,
            writable,
            max_size,
        })
    }

    fn memory(&mut self, raw: &Spanned<RawCache>) -> Option<BackendSettings> {
        let Some(m) = raw.get_ref().memory.as_ref() else {
            self.missing_table(raw, "memory");
            return None;
        };
        let r = m.get_ref();
        let capacity = self.size(
            "cache.memory.capacity",
            Some(&r.capacity),
            1 << 20,
            64 << 10,
            1 << 40,
        );
        let max_object_size = self.size(
            "cache.memory.max_object_size",
            r.max_object_size.as_ref(),
            (capacity / 4).max(1),
            1,
            u64::MAX,
        );
        if max_object_size > capacity {
            self.issue(
                "cache.memory.max_object_size",
                r.max_object_size.as_ref().map(Spanned::span),
                "must not exceed cache.memory.capacity",
            );
        }
        Some(BackendSettings::Memory {
            capacity,
            max_object_size,
        })
    }

    fn pack(&mut self, raw: &Spanned<RawCache>) -> Option<BackendSettings> {
        let Some(p) = raw.get_ref().pack.as_ref() else {
            self.missing_table(raw, "pack");
            return None;
        };
        let path_value = &p.get_ref().path;
        let path = self.path(path_value.get_ref());
        if !path.is_file() {
            let message = format!(
                "{} does not exist (build it with `gfpack build <dir> -o {}`)",
                path.display(),
                path_value.get_ref()
            );
            self.issue("cache.pack.path", Some(path_value.span()), message);
        }
        Some(BackendSettings::Pack { path })
    }

    fn supervisor(&mut self, raw: Option<&Spanned<RawSupervisor>>) -> SupervisorSettings {
        let empty = RawSupervisor {
            run_dir: None,
            metrics_listen: None,
            shutdown_timeout: None,
            ready_timeout: None,
            backoff_initial: None,
            backoff_max: None,
            backoff_reset_after: None,
            max_restarts: None,
            restart_window: None,
            revive_after: None,
        };
        let r = raw.map_or(&empty, Spanned::get_ref);
        let run_dir = match &r.run_dir {
            Some(d) if d.get_ref().trim().is_empty() => {
                self.issue("supervisor.run_dir", Some(d.span()), "must not be empty");
                self.path("var/run")
            }
            Some(d) => self.path(d.get_ref()),
            None => self.path("var/run"),
        };
        let metrics_listen = r
            .metrics_listen
            .as_ref()
            .and_then(|m| self.addr("supervisor.metrics_listen", m));
        let backoff = BackoffSettings {
            initial: self.duration(
                "supervisor.backoff_initial",
                &r.backoff_initial,
                Duration::from_millis(100),
            ),
            max: self.duration(
                "supervisor.backoff_max",
                &r.backoff_max,
                Duration::from_secs(30),
            ),
            reset_after: self.duration(
                "supervisor.backoff_reset_after",
                &r.backoff_reset_after,
                Duration::from_secs(60),
            ),
            max_restarts: self.int(
                "supervisor.max_restarts",
                &r.max_restarts,
                5,
                (0, 1_000_000),
            ),
            restart_window: self.duration(
                "supervisor.restart_window",
                &r.restart_window,
                Duration::from_secs(60),
            ),
            revive_after: self.duration(
                "supervisor.revive_after",
                &r.revive_after,
                Duration::from_secs(300),
            ),
        };
        if backoff.max < backoff.initial {
            let span = r.backoff_max.as_ref().map(Spanned::span);
            self.issue(
                "supervisor.backoff_max",
                span,
                "must not be less than supervisor.backoff_initial",
            );
        }
        SupervisorSettings {
            run_dir,
            metrics_listen,
            shutdown_timeout: self.duration(
                "supervisor.shutdown_timeout",
                &r.shutdown_timeout,
                Duration::from_secs(10),
            ),
            ready_timeout: self.duration(
                "supervisor.ready_timeout",
                &r.ready_timeout,
                Duration::from_secs(30),
            ),
            backoff,
        }
    }
}

fn check_origin(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| format!("{url:?} must start with http:// or https://"))?;
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(format!("{url:?} has no host"));
    }
    Ok(())
}

/// Formats a byte count with a binary unit when exact.
pub fn fmt_size(n: u64) -> String {
    for (unit, shift) in [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if n >= 1 << shift && n.is_multiple_of(1 << shift) {
            return format!("{}{unit}", n >> shift);
        }
    }
    format!("{n}B")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, Vec<ConfigIssue>> {
        let dir = std::env::temp_dir();
        Config::parse(text, &dir.join("test.toml"), &dir)
    }

    const MINIMAL: &str = r#"
[proxy]
listen = "127.0.0.1:10823"

[cache]
backend = "memory"
memory = { capacity = "1MiB" }
"#;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("512B"), Ok(512));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("5 parsecs").is_err());
        assert!(parse_size("99999999999999999999").is_err());
        assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("fast").is_err());
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.proxy.threads, 16);
        assert_eq!(c.proxy.processes, 1);
        assert_eq!(
            c.ipc,
            IpcSettings {
                segments: 16,
                segment_size: 1 << 20
            }
        );
        assert_eq!(c.cache.processes, 2);
        assert_eq!(
            c.cache.backend,
            BackendSettings::Memory {
                capacity: 1 << 20,
                max_object_size: 1 << 18
            }
        );
        assert_eq!(c.supervisor.backoff.initial, Duration::from_millis(100));
        assert_eq!(c.supervisor.backoff.max, Duration::from_secs(30));
        assert_eq!(c.supervisor.backoff.max_restarts, 5);
        assert!(c.supervisor.run_dir.is_absolute());
    }

    #[test]
    fn unknown_key_is_refused_with_its_line() {
        let text = MINIMAL.replace("listen =", "colour = \"red\"\nlisten =");
        let issues = parse(&text).unwrap_err();
        assert_eq!(issues.len(), 1);
        assert_eq!(issues[0].line, Some(3));
        assert_eq!(issues[0].key, "proxy.colour");
        assert!(
            issues[0].message.contains("unknown key `colour`"),
            "{issues:?}"
        );
        let inline = MINIMAL.replace("capacity = \"1MiB\"", "capacity = \"1MiB\", colour = 1");
        let issues = parse(&inline).unwrap_err();
        assert_eq!(
            (issues[0].key.as_str(), issues[0].line),
            ("cache.memory.colour", Some(7))
        );
    }

    #[test]
    fn missing_keys_are_named() {
        let issues = parse(&MINIMAL.replace("listen = \"127.0.0.1:10823\"", "")).unwrap_err();
        assert_eq!(
            (issues[0].key.as_str(), issues[0].message.as_str()),
            ("proxy.listen", "is required")
        );
        let issues =
            parse("[cache]\nbackend = \"memory\"\nmemory = { capacity = \"1MiB\" }\n").unwrap_err();
        assert_eq!(issues[0].key, "[proxy]");
    }

    #[test]
    fn every_bad_value_is_reported_with_key_and_line() {
        let text = r#"
[proxy]
listen = "nowhere"
threads = 0
origin = "ftp://x"

[ipc]
segment_size = "10000"

[cache]
backend = "memory"
memory = { capacity = "1 parsec" }

[supervisor]
backoff_initial = "soon"
"#;
        let issues = parse(text).unwrap_err();
        let found: Vec<(&str, Option<usize>)> =
            issues.iter().map(|i| (i.key.as_str(), i.line)).collect();
        assert!(found.contains(&("proxy.listen", Some(3))), "{found:?}");
        assert!(found.contains(&("proxy.threads", Some(4))), "{found:?}");
        assert!(found.contains(&("proxy.origin", Some(5))), "{found:?}");
        assert!(found.contains(&("ipc.segment_size", Some(8))), "{found:?}");
        assert!(
            found.contains(&("cache.memory.capacity", Some(12))),
            "{found:?}"
        );
        assert!(
            found.contains(&("supervisor.backoff_initial", Some(15))),
            "{found:?}"
        );
    }

    #[test]
    fn backend_needs_its_table_and_a_known_name() {
        let issues = parse(&MINIMAL.replace("\"memory\"", "\"pack\"")).unwrap_err();
        assert_eq!(issues[0].key, "cache.pack");
        let issues = parse(&MINIMAL.replace("\"memory\"", "\"floppy\"")).unwrap_err();
        assert_eq!(issues[0].key, "cache.backend");
        assert_eq!(issues[0].line, Some(6));
    }

    #[test]
    fn syntax_error_names_the_line() {
        let issues = parse("[proxy]\nlisten = \n").unwrap_err();
        assert_eq!(issues[0].line, Some(2));
    }

    /// A self-signed P-256 CA certificate (`CN=gfcache-test-ca`, valid until 2126), made with
    /// `openssl req -x509 -newkey ec`; its key was thrown away.
    const TEST_CA_PEM: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIIBijCCATGgAwIBAgIUcVrc4Lyzsz5EpJn3EWzbBhNjoLIwCgYIKoZIzj0EAwIw\n\
GjEYMBYGA1UEAwwPZ2ZjYWNoZS10ZXN0LWNhMCAXDTI2MTEyMTA5MjkyOVoYDzIx\n\
MjYxMDI4MDkyOTI5WjAaMRgwFgYDVQQDDA9nZmNhY2hlLXRlc3QtY2EwWTATBgcq\n\
hkjOPQIBBggqhkjOPQMBBwNCAASf4njwXr67m1z5J5Lc/FCJrQwU9YYzXT2cNWXE\n\
ZMMoq+QBvmfTXQBK/7d3zE/fZ03bz0cO65eTEVPFdjwrGyBHo1MwUTAdBgNVHQ4E\n\
FgQUC1dGHErDRugu561zKX12fhB/xF8wHwYDVR0jBBgwFoAUC1dGHErDRugu561z\n\
KX12fhB/xF8wDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNHADBEAiAYHXcu\n\
uJOS94A4UMtrlU+sHwaM7k6YQJntsMbay82ykgIgEEHzuE12RO3rkLP+zKC/TN5x\n\
vYm8aOXakbt1FQN0/7Y=\n\
-----END CERTIFICATE-----\n";

    #[test]
    fn origin_ca_file_must_hold_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let missing = dir.path().join("missing.pem");
        let with = |file: &str| {
            MINIMAL.replace(
                "listen = \"127.0.0.1:10823\"",
                &format!("listen = \"127.0.0.1:10823\"\norigin = \"https://origin.internal\"\norigin_ca_file = {file:?}"),
            )
        };
        for (file, message) in [
            (empty.display().to_string(), "holds no PEM certificate"),
            (missing.display().to_string(), "is not a file"),
            (String::new(), "must not be empty"),
        ] {
            let issues = parse(&with(&file)).unwrap_err();
            assert_eq!(issues.len(), 1, "{issues:?}");
            assert_eq!(
                (issues[0].key.as_str(), issues[0].line),
                ("proxy.origin_ca_file", Some(5)),
                "{issues:?}"
            );
            assert!(issues[0].message.contains(message), "{issues:?}");
            assert!(issues[0].message.contains(&file), "{issues:?}");
        }

        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, TEST_CA_PEM).unwrap();
        let config = parse(&with(&ca.display().to_string())).unwrap();
        assert_eq!(config.proxy.origin_ca_file, Some(ca));
        assert_eq!(parse(MINIMAL).unwrap().proxy.origin_ca_file, None);
    }

    #[test]
    fn directory_root_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[proxy]\nlisten = \"127.0.0.1:1\"\n[cache]\nbackend = \"directory\"\ndirectory = {{ root = {:?} }}\n",
            dir.path().join("missing")
        );
        let issues = parse(&text).unwrap_err();
        assert_eq!(
            (issues[0].key.as_str(), issues[0].line),
            ("cache.directory.root", Some(5))
        );
        let ok = text.replace("missing", "");
        assert_eq!(parse(&ok).unwrap().cache.backend.kind(), "directory");
    }
}
