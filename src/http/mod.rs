//! HTTP/1.1 on the WebSocket port: reading one request head, and writing short responses.
//!
//! Every connection starts as HTTP. The head is read here under a deadline and a size cap, then
//! handed to `handshake.rs` (a WebSocket upgrade) or `site.rs` (the demo page and `/healthz`).
//! One request per connection: every plain HTTP response says `Connection: close`.

pub(crate) mod controls;
pub(crate) mod handshake;
pub(crate) mod query;
pub(crate) mod room;
pub(crate) mod site;

/// The parser's properties, checked on generated requests (proptest).
#[cfg(test)]
mod props;

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

/// Most header lines accepted; more gets 431. Browsers send about fifteen.
pub(crate) const MAX_HEADERS: usize = 64;

/// A stream HTTP can be spoken on: plain TCP, or TLS (`connection/transport.rs`), with
/// timeouts so that a silent client cannot hold a thread.
pub(crate) trait Conn: Read + Write {
    /// Bounds the next reads (`None`: no bound).
    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()>;
    /// Bounds the next writes (`None`: no bound).
    fn set_write_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()>;
    /// Says "no more from us" (and, on TLS, ends the session first).
    fn shutdown_write(&mut self);
}

impl Conn for TcpStream {
    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        TcpStream::set_read_timeout(self, timeout)
    }

    fn set_write_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        TcpStream::set_write_timeout(self, timeout)
    }

    fn shutdown_write(&mut self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

/// After a response, at most this much of what the client still sends is read and dropped
/// while waiting for it to close; a client that sends more is cut off.
const MAX_DRAINED: usize = 64 * 1024;

/// Bytes asked for per read of a request head: a browser's whole head, usually.
const READ_CHUNK: usize = 1024;

/// How long a response's sender waits for the client to finish with the connection, so that
/// closing it does not reset a response the client has not read yet.
const LINGER: Duration = Duration::from_secs(1);

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Request {
    /// `GET`, `HEAD`, ...
    pub(crate) method: String,
    /// The request target as sent, e.g. `/` or `/chat?room=1`.
    pub(crate) target: String,
    /// The minor version: 1 for HTTP/1.1, 0 for HTTP/1.0.
    pub(crate) minor_version: u8,
    /// Every header line, name and value, in order.
    pub(crate) headers: Vec<(String, String)>,
}

impl Request {
    /// The first value of a header, by case-insensitive name.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether a comma-separated header (in any of its lines) lists `token`, ignoring case,
    /// as `Connection: keep-alive, Upgrade` lists `upgrade`.
    pub(crate) fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// The target without its query string.
    pub(crate) fn path(&self) -> &str {
        self.target.split(['?', '#']).next().unwrap_or("")
    }
}

/// Why no request head could be read.
#[derive(Debug)]
pub(crate) enum HeadError {
    /// The handshake timeout expired first.
    Timeout,
    /// The client closed the connection before sending a whole head.
    Closed,
    /// The head is longer than the cap, or has too many header lines: 431.
    TooLarge,
    /// Not HTTP: 400, with what was wrong.
    Malformed(String),
    /// The connection failed while the head was read.
    Io(io::Error),
}

/// Parses a request head from the start of `buf`.
///
/// Returns the request and the head's length in bytes, or `None` if `buf` holds only part of
/// a head so far. Bytes after the head (a client may send its first WebSocket frame at once)
/// are the caller's.
pub(crate) fn parse_head(
    buf: &[u8],
    max_len: usize,
) -> Result<Option<(Request, usize)>, HeadError> {
    // On the heap, not the stack: this runs on a connection's thread, and every stack page a
    // thread ever touches stays in memory for as long as the connection lives.
    let mut headers = vec![httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let status = match parsed.parse(buf) {
        Ok(status) => status,
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(err) => return Err(HeadError::Malformed(format!("not an HTTP request ({err})"))),
    };
    let httparse::Status::Complete(len) = status else {
        return if buf.len() >= max_len {
            Err(HeadError::TooLarge)
        } else {
            Ok(None)
        };
    };
    if len > max_len {
        return Err(HeadError::TooLarge);
    }
    let request = Request {
        method: parsed.method.unwrap_or_default().to_string(),
        target: parsed.path.unwrap_or_default().to_string(),
        minor_version: parsed.version.unwrap_or_default(),
        headers: parsed
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_string(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect(),
    };
    Ok(Some((request, len)))
}

/// Reads one request head from a blocking stream before `deadline`.
///
/// Returns the request and any bytes the client sent after it.
#[inline(never)]
pub(crate) fn read_head<S: Conn>(
    stream: &mut S,
    deadline: Instant,
    max_len: usize,
) -> Result<(Request, Vec<u8>), HeadError> {
    // Read straight into the heap buffer; see parse_head on why not a stack buffer.
    let mut buf = Vec::with_capacity(READ_CHUNK);
    loop {
        // The deadline covers the whole head, so a client dribbling a byte a second cannot
        // stretch it: each read may only wait for what is left.
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HeadError::Timeout);
        }
        stream.set_read_timeout(Some(left)).map_err(HeadError::Io)?;
        let filled = buf.len();
        buf.resize(filled + READ_CHUNK, 0);
        let read = stream.read(&mut buf[filled..]);
        buf.truncate(filled + *read.as_ref().unwrap_or(&0));
        let n = match read {
            Ok(0) => return Err(HeadError::Closed),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(HeadError::Timeout);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(HeadError::Io(e)),
        };
        debug_assert!(n > 0);
        if let Some((request, len)) = parse_head(&buf, max_len)? {
            stream.set_read_timeout(None).map_err(HeadError::Io)?;
            return Ok((request, buf.split_off(len)));
        }
    }
}

/// A short HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Response {
    /// The status code, like 200 or 404.
    pub(crate) status: u16,
    /// Extra headers, besides the ones every response has.
    pub(crate) headers: Vec<(&'static str, String)>,
    /// The `Content-Type`.
    pub(crate) content_type: &'static str,
    /// The body.
    pub(crate) body: Vec<u8>,
}

impl Response {
    /// A plain-text response: the body is one line saying what happened.
    pub(crate) fn text(status: u16, body: impl Into<String>) -> Response {
        let mut body = body.into().into_bytes();
        body.push(b'\n');
        Response {
            status,
            headers: Vec::new(),
            content_type: "text/plain; charset=utf-8",
            body,
        }
    }

    /// A 400 Bad Request that says what was wrong.
    pub(crate) fn bad_request(why: impl Into<String>) -> Response {
        Response::text(400, why)
    }

    /// The response with one more header.
    pub(crate) fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    /// The response as bytes on the wire; a HEAD request gets the head only.
    pub(crate) fn to_bytes(&self, head_only: bool) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        );
        for (name, value) in &self.headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str("\r\n");
        let mut out = out.into_bytes();
        if !head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

/// Sends a response and closes the connection cleanly.
///
/// Closing a socket that still has unread input makes the kernel send a reset, which can
/// destroy the response before the client reads it. So: send, shut down our sending side,
/// and read (and drop) whatever the client still sends until it closes too, for at most a
/// second.
#[inline(never)]
pub(crate) fn respond_and_close<S: Conn>(stream: &mut S, response: &Response, head_only: bool) {
    let _ = stream.set_write_timeout(Some(LINGER));
    if stream
        .write_all(&response.to_bytes(head_only))
        .and_then(|()| stream.flush())
        .is_err()
    {
        return;
    }
    stream.shutdown_write();
    let deadline = Instant::now() + LINGER;
    let mut sink = [0u8; 1024];
    let mut drained = 0;
    while drained < MAX_DRAINED {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => return,
            Ok(n) => drained += n,
        }
    }
}

