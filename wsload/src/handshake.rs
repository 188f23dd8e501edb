//! The client side of the HTTP/1.1 upgrade handshake (RFC 6455 section 4).
//!
//! wsload checks the server's answer the way a strict client would: status
//! 101, `Upgrade: websocket`, `Connection: upgrade` and, above all, a
//! `Sec-WebSocket-Accept` derived from the key we sent. A benchmark that
//! accepted a sloppy handshake would flatter a sloppy server.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use std::fmt;

/// The fixed GUID of RFC 6455 section 1.3, appended to the key before hashing.
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// A response header block larger than this is refused: a real 101 answer is
/// a few hundred bytes, so anything bigger means we are not talking to a
/// WebSocket server.
pub const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// Length of a base64 encoded SHA-1 digest, i.e. of `Sec-WebSocket-Accept`.
pub const ACCEPT_LEN: usize = 28;

/// Encodes 16 random bytes as the `Sec-WebSocket-Key` header value.
pub fn encode_key(random: [u8; 16]) -> String {
    BASE64.encode(random)
}

/// The `Sec-WebSocket-Accept` value a server must answer `key` with.
pub fn accept_key(key: &str) -> [u8; ACCEPT_LEN] {
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key.as_bytes());
    sha.update(WS_GUID.as_bytes());
    let encoded = BASE64.encode(sha.digest().bytes());
    encoded
        .as_bytes()
        .try_into()
        .expect("base64 of 20 bytes is 28 characters")
}

/// The empty line that ends a request's head: `hold --upgrade-together` holds
/// it back until every connection's request can be completed at once.
pub const REQUEST_END: &[u8] = b"\r\n";

/// The upgrade request. `host` is the URL's authority (`host:port`), `path`
/// its path and query.
pub fn request(host: &str, path: &str, key: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\n\
         Host: {host}\r\n\
         Upgrade: websocket\r\n\
         Connection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\n\
         Sec-WebSocket-Version: 13\r\n\
         User-Agent: wsload\r\n\
         \r\n"
    )
}

/// Why the server's answer to the upgrade request was not acceptable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeError {
    Malformed(String),
    TooLarge,
    Status(u16, String),
    MissingHeader(&'static str),
    BadHeader(&'static str, String),
    WrongAccept,
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::Malformed(why) => write!(f, "malformed HTTP response: {why}"),
            HandshakeError::TooLarge => write!(
                f,
                "HTTP response head exceeds {MAX_RESPONSE_HEAD} bytes (not a WebSocket server?)"
            ),
            HandshakeError::Status(code, reason) => write!(
                f,
                "server answered HTTP {code} {reason} instead of 101 Switching Protocols"
            ),
            HandshakeError::MissingHeader(name) => write!(f, "response lacks the {name} header"),
            HandshakeError::BadHeader(name, value) => {
                write!(f, "unexpected {name} header value {value:?}")
            }
            HandshakeError::WrongAccept => {
                write!(f, "Sec-WebSocket-Accept does not match the key we sent")
            }
        }
    }
}

impl std::error::Error for HandshakeError {}

/// Checks the response at the start of `buf`.
///
/// Returns `Ok(None)` while the header block is incomplete, and
/// `Ok(Some(len))` with the length of the header block once it is complete
/// and valid; any bytes after it are already WebSocket frames.
pub fn check_response(
    buf: &[u8],
    expected_accept: &[u8; ACCEPT_LEN],
) -> Result<Option<usize>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_RESPONSE_HEAD => {
            return Err(HandshakeError::TooLarge);
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(HandshakeError::Malformed(e.to_string())),
    };
    let code = response.code.unwrap_or(0);
    if code != 101 {
        let reason = response.reason.unwrap_or("").to_string();
        return Err(HandshakeError::Status(code, reason));
    }
    let header = |name: &'static str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
            .ok_or(HandshakeError::MissingHeader(name))
    };
    let upgrade = header("Upgrade")?;
    if !upgrade.eq_ignore_ascii_case("websocket") {
        return Err(HandshakeError::BadHeader("Upgrade", upgrade));
    }
    let connection = header("Connection")?;
    if !connection
        .split(',')
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
    {
        return Err(HandshakeError::BadHeader("Connection", connection));
    }
    if header("Sec-WebSocket-Accept")?.as_bytes() != expected_accept {
        return Err(HandshakeError::WrongAccept);
    }
    Ok(Some(head_len))
}

#[cfg(test)]
mod tests {
    use super::*;

    // The example key and answer from RFC 6455 section 1.3.
    const RFC_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
    const RFC_ACCEPT: &[u8; 28] = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

    fn response(accept: &str) -> String {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
             Connection: keep-alive, Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
        )
    }

    #[test]
    fn accept_key_matches_rfc_example() {
        assert_eq!(&accept_key(RFC_KEY), RFC_ACCEPT);
    }

    #[test]
    fn key_is_24_characters() {
        assert_eq!(encode_key([0; 16]).len(), 24);
    }

    #[test]
    fn accepts_valid_response_and_reports_its_length() {
        let mut buf = response("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=").into_bytes();
        let head = buf.len();
        buf.extend_from_slice(&[0x82, 0x00]); // a frame right behind the head
        assert_eq!(check_response(&buf, RFC_ACCEPT), Ok(Some(head)));
    }

    #[test]
    fn waits_for_the_whole_head() {
        let buf = response("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=").into_bytes();
        assert_eq!(check_response(&buf[..buf.len() - 1], RFC_ACCEPT), Ok(None));
    }

    #[test]
    fn rejects_wrong_accept_and_wrong_status() {
        let buf = response("AAAAAAAAAAAAAAAAAAAAAAAAAAA=").into_bytes();
        assert_eq!(
            check_response(&buf, RFC_ACCEPT),
            Err(HandshakeError::WrongAccept)
        );
        let buf = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            check_response(buf, RFC_ACCEPT),
            Err(HandshakeError::Status(404, "Not Found".into()))
        );
    }

    #[test]
    fn request_has_the_mandatory_headers() {
        let req = request("127.0.0.1:9000", "/chat?x=1", RFC_KEY);
        assert!(req.starts_with("GET /chat?x=1 HTTP/1.1\r\n"));
        assert!(req.contains("Host: 127.0.0.1:9000\r\n"));
        assert!(req.contains("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"));
        assert!(req.contains("Sec-WebSocket-Version: 13\r\n"));
        assert!(req.ends_with("\r\n\r\n"));
    }

    #[test]
    fn a_request_held_back_by_its_end_is_incomplete() {
        let req = request("127.0.0.1:9000", "/", RFC_KEY);
        let held = req.as_bytes().strip_suffix(REQUEST_END).unwrap();
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let parsed = httparse::Request::new(&mut headers).parse(held).unwrap();
        assert!(parsed.is_partial());
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let parsed = httparse::Request::new(&mut headers)
            .parse(req.as_bytes())
            .unwrap();
        assert!(parsed.is_complete());
    }
}
