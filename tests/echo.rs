//! A user's first session: connect, get greeted, hear every message back.

mod support;

use std::io::Write;

use support::{
    Wsecho, client_frame, connect, local_port, next_data, raw_websocket, read_server_frame,
};
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Bytes, Message};

#[test]
fn text_and_binary_come_back_unchanged_and_in_order() {
    let server = Wsecho::start(&["--greeting-delay", "off"]);
    let mut ws = server.connect();
    let texts = ["hello", "héllo wörld ✓ 你好", "", &"x".repeat(70_000)];
    for text in texts {
        ws.send(Message::text(text)).unwrap();
    }
    let binary: Vec<u8> = (0..=255).cycle().take(100_000).collect();
    ws.send(Message::binary(binary.clone())).unwrap();
    ws.send(Message::binary(Vec::new())).unwrap();
    for text in texts {
        assert_eq!(next_data(&mut ws), Message::text(text));
    }
    assert_eq!(next_data(&mut ws), Message::binary(binary));
    assert_eq!(next_data(&mut ws), Message::binary(Vec::new()));
}

#[test]
fn the_greeting_arrives_once_after_the_delay_with_the_time() {
    let server = Wsecho::start(&["--greeting-delay", "200ms"]);
    let mut ws = server.connect();
    let Message::Text(greeting) = next_data(&mut ws) else {
        panic!("greeting is text")
    };
    let (time, text) = greeting.split_at(greeting.len() - " hello client !!!".len());
    assert_eq!(text, " hello client !!!");
    assert!(
        chrono::DateTime::parse_from_str(time, "%Y-%m-%d %H:%M:%S %:z").is_ok(),
        "{greeting}"
    );

    // Exactly one: after it, only the echo of what we send comes back.
    ws.send(Message::text("after")).unwrap();
    assert_eq!(next_data(&mut ws), Message::text("after"));
}

/// An idle client's greeting costs its connection no wake-up: the greeting thread writes it
/// straight into the socket, and the connection's thread sleeps on (docs/design.md).
#[cfg(target_os = "linux")]
#[test]
fn the_greeting_reaches_an_idle_client_without_waking_its_thread() {
    let server = Wsecho::start(&["--greeting-delay", "4s", "--log-level", "trace"]);
    let mut ws = server.connect();
    // A new connection wakes once, one to two seconds after its handshake, to settle
    // (settle.rs); the count starts once it has, well before the greeting is due.
    let port = local_port(&ws);
    server.wait_for_log(&[&format!(":{port} settled")]);
    // The thread logs that line and then goes back to sleep; on a busy machine it may still be
    // on its way there, and that last switch is not the greeting's.
    let before = asleep_connection_threads(server.pid());
    let Message::Text(greeting) = next_data(&mut ws) else {
        panic!("greeting is text")
    };
    assert!(greeting.ends_with(" hello client !!!"), "{greeting}");
    assert_eq!(
        connection_thread_switches(server.pid()),
        before,
        "the connection's thread ran for its greeting"
    );

    // The socket is the connection's again as soon as it has something of its own to send.
    ws.send(Message::text("after")).unwrap();
    assert_eq!(next_data(&mut ws), Message::text("after"));
}

/// The threads named `connection` of process `pid` (one per client, and the parked spares),
/// with the context switches each has made so far.
#[cfg(target_os = "linux")]
fn connection_thread_switches(pid: u32) -> Vec<(String, u64)> {
    connection_threads(pid)
        .into_iter()
        .map(|thread| (thread.tid, thread.voluntary + thread.involuntary))
        .collect()
}

/// [`connection_thread_switches`], once every connection thread is asleep and has made no
/// switch since the look before (10 s at most).
#[cfg(target_os = "linux")]
fn asleep_connection_threads(pid: u32) -> Vec<(String, u64)> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut last = connection_thread_switches(pid);
    loop {
        let asleep = connection_threads(pid).iter().all(|thread| thread.sleeping);
        let now = connection_thread_switches(pid);
        if asleep && now == last {
            return now;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the connection threads never went to sleep"
        );
        last = now;
        std::thread::yield_now();
    }
}

#[cfg(target_os = "linux")]
fn connection_threads(pid: u32) -> Vec<support::ThreadSwitches> {
    support::thread_switches(pid)
        .into_iter()
        .filter(|thread| thread.name == "connection")
        .collect()
}

