//! The TOML config. Each section is read into the types of the crates that own its keys:
//! `[proxy]` into [`proxy_core::ProxySettings`] (plus the supervisor's `processes`), `[cache]`
//! into [`cache_backends::CacheSettings`] (plus `processes`), `[ipc]` and `[supervisor]` into this
//! module's types. Every owner validates its own values; this module adds the file, the line and
//! the key path to each problem, and reports them all at once.
//!
//! Two levels of checking, run the same way by `check-config`, `reload` and `start`:
//! [`Config::parse`] checks the values, and [`Config::check_environment`] what can be verified
//! without starting: the listen addresses can be bound, the run directory can be created, the
//! backend opens (a pack verifies).

use std::collections::BTreeSet;
use std::fmt;
use std::net::{SocketAddr, TcpListener};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cache_backends::{BackendKind, CacheSettings};
use proxy_core::ProxySettings;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use settings::Problems;
use toml::de::{DeTable, DeValue};
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
// The sections.

/// A validated config. Paths are absolute (relative ones were resolved against the current
/// directory when it was loaded).
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The file it came from.
    pub source: PathBuf,
    /// `[proxy]`.
    pub proxy: ProxySection,
    /// `[ipc]`.
    pub ipc: IpcSettings,
    /// `[cache]`.
    pub cache: CacheSection,
    /// `[supervisor]`.
    pub supervisor: SupervisorSettings,
}

/// `[proxy]`: the proxy's own settings, and how many proxy processes run them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxySection {
    /// Proxy processes; with more than one they share the listen address (SO_REUSEPORT).
    pub processes: u32,
    /// What each proxy process runs with.
    pub settings: ProxySettings,
}

/// `[cache]`: the cache processes' own settings, and how many run them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheSection {
    /// Cache processes, each owning a disjoint share of the paths.
    pub processes: u32,
    /// What each cache process runs with.
    pub settings: CacheSettings,
}

impl CacheSection {
    /// "directory", "memory" or "pack" ("none" before validation).
    pub fn backend_kind(&self) -> &'static str {
        self.settings.backend.map_or("none", BackendKind::as_str)
    }
}

/// The supervisor's key of `[proxy]`.
#[derive(Deserialize)]
#[serde(default)]
struct ProxyProcesses {
    processes: u32,
}

impl Default for ProxyProcesses {
    fn default() -> Self {
        ProxyProcesses { processes: 1 }
    }
}

/// The supervisor's key of `[cache]`.
#[derive(Deserialize)]
#[serde(default)]
struct CacheProcesses {
    processes: u32,
}

impl Default for CacheProcesses {
    fn default() -> Self {
        CacheProcesses { processes: 2 }
    }
}

const MAX_PROCESSES: u32 = 64;

/// `[ipc]`: the shared memory the supervisor creates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct IpcSettings {
    /// Segments: the transfers in flight between proxies and caches.
    pub segments: u32,
    /// Bytes per segment; each half carries one chunk.
    #[serde(with = "settings::size")]
    pub segment_size: u64,
}

impl Default for IpcSettings {
    fn default() -> IpcSettings {
        IpcSettings {
            segments: 16,
            segment_size: 1 << 20,
        }
    }
}

impl IpcSettings {
    /// Checks the values against the limits the ipc crate enforces when it creates the region.
    pub fn validate(&self) -> Problems {
        let mut problems = Problems::default();
        problems.check_range("segments", self.segments, 1, ipc::MAX_SEGMENTS);
        problems.check_size(
            "segment_size",
            self.segment_size,
            ipc::MIN_SEGMENT_SIZE as u64,
            ipc::MAX_SEGMENT_SIZE as u64,
        );
        if !self.segment_size.is_multiple_of(4096) {
            problems.add(
                "segment_size",
                format!(
                    "must be a multiple of 4KiB (got {} bytes)",
                    self.segment_size
                ),
            );
        }
        problems
    }
}

