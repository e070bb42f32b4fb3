//! The `[proxy]` settings: their one type, one default and one validator. The supervisor reads
//! them from its TOML file, `gfcache-proxy` from its flags; both call [`ProxySettings::validate`],
//! which is also what [`crate::Proxy::start`] runs, so nothing a check accepts fails at start.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use settings::Problems;

use crate::origin;

/// What a proxy process serves and how long it waits for whom.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProxySettings {
    /// GetFile listen address.
    pub listen: SocketAddr,
    /// Worker threads that always run.
    pub threads: usize,
    /// Worker threads at most: the pool grows past `threads` while every worker is busy (slow
    /// readers hold theirs), and the extra workers exit when idle.
    pub max_threads: usize,
    /// Origin base URL (`http://` or `https://`, no query, fragment or credentials), or a gfdfs
    /// server (`dfs://HOST:PORT`); None: a miss is FILE_NOT_FOUND.
    pub origin: Option<String>,
    /// A PEM file of root certificates the origin client trusts beside the web PKI roots: for
    /// an HTTPS origin behind an internal CA.
    pub origin_ca_file: Option<PathBuf>,
    /// Connect timeout to the origin.
    #[serde(with = "settings::duration")]
    pub origin_connect_timeout: Duration,
    /// Total time of one origin fetch, body included.
    #[serde(with = "settings::duration")]
    pub origin_timeout: Duration,
    /// Origin redirects followed at most.
    pub max_redirects: usize,
    /// Larger objects are not filled (and bodies without Content-Length beyond it are ERROR).
    #[serde(with = "settings::size")]
    pub max_object_size: u64,
    /// How long to wait for a cache's answer (and for each chunk) before falling back.
    #[serde(with = "settings::duration")]
    pub cache_timeout: Duration,
    /// Bytes of a hit buffered in the proxy for a client that reads slower than its cache sends:
    /// such a transfer releases its segment and cache worker and goes on in ranges of this
    /// size, each copied into the client's buffer (see docs/proxy.md, "Slow readers").
    #[serde(with = "settings::size")]
    pub client_buffer: u64,
    /// How long a collapsed request waits for the leader before fetching on its own.
    #[serde(with = "settings::duration")]
    pub collapse_timeout: Duration,
    /// How long a client has to send its request header.
    #[serde(with = "settings::duration")]
    pub header_timeout: Duration,
    /// A response write that makes no progress for this long ends the connection (a client
    /// that stopped reading).
    #[serde(with = "settings::duration")]
    pub send_timeout: Duration,
    /// Open client connections at most; one more is closed at once.
    pub max_connections: usize,
    /// The listen backlog (the kernel caps it at `net.core.somaxconn`).
    pub listen_backlog: i32,
    /// Also serve HTTP/1.1 here (GET and HEAD, keep-alive, ranges, conditionals), through the
    /// same request path; None: GetFile only.
    pub http_listen: Option<SocketAddr>,
    /// How long a kept-alive HTTP connection may wait for its next request (held by the
    /// event loop, not a worker).
    #[serde(with = "settings::duration")]
    pub http_keepalive_timeout: Duration,
    /// Requests on one HTTP connection at most; the last answer says `Connection: close`.
    pub http_max_requests_per_connection: u32,
    /// Make an HTTP request's query string part of the object's name (`/a?v=1` and `/a?v=2`
    /// are two objects, each fetched from the origin with its query); false: the query is
    /// dropped, from the key and from the origin request.
    pub http_cache_query: bool,
    /// How long an origin answer that says nothing of its freshness (no Cache-Control max-age
    /// or s-maxage, no Expires) stays fresh. "0s": stored, but revalidated on every request.
    #[serde(with = "settings::duration")]
    pub default_ttl: Duration,
    /// Store the origin's 404 and 410 answers this long (unless they say otherwise); absent:
    /// they are never stored.
    #[serde(with = "settings::duration::option")]
    pub negative_ttl: Option<Duration>,
    /// How long past expiry a copy is served at once while one background request refreshes
    /// it, when the origin does not say (its `stale-while-revalidate` wins). "0s": never.
    #[serde(with = "settings::duration")]
    pub stale_while_revalidate: Duration,
    /// How long past expiry a copy is served while the origin fails (5xx, refused, timeout),
    /// when the origin does not say (its `stale-if-error` wins).
    #[serde(with = "settings::duration")]
    pub stale_if_error: Duration,
    /// Memory for hot objects: small fresh hits kept whole in the proxy, which the front door
    /// answers from its own thread with no cache round trip (see docs/proxy.md, "Hot
    /// objects"). "0": none, every hit asks its cache.
    #[serde(with = "settings::size")]
    pub hot_cache_size: u64,
    /// Objects larger than this are never held as hot objects.
    #[serde(with = "settings::size")]
    pub hot_object_max_size: u64,
    /// How long a hot object is answered from the proxy's memory before its cache is asked
    /// again (never past its freshness): how long a file changed under a read-only directory
    /// cache may still be served in its old version. "0s": no hot objects.
    #[serde(with = "settings::duration")]
    pub hot_cache_ttl: Duration,
}

