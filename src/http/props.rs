//! Property tests for the request parsing wsecho writes itself: `http::parse_head`,
//! `http::read_head`, and the WebSocket handshake checks in `handshake.rs`.
//!
//! Each property runs proptest's default 256 cases, a few seconds in all. To search longer,
//! set `PROPTEST_CASES`, e.g. `PROPTEST_CASES=100000 cargo test --release --lib http::props`.
//! A failing case is shrunk to a small one and saved under `src/http/proptest-regressions/`,
//! and replayed first on every later run: commit that file with the fix.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use sha1::{Digest, Sha1};

use super::handshake::{self, check, is_websocket_request};
use super::{HeadError, MAX_HEADERS, Request, parse_head, read_head};
use crate::Config;

/// The server's cap on a request head.
const MAX_HEAD: usize = crate::config::MAX_REQUEST_HEAD;

/// RFC 6455 section 1.3: the accept value is base64(SHA-1(key + this GUID)).
const WEBSOCKET_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

fn rfc_accept(key: &str) -> String {
    BASE64.encode(Sha1::digest(format!("{key}{WEBSOCKET_GUID}").as_bytes()))
}

/// A header name: an HTTP token (RFC 9110 section 5.6.2).
fn header_name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,20}"
}

/// A header value as browsers send them: visible ASCII, spaces inside only.
fn header_value() -> impl Strategy<Value = String> {
    "[!-~]([ -~]{0,40}[!-~])?"
}

/// A request target: a path and maybe a query.
fn target() -> impl Strategy<Value = String> {
    "/[A-Za-z0-9/._~%-]{0,30}(\\?[A-Za-z0-9=&%._-]{0,20})?"
}

/// A well-formed request head: its bytes, and the request it must parse to.
fn request_head() -> impl Strategy<Value = (Vec<u8>, Request)> {
    (
        "[A-Z]{1,8}",
        target(),
        0u8..=1,
        vec((header_name(), header_value()), 0..20),
    )
        .prop_map(|(method, target, minor_version, headers)| {
            let mut raw = format!("{method} {target} HTTP/1.{minor_version}\r\n");
            for (name, value) in &headers {
                raw.push_str(&format!("{name}: {value}\r\n"));
            }
            raw.push_str("\r\n");
            let request = Request {
                method,
                target,
                minor_version,
                headers,
            };
            (raw.into_bytes(), request)
        })
}

