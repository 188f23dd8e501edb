//! The WebSocket opening handshake (RFC 6455 section 4.2): checking an upgrade request and
//! answering it, or refusing it with the right HTTP status.

use crate::config::Config;
use crate::http::{Request, Response};

/// The only protocol version RFC 6455 defines.
const VERSION: &str = "13";

/// An accepted upgrade: what the 101 response needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Accepted {
    /// The Sec-WebSocket-Accept value, proof that we read the client's key.
    pub(crate) accept: String,
    /// The subprotocol chosen, if the client offered one the server speaks.
    pub(crate) subprotocol: Option<String>,
}

/// Whether a request is trying to open a WebSocket, well-formed or not. Such a request gets
/// the handshake or a 4xx, never the demo page.
pub(crate) fn is_websocket_request(request: &Request) -> bool {
    request.header_has_token("upgrade", "websocket")
        || request.header("sec-websocket-key").is_some()
        || request.header("sec-websocket-version").is_some()
}

/// Checks an upgrade request against RFC 6455 and the server's origin policy.
pub(crate) fn check(request: &Request, config: &Config) -> Result<Accepted, Response> {
    if request.method != "GET" {
        return Err(
            Response::text(405, "a WebSocket handshake must be a GET request")
                .with_header("Allow", "GET"),
        );
    }
    if request.minor_version < 1 {
        return Err(Response::bad_request(
            "a WebSocket handshake needs HTTP/1.1",
        ));
    }
    if request.header("host").is_none() {
        return Err(Response::bad_request("missing Host header"));
    }
    if !request.header_has_token("upgrade", "websocket") {
        return Err(Response::bad_request(
            "missing \"Upgrade: websocket\" header",
        ));
    }
    if !request.header_has_token("connection", "upgrade") {
        return Err(Response::bad_request(
            "missing \"Connection: Upgrade\" header",
        ));
    }
    match request.header("sec-websocket-version").map(str::trim) {
        Some(VERSION) => {}
        Some(other) => {
            return Err(
                Response::text(426, format!("unsupported WebSocket version {other:?}"))
                    .with_header("Sec-WebSocket-Version", VERSION),
            );
        }
        None => {
            return Err(
                Response::bad_request("missing Sec-WebSocket-Version header")
                    .with_header("Sec-WebSocket-Version", VERSION),
            );
        }
    }
    let Some(key) = request.header("sec-websocket-key").map(str::trim) else {
        return Err(Response::bad_request("missing Sec-WebSocket-Key header"));
    };
    // The key must be 16 random bytes in base64 (section 4.1); anything else is not a client
    // that read the RFC, and answering it would only help it pretend.
    match data_encoding::BASE64.decode(key.as_bytes()) {
        Ok(bytes) if bytes.len() == 16 => {}
        _ => {
            return Err(Response::bad_request(
                "Sec-WebSocket-Key is not 16 bytes in base64",
            ));
        }
    }
    if let Some(origin) = request.header("origin") {
        let allowed = config.allowed_origins.is_empty()
            || config
                .allowed_origins
                .iter()
                .any(|o| o.eq_ignore_ascii_case(origin.trim()));
        if !allowed {
            return Err(Response::text(
                403,
                format!("origin {origin} is not allowed"),
            ));
        }
    }
    Ok(Accepted {
        accept: tungstenite::handshake::derive_accept_key(key.as_bytes()),
        subprotocol: choose_subprotocol(request, &config.subprotocols),
    })
}

/// The server's favourite among the subprotocols the client offers. A client that offers only
/// ones we don't speak still gets its WebSocket, with none (section 4.2.2); it may then close.
fn choose_subprotocol(request: &Request, ours: &[String]) -> Option<String> {
    let offered: Vec<&str> = request
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("sec-websocket-protocol"))
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
        .collect();
    ours.iter().find(|p| offered.contains(&p.as_str())).cloned()
}

/// The 101 response that completes the handshake.
#[inline(never)]
pub(crate) fn switching_protocols(accepted: &Accepted) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n",
        accepted.accept
    );
    if let Some(protocol) = &accepted.subprotocol {
        out.push_str(&format!("Sec-WebSocket-Protocol: {protocol}\r\n"));
    }
    out.push_str("\r\n");
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::parse_head;

    fn request(extra: &str) -> Request {
        let raw = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{extra}\r\n"
        );
        parse_head(raw.as_bytes(), 8192).unwrap().unwrap().0
    }

    const KEY: &str = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    const V13: &str = "Sec-WebSocket-Version: 13\r\n";

    #[test]
    fn the_rfc_example_is_accepted() {
        let accepted = check(&request(&format!("{KEY}{V13}")), &Config::default()).unwrap();
        // The example from RFC 6455 section 1.3.
        assert_eq!(accepted.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(accepted.subprotocol, None);
    }

    #[test]
    fn bad_keys_and_versions_are_refused() {
        let status = |extra: &str| {
            check(&request(extra), &Config::default())
                .unwrap_err()
                .status
        };
        assert_eq!(status(V13), 400);
        assert_eq!(
            status(&format!("Sec-WebSocket-Key: c2hvcnQ=\r\n{V13}")),
            400
        );
        assert_eq!(status(KEY), 400);
        assert_eq!(status(&format!("{KEY}Sec-WebSocket-Version: 8\r\n")), 426);
    }

    #[test]
    fn origins_and_subprotocols() {
        let config = Config {
            allowed_origins: vec!["http://good.example".into()],
            subprotocols: vec!["chat".into()],
            ..Config::default()
        };
        let from = |origin: &str| request(&format!("{KEY}{V13}Origin: {origin}\r\n"));
        assert!(check(&from("http://good.example"), &config).is_ok());
        assert_eq!(
            check(&from("http://evil.example"), &config)
                .unwrap_err()
                .status,
            403
        );
        // Not a browser: no Origin header, nothing to check.
        assert!(check(&request(&format!("{KEY}{V13}")), &config).is_ok());

        let offer = |p: &str| request(&format!("{KEY}{V13}Sec-WebSocket-Protocol: {p}\r\n"));
        let chosen = |p: &str| check(&offer(p), &config).unwrap().subprotocol;
        assert_eq!(chosen("superchat, chat"), Some("chat".into()));
        assert_eq!(chosen("mqtt"), None);
    }
}
