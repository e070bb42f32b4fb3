//! HTTP/1.1 on the front door: the framer that finds a request head (and a small body to
//! discard) in a connection's bytes, and the exchange a worker answers through
//! [`ResponseWriter`](crate::ResponseWriter): what the request asked (method, range,
//! conditionals, keep-alive) and which head answers it.
//!
//! A connection's life: the front door reads a head (the `header_timeout` runs from the first
//! byte); a worker answers it; if both sides keep the connection, the worker hands it back to
//! the front door, which holds it idle (no worker) for up to the keep-alive timeout, with any
//! bytes already read past the request (a pipelined next request) fed to a new framer first.
//! Pipelined requests are therefore answered one after another, in order.

use std::net::SocketAddr;
use std::time::SystemTime;

use crate::frontdoor::{held_object, AfterAnswer, Door, HeaderFramer, HeldAnswer};
use crate::http::{
    body_follows, etag_of, if_range_allows, not_modified, parse_range, parse_request,
    write_error_response, write_text_response, CacheStatus, HttpError, HttpRequest, Limits, Method,
    Parsed, RangeAnswer, RequestBody, ResponseHead, StatusCode,
};
use crate::Handler;

/// A request body up to this size is read and discarded, and the connection kept; a larger or
/// chunked one closes the connection after the answer.
pub(crate) const MAX_DISCARDED_BODY: u64 = 64 * 1024;

/// A complete HTTP request for a worker.
pub(crate) struct HttpJob {
    pub(crate) request: HttpRequest,
    /// Bytes after the request (and its discarded body): the start of the next one.
    pub(crate) leftover: Vec<u8>,
    /// The request's body was not read: the connection must close after the answer.
    pub(crate) body_unread: bool,
}

/// Finds one request head, then waits for a small body to discard.
pub(crate) struct HttpFramer {
    buffer: Vec<u8>,
    /// A complete head waiting for its body: the request, and where the next request starts.
    head: Option<(HttpRequest, usize)>,
}

impl HttpFramer {
    /// Every byte fed so far (none of a request taken out).
    pub(crate) fn into_bytes(self) -> Vec<u8> {
        self.buffer
    }
}

impl HeaderFramer for HttpFramer {
    const DOOR: Door = Door::Http;
    type Request = HttpJob;
    type Error = HttpError;

    fn new() -> Self {
        HttpFramer {
            buffer: Vec::new(),
            head: None,
        }
    }

    fn feed(&mut self, bytes: &[u8]) -> Result<Option<HttpJob>, HttpError> {
        self.buffer.extend_from_slice(bytes);
        if self.head.is_none() {
            let Parsed::Complete { request, head_len } =
                parse_request(&self.buffer, &Limits::default())?
            else {
                return Ok(None);
            };
            let end = match request.body {
                RequestBody::None => head_len,
                RequestBody::Length(len) if len <= MAX_DISCARDED_BODY => head_len + len as usize,
                RequestBody::Length(_) | RequestBody::Chunked => {
                    return Ok(Some(HttpJob {
                        request,
                        leftover: Vec::new(),
                        body_unread: true,
                    }))
                }
            };
            self.head = Some((request, end));
        }
        match self.head.take() {
            Some((request, end)) if self.buffer.len() >= end => Ok(Some(HttpJob {
                request,
                leftover: self.buffer.split_off(end),
                body_unread: false,
            })),
            waiting => {
                self.head = waiting;
                Ok(None)
            }
        }
    }

    fn at_eof(&self) -> Option<HttpError> {
        // A client may close an idle or fresh connection at any time; half a head is refused.
        (!self.buffer.is_empty() && self.head.is_none()).then_some(HttpError::Truncated)
    }

    fn refusal(error: &HttpError) -> Vec<u8> {
        let mut out = Vec::new();
        write_error_response(&mut out, error);
        out
    }

    fn timeout_refusal() -> Vec<u8> {
        let mut out = Vec::new();
        write_text_response(
            &mut out,
            ResponseHead::new(StatusCode::RequestTimeout).close(),
            StatusCode::RequestTimeout.text_body(),
            Method::Get,
        );
        out
    }

    fn report(handler: &dyn Handler, peer: SocketAddr, error: &HttpError) {
        handler.http_refused(peer, error.status());
    }

    fn report_timeout(handler: &dyn Handler, peer: SocketAddr) {
        handler.header_timed_out(peer);
        handler.http_answered(StatusCode::RequestTimeout.as_u16());
    }