/// `word` with each letter's case chosen by `mask`: header names and tokens ignore case.
fn recase(word: &str, mask: u64) -> String {
    word.chars()
        .enumerate()
        .map(|(i, c)| {
            if mask >> (i % 64) & 1 == 1 {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

/// A valid upgrade request, in any of the ways a client may write one: any header case and
/// order, extra headers, `Connection` with other tokens, a random key. Returns the request
/// and the key.
fn upgrade_request() -> impl Strategy<Value = (String, String)> {
    (
        any::<[u8; 16]>(),
        any::<u64>(),
        select(vec![
            "Upgrade",
            "keep-alive, Upgrade",
            "Upgrade,close",
            "foo , UPGRADE ",
        ]),
        vec((header_name(), header_value()), 0..8),
        any::<u32>(),
        target(),
    )
        .prop_map(|(key_bytes, case, connection, extra, seed, target)| {
            let key = BASE64.encode(key_bytes);
            let mut headers = vec![
                ("Host", "example.com:3000".to_string()),
                ("Upgrade", recase("websocket", case)),
                ("Connection", connection.to_string()),
                ("Sec-WebSocket-Key", key.clone()),
                ("Sec-WebSocket-Version", "13".to_string()),
            ];
            // A fixed-seed shuffle: the order of headers does not matter.
            let n = headers.len();
            for i in 0..n {
                headers.swap(i, (seed as usize >> (i * 3)) % n);
            }
            let mut raw = format!("GET {target} HTTP/1.1\r\n");
            for (name, value) in headers {
                raw.push_str(&format!(
                    "{}: {value}\r\n",
                    recase(name, case.rotate_left(7))
                ));
            }
            for (name, value) in extra {
                // Extra headers must not repeat the ones the handshake reads.
                if !name.to_ascii_lowercase().starts_with("sec-websocket")
                    && !["host", "upgrade", "connection", "origin"]
                        .contains(&name.to_ascii_lowercase().as_str())
                {
                    raw.push_str(&format!("{name}: {value}\r\n"));
                }
            }
            raw.push_str("\r\n");
            (raw, key)
        })
}

fn parse(raw: &[u8]) -> Request {
    parse_head(raw, MAX_HEAD)
        .expect("a well-formed head")
        .expect("a complete head")
        .0
}

/// One way to break an upgrade request, and the status it must get.
#[derive(Debug, Clone)]
enum Mutation {
    DropHeader(&'static str, u16),
    /// A key that is not 16 bytes in base64.
    BadKey(String),
    /// A version other than 13.
    OtherVersion(String),
    Method(String),
    Http10,
    /// An Origin outside the allowed list.
    ForeignOrigin(String),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        select(vec![
            ("Host", 400),
            ("Upgrade", 400),
            ("Connection", 400),
            ("Sec-WebSocket-Key", 400),
            ("Sec-WebSocket-Version", 400),
        ])
        .prop_map(|(name, status)| Mutation::DropHeader(name, status)),
        prop_oneof![
            // Base64 of anything but 16 bytes.
            vec(any::<u8>(), 0..40)
                .prop_filter("not 16 bytes", |b| b.len() != 16)
                .prop_map(|b| BASE64.encode(b)),
            // Not base64 at all.
            "[!-~]{0,30}[!#$%&()*,.:;<>?@^_`{|}~-][!-~]{0,10}",
        ]
        .prop_map(Mutation::BadKey),
        "[0-9A-Za-z.]{0,6}"
            .prop_filter("not 13", |v| v != "13")
            .prop_map(Mutation::OtherVersion),
        "[A-Z]{1,8}"
            .prop_filter("not GET", |m| m != "GET")
            .prop_map(Mutation::Method),
        Just(Mutation::Http10),
        "https?://[a-z0-9.-]{1,20}(:[0-9]{1,5})?"
            .prop_filter("not the allowed one", |o| o != ALLOWED_ORIGIN)
            .prop_map(Mutation::ForeignOrigin),
    ]
}

/// Applies a mutation to a valid upgrade request; returns the new request and the status it
/// must get.
fn mutate(raw: &str, mutation: &Mutation) -> (String, u16) {
    let lines: Vec<&str> = raw.trim_end().split("\r\n").collect();
    let is = |line: &str, name: &str| {
        line.split(':')
            .next()
            .is_some_and(|n| n.eq_ignore_ascii_case(name))
    };
    let replace = |name: &str, with: Option<String>| -> String {
        let mut out: Vec<String> = Vec::new();
        for line in &lines {
            if is(line, name) {
                if let Some(line) = &with {
                    out.push(line.clone());
                }
            } else {
                out.push(line.to_string());
            }
        }
        out.join("\r\n") + "\r\n\r\n"
    };
    match mutation {
        Mutation::DropHeader(name, status) => (replace(name, None), *status),
        Mutation::BadKey(key) => (
            replace(
                "Sec-WebSocket-Key",
                Some(format!("Sec-WebSocket-Key: {key}")),
            ),
            400,
        ),
        Mutation::OtherVersion(v) => (
            replace(
                "Sec-WebSocket-Version",
                Some(format!("Sec-WebSocket-Version: {v}")),
            ),
            426,
        ),
        Mutation::Method(method) => (raw.replacen("GET", method, 1), 405),
        Mutation::Http10 => (raw.replacen("HTTP/1.1", "HTTP/1.0", 1), 400),
        Mutation::ForeignOrigin(origin) => (
            raw.trim_end().to_string() + &format!("\r\nOrigin: {origin}\r\n\r\n"),
            403,
        ),
    }
}

/// The one origin [`strict_config`] allows.
const ALLOWED_ORIGIN: &str = "https://only.example";

/// The config the mutations are checked against: only one origin is allowed.
fn strict_config() -> Config {
    Config {
        allowed_origins: vec![ALLOWED_ORIGIN.into()],
        ..Config::default()
    }
}

proptest! {
    /// No input makes the parser or the handshake checks panic, and a parsed head never
    /// claims more bytes than it was given or than the cap.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..2048), cap in 0usize..4096) {
        if let Ok(Some((request, len))) = parse_head(&bytes, cap) {
            prop_assert!(len <= bytes.len() && len <= cap);
            let _ = is_websocket_request(&request);
            let _ = check(&request, &Config::default());
        }
    }

    /// The same for inputs that look much more like requests: a request line and headers
    /// drawn from the ones the handshake reads, with odd values, odd bytes included.
    #[test]
    fn request_shaped_noise_never_panics(
        line in select(vec!["GET / HTTP/1.1", "GET /x HTTP/1.0", "POST / HTTP/1.1", "G\0T / HTTP/1.1"]),
        headers in vec(
            (
                select(vec!["Host", "upgrade", "CONNECTION", "Sec-WebSocket-Key",
                            "sec-websocket-version", "Origin", "Sec-WebSocket-Protocol", "X"]),
                vec(any::<u8>(), 0..40),
            ),
            0..12,
        ),
    ) {
        let mut raw = format!("{line}\r\n").into_bytes();
        for (name, value) in headers {
            raw.extend_from_slice(name.as_bytes());
            raw.extend_from_slice(b": ");
            raw.extend(value.into_iter().filter(|b| !matches!(b, b'\r' | b'\n')));
            raw.extend_from_slice(b"\r\n");
        }
        raw.extend_from_slice(b"\r\n");
        if let Ok(Some((request, _))) = parse_head(&raw, MAX_HEAD) {
            let _ = is_websocket_request(&request);
            if let Ok(accepted) = check(&request, &strict_config()) {
                let response = handshake::switching_protocols(&accepted);
                prop_assert!(response.starts_with(b"HTTP/1.1 101 "));
            }
        }
    }

    /// A well-formed head is "not yet" at every prefix, then the same request at its end,
    /// whatever follows it (a client may send its first frame at once).
    #[test]
    fn a_head_split_anywhere_parses_the_same_once_complete(
        (raw, expected) in request_head(),
        after in vec(any::<u8>(), 0..64),
    ) {
        for cut in 0..raw.len() {
            prop_assert!(
                matches!(parse_head(&raw[..cut], MAX_HEAD), Ok(None)),
                "prefix of {cut} bytes"
            );
        }
        let mut whole = raw.clone();
        whole.extend_from_slice(&after);
        let (request, len) = parse_head(&whole, MAX_HEAD).unwrap().unwrap();
        prop_assert_eq!(len, raw.len());
        prop_assert_eq!(request, expected);
    }

    /// Over a socket, in chunks of any size, `read_head` returns the request and gives back
    /// exactly the bytes that followed it.
    #[test]
    fn read_head_reassembles_chunks_and_returns_what_follows(
        (raw, expected) in request_head(),
        after in vec(any::<u8>(), 0..64),
        cuts in vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        client.set_nodelay(true).unwrap();
        let mut sent = raw.clone();
        sent.extend_from_slice(&after);
        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(sent.len())).collect();
        cuts.push(sent.len());
        cuts.sort_unstable();
        let writer = std::thread::spawn(move || {
            let mut from = 0;
            for to in cuts {
                client.write_all(&sent[from..to]).unwrap();
                from = to;
            }
            client
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        let (request, mut rest) = read_head(&mut server, deadline, MAX_HEAD).unwrap();
        let _client = writer.join().unwrap();
        // What followed the head may still be on its way; read_head only returns what came
        // with the head's last chunk, the rest is the WebSocket's to read.
        let mut tail = vec![0u8; after.len() - rest.len().min(after.len())];
        std::io::Read::read_exact(&mut server, &mut tail).unwrap();
        rest.extend_from_slice(&tail);
        prop_assert_eq!(request, expected);
        prop_assert_eq!(rest, after);
    }

    /// A head longer than the cap is refused as too large, complete or not, once the cap is
    /// reached; before that it is "not yet". A head within the cap parses.
    #[test]
    fn heads_over_the_cap_are_too_large((raw, _) in request_head(), cap in 16usize..600) {
        for cut in 0..=raw.len() {
            let result = parse_head(&raw[..cut], cap);
            let complete = cut == raw.len();
            match result {
                Ok(None) => prop_assert!(!complete && cut < cap, "{cut} bytes, cap {cap}"),
                Ok(Some(_)) => prop_assert!(complete && raw.len() <= cap),
                Err(HeadError::TooLarge) if complete => prop_assert!(raw.len() > cap),
                Err(HeadError::TooLarge) => prop_assert!(cut >= cap, "{cut} bytes, cap {cap}"),
                Err(e) => prop_assert!(false, "{cut} bytes, cap {cap}: {e:?}"),
            }
        }
    }

    /// More header lines than the parser has room for is too large too, whatever the cap.
    #[test]
    fn too_many_header_lines_are_too_large(extra in 1usize..20) {
        let lines: String = (0..MAX_HEADERS + extra).map(|i| format!("X-{i}: y\r\n")).collect();
        let raw = format!("GET / HTTP/1.1\r\n{lines}\r\n");
        prop_assert!(matches!(parse_head(raw.as_bytes(), usize::MAX), Err(HeadError::TooLarge)));
    }

    /// Any valid upgrade, written any valid way, is accepted with the accept value RFC 6455
    /// defines, and is recognised as an upgrade.
    #[test]
    fn valid_upgrades_are_accepted_with_the_rfc_accept_value((raw, key) in upgrade_request()) {
        let request = parse(raw.as_bytes());
        prop_assert!(is_websocket_request(&request));
        let accepted = check(&request, &strict_config()).map_err(|r| {
            TestCaseError::fail(format!("refused with {}: {raw}", r.status))
        })?;
        prop_assert_eq!(&accepted.accept, &rfc_accept(&key));
        prop_assert_eq!(&accepted.subprotocol, &None);
        let response = String::from_utf8(handshake::switching_protocols(&accepted)).unwrap();
        let accept_header = format!("\r\nSec-WebSocket-Accept: {}\r\n", rfc_accept(&key));
        prop_assert!(response.contains(&accept_header));
    }

    /// Breaking one thing in a valid upgrade gets it refused, with the status for that thing;
    /// a refused version always says which version the server speaks.
    #[test]
    fn broken_upgrades_are_refused_with_the_right_status(
        (raw, _) in upgrade_request(),
        mutation in mutation(),
    ) {
        let (broken, status) = mutate(&raw, &mutation);
        let request = parse(broken.as_bytes());
        prop_assert!(is_websocket_request(&request), "still an attempt at a WebSocket");
        let refused = match check(&request, &strict_config()) {
            Ok(_) => return Err(TestCaseError::fail(format!("accepted: {broken}"))),
            Err(response) => response,
        };
        prop_assert_eq!(refused.status, status, "{:?}\n{}", mutation, broken);
        if matches!(mutation, Mutation::OtherVersion(_) | Mutation::DropHeader("Sec-WebSocket-Version", _)) {
            prop_assert!(refused.headers.contains(&("Sec-WebSocket-Version", "13".to_string())));
        }
    }

    /// Tokens in a list header are found whatever their case, spacing and position.
    #[test]
    fn header_tokens_are_found_in_any_case_and_position(
        before in vec("[a-z-]{1,10}", 0..4),
        after in vec("[a-z-]{1,10}", 0..4),
        case in any::<u64>(),
        spaces in "[ \t]{0,3}",
    ) {
        let mut tokens = before.clone();
        tokens.push(recase("upgrade", case));
        tokens.extend(after);
        let value = tokens.join(&format!("{spaces},{spaces}"));
        let raw = format!("GET / HTTP/1.1\r\nConnection: {value}\r\n\r\n");
        let request = parse(raw.as_bytes());
        prop_assert!(request.header_has_token("connection", "Upgrade"));
        prop_assert!(request.header_has_token("CONNECTION", "upgrade"));
    }
}

#[test]
fn the_rfc_example_key_gets_the_rfc_example_accept() {
    // RFC 6455 section 1.3, and a check of this file's own oracle.
    assert_eq!(
        rfc_accept("dGhlIHNhbXBsZSBub25jZQ=="),
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
}