/// Restart backoff and quarantine: the `backoff_*`, `max_restarts`, `restart_window` and
/// `revive_after` keys of `[supervisor]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BackoffSettings {
    /// First delay.
    #[serde(rename = "backoff_initial", with = "settings::duration")]
    pub initial: Duration,
    /// Largest delay.
    #[serde(rename = "backoff_max", with = "settings::duration")]
    pub max: Duration,
    /// A child that lived this long starts again from `initial`.
    #[serde(rename = "backoff_reset_after", with = "settings::duration")]
    pub reset_after: Duration,
    /// More than this many restarts within `restart_window` quarantines the slot.
    pub max_restarts: u32,
    /// See `max_restarts`.
    #[serde(with = "settings::duration")]
    pub restart_window: Duration,
    /// A quarantined slot is started again after this long.
    #[serde(with = "settings::duration")]
    pub revive_after: Duration,
}

impl Default for BackoffSettings {
    fn default() -> BackoffSettings {
        BackoffSettings {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
            reset_after: Duration::from_secs(60),
            max_restarts: 5,
            restart_window: Duration::from_secs(60),
            revive_after: Duration::from_secs(300),
        }
    }
}

impl BackoffSettings {
    /// Checks the values (keys as in `[supervisor]`).
    pub fn validate(&self) -> Problems {
        let mut problems = Problems::default();
        for (key, value) in [
            ("backoff_initial", self.initial),
            ("backoff_max", self.max),
            ("backoff_reset_after", self.reset_after),
            ("restart_window", self.restart_window),
            ("revive_after", self.revive_after),
        ] {
            problems.check_nonzero(key, value);
        }
        problems.check_range("max_restarts", self.max_restarts, 0, 1_000_000);
        if self.max < self.initial {
            problems.add(
                "backoff_max",
                "must not be less than supervisor.backoff_initial",
            );
        }
        problems
    }
}

/// `[supervisor]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct SupervisorSettings {
    /// The run directory: lock, ledger, status file.
    pub run_dir: PathBuf,
    /// Where `/metrics`, `/healthz` and `/readyz` are served; None: nowhere.
    pub metrics_listen: Option<SocketAddr>,
    /// How long children may drain on stop.
    #[serde(with = "settings::duration")]
    pub shutdown_timeout: Duration,
    /// How long a child may take to become ready.
    #[serde(with = "settings::duration")]
    pub ready_timeout: Duration,
    /// The networks whose peers may send HTTP `PURGE` to `metrics_listen` (CIDR text, or a bare
    /// address for one host); empty: loopback only. See [`SupervisorSettings::purge_networks`].
    pub purge_from: Vec<String>,
    /// Restart policy (read from the same table).
    #[serde(skip)]
    pub backoff: BackoffSettings,
}

impl Default for SupervisorSettings {
    fn default() -> SupervisorSettings {
        SupervisorSettings {
            run_dir: PathBuf::from("var/run"),
            metrics_listen: None,
            shutdown_timeout: Duration::from_secs(10),
            ready_timeout: Duration::from_secs(30),
            purge_from: Vec::new(),
            backoff: BackoffSettings::default(),
        }
    }
}

impl SupervisorSettings {
    /// Checks the values.
    pub fn validate(&self) -> Problems {
        let mut problems = Problems::default();
        if self.run_dir.as_os_str().is_empty() {
            problems.add("run_dir", "must not be empty");
        }
        problems.check_nonzero("shutdown_timeout", self.shutdown_timeout);
        problems.check_nonzero("ready_timeout", self.ready_timeout);
        for (index, text) in self.purge_from.iter().enumerate() {
            if let Err(message) = parse_network(text) {
                problems.add("purge_from", format!("entry {}: {message}", index + 1));
            }
        }
        problems
    }

    /// The networks of `purge_from`, parsed (an entry that does not parse, which validation
    /// refuses, is left out). Empty: loopback only.
    pub fn purge_networks(&self) -> Vec<ipnet::IpNet> {
        self.purge_from
            .iter()
            .filter_map(|text| parse_network(text).ok())
            .collect()
    }
}

