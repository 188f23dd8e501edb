//! Resuming by position (`?resume`, with `--broadcast --history N`): a client whose connection
//! breaks comes back with the epoch and offset of the last message it got, and gets every later
//! message exactly once, in order, on one instance and on either instance of a cluster. A
//! position the server cannot continue says `"recovered":false`, never a silent gap; a bad
//! request gets a 400 that says why; plain clients see no change.

// These tests read the server's log for its ports: Linux only, like the rest of the suite.
#![cfg(target_os = "linux")]

#[cfg(feature = "cluster")]
#[path = "support/redis.rs"]
mod redis_server;
mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use serde_json::Value;
use support::{
    Client, Wsecho, client_frame, connect, http_exchange, next_data, raw_websocket,
    try_read_server_frame,
};
use tungstenite::Message;
use tungstenite::stream::MaybeTlsStream;

const TEXT: u8 = 0x1;

/// Flags of every server here: broadcast with history, no greeting unless a test asks, and no
/// pings, so that a read waiting for a message that never comes times out.
const BASE: [&str; 9] = [
    "--broadcast",
    "--history",
    "100000",
    "--greeting-delay",
    "off",
    "--ping-interval",
    "off",
    "--idle-timeout",
    "off",
];

/// The first frame of a resumed connection.
#[derive(Debug, Clone, PartialEq)]
struct Header {
    epoch: String,
    offset: u64,
    recovered: bool,
}

/// Connects to `url` with `?resume` or `?resume=EPOCH:OFFSET`, and reads the header.
fn resume(url: &str, after: Option<(&str, u64)>) -> (Client, Header) {
    let query = match after {
        Some((epoch, offset)) => format!("?resume={epoch}:{offset}"),
        None => "?resume".to_string(),
    };
    let mut ws = connect(&format!("{url}{query}"));
    let Message::Text(first) = next_data(&mut ws) else {
        panic!("the first frame is not text");
    };
    let json: Value = serde_json::from_str(&first).expect("the header is JSON");
    let header = Header {
        epoch: json["epoch"].as_str().expect("an epoch").to_string(),
        offset: json["offset"].as_u64().expect("an offset"),
        recovered: json["recovered"].as_bool().expect("recovered"),
    };
    (ws, header)
}

/// Sends `count` numbered text messages ("0", "1", …) into the lobby of `server`, a few at a
/// time, reading its own copies as they come (as a browser does). Returns when all are sent.
fn send_numbered(addr: std::net::SocketAddr, from: u32, count: u32) -> thread::JoinHandle<()> {
    let tcp = raw_websocket(addr);
    let mut reader = tcp.try_clone().unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let reading = Arc::clone(&done);
    thread::spawn(move || {
        while !reading.load(Ordering::SeqCst) && try_read_server_frame(&mut reader).is_ok() {}
    });
    let mut writer = tcp;
    thread::spawn(move || {
        for n in from..from + count {
            writer
                .write_all(&client_frame(true, TEXT, n.to_string().as_bytes()))
                .unwrap();
            if n % 20 == 19 {
                thread::sleep(Duration::from_millis(2));
            }
        }
        done.store(true, Ordering::SeqCst);
    })
}