/// The reason phrase for the statuses this server sends.
pub(crate) fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_complete_head_is_parsed_and_what_follows_is_left() {
        let raw =
            b"GET /chat?x=1 HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\n\r\nrest";
        let (request, len) = parse_head(raw, 8192).unwrap().unwrap();
        assert_eq!(&raw[len..], b"rest");
        assert_eq!(request.method, "GET");
        assert_eq!(request.path(), "/chat");
        assert_eq!(request.header("host"), Some("a"));
        assert!(request.header_has_token("connection", "upgrade"));
        assert!(!request.header_has_token("connection", "close"));
    }

    #[test]
    fn partial_oversized_and_garbage_heads() {
        assert!(matches!(
            parse_head(b"GET / HTTP/1.1\r\nHo", 8192),
            Ok(None)
        ));
        let long = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(9000));
        assert!(matches!(
            parse_head(long.as_bytes(), 8192),
            Err(HeadError::TooLarge)
        ));
        let many: String = (0..100).map(|i| format!("X{i}: y\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert!(matches!(
            parse_head(many.as_bytes(), 8192),
            Err(HeadError::TooLarge)
        ));
        assert!(matches!(
            parse_head(b"\x16\x03\x01\x00", 8192),
            Err(HeadError::Malformed(_))
        ));
    }

    #[test]
    fn responses_close_the_connection_and_head_omits_the_body() {
        let response = Response::text(404, "no page at /x").with_header("X-A", "b");
        let full = String::from_utf8(response.to_bytes(false)).unwrap();
        assert!(full.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(full.contains("Connection: close\r\n") && full.contains("X-A: b\r\n"));
        assert!(full.ends_with("\r\n\r\nno page at /x\n"));
        let head = String::from_utf8(response.to_bytes(true)).unwrap();
        assert!(head.ends_with("\r\n\r\n") && head.contains("Content-Length: 14\r\n"));
    }
}