/// One entry of `supervisor.purge_from`: `10.0.0.0/8`, `2001:db8::/32`, or a bare address for
/// one host. Host bits after the prefix are refused (`10.1.2.3/8` is a typo for either).
fn parse_network(text: &str) -> Result<ipnet::IpNet, String> {
    let examples = "write a CIDR network such as \"10.0.0.0/8\", \"192.168.1.7/32\" or \"::1/128\", or one address";
    let trimmed = text.trim();
    if let Ok(addr) = trimmed.parse::<std::net::IpAddr>() {
        return Ok(ipnet::IpNet::from(addr));
    }
    let net: ipnet::IpNet = trimmed
        .parse()
        .map_err(|_| format!("{text:?} is not a network ({examples})"))?;
    if net.trunc() != net {
        return Err(format!(
            "{text:?} has host bits set after the /{} prefix: write {} for the network, or {}/{} for the host",
            net.prefix_len(),
            net.trunc(),
            net.addr(),
            net.max_prefix_len()
        ));
    }
    Ok(net)
}

/// The default config file, relative to the current directory.
pub const DEFAULT_CONFIG_PATH: &str = "etc/gfsupervisor.toml";

const SECTIONS: [&str; 4] = ["proxy", "ipc", "cache", "supervisor"];

impl Config {
    /// Reads and validates `path` ([`Config::parse`]); relative paths inside resolve against the
    /// current directory.
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

    /// What `check-config`, `reload` and `start` run: [`Config::load`], then
    /// [`Config::check_environment`]. `held` are addresses the running gfcache itself listens
    /// on (for a reload), which need not be free.
    pub fn load_checked(path: &Path, held: &[SocketAddr]) -> Result<Config, ConfigError> {
        let config = Config::load(path)?;
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let issues = config.check_environment(&text, held);
        if issues.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                issues,
            })
        }
    }

    /// Validates `text` (the contents of `source`); relative paths resolve against `base`.
    /// Every problem is reported, each with its key path and line.
    pub fn parse(text: &str, source: &Path, base: &Path) -> Result<Config, Vec<ConfigIssue>> {
        let document = DeTable::parse(text).map_err(|e| vec![syntax_issue(text, &e)])?;
        let mut reader = Reader {
            text,
            document: &document,
            issues: Vec::new(),
        };
        reader.refuse_unknown_sections();
        let config = reader.sections(source, base);
        reader.cross_checks(&config);
        if !reader.issues.is_empty() {
            let mut issues = reader.issues;
            issues.sort_by_key(|issue| issue.line);
            return Err(issues);
        }
        Ok(config)
    }

    /// Checks what can be checked without starting: the listen addresses (GetFile, HTTP,
    /// metrics) can be bound (unless
    /// the running gfcache holds them: `held`), the run directory (and a writable directory
    /// root) can be created, the backend opens and a pack verifies. `text` is the file's text,
    /// for the lines.
    pub fn check_environment(&self, text: &str, held: &[SocketAddr]) -> Vec<ConfigIssue> {
        let document = DeTable::parse(text).ok();
        let line = |key: &str| document.as_ref().and_then(|d| line_of_key(text, d, key));
        let mut found = Problems::default();
        let mut listen = vec![("proxy.listen", self.proxy.settings.listen)];
        if let Some(http) = self.proxy.settings.http_listen {
            listen.push(("proxy.http_listen", http));
        }
        if let Some(metrics) = self.supervisor.metrics_listen {
            listen.push(("supervisor.metrics_listen", metrics));
        }
        for (key, addr) in listen {
            if addr.port() != 0 && !held.contains(&addr) {
                if let Err(error) = TcpListener::bind(addr) {
                    found.add(key, format!("cannot listen on {addr}: {error}"));
                }
            }
        }
        if let Err(message) = creatable_dir(&self.supervisor.run_dir) {
            found.add("supervisor.run_dir", message);
        }
        if let Some(cache_backends::DirectorySettings {
            root: Some(root),
            writable: true,
            ..
        }) = &self.cache.settings.directory
        {
            if self.cache.settings.backend == Some(BackendKind::Directory) {
                if let Err(message) = creatable_dir(root) {
                    found.add("cache.directory.root", message);
                }
            }
        }
        found.extend_under("cache", self.cache.settings.check_backend_opens());
        found
            .into_iter()
            .map(|p| ConfigIssue {
                line: line(&p.key),
                key: p.key,
                message: p.message,
            })
            .collect()
    }

    /// The region sizes this config asks for.
    pub fn region_config(&self) -> ipc::RegionConfig {
        ipc::RegionConfig {
            segments: self.ipc.segments,
            segment_size: usize::try_from(self.ipc.segment_size).unwrap_or(usize::MAX),
            cache_slots: self.cache.processes,
            proxy_slots: self.proxy.processes,
        }
    }
}

