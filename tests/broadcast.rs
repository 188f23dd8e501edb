//! Broadcast mode: a chat room where everyone, the sender included, hears every message.

mod support;

use std::io::{Read, Write};
use std::thread;

use support::{
    Wsecho, client_frame, close_code, connect, next_data, raw_websocket, read_server_frame,
};
use tungstenite::Message;

const TEXT: u8 = 0x1;
const CLOSE: u8 = 0x8;

#[test]
fn every_client_hears_every_message_in_one_order() {
    let server = Wsecho::start(&["--broadcast", "--greeting-delay", "off"]);
    let mut listeners: Vec<_> = (0..3).map(|_| connect(&server.url)).collect();
    // Joining is complete once a client hears its own first message; do that for every client
    // so nobody misses a broadcast sent before it joined.
    for (i, ws) in listeners.iter_mut().enumerate() {
        ws.send(Message::text(format!("hello from {i}"))).unwrap();
        while next_data(ws) != Message::text(format!("hello from {i}")) {}
    }
    let senders: Vec<_> = (0..2)
        .map(|s| {
            let url = server.url.clone();
            thread::spawn(move || {
                let mut ws = connect(&url);
                for n in 0..200 {
                    if n % 2 == 0 {
                        ws.send(Message::text(format!("sender {s} text {n}")))
                            .unwrap();
                    } else {
                        ws.send(Message::binary(vec![s as u8, n as u8])).unwrap();
                    }
                }
                // The sender hears its own messages too, all of them, among the other's. It
                // counts its own: a sender that stopped at any 200 messages and dropped its
                // connection reset it, and the reset threw away the frames its kernel still
                // held back (Nagle's algorithm holds small writes while others are unacked),
                // which the server never received.
                let mine = |message: &Message| match message {
                    Message::Text(t) => t.starts_with(&format!("sender {s} ")),
                    Message::Binary(b) => b[0] == s as u8,
                    _ => false,
                };
                let mut own = 0;
                while own < 200 {
                    if mine(&next_data(&mut ws)) {
                        own += 1;
                    }
                }
                // A clean goodbye: Close, and read to its reply.
                ws.close(None).unwrap();
                while ws.read().is_ok() {}
                own
            })
        })
        .collect();
    for sender in senders {
        assert_eq!(sender.join().unwrap(), 200);
    }
    let heard: Vec<Vec<Message>> = listeners
        .iter_mut()
        .map(|ws| {
            let mut messages = Vec::new();
            while messages.len() < 400 {
                match next_data(ws) {
                    Message::Text(t) if t.starts_with("hello from") => continue,
                    message => messages.push(message),
                }
            }
            messages
        })
        .collect();
    // Everyone heard the same messages in the same order...
    assert!(heard.iter().all(|h| *h == heard[0]));
    // ...and each sender's messages in the order it sent them, text as text, binary as binary.
    for s in 0..2u8 {
        let from_s: Vec<_> = heard[0]
            .iter()
            .filter(|m| match m {
                Message::Text(t) => t.starts_with(&format!("sender {s} ")),
                Message::Binary(b) => b[0] == s,
                _ => false,
            })
            .collect();
        assert_eq!(from_s.len(), 200);
        for (n, message) in from_s.into_iter().enumerate() {
            let expected = if n % 2 == 0 {
                Message::text(format!("sender {s} text {n}"))
            } else {
                Message::binary(vec![s, n as u8])
            };
            assert_eq!(*message, expected);
        }
    }
}

#[test]
fn echo_mode_sends_to_the_sender_only() {
    let server = Wsecho::start(&["--greeting-delay", "off"]);
    let mut alice = connect(&server.url);
    let mut bob = connect(&server.url);
    alice.send(Message::text("for alice")).unwrap();
    bob.send(Message::text("for bob")).unwrap();
    assert_eq!(next_data(&mut alice), Message::text("for alice"));
    assert_eq!(next_data(&mut bob), Message::text("for bob"));
}

#[test]
fn nothing_follows_the_close_reply_while_broadcasts_go_on() {
    let server = Wsecho::start(&["--broadcast", "--greeting-delay", "off"]);
    let mut listener = raw_websocket(server.addr);
    let mut sender = connect(&server.url);
    // The listener has joined once it hears a broadcast.
    sender.send(Message::text("first")).unwrap();
    let (_, opcode, _) = read_server_frame(&mut listener);
    assert_eq!(opcode, TEXT);

    // Broadcasts keep coming while the listener closes.
    let flooding = thread::spawn(move || {
        for n in 0..5_000 {
            sender.send(Message::text(format!("message {n}"))).unwrap();
        }
        sender
    });
    listener
        .write_all(&client_frame(true, CLOSE, &1000u16.to_be_bytes()))
        .unwrap();
    // Broadcasts may come before the Close reply; after it, only the end of the stream.
    loop {
        let (_, opcode, payload) = read_server_frame(&mut listener);
        if opcode == CLOSE {
            assert_eq!(close_code(&payload), 1000);
            break;
        }
        assert_eq!(opcode, TEXT, "only broadcasts before the Close reply");
    }
    let mut after = Vec::new();
    listener.read_to_end(&mut after).unwrap();
    assert!(
        after.is_empty(),
        "{} bytes after the Close reply",
        after.len()
    );
    drop(flooding.join().unwrap());
}

