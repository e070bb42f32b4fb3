//! The HTTP origin: a blocking reqwest client with bounded connect, total and redirect budgets,
//! and the mapping of its answers to GetFile outcomes.
//!
//! HTTPS origins are verified against the built-in web PKI roots plus, when configured, the
//! certificates of an extra PEM file ([`CaBundle`]), for origins behind an internal CA.

use std::io::Read;
use std::path::{Path, PathBuf};
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
    /// A PEM file of root certificates trusted in addition to the built-in ones.
    pub ca_file: Option<PathBuf>,
}

/// Why an origin CA file cannot be used. Every variant names the file.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum CaFileError {
    /// The file could not be read.
    #[error("cannot read origin CA file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the read reported.
        #[source]
        source: std::io::Error,
    },
    /// The file is not PEM, or a certificate in it is not a usable X.509 certificate.
    #[error("origin CA file {} is not a valid PEM certificate bundle: {source}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What the PEM or certificate parser reported.
        #[source]
        source: reqwest::Error,
    },
    /// The file holds no `CERTIFICATE` block.
    #[error("origin CA file {} holds no PEM certificate", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
}

impl CaFileError {
    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            CaFileError::Read { path, .. }
            | CaFileError::Invalid { path, .. }
            | CaFileError::NoCertificate { path } => path,
        }
    }
}

impl From<CaFileError> for Error {
    fn from(error: CaFileError) -> Error {
        Error::Config(error.to_string())
    }
}

/// The extra root certificates of one PEM file (one or more `CERTIFICATE` blocks), checked to
/// be usable as trust anchors.
#[derive(Clone, Debug)]
pub struct CaBundle {
    certificates: Vec<reqwest::Certificate>,
}

impl CaBundle {
    /// Reads and checks `path`: it must be readable, PEM, and hold at least one certificate
    /// that TLS accepts as a root.
    pub fn load(path: &Path) -> Result<CaBundle, CaFileError> {
        let pem = std::fs::read(path).map_err(|source| CaFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let invalid = |source| CaFileError::Invalid {
            path: path.to_path_buf(),
            source,
        };
        let certificates = reqwest::Certificate::from_pem_bundle(&pem).map_err(invalid)?;
        if certificates.is_empty() {
            return Err(CaFileError::NoCertificate {
                path: path.to_path_buf(),
            });
        }
        // PEM parsing does not look inside the DER; building a TLS config does, so a damaged
        // certificate is reported now, naming the file, rather than as an opaque client error.
        certificates
            .iter()
            .cloned()
            .fold(
                reqwest::Client::builder().tls_built_in_root_certs(false),
                reqwest::ClientBuilder::add_root_certificate,
            )
            .build()
            .map_err(invalid)?;
        Ok(CaBundle { certificates })
    }

    /// How many certificates the file holds.
    pub fn certificate_count(&self) -> usize {
        self.certificates.len()
    }
}

/// Checks an origin base URL: absolute `http` or `https` with a host, no query, fragment or
/// credentials.
pub fn check_base(base: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(base).map_err(|e| format!("origin {base:?}: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(format!(
            "origin {base:?} is not an http:// or https:// URL with a host"
        ));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(format!("origin {base:?} must not have a query or fragment"));
    }
    // Credentials in a URL end up in logs and error messages; the client sends none.
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(format!(
            "origin {base:?} must not carry a user name or password"
        ));
    }
    Ok(())
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
    /// variables are ignored: the origin is named explicitly. HTTPS is verified against the
    /// built-in web PKI roots and the certificates of `ca_file`, if any.
    pub fn new(config: &OriginConfig) -> Result<Origin, Error> {
        check_base(&config.base).map_err(Error::Config)?;
        if config.total_timeout.is_zero() || config.connect_timeout.is_zero() {
            return Err(Error::Config("origin timeouts must be above zero".into()));
        }
        let extra_roots = match &config.ca_file {
            Some(path) => CaBundle::load(path)?.certificates,
            None => Vec::new(),
        };
        let client = extra_roots
            .into_iter()
            .fold(
                reqwest::blocking::Client::builder(),
                reqwest::blocking::ClientBuilder::add_root_certificate,
            )
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
