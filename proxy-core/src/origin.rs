//! The HTTP origin: a blocking reqwest client with bounded connect, total and redirect budgets,
//! and the mapping of its answers to GetFile outcomes.

use std::io::Read;
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::path::CanonicalPath;

/// Settings of the origin client.
#[derive(Clone, Debug)]
pub struct OriginConfig {
    /// Base URL (`http://host:port[/prefix]` or `https://...`).
    pub base: String,
    /// TCP (and TLS) connect timeout.
    pub connect_timeout: Duration,
    /// Deadline of one whole fetch, body included.
    pub total_timeout: Duration,
    /// Redirects followed at most.
    pub max_redirects: usize,
}

/// A client for one origin. Cheap to share between threads.
#[derive(Clone, Debug)]
pub struct Origin {
    client: reqwest::blocking::Client,
    base: String,
    total_timeout: Duration,
}

/// What the origin answered.
#[derive(Debug)]
pub enum OriginAnswer {
    /// 200: the body follows.
    Found(Box<OriginBody>),
    /// 404 or 410.
    NotFound,
}

/// The body of a 200 answer, read as it arrives.
#[derive(Debug)]
pub struct OriginBody {
    response: reqwest::blocking::Response,
    url: String,
    len: Option<u64>,
    deadline: Instant,
}

impl Origin {
    /// Builds the client. The base must be an absolute `http` or `https` URL. Proxy environment
    /// variables are ignored: the origin is named explicitly.
    pub fn new(config: &OriginConfig) -> Result<Origin, Error> {
        let parsed = reqwest::Url::parse(&config.base)
            .map_err(|e| Error::Config(format!("origin {:?}: {e}", config.base)))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(Error::Config(format!(
                "origin {:?} is not an http:// or https:// URL with a host",
                config.base
            )));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(Error::Config(format!(
                "origin {:?} must not have a query or fragment",
                config.base
            )));
        }
        if config.total_timeout.is_zero() || config.connect_timeout.is_zero() {
            return Err(Error::Config("origin timeouts must be above zero".into()));
        }
        let client = reqwest::blocking::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.total_timeout)
            .redirect(reqwest::redirect::Policy::limited(config.max_redirects))
            .no_proxy()
            .build()
            .map_err(|e| Error::Config(format!("origin client: {e}")))?;
        Ok(Origin {
            client,
            base: config.base.trim_end_matches('/').to_owned(),
            total_timeout: config.total_timeout,
        })
    }

    /// The URL fetched for `path`.
    pub fn url_for(&self, path: &CanonicalPath) -> String {
        format!("{}{}", self.base, path.url_encoded())
    }

    /// GETs `path`. 200 gives the body to read, 404/410 `NotFound`; any other status, a
    /// transport error or a timeout is an error.
    pub fn fetch(&self, path: &CanonicalPath) -> Result<OriginAnswer, Error> {
        let url = self.url_for(path);
        let deadline = Instant::now() + self.total_timeout;
        // The per-request timeout is a total deadline in reqwest, body included.
        let response = self
            .client
            .get(&url)
            .timeout(self.total_timeout)
            .send()
            .map_err(|e| transport(&url, e))?;
        let status = response.status().as_u16();
        match status {
            200 => {
                let len = response.content_length();
                Ok(OriginAnswer::Found(Box::new(OriginBody {
                    response,
                    url,
                    len,
                    deadline,
                })))
            }
            404 | 410 => Ok(OriginAnswer::NotFound),
            _ => Err(Error::OriginStatus { url, status }),
        }
    }
}

fn transport(url: &str, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::OriginTransport {
        url: url.to_owned(),
        source: Box::new(e),
    }
}

impl OriginBody {
    /// The announced length (Content-Length), if any.
    pub fn content_length(&self) -> Option<u64> {
        self.len
    }

    /// The URL this body comes from.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Reads the next bytes into `buf`; `Ok(0)` at the end. Fails past the total deadline.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        if Instant::now() >= self.deadline {
            return Err(transport(
                &self.url,
                std::io::Error::new(std::io::ErrorKind::TimedOut, "origin total timeout"),
            ));
        }
        self.response.read(buf).map_err(|e| transport(&self.url, e))
    }

    /// Reads a body without a Content-Length whole, up to `limit` bytes.
    pub fn read_to_end_bounded(&mut self, limit: u64) -> Result<Vec<u8>, Error> {
        let mut body = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = self.read(&mut buf)?;
            if n == 0 {
                return Ok(body);
            }
            let piece = buf.get(..n).unwrap_or_default();
            if u64::try_from(body.len() + n).unwrap_or(u64::MAX) > limit {
                return Err(Error::OriginTooLarge {
                    url: self.url.clone(),
                    limit,
                });
            }
            body.extend_from_slice(piece);
        }
    }
}
