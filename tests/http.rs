//! The plain HTTP side of the port: the demo page, the health check, and errors.

mod support;

use support::{UPGRADE, Wsecho, connect, http_exchange};

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n")
}

#[test]
fn the_demo_page_is_served_at_the_root() {
    let server = Wsecho::start(&[]);
    for path in ["/", "/index.html"] {
        let response = http_exchange(server.addr, get(path).as_bytes());
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(response.contains("Content-Type: text/html; charset=utf-8\r\n"));
        assert!(
            response.contains("new WebSocket("),
            "the page is the client"
        );
        for external in [
            "<script src=",
            "src=\"http",
            "href=\"http",
            "src=\"//",
            "href=\"//",
        ] {
            assert!(
                !response.contains(external),
                "no external assets: found {external}"
            );
        }
    }
    server.wait_for_log(&["GET / -> 200"]);
}

#[test]
fn head_gets_the_headers_only() {
    let server = Wsecho::start(&[]);
    let response = http_exchange(server.addr, b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(
        response.starts_with("HTTP/1.1 200 OK\r\n") && response.ends_with("\r\n\r\n"),
        "{response}"
    );
}

#[test]
fn no_demo_page_turns_it_off() {
    let server = Wsecho::start(&["--no-demo-page"]);
    let response = http_exchange(server.addr, get("/").as_bytes());
    assert!(
        response.starts_with("HTTP/1.1 404 Not Found\r\n"),
        "{response}"
    );
}

#[test]
fn other_paths_methods_and_garbage_get_short_plain_text_errors() {
    let server = Wsecho::start(&[]);
    let cases: [(&[u8], &str); 3] = [
        (
            b"GET /nothing-here HTTP/1.1\r\nHost: x\r\n\r\n",
            "HTTP/1.1 404 Not Found\r\n",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 405 Method Not Allowed\r\n",
        ),
        (
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 hello TLS\r\n\r\n",
            "HTTP/1.1 400 Bad Request\r\n",
        ),
    ];
    for (request, status) in cases {
        let response = http_exchange(server.addr, request);
        assert!(response.starts_with(status), "{response}");
        assert!(response.contains("Content-Type: text/plain; charset=utf-8\r\n"));
        assert!(response.contains("Connection: close\r\n"));
        let body = response.split("\r\n\r\n").nth(1).unwrap();
        assert!(!body.is_empty() && body.len() < 200, "short body: {body:?}");
    }
    let response = http_exchange(server.addr, b"PUT / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(response.contains("Allow: GET, HEAD\r\n"), "{response}");
}

#[test]
fn healthz_reports_connections_uptime_and_messages() {
    let server = Wsecho::start(&["--greeting-delay", "off"]);
    let mut ws = connect(&server.url);
    ws.send(tungstenite::Message::text("counted")).unwrap();
    support::next_data(&mut ws);
    let response = http_exchange(server.addr, get("/healthz").as_bytes());
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(response.contains("Content-Type: application/json\r\n"));
    let body = response.split("\r\n\r\n").nth(1).unwrap();
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(json["status"], "ok");
    assert_eq!(json["connections"], 1);
    assert_eq!(json["messages"], 1);
    assert!(json["uptime_seconds"].is_u64());
}

#[test]
fn a_malformed_upgrade_gets_400_and_never_reaches_the_echo_loop() {
    let server = Wsecho::start(&["--greeting-delay", "off"]);
    let no_key = UPGRADE.replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "");
    let response = http_exchange(server.addr, no_key.as_bytes());
    assert!(
        response.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{response}"
    );
    assert!(response.contains("missing Sec-WebSocket-Key"));
    server.wait_for_log(&["rejected: 400 missing Sec-WebSocket-Key header"]);

    // A good client afterwards is served, and only it ever reached the WebSocket phase.
    drop(connect(&server.url));
    server.wait_for_log(&["disconnected"]);
    assert_eq!(
        server.log().matches(" connected: ").count(),
        1,
        "{}",
        server.log()
    );
}