#[test]
fn the_greeting_text_is_configurable_and_can_be_turned_off() {
    let server = Wsecho::start(&["--greeting-delay", "10ms", "--greeting", "hi at {time}!"]);
    let mut ws = server.connect();
    let Message::Text(greeting) = next_data(&mut ws) else {
        panic!("greeting is text")
    };
    assert!(
        greeting.starts_with("hi at 20") && greeting.ends_with('!'),
        "{greeting}"
    );

    let quiet = Wsecho::start(&["--greeting-delay", "off"]);
    let mut ws = quiet.connect();
    ws.send(Message::text("first")).unwrap();
    assert_eq!(
        next_data(&mut ws),
        Message::text("first"),
        "no greeting before the echo"
    );
}

#[test]
fn fragmented_messages_are_echoed_whole() {
    let server = Wsecho::start(&["--greeting-delay", "off"]);
    let mut tcp = raw_websocket(server.addr);
    // "hello world" in three frames, with a ping between fragments, as section 5.4 allows.
    tcp.write_all(&client_frame(false, 0x1, b"hello")).unwrap();
    tcp.write_all(&client_frame(false, 0x0, b" wor")).unwrap();
    tcp.write_all(&client_frame(true, 0x9, b"ping!")).unwrap();
    tcp.write_all(&client_frame(true, 0x0, b"ld")).unwrap();
    assert_eq!(
        read_server_frame(&mut tcp),
        (true, 0xA, b"ping!".to_vec()),
        "pong first"
    );
    assert_eq!(
        read_server_frame(&mut tcp),
        (true, 0x1, b"hello world".to_vec())
    );
}

#[test]
fn pings_get_pongs() {
    let server = Wsecho::start(&["--greeting-delay", "off"]);
    let mut ws = server.connect();
    ws.send(Message::Ping(Bytes::from_static(b"are you there")))
        .unwrap();
    match ws.read().unwrap() {
        Message::Pong(payload) => assert_eq!(&payload[..], b"are you there"),
        other => panic!("expected the pong, got {other:?}"),
    }
}

#[test]
fn a_clients_close_is_answered_and_logged_with_code_reason_duration_and_count() {
    let server = Wsecho::start(&["--greeting-delay", "off"]);
    let mut ws = server.connect();
    let port = local_port(&ws);
    server.wait_for_log(&[&format!("127.0.0.1:{port} connected: path /, origin none")]);
    for text in ["one", "two"] {
        ws.send(Message::text(text)).unwrap();
        next_data(&mut ws);
    }
    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    }))
    .unwrap();
    // The server completes the handshake: its Close comes back, then the connection ends.
    loop {
        match ws.read() {
            Ok(Message::Close(Some(frame))) => assert_eq!(frame.code, CloseCode::Normal),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("close handshake failed: {e}"),
        }
    }
    let line = server.wait_for_log(&[&format!("127.0.0.1:{port} disconnected")]);
    assert!(
        line.contains("code 1000 \"bye\" (closed by client)"),
        "{line}"
    );
    assert!(
        line.contains("2 messages") && line.contains("after "),
        "{line}"
    );
}

#[test]
fn connections_are_logged_with_path_and_origin_and_messages_at_debug() {
    let server = Wsecho::start(&["--greeting-delay", "off"]);
    let request = tungstenite::handshake::client::Request::builder()
        .uri(format!("{}/chat?room=1", server.url))
        .header("Host", server.addr.to_string())
        .header("Origin", "http://localhost:8080")
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Version", "13")
        .header(
            "Sec-WebSocket-Key",
            tungstenite::handshake::client::generate_key(),
        )
        .body(())
        .unwrap();
    let (mut ws, _) = tungstenite::connect(request).unwrap();
    server.wait_for_log(&["connected: path /chat?room=1, origin http://localhost:8080"]);
    ws.send(Message::text("logged text")).unwrap();
    ws.send(Message::binary(vec![0; 1234])).unwrap();
    server.wait_for_log(&["[DEBUG]", "text \"logged text\""]);
    server.wait_for_log(&["[DEBUG]", "binary, 1234 bytes"]);
    ws.send(Message::text("y".repeat(5000))).unwrap();
    let line = server.wait_for_log(&["text \"yyy"]);
    assert!(
        line.len() < 400 && line.contains("(5000 bytes)"),
        "long text is shortened: {line}"
    );
}

#[test]
fn many_clients_each_hear_only_their_own_echo() {
    let server = Wsecho::start(&["--greeting-delay", "off"]);
    let mut clients: Vec<_> = (0..20).map(|_| connect(&server.url)).collect();
    for (i, ws) in clients.iter_mut().enumerate() {
        ws.send(Message::text(format!("client {i}"))).unwrap();
    }
    for (i, ws) in clients.iter_mut().enumerate() {
        assert_eq!(next_data(ws), Message::text(format!("client {i}")));
    }
}
