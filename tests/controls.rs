//! Test controls (`?close=`, `?reset=`, `?delay=`, `?fragment=`, `?send=`, `?ping=`,
//! `?whoami`, and `GET /echo`): a client asks its own connection to misbehave, and gets on the
//! wire exactly that (frames, codes, timings, resets); a bad value gets a 400 naming its key;
//! other keys are ignored; `--no-test-controls` ignores them all.

// These tests read the server's log and reset sockets: Linux only, like the rest of the suite.
#![cfg(target_os = "linux")]

mod support;

use std::io::{ErrorKind, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{
    Wsecho, client_frame, close_code, connect, expect_close, http_exchange, next_data, raw,
    raw_websocket_at, read_server_frame, try_read_server_frame, upgrade_request,
};
use tungstenite::Message;
use tungstenite::stream::MaybeTlsStream;

const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CONTINUATION: u8 = 0x0;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xa;

/// Flags of every server here: no greeting and no pings of its own unless a test asks, so
/// that what arrives is what the controls send.
const QUIET: [&str; 6] = [
    "--greeting-delay",
    "off",
    "--ping-interval",
    "off",
    "--idle-timeout",
    "off",
];

fn start(extra: &[&str]) -> Wsecho {
    let args: Vec<&str> = QUIET.iter().chain(extra).copied().collect();
    Wsecho::start(&args)
}

fn send_text(tcp: &mut TcpStream, text: &str) {
    tcp.write_all(&client_frame(true, TEXT, text.as_bytes()))
        .unwrap();
}

/// The text of a frame read from a raw connection, which must be a whole text frame.
fn read_text(tcp: &mut TcpStream) -> String {
    let (fin, opcode, payload) = read_server_frame(tcp);
    assert!(
        fin && opcode == TEXT,
        "expected a whole text frame, got {opcode:#x} fin {fin}"
    );
    String::from_utf8(payload).unwrap()
}

/// The handshake's answer to an upgrade with `target`: its status line and body.
fn refused(addr: SocketAddr, target: &str) -> String {
    http_exchange(addr, upgrade_request(target).as_bytes())
}

fn assert_bad_request(addr: SocketAddr, target: &str, key: &str) {
    let response = refused(addr, target);
    assert!(
        response.starts_with("HTTP/1.1 400 "),
        "{target}: {response}"
    );
    assert!(
        response.contains(&format!("\"{key}\"")),
        "{target}: the 400 does not name {key}: {response}"
    );
}

#[test]
fn close_right_after_the_handshake_with_a_code_and_a_reason() {
    let server = start(&[]);
    let mut ws = connect(&format!(
        "{}/?close=4001&reason=bye%20now%20%E2%9C%93",
        server.url
    ));
    assert_eq!(expect_close(&mut ws), (4001, "bye now ✓".to_string()));
    server.wait_for_log(&[
        "disconnected: code 4001 \"bye now ✓\"",
        "close test control",
    ]);
    // Every code a server may send is accepted.
    for code in [1000, 1003, 1007, 1013, 3000, 4999] {
        let mut ws = connect(&format!("{}/?close={code}", server.url));
        assert_eq!(expect_close(&mut ws), (code, String::new()));
    }
    // 1014 (Bad Gateway, in IANA's registry) too, though tungstenite 0.30 takes it for a
    // reserved code and fails the connection: checked on the wire.
    let mut tcp = raw_websocket_at(server.addr, "/?close=1014");
    let (_, opcode, payload) = read_server_frame(&mut tcp);
    assert_eq!((opcode, close_code(&payload)), (CLOSE, 1014));
}

#[test]
fn close_after_n_echoes_comes_right_after_the_nth() {
    let server = start(&[]);
    let mut tcp = raw_websocket_at(server.addr, "/?close=1000&reason=done&after=2");
    send_text(&mut tcp, "a");
    assert_eq!(read_text(&mut tcp), "a");
    send_text(&mut tcp, "b");
    assert_eq!(read_text(&mut tcp), "b");
    let (_, opcode, payload) = read_server_frame(&mut tcp);
    assert_eq!(opcode, CLOSE);
    assert_eq!(close_code(&payload), 1000);
    assert_eq!(&payload[2..], b"done");
    // The client answers; the server completes the handshake and closes the TCP connection.
    tcp.write_all(&client_frame(true, CLOSE, &payload)).unwrap();
    let end = try_read_server_frame(&mut tcp).unwrap_err();
    assert_eq!(end.kind(), ErrorKind::UnexpectedEof, "{end}");
    server.wait_for_log(&["disconnected: code 1000 \"done\"", "2 messages"]);
}

#[test]
fn close_after_n_deliveries_in_broadcast_mode() {
    let server = start(&["--broadcast"]);
    let mut controlled = connect(&format!("{}/room?close=4000&after=2", server.url));
    let mut sender = connect(&format!("{}/room", server.url));
    for text in ["one", "two", "three"] {
        sender.send(Message::text(text)).unwrap();
    }
    assert_eq!(next_data(&mut controlled), Message::text("one"));
    assert_eq!(next_data(&mut controlled), Message::text("two"));
    // The third never arrives: the Close comes right after the second.
    assert_eq!(expect_close(&mut controlled), (4000, String::new()));
    // The sender, without controls, gets all three.
    for text in ["one", "two", "three"] {
        assert_eq!(next_data(&mut sender), Message::text(text));
    }
}

#[test]
fn reset_after_n_messages_without_a_close() {
    let server = start(&[]);
    let mut tcp = raw_websocket_at(server.addr, "/?reset=2");
    send_text(&mut tcp, "a");
    assert_eq!(read_text(&mut tcp), "a");
    send_text(&mut tcp, "b");
    assert_eq!(read_text(&mut tcp), "b");
    // No Close frame: the connection is reset.
    let end = try_read_server_frame(&mut tcp).unwrap_err();
    assert_eq!(end.kind(), ErrorKind::ConnectionReset, "{end}");
    server.wait_for_log(&["disconnected: code 1006", "reset test control"]);

    // With 0, right after the handshake; tungstenite sees the reset.
    let mut ws = connect(&format!("{}/?reset=0", server.url));
    match ws.read() {
        Err(tungstenite::Error::Io(e)) => assert_eq!(e.kind(), ErrorKind::ConnectionReset),
        other => panic!("expected a reset, got {other:?}"),
    }
}

#[test]
fn delay_sends_each_echo_that_long_after_its_message_in_order() {
    let server = start(&[]);
    let delay = Duration::from_millis(400);
    let mut tcp = raw_websocket_at(server.addr, "/?delay=400ms");
    let started = Instant::now();
    send_text(&mut tcp, "first");
    thread::sleep(Duration::from_millis(100));
    send_text(&mut tcp, "second");
    assert_eq!(read_text(&mut tcp), "first");
    let first = started.elapsed();
    assert_eq!(read_text(&mut tcp), "second");
    let second = started.elapsed();
    assert!(first >= delay, "the first echo came after {first:?}");
    assert!(
        second >= delay + Duration::from_millis(100),
        "the second echo came after {second:?}"
    );
    // Generous: the machine may be busy; a missing delay is what this test is about.
    assert!(second < Duration::from_secs(5), "{second:?}");
}

/// Reads one message of fragments from a raw connection: each frame's (fin, opcode, payload).
fn read_fragments(tcp: &mut TcpStream) -> Vec<(bool, u8, Vec<u8>)> {
    let mut frames = Vec::new();
    loop {
        let frame = read_server_frame(tcp);
        let fin = frame.0;
        frames.push(frame);
        if fin {
            return frames;
        }
    }
}

#[test]
fn fragment_splits_every_message_it_sends_into_continuations() {
    let server = start(&["--greeting-delay", "50ms", "--greeting", "hello you"]);
    let mut tcp = raw_websocket_at(server.addr, "/?fragment=4&send=1&size=6");
    let expect = |frames: Vec<(bool, u8, Vec<u8>)>, opcode: u8, pieces: &[&str]| {
        let want: Vec<(bool, u8, Vec<u8>)> = pieces
            .iter()
            .enumerate()
            .map(|(i, piece)| {
                let op = if i == 0 { opcode } else { CONTINUATION };
                (i + 1 == pieces.len(), op, piece.as_bytes().to_vec())
            })
            .collect();
        assert_eq!(frames, want);
    };
    // The message of send, then the greeting, then an echo: each in frames of 4 bytes at most.
    expect(read_fragments(&mut tcp), TEXT, &["1...", ".."]);
    expect(read_fragments(&mut tcp), TEXT, &["hell", "o yo", "u"]);
    send_text(&mut tcp, "hello world");
    expect(read_fragments(&mut tcp), TEXT, &["hell", "o wo", "rld"]);
    tcp.write_all(&client_frame(true, BINARY, &[7; 4])).unwrap();
    expect(read_fragments(&mut tcp), BINARY, &["\x07\x07\x07\x07"]);

    // tungstenite puts the fragments back together.
    let mut ws = connect(&format!("{}/?fragment=1", server.url));
    ws.send(Message::text("reassembled")).unwrap();
    assert_eq!(next_data(&mut ws), Message::text("reassembled"));
}

#[test]
fn fragment_applies_to_broadcasts() {
    let server = start(&["--broadcast"]);
    let mut controlled = raw_websocket_at(server.addr, "/r?fragment=3");
    server.wait_for_log(&["connected", "room \"r\""]);
    let mut sender = connect(&format!("{}/r", server.url));
    sender.send(Message::text("abcdefg")).unwrap();
    let frames = read_fragments(&mut controlled);
    assert_eq!(
        frames,
        [
            (false, TEXT, b"abc".to_vec()),
            (false, CONTINUATION, b"def".to_vec()),
            (true, CONTINUATION, b"g".to_vec()),
        ]
    );
    assert_eq!(next_data(&mut sender), Message::text("abcdefg"));
}

#[test]
fn send_sends_numbered_messages_then_echoes() {
    let server = start(&[]);
    let mut tcp = raw_websocket_at(server.addr, "/?send=3&size=5");
    for i in 1..=3 {
        assert_eq!(read_text(&mut tcp), format!("{i}...."));
    }
    send_text(&mut tcp, "echo");
    assert_eq!(read_text(&mut tcp), "echo");

    let mut ws = connect(&format!("{}/?send=2&binary", server.url));
    assert_eq!(
        next_data(&mut ws),
        Message::binary(b"1...............".to_vec())
    );
    assert_eq!(
        next_data(&mut ws),
        Message::binary(b"2...............".to_vec())
    );
}

#[test]
fn ping_pings_at_its_interval_and_logs_each_round_trip() {
    let server = start(&[]);
    let mut tcp = raw_websocket_at(server.addr, "/?ping=200ms");
    let started = Instant::now();
    let mut pings = Vec::new();
    for _ in 0..3 {
        let (fin, opcode, payload) = read_server_frame(&mut tcp);
        assert!(fin && opcode == PING, "expected a ping, got {opcode:#x}");
        pings.push(started.elapsed());
        tcp.write_all(&client_frame(true, PONG, &payload)).unwrap();
    }
    // Counted from the connection's start, just before the test's clock: a little slack for
    // that, none for a ping sent early. (The server's own --ping-interval is off.)
    assert!(pings[0] >= Duration::from_millis(180), "{pings:?}");
    assert!(pings[2] >= Duration::from_millis(580), "{pings:?}");
    server.wait_until(|log| log.matches("(ping test control)").count() >= 3);
    assert!(server.log().contains("pong after"), "{}", server.log());
}

/// The `whoami` JSON of a tungstenite client: its first frame.
fn whoami_of(ws: &mut support::Client) -> Value {
    let Message::Text(first) = next_data(ws) else {
        panic!("whoami is a text frame");
    };
    serde_json::from_str(&first).expect("whoami is JSON")
}

#[test]
fn whoami_is_the_first_frame_before_the_greeting() {
    let server = start(&["--greeting-delay", "50ms"]);
    let mut ws = connect(&format!("{}/some/path?whoami&token=a%20b", server.url));
    let json = whoami_of(&mut ws);
    let MaybeTlsStream::Plain(tcp) = ws.get_ref() else {
        unreachable!()
    };
    let me = tcp.local_addr().unwrap().to_string();
    assert_eq!(json["address"], me.as_str());
    assert_eq!(json["peer"], me.as_str());
    assert_eq!(json["method"], "GET");
    assert_eq!(json["path"], "/some/path");
    assert_eq!(json["query"], "whoami&token=a%20b");
    assert_eq!(json["subprotocol"], Value::Null);
    assert_eq!(json["tls"], Value::Null);
    let headers = json["headers"].as_array().unwrap();
    assert!(
        headers
            .iter()
            .any(|h| h[0].as_str().unwrap().eq_ignore_ascii_case("upgrade") && h[1] == "websocket"),
        "{json}"
    );
    // Then the greeting, then echoes.
    let Message::Text(greeting) = next_data(&mut ws) else {
        panic!("the greeting is text")
    };
    assert!(greeting.ends_with("hello client !!!"), "{greeting}");
}

#[test]
fn whoami_comes_before_the_history() {
    let server = start(&["--broadcast", "--history", "10"]);
    let mut sender = connect(&format!("{}/h", server.url));
    sender.send(Message::text("old")).unwrap();
    assert_eq!(next_data(&mut sender), Message::text("old"));
    let mut ws = connect(&format!("{}/h?whoami", server.url));
    assert_eq!(whoami_of(&mut ws)["path"], "/h");
    assert_eq!(next_data(&mut ws), Message::text("old"));
}

#[test]
fn whoami_shows_the_client_a_trusted_proxy_names() {
    let server = start(&["--trusted-proxy", "127.0.0.1"]);
    let mut tcp = raw(server.addr);
    let request = upgrade_request("/?whoami").replacen(
        "Host: localhost\r\n",
        "Host: localhost\r\nX-Forwarded-For: 203.0.113.9\r\nX-Quote: \"q\\\"\r\n",
        1,
    );
    tcp.write_all(request.as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        std::io::Read::read_exact(&mut tcp, &mut byte).unwrap();
        head.push(byte[0]);
    }
    let json: Value = serde_json::from_str(&read_text(&mut tcp)).unwrap();
    assert_eq!(json["address"], "203.0.113.9:0");
    assert_eq!(json["peer"], tcp.local_addr().unwrap().to_string().as_str());
    let headers = json["headers"].as_array().unwrap();
    assert!(
        headers
            .iter()
            .any(|h| h[0] == "X-Quote" && h[1] == "\"q\\\""),
        "{json}"
    );
}

#[test]
fn get_echo_answers_the_same_json_before_any_upgrade() {
    let server = start(&[]);
    let response = http_exchange(
        server.addr,
        b"GET /echo?x=1 HTTP/1.1\r\nHost: example\r\nX-Test: a \"b\"\r\n\r\n",
    );
    assert!(response.starts_with("HTTP/1.1 200 "), "{response}");
    assert!(response.contains("application/json"), "{response}");
    let body = &response[response.find("\r\n\r\n").unwrap() + 4..];
    let json: Value = serde_json::from_str(body).expect("JSON");
    assert_eq!(json["method"], "GET");
    assert_eq!(json["path"], "/echo");
    assert_eq!(json["query"], "x=1");
    assert_eq!(json["headers"][1], serde_json::json!(["X-Test", "a \"b\""]));
    assert_eq!(json["subprotocol"], Value::Null);
    let head = http_exchange(server.addr, b"HEAD /echo HTTP/1.1\r\nHost: example\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(head.ends_with("\r\n\r\n"), "HEAD has no body: {head}");
    // The controls do not apply there.
    let plain = http_exchange(
        server.addr,
        b"GET /echo?close=1 HTTP/1.1\r\nHost: e\r\n\r\n",
    );
    assert!(plain.starts_with("HTTP/1.1 200 "), "{plain}");
}

#[test]
fn bad_values_get_a_400_that_names_the_key() {
    let server = start(&[]);
    for (target, key) in [
        ("/?close=999", "close"),
        ("/?close=1005", "close"),
        ("/?close=1000&reason=%FF", "reason"),
        (
            &*format!("/?close=1000&reason={}", "x".repeat(124)),
            "reason",
        ),
        ("/?close=1000&after=x", "after"),
        ("/?reason=bye", "reason"),
        ("/?after=1", "after"),
        ("/?close=1000&close=1001", "close"),
        ("/?reset=-1", "reset"),
        ("/?reset=10001", "reset"),
        ("/?delay=forever", "delay"),
        ("/?delay=1m", "delay"),
        ("/?fragment=0", "fragment"),
        ("/?send=0", "send"),
        ("/?send=1&size=0", "size"),
        ("/?size=10", "size"),
        ("/?binary", "binary"),
        ("/?ping=1ms", "ping"),
        ("/?whoami=yes", "whoami"),
        ("/?whoami&whoami", "whoami"),
    ] {
        assert_bad_request(server.addr, target, key);
    }
    let broadcast = start(&["--broadcast", "--history", "5"]);
    assert_bad_request(broadcast.addr, "/room?delay=1s", "delay");
    assert_bad_request(broadcast.addr, "/room?send=3", "send");
    let both = refused(broadcast.addr, "/room?whoami&resume");
    assert!(both.starts_with("HTTP/1.1 400 "), "{both}");
    assert!(
        both.contains("\"whoami\"") && both.contains("\"resume\""),
        "{both}"
    );
    // A refusal is logged like any bad request.
    server.wait_for_log(&["rejected: 400", "\"close\""]);
}

#[test]
fn other_query_keys_are_ignored() {
    let server = start(&[]);
    let mut ws = connect(&format!("{}/?token=abc&closed=1&Close=4000&x", server.url));
    ws.send(Message::text("plain")).unwrap();
    assert_eq!(next_data(&mut ws), Message::text("plain"));
}

#[test]
fn no_test_controls_ignores_every_control_and_has_no_echo_path() {
    let server = start(&["--no-test-controls"]);
    let target = "/?close=4000&whoami&send=2&reset=0&fragment=1&delay=1s&ping=10ms&reason=x";
    let mut tcp = raw_websocket_at(server.addr, target);
    send_text(&mut tcp, "whole");
    // No whoami, no messages of send, no fragments, no delay: the echo, whole.
    let started = Instant::now();
    assert_eq!(read_text(&mut tcp), "whole");
    assert!(started.elapsed() < Duration::from_secs(1));
    // Bad values too are ignored, as any query key.
    let mut ws = connect(&format!("{}/?close=999&size=3", server.url));
    ws.send(Message::text("still")).unwrap();
    assert_eq!(next_data(&mut ws), Message::text("still"));
    let echo = http_exchange(server.addr, b"GET /echo HTTP/1.1\r\nHost: e\r\n\r\n");
    assert!(echo.starts_with("HTTP/1.1 404 "), "{echo}");
    // No close and no reset came: the connection is still open.
    send_text(&mut tcp, "again");
    assert_eq!(read_text(&mut tcp), "again");
}

#[test]
fn in_echo_mode_the_greeting_is_not_counted_as_a_message_sent() {
    let server = start(&["--greeting-delay", "50ms", "--greeting", "hello"]);
    let mut tcp = raw_websocket_at(server.addr, "/?close=1000&after=1&reset=5");
    assert_eq!(read_text(&mut tcp), "hello");
    send_text(&mut tcp, "counted");
    assert_eq!(read_text(&mut tcp), "counted");
    let (_, opcode, payload) = read_server_frame(&mut tcp);
    assert_eq!((opcode, close_code(&payload)), (CLOSE, 1000));
}

#[test]
fn reset_counts_deliveries_in_broadcast_mode() {
    let server = start(&["--broadcast"]);
    let mut controlled = raw_websocket_at(server.addr, "/r?reset=1");
    server.wait_for_log(&["connected", "reset=1"]);
    let mut sender = connect(&format!("{}/r", server.url));
    sender.send(Message::text("first")).unwrap();
    sender.send(Message::text("second")).unwrap();
    assert_eq!(read_text(&mut controlled), "first");
    let end = try_read_server_frame(&mut controlled).unwrap_err();
    assert_eq!(end.kind(), ErrorKind::ConnectionReset, "{end}");
    // The others go on.
    assert_eq!(next_data(&mut sender), Message::text("first"));
    assert_eq!(next_data(&mut sender), Message::text("second"));
}