/// Whether `dir` is, or can be created as, a directory this process can write to.
fn creatable_dir(dir: &Path) -> Result<(), String> {
    let mut existing = dir;
    while !existing.exists() {
        existing = match existing.parent() {
            Some(parent) => parent,
            None => return Ok(()),
        };
    }
    if !existing.is_dir() {
        return Err(format!(
            "{} cannot be created: {} is not a directory",
            dir.display(),
            existing.display()
        ));
    }
    nix::unistd::access(
        existing,
        nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
    )
    .map_err(|e| {
        let what = if existing == dir {
            "cannot be written"
        } else {
            "cannot be created"
        };
        format!(
            "{} {what}: {}: {}",
            dir.display(),
            existing.display(),
            e.desc()
        )
    })
}

/// Reads the sections of one document, collecting every problem.
struct Reader<'a> {
    text: &'a str,
    document: &'a Spanned<DeTable<'a>>,
    issues: Vec<ConfigIssue>,
}

impl<'a> Reader<'a> {
    fn issue(&mut self, key: String, span: Option<Range<usize>>, message: impl Into<String>) {
        let line = line_of_key(self.text, self.document, &key)
            .or_else(|| span.map(|s| line_of(self.text, s.start)));
        self.issues.push(ConfigIssue {
            key,
            line,
            message: message.into(),
        });
    }

    fn refuse_unknown_sections(&mut self) {
        let unknown: Vec<(String, Range<usize>)> = self
            .document
            .get_ref()
            .iter()
            .filter(|(name, _)| !SECTIONS.contains(&name.get_ref().as_ref()))
            .map(|(name, _)| (name.get_ref().to_string(), name.span()))
            .collect();
        for (name, span) in unknown {
            self.issue(
                name,
                Some(span),
                "unknown section (expected [proxy], [ipc], [cache] or [supervisor])",
            );
        }
    }

    fn sections(&mut self, source: &Path, base: &Path) -> Config {
        let proxy_table = self.table("proxy");
        let (proxy_processes, mut proxy) =
            self.read_shared::<ProxyProcesses, ProxySettings>("proxy", &proxy_table);
        let cache_table = self.table("cache");
        let (cache_processes, mut cache) =
            self.read_shared::<CacheProcesses, CacheSettings>("cache", &cache_table);
        let ipc_table = self.table("ipc");
        let ipc = self.read_one::<IpcSettings>("ipc", &ipc_table);
        let supervisor_table = self.table("supervisor");
        let (mut supervisor, backoff) = self
            .read_shared::<SupervisorSettings, BackoffSettings>("supervisor", &supervisor_table);
        supervisor.backoff = backoff;

        proxy.resolve_paths(base);
        cache.resolve_paths(base);
        if supervisor.run_dir.is_relative() {
            supervisor.run_dir = base.join(&supervisor.run_dir);
        }
        let mut problems = Problems::default();
        problems.extend_under("proxy", proxy.validate());
        problems.extend_under("cache", cache.validate());
        problems.extend_under("ipc", ipc.validate());
        problems.extend_under("supervisor", supervisor.validate());
        problems.extend_under("supervisor", supervisor.backoff.validate());
        problems.check_range(
            "proxy.processes",
            proxy_processes.processes,
            1,
            MAX_PROCESSES,
        );
        problems.check_range(
            "cache.processes",
            cache_processes.processes,
            1,
            MAX_PROCESSES,
        );
        self.report(problems);
        Config {
            source: source.to_path_buf(),
            proxy: ProxySection {
                processes: proxy_processes.processes,
                settings: proxy,
            },
            ipc,
            cache: CacheSection {
                processes: cache_processes.processes,
                settings: cache,
            },
            supervisor,
        }
    }

