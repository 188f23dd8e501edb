//! Per-address limits: one address holding its cap of connections and of unfinished
//! handshakes cannot lock out a client from another address.

mod support;

use std::io::Read;

use support::{Wsecho, next_data, raw_from, upgrade};
use tungstenite::Message;

/// The attackers' addresses; the test's other clients come from 127.0.0.1.
const ATTACKER: &str = "127.0.0.2";
const HOARDER: &str = "127.0.0.3";

/// Reads what the server sends until it closes: a refused connection gets a 503 and the end.
fn response(tcp: &mut std::net::TcpStream) -> String {
    let mut got = Vec::new();
    let _ = tcp.read_to_end(&mut got);
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn one_address_at_its_caps_does_not_lock_out_another() {
    let server = Wsecho::start(&[
        "--greeting-delay",
        "off",
        "--max-connections",
        "30",
        "--max-handshakes-per-ip",
        "4",
        "--max-connections-per-ip",
        "10",
    ]);

    // Slowloris: silent sockets. Four are held as unfinished handshakes; the rest get 503.
    let silent: Vec<_> = (0..4).map(|_| raw_from(ATTACKER, server.addr)).collect();
    for _ in 0..40 {
        let mut tcp = raw_from(ATTACKER, server.addr);
        let answer = response(&mut tcp);
        assert!(answer.starts_with("HTTP/1.1 503 "), "{answer:?}");
        assert!(answer.contains("unfinished handshakes"), "{answer}");
    }
    // Another address still gets in and is served.
    echo_from_another_address(&server, "while 4 handshakes are held");

    // Completed connections from one address count against its own cap of 10.
    let open: Vec<_> = (0..10)
        .map(|_| upgrade(raw_from(HOARDER, server.addr)))
        .collect();
    for _ in 0..3 {
        let answer = response(&mut raw_from(HOARDER, server.addr));
        assert!(answer.contains("already has 10 connections"), "{answer}");
    }
    echo_from_another_address(&server, "while 10 connections are held");

    // 40 and 3 refusals: logged once per address and reason, not once each.
    for (address, refusals) in [(ATTACKER, 40), (HOARDER, 3)] {
        let logged = server
            .log()
            .lines()
            .filter(|line| line.contains(address) && line.contains("rejected"))
            .count();
        assert_eq!(
            logged,
            1,
            "{refusals} refusals of {address}:\n{}",
            server.log()
        );
    }
    drop((silent, open));
}

fn echo_from_another_address(server: &Wsecho, text: &str) {
    let mut user = support::connect(&server.url);
    user.send(Message::text(text)).unwrap();
    assert_eq!(next_data(&mut user), Message::text(text));
}