impl Default for ProxySettings {
    /// The front-end keys take the defaults of the server framework (`gfprotocol`).
    fn default() -> ProxySettings {
        let server = gfprotocol::ServerConfig::default();
        ProxySettings {
            listen: server.listen,
            threads: server.threads,
            max_threads: server.max_threads,
            origin: None,
            origin_ca_file: None,
            origin_connect_timeout: Duration::from_secs(2),
            origin_timeout: Duration::from_secs(30),
            max_redirects: 5,
            max_object_size: 1 << 30,
            cache_timeout: Duration::from_secs(2),
            client_buffer: 256 << 10,
            collapse_timeout: Duration::from_secs(10),
            header_timeout: server.header_timeout,
            send_timeout: server.send_timeout,
            max_connections: server.max_connections,
            listen_backlog: server.backlog,
            http_listen: None,
            http_keepalive_timeout: server.http_keepalive_timeout,
            http_max_requests_per_connection: server.http_max_requests_per_connection,
            http_cache_query: false,
            default_ttl: Duration::ZERO,
            negative_ttl: None,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::from_secs(3600),
            hot_cache_size: 64 << 20,
            hot_object_max_size: 16 << 10,
            hot_cache_ttl: Duration::from_secs(1),
        }
    }
}

/// The longest freshness setting: a copy fresh for more than ten years is a copy never
/// revalidated, which `cache.directory.ttl` absent already says.
const MAX_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// The bounds of `client_buffer`: below a few pages a slow client costs a cache round trip
/// per few kilobytes; above, memory per slow client grows for nothing.
const CLIENT_BUFFER_MIN: u64 = 16 << 10;
const CLIENT_BUFFER_MAX: u64 = 64 << 20;

/// The largest `hot_object_max_size`: a held answer the socket cannot take at once costs a
/// worker, so hot objects are the ones a socket buffer takes whole.
const HOT_OBJECT_MAX_LIMIT: u64 = 1 << 20;
/// The longest `hot_cache_ttl`: a hot object skips its cache, so a file edited under a running
/// read-only cache is seen within it.
const HOT_TTL_MAX: Duration = Duration::from_secs(3600);

/// The largest `max_object_size`.
const MAX_OBJECT_SIZE_LIMIT: u64 = 1 << 40;
/// The largest `max_threads`.
const MAX_THREADS_LIMIT: usize = 16_384;

impl ProxySettings {
    /// Everything a proxy needs of its settings to start, checked without binding: ranges, an
    /// origin URL the client accepts, a CA file that holds usable certificates, and an origin
    /// client that builds. Keys are relative to `[proxy]`.
    pub fn validate(&self) -> Problems {
        let mut problems = Problems::default();
        problems.check_range("threads", self.threads, 1, 1024);
        if self.max_threads < self.threads {
            problems.add(
                "max_threads",
                format!(
                    "must be at least threads ({}) (got {})",
                    self.threads, self.max_threads
                ),
            );
        } else {
            problems.check_range("max_threads", self.max_threads, 1, MAX_THREADS_LIMIT);
        }
        problems.check_range("max_redirects", self.max_redirects, 0, 20);
        problems.check_range("max_connections", self.max_connections, 1, 1_000_000);
        problems.check_range("listen_backlog", self.listen_backlog, 1, 65_535);
        problems.check_range(
            "http_max_requests_per_connection",
            self.http_max_requests_per_connection,
            1,
            1_000_000,
        );
        if self
            .http_listen
            .is_some_and(|http| http == self.listen && http.port() != 0)
        {
            problems.add("http_listen", "must differ from listen");
        }
        problems.check_size(
            "client_buffer",
            self.client_buffer,
            CLIENT_BUFFER_MIN,
            CLIENT_BUFFER_MAX,
        );
        problems.check_size("hot_cache_size", self.hot_cache_size, 0, 1 << 40);
        problems.check_size(
            "hot_object_max_size",
            self.hot_object_max_size,
            1,
            HOT_OBJECT_MAX_LIMIT,
        );
        if self.hot_cache_ttl > HOT_TTL_MAX {
            problems.add("hot_cache_ttl", "must be at most 1h");
        }
        problems.check_size(
            "max_object_size",
            self.max_object_size,
            1,
            MAX_OBJECT_SIZE_LIMIT,
        );
        for (key, value) in [
            ("origin_connect_timeout", self.origin_connect_timeout),
            ("origin_timeout", self.origin_timeout),
            ("cache_timeout", self.cache_timeout),
            ("collapse_timeout", self.collapse_timeout),
            ("header_timeout", self.header_timeout),
            ("http_keepalive_timeout", self.http_keepalive_timeout),
            ("send_timeout", self.send_timeout),
        ] {
            problems.check_nonzero(key, value);
        }
        for (key, value) in [
            ("default_ttl", Some(self.default_ttl)),
            ("negative_ttl", self.negative_ttl),
            ("stale_while_revalidate", Some(self.stale_while_revalidate)),
            ("stale_if_error", Some(self.stale_if_error)),
        ] {
            if value.is_some_and(|value| value > MAX_TTL) {
                problems.add(key, "must be at most 10 years");
            }
        }
        if let Some(path) = &self.origin_ca_file {
            if path.as_os_str().is_empty() {
                problems.add("origin_ca_file", "must not be empty");
            } else if path.is_dir() {
                problems.add(
                    "origin_ca_file",
                    format!("{} is not a file", path.display()),
                );
            } else if let Err(error) = origin::CaBundle::load(path) {
                problems.add("origin_ca_file", error.to_string());
            }
        }
        if let Some(base) = self.dfs_origin() {
            if let Err(message) = crate::dfs_origin::check_base(base) {
                problems.add("origin", message);
            }
        } else if let Some(config) = self.origin_config() {
            match origin::check_base(&config.base) {
                Err(message) => problems.add("origin", message),
                // The client the proxy will build at start, built now so that its failure is a
                // config problem here rather than a crash loop there.
                Ok(()) if problems.is_empty() => {
                    if let Err(error) = origin::Origin::new(&config) {
                        problems.add("origin", error.to_string());
                    }
                }
                Ok(()) => {}
            }
        }
        problems
    }

