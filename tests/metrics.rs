//! `GET /metrics`: scraped during a session, the counters move as the session did, and the
//! text passes Prometheus's own checker, `promtool check metrics`.

#![cfg(feature = "metrics")]

mod support;

use std::io::Write;
use std::process::{Command, Stdio};

use support::{Wsecho, connect, expect_close, http_exchange, next_data};
use tungstenite::Message;

/// The body of `GET /metrics`, after checking its status and content type.
fn scrape(server: &Wsecho) -> String {
    let response = http_exchange(server.addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    let (head, body) = response.split_once("\r\n\r\n").expect("a response");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8"),
        "{head}"
    );
    body.to_string()
}

/// The value of one sample line, like `wsecho_greetings_total 2`.
fn sample(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == name_and_labels).then(|| value.parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no {name_and_labels} in:\n{text}"))
}

fn promtool_accepts(text: &str) {
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (scripts/test.sh installs Debian's prometheus package)");
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = check.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_counters_follow_a_session_and_promtool_accepts_the_text() {
    let server = Wsecho::start(&[
        "--greeting-delay",
        "100ms",
        "--allow-origin",
        "https://good.example",
    ]);
    let before = scrape(&server);
    promtool_accepts(&before);
    assert_eq!(sample(&before, "wsecho_connections_accepted_total"), 0.0);

    let mut alice = connect(&server.url);
    let mut bob = connect(&server.url);
    for ws in [&mut alice, &mut bob] {
        assert!(matches!(next_data(ws), Message::Text(t) if t.ends_with("hello client !!!")));
    }
    for text in ["one", "two", "three"] {
        alice.send(Message::text(text)).unwrap();
        assert_eq!(next_data(&mut alice), Message::text(text));
    }
    bob.send(Message::binary(vec![1, 2, 3, 4])).unwrap();
    assert_eq!(next_data(&mut bob), Message::binary(vec![1, 2, 3, 4]));
    alice.close(None).unwrap();
    let _ = expect_close(&mut alice);
    server.wait_for_log(&["disconnected: code 1005"]);
    // A browser from another origin, and a page that does not exist.
    let refused = http_exchange(
        server.addr,
        format!(
            "{}\r\nOrigin: https://evil.example\r\n\r\n",
            support::UPGRADE.trim_end()
        )
        .as_bytes(),
    );
    assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");
    http_exchange(server.addr, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n");

    let after = scrape(&server);
    promtool_accepts(&after);
    for (name, value) in [
        ("wsecho_connections_accepted_total", 2.0),
        ("wsecho_connections_open", 1.0),
        ("wsecho_connections_closed_total{code=\"no_status\"}", 1.0),
        ("wsecho_messages_received_total", 4.0),
        ("wsecho_received_bytes_total", (3 + 3 + 5 + 4) as f64),
        // Four echoes and two greetings.
        ("wsecho_messages_sent_total", 6.0),
        ("wsecho_greetings_total", 2.0),
        ("wsecho_http_requests_total{status=\"101\"}", 2.0),
        ("wsecho_http_requests_total{status=\"200\"}", 1.0),
        ("wsecho_http_requests_total{status=\"403\"}", 1.0),
        ("wsecho_http_requests_total{status=\"404\"}", 1.0),
        ("wsecho_rejections_total{reason=\"origin\"}", 1.0),
        ("wsecho_broadcasts_total", 0.0),
    ] {
        assert_eq!(sample(&after, name), value, "{name}");
    }
    assert!(sample(&after, "wsecho_memory_limit_bytes") > 0.0);
    assert!(sample(&after, "wsecho_sent_bytes_total") > 0.0);
    drop(bob);
}

/// What a raw connection from `source` gets for `request`.
fn exchange_from(source: &str, server: &Wsecho, request: &[u8]) -> String {
    use std::io::Read;
    let mut tcp = support::raw_from(source, server.addr);
    tcp.write_all(request).unwrap();
    let mut response = Vec::new();
    let _ = tcp.read_to_end(&mut response);
    String::from_utf8_lossy(&response).into_owned()
}

#[test]
fn broadcasts_and_limit_and_per_address_rejections_are_counted() {
    let server = Wsecho::start(&[
        "--broadcast",
        "--greeting-delay",
        "off",
        "--max-connections",
        "2",
        "--max-connections-per-ip",
        "1",
    ]);
    let mut first = connect(&server.url);
    first.send(Message::text("to all")).unwrap();
    assert_eq!(next_data(&mut first), Message::text("to all"));
    let per_address = exchange_from("127.0.0.1", &server, support::UPGRADE.as_bytes());
    assert!(
        per_address.contains("503") && per_address.contains("connections"),
        "{per_address}"
    );
    let second = support::upgrade(support::raw_from("127.0.0.2", server.addr));
    let full = exchange_from("127.0.0.3", &server, support::UPGRADE.as_bytes());
    assert!(
        full.contains("503") && full.contains("connection limit"),
        "{full}"
    );
    // Both slots are taken, so a scrape would be refused too: ask once one is free again.
    drop(second);
    server.wait_for_log(&["127.0.0.2", "disconnected"]);
    let text = (0..50)
        .find_map(|_| {
            let response = exchange_from("127.0.0.4", &server, b"GET /metrics HTTP/1.1\r\n\r\n");
            if response.starts_with("HTTP/1.1 200") {
                Some(response)
            } else {
                std::thread::sleep(std::time::Duration::from_millis(20));
                None
            }
        })
        .expect("a slot frees once the client has left");
    assert_eq!(sample(&text, "wsecho_broadcasts_total"), 1.0);
    // At least the one above; a scrape that came before the slot was free counts too.
    let limit = sample(&text, "wsecho_rejections_total{reason=\"limit\"}");
    assert!(limit >= 1.0, "{limit}");
    assert_eq!(
        sample(&text, "wsecho_rejections_total{reason=\"per_address\"}"),
        1.0
    );
    let busy = sample(&text, "wsecho_http_requests_total{status=\"503\"}");
    assert_eq!(busy, limit + 1.0);
}

#[test]
fn no_metrics_turns_the_endpoint_off() {
    let server = Wsecho::start(&["--no-metrics"]);
    let response = http_exchange(server.addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(response.starts_with("HTTP/1.1 404"), "{response}");
}