/// Reads numbered messages, checking each is the one after the last, until `last` or until
/// the connection breaks; returns the offset of the last message read. In a room whose first
/// message was "0", message "n" is offset n + 1.
fn read_numbered_until(ws: &mut Client, mut offset: u64, last: u64) -> u64 {
    while offset < last {
        match ws.read() {
            Ok(Message::Text(text)) => {
                let n: u64 = text.parse().expect("a numbered message");
                assert_eq!(
                    n + 1,
                    offset + 1,
                    "a gap or a duplicate after offset {offset}"
                );
                offset += 1;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    offset
}

fn tcp_of(ws: &Client) -> &TcpStream {
    match ws.get_ref() {
        MaybeTlsStream::Plain(tcp) => tcp,
        _ => unreachable!("tests use plain ws://"),
    }
}

/// A client that resumes, is cut off mid-stream while a sender keeps sending, and comes back
/// at `back_to` with its last position: it gets every later message once, in order.
fn cut_mid_stream_and_resume(first: &Wsecho, back_to: &Wsecho) {
    const COUNT: u64 = 3000;
    let (mut ws, header) = resume(&first.url, None);
    assert_eq!(header.offset, 0, "an empty room says 0");
    assert!(!header.recovered, "a newcomer recovers nothing");
    let sender = send_numbered(first.addr, 0, COUNT as u32);
    // Mid-stream: a few hundred in, the connection is cut without a Close.
    let got = read_numbered_until(&mut ws, 0, 300);
    assert_eq!(got, 300);
    tcp_of(&ws).shutdown(Shutdown::Both).unwrap();
    drop(ws);
    let (mut ws, again) = resume(&back_to.url, Some((&header.epoch, got)));
    assert_eq!(
        again,
        Header {
            epoch: header.epoch.clone(),
            offset: got,
            recovered: true
        }
    );
    assert_eq!(read_numbered_until(&mut ws, got, COUNT), COUNT);
    sender.join().unwrap();
}

#[test]
fn a_client_cut_off_mid_stream_resumes_and_gets_every_later_message_once() {
    let server = Wsecho::start(&BASE);
    cut_mid_stream_and_resume(&server, &server);
}

#[cfg(feature = "cluster")]
#[test]
fn a_client_cut_off_mid_stream_resumes_on_the_other_instance_of_a_cluster() {
    let redis = redis_server::RedisServer::start(&[]);
    let servers: Vec<Wsecho> = (0..2)
        .map(|_| {
            let mut args: Vec<&str> = BASE.to_vec();
            args.extend(["--redis", &redis.url, "--redis-channel", &redis.channel]);
            let server = Wsecho::start(&args);
            server.wait_for_log(&["redis link up: subscribed to channel"]);
            server
        })
        .collect();
    cut_mid_stream_and_resume(&servers[0], &servers[1]);
    // Both instances number the room alike: a newcomer on either learns the same position.
    let (_, on_a) = resume(&servers[0].url, None);
    let (_, on_b) = resume(&servers[1].url, None);
    assert_eq!(on_a.epoch, on_b.epoch);
}

#[test]
fn a_listener_let_go_for_falling_behind_resumes_and_gets_everything() {
    const COUNT: u64 = 2000;
    let mut args = BASE.to_vec();
    args.extend(["--max-backlog", "64KiB"]);
    let server = Wsecho::start(&args);
    let (mut ws, header) = resume(&server.url, None);
    let port = tcp_of(&ws).local_addr().unwrap().port();
    // It does not read while 2,000 messages of 1 KiB go by: far more than its backlog and
    // its sockets' buffers hold, so the server lets it go.
    let sender = thread::spawn({
        let addr = server.addr;
        move || {
            let tcp = raw_websocket(addr);
            let mut reader = tcp.try_clone().unwrap();
            thread::spawn(move || while try_read_server_frame(&mut reader).is_ok() {});
            let mut writer = tcp;
            for n in 0..COUNT {
                let mut text = n.to_string();
                text.push(' ');
                text.extend(std::iter::repeat_n('x', 1024));
                writer
                    .write_all(&client_frame(true, TEXT, text.as_bytes()))
                    .unwrap();
            }
        }
    });
    sender.join().unwrap();
    server.wait_for_log(&[&format!(
        ":{port} disconnected: code 1008 \"too slow: fell behind"
    )]);
    // Now it reads what reached it, then comes back for the rest.
    let mut offset = header.offset;
    loop {
        match ws.read() {
            Ok(Message::Text(text)) => {
                let n: u64 = text.split(' ').next().unwrap().parse().unwrap();
                assert_eq!(n, offset, "a gap or a duplicate");
                offset += 1;
            }
            Ok(Message::Close(frame)) => {
                assert_eq!(frame.map(|f| u16::from(f.code)), Some(1008));
                break;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert!(offset < COUNT, "it was let go before the end");
    let (mut ws, again) = resume(&server.url, Some((&header.epoch, offset)));
    assert!(again.recovered, "{again:?}");
    assert_eq!(again.offset, offset);
    while offset < COUNT {
        let Message::Text(text) = next_data(&mut ws) else {
            panic!("not text");
        };
        let n: u64 = text.split(' ').next().unwrap().parse().unwrap();
        assert_eq!(n, offset, "a gap or a duplicate");
        offset += 1;
    }
}

#[test]
fn a_position_the_server_cannot_continue_is_never_a_silent_gap() {
    let mut args = BASE.to_vec();
    args[2] = "5"; // --history 5
    let server = Wsecho::start(&args);
    let (mut first, header) = resume(&server.url, None);
    send_numbered(server.addr, 0, 20).join().unwrap();
    assert_eq!(read_numbered_until(&mut first, 0, 20), 20);
    let epoch = header.epoch.as_str();

    // Older than the oldest kept (16 to 20): from the oldest kept, not recovered.
    let (mut ws, old) = resume(&server.url, Some((epoch, 3)));
    assert_eq!((old.offset, old.recovered), (15, false));
    assert_eq!(next_data(&mut ws), Message::text("15"));
    // Right before the oldest kept: recovered.
    let (mut ws, edge) = resume(&server.url, Some((epoch, 15)));
    assert_eq!((edge.offset, edge.recovered), (15, true));
    assert_eq!(next_data(&mut ws), Message::text("15"));
    // Another epoch: not recovered, from the oldest kept.
    let (mut ws, other) = resume(&server.url, Some(("another-epoch", 18)));
    assert_eq!(
        (other.epoch.as_str(), other.offset, other.recovered),
        (epoch, 15, false)
    );
    assert_eq!(next_data(&mut ws), Message::text("15"));
    // Ahead of the newest: not recovered, and live from here.
    let (mut ws, ahead) = resume(&server.url, Some((epoch, 99)));
    assert_eq!((ahead.offset, ahead.recovered), (20, false));
    send_numbered(server.addr, 20, 1).join().unwrap();
    assert_eq!(next_data(&mut ws), Message::text("20"));
    // Up to date: recovered, nothing kept comes again.
    let (mut ws, current) = resume(&server.url, Some((epoch, 21)));
    assert_eq!((current.offset, current.recovered), (21, true));
    send_numbered(server.addr, 21, 1).join().unwrap();
    assert_eq!(next_data(&mut ws), Message::text("21"));
}

#[test]
fn a_new_server_is_a_new_epoch() {
    let first = Wsecho::start(&BASE);
    let (_, a) = resume(&first.url, None);
    send_numbered(first.addr, 0, 3).join().unwrap();
    let second = Wsecho::start(&BASE);
    let (_, b) = resume(&second.url, Some((&a.epoch, 3)));
    assert_ne!(a.epoch, b.epoch);
    assert!(!b.recovered);
}

#[test]
fn resume_clients_get_no_greeting_and_plain_clients_get_the_same_frames_as_before() {
    let mut args = BASE.to_vec();
    args[4] = "50ms"; // --greeting-delay
    let server = Wsecho::start(&args);
    let (mut resumed, header) = resume(&server.url, None);
    let mut plain = connect(&server.url);
    let greeting = next_data(&mut plain);
    assert!(matches!(&greeting, Message::Text(t) if t.ends_with("hello client !!!")));
    plain.send(Message::text("hi")).unwrap();
    assert_eq!(
        next_data(&mut plain),
        Message::text("hi"),
        "no header, no envelope"
    );
    // The resumed client's next message is the broadcast: no greeting came before it.
    assert_eq!(next_data(&mut resumed), Message::text("hi"));
    assert_eq!(header.offset, 0);
    plain.send(Message::binary(vec![1, 2, 3])).unwrap();
    assert_eq!(
        next_data(&mut resumed),
        Message::binary(vec![1, 2, 3]),
        "binary stays binary"
    );
}

/// The status and body of the answer to a WebSocket handshake for `target`.
fn handshake(server: &Wsecho, target: &str) -> String {
    let request = format!(
        "GET {target} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    http_exchange(server.addr, request.as_bytes())
}

#[test]
fn a_resume_the_server_cannot_serve_gets_a_400_that_says_why() {
    let echo = Wsecho::start(&["--greeting-delay", "off"]);
    let answer = handshake(&echo, "/?resume");
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("broadcast mode"), "{answer}");

    let no_history = Wsecho::start(&["--broadcast", "--greeting-delay", "off"]);
    let answer = handshake(&no_history, "/?resume=e:1");
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("--history"), "{answer}");

    let server = Wsecho::start(&BASE);
    for (target, why) in [
        ("/?resume=12", "EPOCH:OFFSET"),
        ("/?resume=e:x", "decimal"),
        ("/?resume=bad.epoch:1", "epoch"),
        ("/?resume=e:9007199254740993", "2^53"),
        ("/?resume&resume=e:1", "twice"),
    ] {
        let answer = handshake(&server, target);
        assert!(answer.starts_with("HTTP/1.1 400"), "{target}: {answer}");
        assert!(answer.contains(why), "{target}: {answer}");
    }
    // Other keys are ignored, and a percent-encoded ':' is one.
    let mut ws = connect(&format!("{}/?token=abc&resume=e%3A0&_=123", server.url));
    let Message::Text(header) = next_data(&mut ws) else {
        panic!("no header");
    };
    assert!(header.contains("\"recovered\":false"), "{header}");
}

#[test]
fn a_raw_client_reads_the_header_first() {
    // What a shell script sees: the header is an ordinary text frame.
    let server = Wsecho::start(&BASE);
    let mut tcp = TcpStream::connect(server.addr).unwrap();
    tcp.set_read_timeout(Some(support::PATIENCE)).unwrap();
    tcp.write_all(
        b"GET /chat?resume HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tcp.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
    let (fin, opcode, payload) = try_read_server_frame(&mut tcp).unwrap();
    assert!(fin && opcode == TEXT);
    let json: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(json["offset"], 0);
    assert_eq!(json["recovered"], false);
}

/// Reads until the server's Close; returns its code and reason.
#[cfg(feature = "cluster")]
fn close_of(ws: &mut Client) -> (u16, String) {
    loop {
        match ws.read().expect("a Close before the end") {
            Message::Close(Some(frame)) => return (frame.code.into(), frame.reason.to_string()),
            Message::Close(None) => return (1005, String::new()),
            _ => {}
        }
    }
}

#[cfg(feature = "cluster")]
#[test]
fn a_redis_outage_changes_the_epoch_and_resuming_clients_are_told_both_ways() {
    let mut redis = redis_server::RedisServer::start(&[]);
    let mut args: Vec<&str> = BASE.to_vec();
    args.extend(["--redis", &redis.url, "--redis-channel", &redis.channel]);
    let server = Wsecho::start(&args);
    server.wait_for_log(&["redis link up: subscribed to channel"]);
    let (mut ws, header) = resume(&server.url, None);
    send_numbered(server.addr, 0, 10).join().unwrap();
    assert_eq!(read_numbered_until(&mut ws, 0, 10), 10);

    // The outage begins: the room numbers its messages itself, in an epoch of its own.
    redis.kill();
    let (code, reason) = close_of(&mut ws);
    assert_eq!(code, 1012, "{reason}");
    assert!(reason.contains("epoch changed"), "{reason}");
    let (mut during, local) = resume(&server.url, Some((&header.epoch, 10)));
    assert_ne!(local.epoch, header.epoch);
    assert!(
        !local.recovered,
        "across an outage nothing can be vouched for"
    );

    // It ends: Redis's numbering again, and the client is told again.
    redis.restart();
    server.wait_for_log(&["redis link up again"]);
    let (code, _) = close_of(&mut during);
    assert_eq!(code, 1012);
    let (_, back) = resume(&server.url, Some((&local.epoch, local.offset)));
    // Redis's numbering (the same as before if Redis kept its data, a new one if not).
    assert_ne!(back.epoch, local.epoch);
    assert!(!back.recovered);
}

#[cfg(feature = "cluster")]
#[test]
fn in_a_cluster_a_position_ahead_of_all_heard_is_held_for_what_may_come() {
    let redis = redis_server::RedisServer::start(&[]);
    let mut args: Vec<&str> = BASE.to_vec();
    args.extend(["--redis", &redis.url, "--redis-channel", &redis.channel]);
    let server = Wsecho::start(&args);
    server.wait_for_log(&["redis link up: subscribed to channel"]);
    let (mut first, header) = resume(&server.url, None);
    send_numbered(server.addr, 0, 3).join().unwrap();
    assert_eq!(read_numbered_until(&mut first, 0, 3), 3);
    // Offset 50 may be a message another instance sent and this one has not heard of yet:
    // it is held (about a second), then told it cannot be vouched for.
    let asked = std::time::Instant::now();
    let (mut ahead, told) = resume(&server.url, Some((&header.epoch, 50)));
    assert!(
        asked.elapsed() >= Duration::from_millis(500),
        "not held: {:?}",
        asked.elapsed()
    );
    assert_eq!((told.offset, told.recovered), (3, false));
    send_numbered(server.addr, 3, 1).join().unwrap();
    assert_eq!(next_data(&mut ahead), Message::text("3"), "live from there");
    // One just ahead, whose message comes while it is held, is recovered.
    let url = server.url.clone();
    let epoch = header.epoch.clone();
    let held = thread::spawn(move || resume(&url, Some((&epoch, 5))));
    server.wait_for_log(&[&format!("resuming after {}:5", header.epoch)]);
    send_numbered(server.addr, 4, 2).join().unwrap();
    let (mut caught, told) = held.join().unwrap();
    assert_eq!((told.offset, told.recovered), (5, true));
    assert_eq!(next_data(&mut caught), Message::text("5"));
}