    /// The origin client's settings, when an origin is configured.
    pub fn origin_config(&self) -> Option<origin::OriginConfig> {
        if self.dfs_origin().is_some() {
            return None;
        }
        self.origin.as_ref().map(|base| origin::OriginConfig {
            base: base.clone(),
            connect_timeout: self.origin_connect_timeout,
            total_timeout: self.origin_timeout,
            max_redirects: self.max_redirects,
            ca_file: self.origin_ca_file.clone(),
        })
    }

    /// The origin, when it is a gfdfs server (`dfs://HOST:PORT`).
    pub fn dfs_origin(&self) -> Option<&str> {
        self.origin
            .as_deref()
            .filter(|base| base.starts_with(crate::dfs_origin::SCHEME))
    }

    /// Resolves the relative file paths against `base` (the supervisor resolves them against
    /// its current directory when it reads the file).
    pub fn resolve_paths(&mut self, base: &std::path::Path) {
        if let Some(path) = &mut self.origin_ca_file {
            if path.is_relative() && !path.as_os_str().is_empty() {
                *path = base.join(&*path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin_problems(origin: &str) -> Vec<String> {
        let settings = ProxySettings {
            origin: Some(origin.to_owned()),
            ..ProxySettings::default()
        };
        settings
            .validate()
            .into_iter()
            .map(|p| p.to_string())
            .collect()
    }

    #[test]
    fn the_defaults_are_valid() {
        assert!(ProxySettings::default().validate().is_empty());
    }

    #[test]
    fn origins_the_client_cannot_use_are_refused() {
        for bad in [
            "http://127.0.0.1:8080/?v=1",
            "http://127.0.0.1:99999",
            "http://user:pw@127.0.0.1:8080/base#frag",
            "http://user:pw@127.0.0.1:8080/base",
            "ftp://127.0.0.1/",
            "127.0.0.1:8080",
            "http://",
        ] {
            let problems = origin_problems(bad);
            assert_eq!(problems.len(), 1, "{bad}: {problems:?}");
            assert!(problems[0].starts_with("origin: "), "{problems:?}");
        }
        for good in [
            "http://127.0.0.1:8080",
            "https://origin.internal/base/",
            "http://[::1]:80/a",
        ] {
            assert!(origin_problems(good).is_empty(), "{good}");
        }
    }

    #[test]
    fn every_problem_is_reported() {
        let settings = ProxySettings {
            threads: 0,
            cache_timeout: Duration::ZERO,
            max_redirects: 99,
            ..ProxySettings::default()
        };
        let keys: Vec<String> = settings.validate().into_iter().map(|p| p.key).collect();
        assert_eq!(keys, ["threads", "max_redirects", "cache_timeout"]);
    }

    #[test]
    fn hot_object_settings_are_bounded_and_named() {
        let settings = ProxySettings {
            hot_object_max_size: 2 << 20,
            hot_cache_ttl: Duration::from_secs(7200),
            ..ProxySettings::default()
        };
        let keys: Vec<String> = settings.validate().into_iter().map(|p| p.key).collect();
        assert_eq!(keys, ["hot_object_max_size", "hot_cache_ttl"]);
        let off = ProxySettings {
            hot_cache_size: 0,
            hot_cache_ttl: Duration::ZERO,
            ..ProxySettings::default()
        };
        assert!(off.validate().is_empty(), "0 turns hot objects off");
    }

    #[test]
    fn max_threads_is_at_least_threads_and_send_timeout_is_not_zero() {
        let settings = ProxySettings {
            threads: 32,
            max_threads: 8,
            send_timeout: Duration::ZERO,
            ..ProxySettings::default()
        };
        let problems: Vec<String> = settings
            .validate()
            .into_iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(
            problems,
            [
                "max_threads: must be at least threads (32) (got 8)",
                "send_timeout: must be greater than 0",
            ]
        );
        let equal = ProxySettings {
            threads: 32,
            max_threads: 32,
            ..ProxySettings::default()
        };
        assert!(equal.validate().is_empty());
    }
}
