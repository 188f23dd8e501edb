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
                // The sender hears its own messages too, as many as it sent.
                (0..200).map(|_| next_data(&mut ws)).count()
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