    fn answer_held(
        job: HttpJob,
        handler: &dyn Handler,
        served: u32,
        max_requests: u32,
    ) -> Result<HeldAnswer, HttpJob> {
        // A body left unread closes the connection: a worker does that.
        if job.body_unread {
            return Err(job);
        }
        let Some(held) = held_object(handler, &job.request.path, job.request.query.as_deref())
        else {
            return Err(job);
        };
        let keep_alive = served.saturating_add(1) < max_requests;
        let client_closes = !job.request.keep_alive;
        let mut exchange = HttpExchange::new(job.request, keep_alive);
        let answer = exchange.object(&held.head);
        if let Some(status) = exchange.status {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                handler.http_answered(status.as_u16())
            }));
        }
        let body_range = match answer.delivery {
            Delivery::Body { offset, len } => {
                let start = usize::try_from(offset).unwrap_or(usize::MAX);
                let end = start.saturating_add(usize::try_from(len).unwrap_or(usize::MAX));
                start.min(held.body.len())..end.min(held.body.len())
            }
            Delivery::NoBody => 0..0,
        };
        Ok(HeldAnswer {
            head: answer.head,
            body: held.body,
            body_range,
            after: match exchange.keep_alive {
                true => AfterAnswer::KeepAlive(job.leftover),
                false if job.leftover.is_empty() && client_closes => AfterAnswer::Closing,
                false => AfterAnswer::Linger,
            },
        })
    }
}

/// What a hit or a miss says about the object, for the response head.
#[derive(Clone, Debug, Default)]
pub struct ObjectHead {
    /// The whole object's length.
    pub len: u64,
    /// Its version as a cache names it (an ETag made of it when `etag` is not given), if any.
    pub version: Option<u64>,
    /// The stored entity tag (quotes included), which wins over one made of `version`.
    pub etag: Option<String>,
    /// When it was last modified, if known.
    pub modified: Option<SystemTime>,
    /// The stored Content-Type; `None`: guessed from the path's extension.
    pub content_type: Option<String>,
    /// Its age in seconds (`Age`), for a copy a cache stored from an origin.
    pub age: Option<u64>,
    /// Whether a cache served it (`X-Cache`); `None` for a plain file server.
    pub cache: Option<CacheStatus>,
}

/// Which bytes of the object the response carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// `len` bytes from `offset`: send exactly these.
    Body {
        /// The first byte of the object sent.
        offset: u64,
        /// How many.
        len: u64,
    },
    /// No body (HEAD, 304, 416): the response is complete; body bytes sent anyway are dropped.
    NoBody,
}

/// Why a request could not be answered, in the protocol's terms (GetFile says ERROR to all).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The origin failed or answered wrongly (HTTP 502).
    Origin,
    /// The origin did not answer in time (HTTP 504).
    OriginTimeout,
    /// Nothing can answer now: no cache and no origin (HTTP 503).
    Unavailable,
    /// A fault of the server itself (HTTP 500).
    Internal,
}

/// One HTTP request and how its answer goes.
pub(crate) struct HttpExchange {
    pub(crate) request: HttpRequest,
    /// Whether the connection stays open after this answer.
    pub(crate) keep_alive: bool,
    /// The status answered, once the head is written.
    pub(crate) status: Option<StatusCode>,
}

/// A head to write and the body it announces.
pub(crate) struct Answer {
    pub(crate) head: Vec<u8>,
    pub(crate) delivery: Delivery,
    /// Body bytes the head announces (what a HEAD would have carried).
    pub(crate) announced: u64,
}

impl HttpExchange {
    pub(crate) fn new(request: HttpRequest, keep_alive: bool) -> Self {
        HttpExchange {
            keep_alive: keep_alive && request.keep_alive,
            request,
            status: None,
        }
    }