    fn cross_checks(&mut self, config: &Config) {
        let mut problems = Problems::default();
        if let Some(metrics) = config.supervisor.metrics_listen {
            if metrics == config.proxy.settings.listen && metrics.port() != 0 {
                problems.add("supervisor.metrics_listen", "must differ from proxy.listen");
            }
            if config.proxy.settings.http_listen == Some(metrics) && metrics.port() != 0 {
                problems.add(
                    "supervisor.metrics_listen",
                    "must differ from proxy.http_listen",
                );
            }
        }
        let region = config.region_config();
        if self.issues.is_empty() && problems.is_empty() {
            if let Err(error) = region.validate() {
                problems.add("ipc", error.to_string());
            }
        }
        self.report(problems);
    }

    fn report(&mut self, problems: Problems) {
        for problem in problems {
            self.issue(problem.key, None, problem.message);
        }
    }

    /// The table of section `name`: empty when the file has none, refused when it is no table.
    fn table(&mut self, name: &str) -> Spanned<DeTable<'a>> {
        let empty = Spanned::new(0..0, DeTable::new());
        match self.document.get_ref().get(name) {
            None => empty,
            Some(value) => match value.get_ref() {
                DeValue::Table(table) => Spanned::new(value.span(), table.clone()),
                _ => {
                    self.issue(format!("[{name}]"), Some(value.span()), "must be a table");
                    empty
                }
            },
        }
    }

    /// Reads a section that one owner holds alone; keys it does not know are refused.
    fn read_one<T: DeserializeOwned + Default>(
        &mut self,
        name: &str,
        table: &Spanned<DeTable<'a>>,
    ) -> T {
        let (value, ignored) = self.read::<T>(name, table);
        self.refuse_unknown(name, ignored);
        value
    }

    /// Reads a section whose keys two owners share; a key neither knows is refused.
    fn read_shared<A: DeserializeOwned + Default, B: DeserializeOwned + Default>(
        &mut self,
        name: &str,
        table: &Spanned<DeTable<'a>>,
    ) -> (A, B) {
        let (a, ignored_a) = self.read::<A>(name, table);
        let (b, ignored_b) = self.read::<B>(name, table);
        // An owner that ignores a whole table ignores every key inside it.
        let unknown = ignored_a
            .union(&ignored_b)
            .filter(|key| ignores(&ignored_a, key) && ignores(&ignored_b, key))
            .cloned()
            .collect();
        self.refuse_unknown(name, unknown);
        (a, b)
    }

    fn refuse_unknown(&mut self, name: &str, keys: BTreeSet<String>) {
        for key in keys {
            let leaf = key.rsplit('.').next().unwrap_or(&key).to_owned();
            self.issue(
                format!("{name}.{key}"),
                None,
                format!("unknown key `{leaf}`"),
            );
        }
    }

    /// Deserializes `table` into `T`. A value that does not fit is reported with its key path,
    /// removed, and the rest read again, so that every such problem is found in one pass.
    fn read<T: DeserializeOwned + Default>(
        &mut self,
        name: &str,
        table: &Spanned<DeTable<'a>>,
    ) -> (T, BTreeSet<String>) {
        let mut table = table.clone();
        loop {
            let mut ignored = BTreeSet::new();
            let mut track = serde_path_to_error::Track::new();
            let deserializer = serde_path_to_error::Deserializer::new(
                toml::de::Deserializer::from(table.clone()),
                &mut track,
            );
            let result: Result<T, _> = serde_ignored::deserialize(deserializer, |path| {
                ignored.insert(dotted(&path));
            });
            let error = match result {
                Ok(value) => return (value, ignored),
                Err(error) => error,
            };
            let path: Vec<String> = track
                .path()
                .iter()
                .map(|segment| segment.to_string())
                .collect();
            let key = std::iter::once(name.to_owned())
                .chain(path.iter().cloned())
                .collect::<Vec<_>>()
                .join(".");
            self.issue(key, error.span(), error.message().trim().to_owned());
            if path.is_empty() || !remove_path(table.get_mut(), &path) {
                return (T::default(), ignored);
            }
        }
    }
}

