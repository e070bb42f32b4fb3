//! The HTTP side of [`ResponseWriter`]: heads for found objects (200, 206, 304, 416), errors by
//! cause, HEAD without a body, and whether the connection stays open afterwards.

use std::io;
use std::os::fd::AsFd;

use super::{send_all, ResponseState, ResponseWriter};
use crate::http::{HttpRequest, StatusCode};
use crate::http_front::{Delivery, Failure, ObjectHead};
use crate::ResponseHeader;

impl ResponseWriter<'_> {
    /// The HTTP request being answered (`None` for GetFile).
    pub fn http_request(&self) -> Option<&HttpRequest> {
        self.http.as_ref().map(|exchange| &exchange.request)
    }

    /// The bytes of the object worth fetching before its length is known: `(offset, len)`,
    /// `len` `None` to the end. `(0, None)` for GetFile and for most HTTP requests; `(0,
    /// Some(0))` for HEAD; a single `bytes=a-b` or `bytes=a-` range otherwise.
    /// [`ResponseWriter::send_object`] says which bytes the answer really carries.
    pub fn wanted_bytes(&self) -> (u64, Option<u64>) {
        self.http
            .as_ref()
            .map_or((0, None), |exchange| exchange.wanted())
    }

    /// Sends the head for a found object and says which of its bytes must follow: for GetFile
    /// always OK and every byte; for HTTP 200, a 206 for a satisfiable single range, 304 when
    /// the client's validators match, 416 for a range past the end, and no body for HEAD.
    pub fn send_object(&mut self, object: &ObjectHead) -> io::Result<Delivery> {
        let Some(exchange) = self.http.as_mut() else {
            self.send_header(ResponseHeader::Ok { length: object.len })?;
            return Ok(Delivery::Body {
                offset: 0,
                len: object.len,
            });
        };
        match self.state {
            ResponseState::NoHeader => {}
            ResponseState::Closed { .. } => return Err(super::closed_error()),
            _ => return Err(super::misuse("response header sent twice")),
        }
        let answer = exchange.object(object);
        self.header = answer.head;
        self.announced = answer.announced;
        match answer.delivery {
            Delivery::Body { len, .. } if len > 0 => {
                self.state = ResponseState::Body {
                    announced: len,
                    sent: 0,
                    header_pending: true,
                };
                Ok(answer.delivery)
            }
            Delivery::Body { .. } => {
                self.write_head(ResponseState::Complete)?;
                Ok(answer.delivery)
            }
            Delivery::NoBody => {
                let after = match answer.announced {
                    0 => ResponseState::Complete,
                    announced => ResponseState::Discarding { announced, sent: 0 },
                };
                self.write_head(after)?;
                Ok(Delivery::NoBody)
            }
        }
    }

    /// Answers that the request failed, saying why: ERROR for GetFile; 502, 503, 504 or 500
    /// for HTTP.
    pub fn send_failure(&mut self, failure: Failure) -> io::Result<()> {
        match self.http.as_mut() {
            None => self.send_header(ResponseHeader::Error),
            Some(exchange) => {
                if !matches!(self.state, ResponseState::NoHeader) {
                    return Err(super::misuse("response header sent twice"));
                }
                self.header = exchange.text(failure.status());
                self.write_head(ResponseState::Complete)
            }
        }
    }

    /// The HTTP status answered, once a head went out (for counting).
    pub fn http_status(&self) -> Option<u16> {
        self.http
            .as_ref()
            .and_then(|exchange| exchange.status)
            .map(StatusCode::as_u16)
    }

    /// `send_header` for HTTP: OK is a 200 of unknown validators (an origin answer), the
    /// others their error statuses.
    pub(super) fn send_http_header(&mut self, header: ResponseHeader) -> io::Result<()> {
        let status = match header {
            ResponseHeader::Ok { length } => {
                return self
                    .send_object(&ObjectHead {
                        len: length,
                        ..ObjectHead::default()
                    })
                    .map(drop)
            }
            ResponseHeader::FileNotFound => StatusCode::NotFound,
            ResponseHeader::Error => StatusCode::BadGateway,
            ResponseHeader::Invalid => StatusCode::BadRequest,
        };
        if let Some(exchange) = self.http.as_mut() {
            self.header = exchange.text(status);
        }
        self.write_head(ResponseState::Complete)
    }

    fn write_head(&mut self, after: ResponseState) -> io::Result<()> {
        let result = send_all(self.stream.as_fd(), &self.header);
        self.after_write(result.map(|()| after))
    }

    /// In HEAD's discarding state: counts `more` dropped body bytes (`Some`); else `None`.
    pub(super) fn discard(&mut self, more: u64) -> Option<io::Result<()>> {
        let ResponseState::Discarding { announced, sent } = self.state else {
            return None;
        };
        let sent = sent.saturating_add(more);
        if sent > announced {
            return Some(Err(super::misuse("body longer than the announced length")));
        }
        self.state = match sent == announced {
            true => ResponseState::Complete,
            false => ResponseState::Discarding { announced, sent },
        };
        Some(Ok(()))
    }

    /// Whether the connection may serve another request: HTTP, kept alive by both sides, and
    /// this response complete.
    pub(super) fn keeps_connection(&self) -> bool {
        self.http
            .as_ref()
            .is_some_and(|exchange| exchange.keep_alive)
            && matches!(
                self.state,
                ResponseState::Complete | ResponseState::Discarding { .. }
            )
    }
}