    fn head(&self, status: StatusCode) -> ResponseHead<'static> {
        let head = ResponseHead::new(status);
        match self.keep_alive {
            true => head.connection(self.request.version, true),
            false => head.close(),
        }
    }

    /// The answer to a found object: 304, 206, 416 or 200, with its validators.
    pub(crate) fn object(&mut self, object: &ObjectHead) -> Answer {
        let etag = object.etag.clone().or_else(|| object.version.map(etag_of));
        if let Some(etag) = &etag {
            if not_modified(&self.request, etag, object.modified) {
                let mut out = Vec::new();
                self.with_validators(StatusCode::NotModified, etag, object.modified)
                    .write(&mut out);
                self.status = Some(StatusCode::NotModified);
                return Answer {
                    head: out,
                    delivery: Delivery::NoBody,
                    announced: 0,
                };
            }
        }
        let range = match (&self.request.range, &etag) {
            (Some(value), Some(etag)) if if_range_allows(&self.request, etag, object.modified) => {
                parse_range(value, object.len)
            }
            _ => RangeAnswer::Whole,
        };
        let (status, offset, len) = match range {
            RangeAnswer::Whole => (StatusCode::Ok, 0, object.len),
            RangeAnswer::Partial { first, last } => {
                (StatusCode::PartialContent, first, last - first + 1)
            }
            RangeAnswer::Unsatisfiable => {
                let mut out = Vec::new();
                let status = StatusCode::RangeNotSatisfiable;
                write_text_response(
                    &mut out,
                    self.head(status).unsatisfied_range(object.len),
                    status.text_body(),
                    self.request.method,
                );
                self.status = Some(status);
                return Answer {
                    head: out,
                    delivery: Delivery::NoBody,
                    announced: 0,
                };
            }
        };
        let mut head = match &etag {
            Some(etag) => self.with_validators(status, etag, object.modified),
            None => self.head(status),
        };
        head = head.content_length(len);
        head = match &object.content_type {
            Some(content_type) => head.content_type(content_type),
            None => head.content_type_for(&self.request.path),
        };
        if let Some(age) = object.age {
            head = head.age(age);
        }
        // Ranges are honoured for objects with a validator (an If-Range needs one).
        if etag.is_some() {
            head = head.accept_ranges();
        }
        if let Some(cache) = object.cache {
            head = head.x_cache(cache);
        }
        if status == StatusCode::PartialContent {
            head = head.content_range(offset, offset + len - 1, object.len);
        }
        if etag.is_none() {
            if let Some(modified) = object.modified {
                head = head.last_modified(modified);
            }
        }
        self.status = Some(status);
        let mut out = Vec::new();
        head.write(&mut out);
        let delivery = match body_follows(self.request.method, status) {
            true => Delivery::Body { offset, len },
            false => Delivery::NoBody,
        };
        Answer {
            head: out,
            delivery,
            announced: len,
        }
    }

    fn with_validators<'a>(
        &self,
        status: StatusCode,
        etag: &'a str,
        modified: Option<SystemTime>,
    ) -> ResponseHead<'a> {
        let head = self.head(status).etag(etag);
        match modified {
            Some(modified) => head.last_modified(modified),
            None => head,
        }
    }

    /// A whole answer with a short text body (errors, not found).
    pub(crate) fn text(&mut self, status: StatusCode) -> Vec<u8> {
        let mut out = Vec::new();
        write_text_response(
            &mut out,
            self.head(status),
            status.text_body(),
            self.request.method,
        );
        self.status = Some(status);
        out
    }

    /// The bytes of the object worth asking a cache for before its length is known: none for
    /// HEAD (the head needs only the length and validators, and a transfer dropped mid-object
    /// would count as a failed one at the cache), a `bytes=a-b` or `bytes=a-` range (when no
    /// If-Range or conditional can turn it into a whole answer, the proxy still checks the
    /// answer's delivery); else everything.
    pub(crate) fn wanted(&self) -> (u64, Option<u64>) {
        if self.request.method == Method::Head {
            return (0, Some(0));
        }
        let Some(value) = &self.request.range else {
            return (0, None);
        };
        if self.request.if_range.is_some() || self.request.if_none_match.is_some() {
            return (0, None);
        }
        match parse_range(value, u64::MAX) {
            // `a-`: parse_range clamps the end to the last possible byte.
            RangeAnswer::Partial { first, last } if last == u64::MAX - 1 => (first, None),
            // A suffix (`-n`) needs the length: ask for everything.
            RangeAnswer::Partial { first, .. } if first > u64::MAX / 2 => (0, None),
            RangeAnswer::Partial { first, last } => (first, Some(last - first + 1)),
            RangeAnswer::Whole | RangeAnswer::Unsatisfiable => (0, None),
        }
    }
}

impl Failure {
    pub(crate) fn status(self) -> StatusCode {
        match self {
            Failure::Origin => StatusCode::BadGateway,
            Failure::OriginTimeout => StatusCode::GatewayTimeout,
            Failure::Unavailable => StatusCode::ServiceUnavailable,
            Failure::Internal => StatusCode::InternalServerError,
        }
    }
}