/// A path of serde_ignored as a dotted key path (`memory.colour`); options and newtypes add no
/// segment.
fn dotted(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => join_key(dotted(parent), &index.to_string()),
        Path::Map { parent, key } => join_key(dotted(parent), key),
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => dotted(parent),
    }
}

fn join_key(parent: String, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

/// Whether `ignored` holds `key` or a table above it.
fn ignores(ignored: &BTreeSet<String>, key: &str) -> bool {
    let mut prefix = String::new();
    for segment in key.split('.') {
        if !prefix.is_empty() {
            prefix.push('.');
        }
        prefix.push_str(segment);
        if ignored.contains(&prefix) {
            return true;
        }
    }
    false
}

/// Removes the value at `path` (keys below `table`); whether it was there.
fn remove_path(table: &mut DeTable<'_>, path: &[String]) -> bool {
    match path {
        [] => false,
        [leaf] => table.remove(leaf.as_str()).is_some(),
        [head, rest @ ..] => match table.get_mut(head.as_str()).map(Spanned::get_mut) {
            Some(DeValue::Table(inner)) => remove_path(inner, rest),
            _ => false,
        },
    }
}

/// The line of the deepest key of `key` (a dotted path such as `cache.memory.capacity`) that
/// the document holds.
fn line_of_key(text: &str, document: &Spanned<DeTable<'_>>, key: &str) -> Option<usize> {
    let mut table = document.get_ref();
    let mut line = None;
    for segment in key.trim_start_matches('[').trim_end_matches(']').split('.') {
        let Some((name, value)) = table.get_key_value(segment) else {
            break;
        };
        line = Some(line_of(text, name.span().start));
        match value.get_ref() {
            DeValue::Table(inner) => table = inner,
            _ => break,
        }
    }
    line
}

fn syntax_issue(text: &str, error: &toml::de::Error) -> ConfigIssue {
    ConfigIssue {
        key: "(syntax)".to_owned(),
        line: error.span().map(|s| line_of(text, s.start)),
        message: error.message().trim().to_owned(),
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
    fn minimal_config_gets_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.proxy.settings.threads, 16);
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
            c.cache.settings.backend_config(),
            Some(cache_backends::BackendConfig::Memory {
                capacity: 1 << 20,
                max_object_size: 1 << 18
            })
        );
        assert_eq!(c.supervisor.backoff.initial, Duration::from_millis(100));
        assert_eq!(c.supervisor.backoff.max, Duration::from_secs(30));
        assert_eq!(c.supervisor.backoff.max_restarts, 5);
        assert!(c.supervisor.run_dir.is_absolute());
    }

    #[test]
    fn purge_from_takes_networks_and_names_each_bad_entry() {
        let c = parse(MINIMAL).unwrap();
        assert!(
            c.supervisor.purge_networks().is_empty(),
            "default: loopback only"
        );
        let good = format!(
            "{MINIMAL}\n[supervisor]\npurge_from = [\"10.0.0.0/8\", \"192.168.1.7\", \"2001:db8::/32\"]\n"
        );
        let nets = parse(&good).unwrap().supervisor.purge_networks();
        let shown: Vec<String> = nets.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["10.0.0.0/8", "192.168.1.7/32", "2001:db8::/32"]);

        let bad = format!(
            "{MINIMAL}\n[supervisor]\nshutdown_timeout = \"0s\"\npurge_from = [\"10.0.0.0/8\", \"lan\", \"10.1.2.3/8\"]\n"
        );
        let issues = parse(&bad).unwrap_err();
        let purge: Vec<&ConfigIssue> = issues
            .iter()
            .filter(|i| i.key == "supervisor.purge_from")
            .collect();
        assert_eq!(purge.len(), 2, "{issues:?}");
        assert_eq!(purge[0].line, Some(11), "{issues:?}");
        assert!(
            purge[0]
                .message
                .starts_with("entry 2: \"lan\" is not a network"),
            "{issues:?}"
        );
        assert!(purge[1].message.contains("write 10.0.0.0/8"), "{issues:?}");
        assert!(
            issues
                .iter()
                .any(|i| i.key == "supervisor.shutdown_timeout"),
            "the other problems are reported too: {issues:?}"
        );
        let not_a_list = format!("{MINIMAL}\n[supervisor]\npurge_from = \"10.0.0.0/8\"\n");
        let issues = parse(&not_a_list).unwrap_err();
        assert_eq!(issues[0].key, "supervisor.purge_from", "{issues:?}");
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
        let issues = parse(&MINIMAL.replace("backend = \"memory\"", "")).unwrap_err();
        assert_eq!(issues.len(), 1, "{issues:?}");
        assert_eq!(issues[0].key, "cache.backend");
        assert_eq!(issues[0].line, Some(5), "the [cache] header");
        assert!(issues[0].message.starts_with("is required"), "{issues:?}");
        // [proxy] may be left out: every key of it has a default.
        let config =
            parse("[cache]\nbackend = \"memory\"\nmemory = { capacity = \"1MiB\" }\n").unwrap();
        assert_eq!(config.proxy.settings.listen.port(), 10823);
    }

    #[test]
    fn every_problem_is_reported_at_once_even_with_unknown_keys() {
        let text = r#"
[proxy]
colour = "red"
threads = "many"
cache_timeout = "soon"

[cache]
backend = "memory"
memory = { capacity = "1 parsec", shape = 1 }

[supervisor]
max_restarts = -1
"#;
        let issues = parse(text).unwrap_err();
        let found: Vec<(&str, Option<usize>)> =
            issues.iter().map(|i| (i.key.as_str(), i.line)).collect();
        for expected in [
            ("proxy.colour", Some(3)),
            ("proxy.threads", Some(4)),
            ("proxy.cache_timeout", Some(5)),
            ("cache.memory.capacity", Some(9)),
            ("cache.memory.shape", Some(9)),
            ("supervisor.max_restarts", Some(12)),
        ] {
            assert!(found.contains(&expected), "{expected:?} not in {issues:#?}");
        }
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
    fn front_end_keys_are_read_and_checked_with_their_line() {
        let text = "[proxy]\nthreads = 8\nmax_threads = 4\nsend_timeout = \"0s\"\n\
                    [cache]\nbackend = \"memory\"\nmemory = { capacity = \"1MiB\" }\n";
        let issues = parse(text).unwrap_err();
        let found: Vec<(&str, Option<usize>)> =
            issues.iter().map(|i| (i.key.as_str(), i.line)).collect();
        assert_eq!(
            found,
            [
                ("proxy.max_threads", Some(3)),
                ("proxy.send_timeout", Some(4))
            ],
            "{issues:#?}"
        );
        let config = parse(
            "[proxy]\nmax_threads = 64\nsend_timeout = \"1m\"\n[cache]\nbackend = \"memory\"\nmemory = { capacity = \"1MiB\" }\n",
        )
        .unwrap();
        assert_eq!(config.proxy.settings.max_threads, 64);
        assert_eq!(config.proxy.settings.send_timeout, Duration::from_secs(60));
        let defaults = parse(MINIMAL).unwrap().proxy.settings;
        assert_eq!(
            (defaults.max_threads, defaults.send_timeout),
            (1024, Duration::from_secs(30))
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
            (missing.display().to_string(), "cannot read"),
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
        assert_eq!(config.proxy.settings.origin_ca_file, Some(ca));
        assert_eq!(parse(MINIMAL).unwrap().proxy.settings.origin_ca_file, None);
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
        assert_eq!(parse(&ok).unwrap().cache.backend_kind(), "directory");
    }
}
