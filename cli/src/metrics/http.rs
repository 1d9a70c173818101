//! The smallest HTTP/1.x server `runv metrics` needs: one connection at a
//! time, one request per connection, a bounded request head read within a
//! deadline; `GET /metrics` is answered by the scrape, any other path by 404.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

/// Bytes of a request head read at most.
pub const MAX_REQUEST: usize = 8 * 1024;
/// How long a client may take to send its request (and to take the answer).
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// A request that is not answered with metrics.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The head is longer than [`MAX_REQUEST`].
    #[error("request longer than {MAX_REQUEST} bytes")]
    TooLarge,
    /// The request line is not `METHOD TARGET HTTP/x`.
    #[error("malformed request")]
    Malformed,
    /// The method is not GET.
    #[error("method {0} not allowed")]
    Method(String),
    /// The path is not `/metrics`.
    #[error("no such path {0}")]
    NotFound(String),
}

/// An answer to send.
#[derive(Debug, PartialEq, Eq)]
pub struct Response {
    /// Status code and reason.
    pub status: &'static str,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// The body.
    pub body: String,
}

impl Response {
    fn text(status: &'static str, body: String) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body,
        }
    }

    /// The whole answer, head and body, closing the connection.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.status,
            self.content_type,
            self.body.len()
        )
        .into_bytes();
        out.extend_from_slice(self.body.as_bytes());
        out
    }
}

/// The request head from `reader`: bytes up to the blank line that ends it,
/// at most [`MAX_REQUEST`] of them. `Ok(None)` if the client sent nothing.
pub fn read_head(reader: &mut impl Read) -> io::Result<Result<Option<Vec<u8>>, RequestError>> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            // A client that closed early: what it sent is parsed as it is.
            return Ok(Ok((!head.is_empty()).then_some(head)));
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            if end + 4 > MAX_REQUEST {
                return Ok(Err(RequestError::TooLarge));
            }
            head.truncate(end);
            return Ok(Ok(Some(head)));
        }
        if head.len() > MAX_REQUEST {
            return Ok(Err(RequestError::TooLarge));
        }
    }
}

/// Checks the request line: a GET of `/metrics` (a query is ignored).
pub fn check_request(head: &[u8]) -> Result<(), RequestError> {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = std::str::from_utf8(line).map_err(|_| RequestError::Malformed)?;
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(RequestError::Malformed);
    };
    if !version.starts_with("HTTP/1.") {
        return Err(RequestError::Malformed);
    }
    if method != "GET" {
        return Err(RequestError::Method(method.into()));
    }
    let path = target.split('?').next().unwrap_or_default();
    if path != "/metrics" {
        return Err(RequestError::NotFound(path.into()));
    }
    Ok(())
}

/// The answer to what `reader` sends, `None` for nothing sent; `scrape`
/// runs only for a GET of `/metrics`, its error becomes a 500.
pub fn answer<E: std::fmt::Display>(
    reader: &mut impl Read,
    scrape: impl FnOnce() -> Result<String, E>,
) -> io::Result<Option<Response>> {
    let head = match read_head(reader)? {
        Ok(Some(head)) => head,
        Ok(None) => return Ok(None),
        Err(err) => return Ok(Some(refusal(&err))),
    };
    if let Err(err) = check_request(&head) {
        return Ok(Some(refusal(&err)));
    }
    Ok(Some(match scrape() {
        Ok(body) => Response {
            status: "200 OK",
            content_type: prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            body,
        },
        Err(err) => Response::text("500 Internal Server Error", format!("{err}\n")),
    }))
}

fn refusal(err: &RequestError) -> Response {
    let status = match err {
        RequestError::TooLarge => "431 Request Header Fields Too Large",
        RequestError::Malformed => "400 Bad Request",
        RequestError::Method(_) => "405 Method Not Allowed",
        RequestError::NotFound(_) => "404 Not Found",
    };
    Response::text(status, format!("{err}\n"))
}

/// Serves `listener` for ever, one connection at a time.
pub fn serve<E: std::fmt::Display>(
    listener: &TcpListener,
    mut scrape: impl FnMut() -> Result<String, E>,
) {
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                if let Err(err) = serve_one(stream, &mut scrape) {
                    log::debug!("metrics connection: {err}");
                }
            }
            // A client gone before accept, or fds short: the next one.
            Err(err) => log::warn!("accept: {err}"),
        }
    }
}

/// Answers one connection.
fn serve_one<E: std::fmt::Display>(
    mut stream: TcpStream,
    scrape: &mut impl FnMut() -> Result<String, E>,
) -> io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    if let Some(response) = answer(&mut stream, scrape)? {
        stream.write_all(&response.to_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