/// The server's receive and send queues for the client on local port `port`, as `ss -tn`
/// shows them.
#[cfg(target_os = "linux")]
fn server_queues(port: u16) -> Option<(u64, u64)> {
    let listing = std::process::Command::new("ss")
        .args(["-tn"])
        .output()
        .expect("ss runs (scripts/need.sh ss iproute2)");
    let peer = format!("127.0.0.1:{port}");
    String::from_utf8_lossy(&listing.stdout)
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.len() >= 5 && fields[4] == peer)
                .then(|| Some((fields[1].parse().ok()?, fields[2].parse().ok()?)))
                .flatten()
        })
}

/// Waits (at most PATIENCE, looking every few milliseconds) until `done` holds for the
/// server's queues of the client on `port`.
#[cfg(target_os = "linux")]
fn wait_for_queues(port: u16, what: &str, mut done: impl FnMut(u64, u64) -> bool) {
    use std::time::{Duration, Instant};
    let deadline = Instant::now() + support::PATIENCE;
    while !server_queues(port).is_some_and(|(recv, send)| done(recv, send)) {
        assert!(
            Instant::now() < deadline,
            "{what}: {:?}",
            server_queues(port)
        );
        thread::sleep(Duration::from_millis(5));
    }
}

/// A client that sends and then vanishes with a reset, while the server is not reading it
/// (its room is paced to a stalled listener): what the server's TCP stack received from it
/// is still broadcast. (Before, the connection ended on the hang-up with those frames
/// unread, and they were never broadcast: the hang of a sender that drops its connection.)
#[cfg(target_os = "linux")]
#[test]
fn what_a_vanished_sender_sent_before_it_went_is_still_broadcast() {
    use std::time::Duration;
    let server = Wsecho::start(&[
        "--broadcast",
        "--greeting-delay",
        "off",
        "--slow-listener",
        "wait",
        "--max-backlog",
        "256KiB",
        "--send-timeout",
        "1h",
    ]);
    let stalled = raw_websocket(server.addr);
    let mut reader = raw_websocket(server.addr);
    // A flooder fills the stalled listener's backlog: the room's senders stop being read.
    let flooder = raw_websocket(server.addr);
    let flooder_port = flooder.local_addr().unwrap().port();
    let mut writer = flooder.try_clone().unwrap();
    thread::spawn(move || {
        let frame = client_frame(true, 0x2, &[7; 32 << 10]);
        while writer.write_all(&frame).is_ok() {}
    });
    server.wait_for_log(&[&format!(
        ":{flooder_port} paused: a listener of its room is behind"
    )]);
    // For good once the stalled listener's socket is full: what the kernel holds for it
    // stops growing (it grows its buffer as long as it may).
    let stalled_port = stalled.local_addr().unwrap().port();
    let mut last = (0, 0);
    wait_for_queues(
        stalled_port,
        "the stalled listener's socket fills",
        |_, send| {
            let (previous, times) = last;
            last = (send, if send == previous { times + 1 } else { 0 });
            send > 0 && last.1 >= 40
        },
    );
    // The reader reads everything, in the background, until it has the vanished one's three.
    let heard = thread::spawn(move || {
        let mut got = Vec::new();
        while got.len() < 3 {
            let (_, opcode, payload) = read_server_frame(&mut reader);
            if opcode == TEXT && payload.starts_with(b"vanished ") {
                got.push(String::from_utf8(payload).unwrap());
            }
        }
        got
    });
    // The sender's three messages reach the server's socket, unread: the room is paced.
    let mut vanishing = raw_websocket(server.addr);
    let port = vanishing.local_addr().unwrap().port();
    let frames: Vec<u8> = (1..=3)
        .flat_map(|n| client_frame(true, TEXT, format!("vanished {n}").as_bytes()))
        .collect();
    vanishing.write_all(&frames).unwrap();
    // They normally sit there, unread, which is the case this test is for. On a very busy
    // machine the room may flow for a moment and the server read them at once: then they
    // are broadcast the ordinary way, and the test checks no more than that.
    let unread = std::time::Instant::now() + Duration::from_secs(2);
    while server_queues(port).is_none_or(|(recv, _)| recv != frames.len() as u64)
        && std::time::Instant::now() < unread
    {
        thread::sleep(Duration::from_millis(5));
    }
    // It goes with a reset, as a client dropping a connection with data unread does.
    socket2::SockRef::from(&vanishing)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(vanishing);
    server.wait_for_log(&[&format!(":{port} disconnected")]);
    // The stalled listener and the flooder go: the room flows again.
    drop(stalled);
    flooder.shutdown(std::net::Shutdown::Both).unwrap();
    assert_eq!(
        heard.join().unwrap(),
        ["vanished 1", "vanished 2", "vanished 3"]
    );
}
