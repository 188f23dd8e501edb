//! Behind a proxy: the client's own address, from a trusted proxy's `Forwarded` or
//! `X-Forwarded-For` header (`--trusted-proxy`) or from a PROXY protocol header
//! (`--proxy-protocol`), in the log and in the per-address limits.
//!
//! The real proxies first: nginx with docs/deploying.md's own configuration, and HAProxy in TCP
//! mode with `send-proxy-v2`, each started by the test on a free loopback port and killed when
//! it ends; a missing nginx or haproxy fails the test with what to install. Then raw sockets
//! for what a proxy would not send: spoofed, malformed, missing and broken headers.
//! Last, the test controls (docs/testing-clients.md) used as that document says, to check a
//! proxy: `GET /echo` and `whoami` through it, a Close code and fragments passed on.

#![cfg(target_os = "linux")]

#[cfg(feature = "tls")]
#[path = "support/pki.rs"]
mod pki;
mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use support::{PATIENCE, UPGRADE, Wsecho, raw, raw_from};

/// How many free ports a proxy is tried on before the test gives up: another process may
/// take the port between the test finding it free and the proxy binding it.
const PORT_ATTEMPTS: usize = 5;

/// A proxy process on a loopback port, killed (and its folder removed) when dropped.
struct Proxy {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port nobody listens on right now.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Fails the test with what to install when `program` cannot run.
fn need(program: &str, package: &str) {
    let found = Command::new(program)
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    assert!(
        found,
        "cannot run {program}: this test needs it. Install it with scripts/need.sh {program} \
         {package} (Debian's {package} package; scripts/test.sh does it)"
    );
}

/// Starts a proxy with the configuration `config(dir, port)` writes, on a free port: tries
/// another port if it exits at once (the port was taken), and is ready once it accepts a
/// connection.
fn start_proxy(
    name: &str,
    config: impl Fn(&std::path::Path, u16) -> String,
    command: impl Fn(&std::path::Path) -> Command,
) -> Proxy {
    let mut failures = Vec::new();
    for attempt in 0..PORT_ATTEMPTS {
        let dir =
            std::env::temp_dir().join(format!("wsecho-{name}-{}-{attempt}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        std::fs::write(dir.join(format!("{name}.conf")), config(&dir, port)).unwrap();
        let stderr = std::fs::File::create(dir.join("stderr.log")).unwrap();
        let child = command(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut proxy = Proxy { child, addr, dir };
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = proxy.child.try_wait().unwrap() {
                let log = |file: &str| std::fs::read_to_string(proxy.dir.join(file));
                let said = format!(
                    "{} {}",
                    log("stderr.log").unwrap_or_default(),
                    log("error.log").unwrap_or_default()
                );
                failures.push(format!("{name} exited ({status}) on port {port}: {said}"));
                break;
            }
            if TcpStream::connect(addr).is_ok() {
                return proxy;
            }
            assert!(Instant::now() < deadline, "{name} not ready on {addr}");
            thread::sleep(Duration::from_millis(10));
        }
    }
    panic!("{name} did not start:\n{}", failures.join("\n"));
}

/// The block of `text` that starts with `start` and ends at its matching brace.
fn braced<'a>(text: &'a str, start: &str) -> &'a str {
    let from = text
        .find(start)
        .unwrap_or_else(|| panic!("no {start:?} in {text}"));
    let mut depth = 0;
    for (i, c) in text[from..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 1 => return &text[from..=from + i],
            '}' => depth -= 1,
            _ => {}
        }
    }
    panic!("{start:?} is not closed in {text}");
}

/// nginx with docs/deploying.md's configuration (its `map` and its `location /`, TLS left
/// out), proxying to `backend`.
fn nginx(backend: SocketAddr) -> Proxy {
    need("nginx", "nginx");
    let docs =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/deploying.md")).unwrap();
    let block = docs
        .split("```nginx\n")
        .nth(1)
        .expect("an nginx block in docs/deploying.md")
        .split("```")
        .next()
        .unwrap();
    let map = braced(block, "map $http_upgrade");
    let location = braced(block, "location / {");
    assert!(
        location.contains("X-Forwarded-For") && location.contains("http://127.0.0.1:3000"),
        "{location}"
    );
    let location = location.replace("http://127.0.0.1:3000", &format!("http://{backend}"));
    start_proxy(
        "nginx",
        |dir, port| {
            let dir = dir.display();
            format!(
                "error_log {dir}/error.log;\npid {dir}/nginx.pid;\nworker_processes 1;\n\
                 events {{ worker_connections 64; }}\n\
                 http {{\n  access_log off;\n  client_body_temp_path {dir}/body;\n  \
                 proxy_temp_path {dir}/proxy;\n  fastcgi_temp_path {dir}/fastcgi;\n  \
                 uwsgi_temp_path {dir}/uwsgi;\n  scgi_temp_path {dir}/scgi;\n  {map}\n  \
                 server {{\n    listen 127.0.0.1:{port};\n    {location}\n  }}\n}}\n"
            )
        },
        |dir| {
            let mut command = Command::new("nginx");
            command
                .args(["-g", "daemon off;", "-p"])
                .arg(dir)
                .arg("-c")
                .arg(dir.join("nginx.conf"));
            command
        },
    )
}

/// HAProxy in TCP mode, sending a PROXY protocol v2 header to `backend` (docs/deploying.md's
/// example, on a loopback port).
fn haproxy(backend: SocketAddr) -> Proxy {
    need("haproxy", "haproxy");
    start_proxy(
        "haproxy",
        |_, port| {
            format!(
                "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  \
                 timeout server 60s\n\
                 frontend websockets\n  bind 127.0.0.1:{port}\n  default_backend wsecho\n\
                 backend wsecho\n  server wsecho1 {backend} send-proxy-v2 check \
                 check-send-proxy inter 200ms\n"
            )
        },
        |dir| {
            let mut command = Command::new("haproxy");
            command.arg("-f").arg(dir.join("haproxy.conf")).arg("-db");
            command
        },
    )
}

/// Sends an upgrade request (with `extra` header lines) on `tcp`; returns the response head.
fn upgrade_with(tcp: &mut TcpStream, extra: &str) -> String {
    let request = UPGRADE.replace("\r\n\r\n", &format!("\r\n{extra}\r\n"));
    tcp.write_all(request.as_bytes()).unwrap();
    read_head(tcp)
}

/// Reads an HTTP response head, or what came before the connection closed.
fn read_head(tcp: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        match tcp.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// Sends one text frame and expects its echo.
fn echo(tcp: &mut TcpStream, text: &str) {
    tcp.write_all(&support::client_frame(true, 1, text.as_bytes()))
        .unwrap();
    let (_, opcode, payload) = support::read_server_frame(tcp);
    assert_eq!((opcode, payload.as_slice()), (1, text.as_bytes()));
}

fn local_port(tcp: &TcpStream) -> u16 {
    tcp.local_addr().unwrap().port()
}

#[test]
fn nginx_names_the_client_and_its_per_address_cap_counts_it() {
    let server = Wsecho::start(&[
        "--greeting-delay",
        "off",
        "--trusted-proxy",
        "127.0.0.1",
        "--max-connections-per-ip",
        "1",
    ]);
    let nginx = nginx(server.addr);

    let mut first = raw_from("127.0.0.3", nginx.addr);
    let head = upgrade_with(&mut first, "");
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    echo(&mut first, "through nginx");
    let line = server.wait_for_log(&["127.0.0.3:0 via 127.0.0.1:", "connected: path /"]);
    assert!(!line.contains("127.0.0.3:0 via 127.0.0.1:0"), "{line}");

    // The cap of one connection per address counts the client, not nginx.
    let mut second = raw_from("127.0.0.3", nginx.addr);
    let head = upgrade_with(&mut second, "");
    assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
    server.wait_for_log(&["127.0.0.3:0 via 127.0.0.1:", "rejected: 503"]);
    let mut other = raw_from("127.0.0.4", nginx.addr);
    let head = upgrade_with(&mut other, "");
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    echo(&mut other, "another client");

    // A client's own headers go to the left of what nginx appends (X-Forwarded-For) or are
    // removed (Forwarded): it cannot choose its address.
    let mut spoofer = raw_from("127.0.0.5", nginx.addr);
    let head = upgrade_with(
        &mut spoofer,
        "X-Forwarded-For: 198.51.100.1\r\nForwarded: for=198.51.100.2\r\n",
    );
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    server.wait_for_log(&["127.0.0.5:0 via 127.0.0.1:", "connected"]);
    assert!(!server.log().contains("198.51.100."), "{}", server.log());
    drop((first, other, spoofer));
}

#[test]
fn haproxy_send_proxy_v2_names_the_client_and_its_per_address_cap_counts_it() {
    let server = Wsecho::start(&[
        "--greeting-delay",
        "off",
        "--proxy-protocol",
        "--max-connections-per-ip",
        "1",
    ]);
    let haproxy = haproxy(server.addr);

    let mut first = raw_from("127.0.0.3", haproxy.addr);
    let head = upgrade_with(&mut first, "");
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    echo(&mut first, "through haproxy");
    // The PROXY header gives the client's port too.
    let port = local_port(&first);
    server.wait_for_log(&[&format!("127.0.0.3:{port} via 127.0.0.1:"), "connected"]);

    let mut second = raw_from("127.0.0.3", haproxy.addr);
    let head = upgrade_with(&mut second, "");
    assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
    let mut other = raw_from("127.0.0.4", haproxy.addr);
    let head = upgrade_with(&mut other, "");
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    echo(&mut other, "another client");
    // HAProxy's health checks send a header too (check-send-proxy): none is dropped. A check
    // ends with a FIN or, on a busy machine, a reset: either way it was read as a header.
    server.wait_until(|log| {
        log.contains("closed before sending a request")
            || log.contains("lost before sending a request")
    });
    assert!(!server.log().contains("PROXY protocol"), "{}", server.log());
    drop((first, other));
}

#[test]
fn forwarded_is_preferred_to_x_forwarded_for() {
    let server = Wsecho::start(&["--greeting-delay", "off", "--trusted-proxy", "127.0.0.0/24"]);
    let mut tcp = raw(server.addr);
    let head = upgrade_with(
        &mut tcp,
        "X-Forwarded-For: 203.0.113.9\r\nForwarded: for=\"[2001:db8::1]:4711\";proto=https\r\n",
    );
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    echo(&mut tcp, "hello");
    let port = local_port(&tcp);
    server.wait_for_log(&[&format!(
        "[2001:db8::1]:4711 via 127.0.0.1:{port} connected"
    )]);
    // X-Forwarded-For alone: the rightmost address that is not a trusted proxy.
    let mut tcp = raw(server.addr);
    let head = upgrade_with(&mut tcp, "X-Forwarded-For: 203.0.113.9, 127.0.0.9\r\n");
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    server.wait_for_log(&["203.0.113.9:0 via 127.0.0.1:", "connected"]);
}

#[test]
fn an_untrusted_peer_gains_nothing_by_sending_forwarding_headers() {
    let server = Wsecho::start(&[
        "--greeting-delay",
        "off",
        "--trusted-proxy",
        "127.0.0.1",
        "--max-connections-per-ip",
        "1",
    ]);
    let spoofed = "X-Forwarded-For: 203.0.113.9\r\nForwarded: for=203.0.113.10\r\n";
    let mut first = raw_from("127.0.0.3", server.addr);
    let head = upgrade_with(&mut first, spoofed);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    let port = local_port(&first);
    server.wait_for_log(&[&format!("127.0.0.3:{port} connected")]);
    // Claiming another address does not get it past its own cap either.
    let mut second = raw_from("127.0.0.3", server.addr);
    let head = upgrade_with(&mut second, "X-Forwarded-For: 203.0.113.11\r\n");
    assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
    // Not even a malformed header matters from there.
    drop(first);
    server.wait_for_log(&[&format!("127.0.0.3:{port} disconnected")]);
    let mut third = raw_from("127.0.0.3", server.addr);
    let head = upgrade_with(&mut third, "X-Forwarded-For: not an address\r\n");
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert!(!server.log().contains("203.0.113."), "{}", server.log());
}

#[test]
fn a_malformed_forwarding_header_from_a_trusted_proxy_gets_400() {
    let server = Wsecho::start(&["--trusted-proxy", "127.0.0.1"]);
    for (header, reason) in [
        ("X-Forwarded-For: nginx", "malformed X-Forwarded-For header"),
        (
            "Forwarded: for=\"[2001:db8::1\"",
            "malformed Forwarded header",
        ),
        (
            "Forwarded: for=\"unterminated",
            "malformed Forwarded header",
        ),
    ] {
        let mut tcp = raw(server.addr);
        let head = upgrade_with(&mut tcp, &format!("{header}\r\n"));
        let mut body = String::new();
        let _ = tcp.read_to_string(&mut body);
        assert!(head.starts_with("HTTP/1.1 400 "), "{header}: {head}");
        assert!(body.contains(reason) && body.lines().count() == 1, "{body}");
        server.wait_for_log(&["rejected: 400", reason]);
    }
    // The server goes on.
    support::connect(&server.url);
}

/// A PROXY protocol v2 header for TCP over IPv4, from `source`.
fn proxy_v2(command: u8, source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let (SocketAddr::V4(source), SocketAddr::V4(destination)) = (source, destination) else {
        unreachable!("IPv4 only")
    };
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.extend_from_slice(&[0x20 | command, 0x11, 0, 12]);
    header.extend_from_slice(&source.ip().octets());
    header.extend_from_slice(&destination.ip().octets());
    header.extend_from_slice(&source.port().to_be_bytes());
    header.extend_from_slice(&destination.port().to_be_bytes());
    header
}

#[test]
fn proxy_protocol_v1_and_v2_name_the_client() {
    let server = Wsecho::start(&["--greeting-delay", "off", "--proxy-protocol"]);
    let client: SocketAddr = "198.51.100.7:4711".parse().unwrap();

    let mut v1 = raw(server.addr);
    v1.write_all(
        format!(
            "PROXY TCP4 198.51.100.7 127.0.0.1 4711 {}\r\n",
            server.addr.port()
        )
        .as_bytes(),
    )
    .unwrap();
    let head = upgrade_with(&mut v1, "");
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    echo(&mut v1, "v1");
    let port = local_port(&v1);
    server.wait_for_log(&[&format!("198.51.100.7:4711 via 127.0.0.1:{port} connected")]);

    // The header and the request in one write: the request is not lost.
    let mut v2 = raw(server.addr);
    let mut bytes = proxy_v2(1, "198.51.100.8:4712".parse().unwrap(), server.addr);
    bytes.extend_from_slice(UPGRADE.as_bytes());
    v2.write_all(&bytes).unwrap();
    let head = read_head(&mut v2);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    echo(&mut v2, "v2");
    server.wait_for_log(&["198.51.100.8:4712 via 127.0.0.1:", "connected"]);

    // LOCAL (a health check) and UNKNOWN: the peer itself.
    for header in [
        proxy_v2(0, client, server.addr),
        b"PROXY UNKNOWN\r\n".to_vec(),
    ] {
        let mut local = raw(server.addr);
        local.write_all(&header).unwrap();
        let head = upgrade_with(&mut local, "");
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        let port = local_port(&local);
        server.wait_for_log(&[&format!("127.0.0.1:{port} connected")]);
    }
}

/// What the server sends back on a raw connection that sent `bytes`, up to its close.
fn answer_to(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut tcp = raw(addr);
    tcp.write_all(bytes).unwrap();
    let mut got = Vec::new();
    let _ = tcp.read_to_end(&mut got);
    got
}

#[test]
fn a_missing_or_broken_proxy_header_closes_the_connection_with_one_log_line() {
    let server = Wsecho::start(&["--proxy-protocol", "--handshake-timeout", "1s"]);
    // No header: an upgrade straight to the port gets nothing, not an upgrade.
    assert_eq!(answer_to(server.addr, UPGRADE.as_bytes()), b"");
    server.wait_for_log(&["dropped: no PROXY protocol header (first byte 0x47"]);
    // A broken v1 line, a broken v2 header, half a header: closed too, and not logged again
    // within the interval.
    let broken: [&[u8]; 3] = [
        b"PROXY TCP4 198.51.100.7 nowhere 1 2\r\n",
        b"\r\n\r\n\0\r\nQUIT\n\x31\x11\x00\x0c",
        b"PROXY TCP4 198.51.",
    ];
    let started = Instant::now();
    for bytes in broken {
        let mut with_request = bytes.to_vec();
        with_request.extend_from_slice(UPGRADE.as_bytes());
        let sent = if bytes.ends_with(b".") {
            bytes
        } else {
            &with_request
        };
        assert_eq!(answer_to(server.addr, sent), b"", "{bytes:?}");
    }
    // The half header waited for the handshake timeout, no more.
    assert!(
        started.elapsed() < Duration::from_secs(1 + 3),
        "{:?}",
        started.elapsed()
    );
    let lines = server
        .log()
        .lines()
        .filter(|l| l.contains("dropped"))
        .count();
    assert_eq!(lines, 1, "{}", server.log());
    assert!(!server.log().contains(" connected"), "{}", server.log());
}

#[cfg(feature = "tls")]
#[test]
fn the_proxy_header_comes_before_tls() {
    use rustls::pki_types::ServerName;
    use rustls::pki_types::pem::PemObject;
    use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
    use std::sync::Arc;

    let pki = pki::Pki::new("proxy-protocol");
    let mut args: Vec<String> = pki.tls_args();
    args.extend(["--greeting-delay", "off", "--proxy-protocol"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Wsecho::start(&args);

    let mut roots = RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pki.ca.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let mut tcp = raw(server.addr);
    tcp.write_all(b"PROXY TCP4 198.51.100.7 127.0.0.1 4711 443\r\n")
        .unwrap();
    let port = local_port(&tcp);
    let session =
        ClientConnection::new(Arc::new(config), ServerName::try_from("localhost").unwrap())
            .unwrap();
    let tls = StreamOwned::new(session, tcp);
    let url = format!("wss://localhost:{}/", server.addr.port());
    let (mut ws, response) = tungstenite::client(url, tls).expect("WebSocket handshake");
    assert_eq!(response.status(), 101);
    ws.send(tungstenite::Message::text("over TLS")).unwrap();
    let echoed = loop {
        match ws.read().unwrap() {
            message @ tungstenite::Message::Text(_) => break message,
            _ => continue,
        }
    };
    assert_eq!(echoed, tungstenite::Message::text("over TLS"));
    server.wait_for_log(&[
        &format!("198.51.100.7:4711 via 127.0.0.1:{port} connected"),
        "TLS",
    ]);
}

/// The `whoami` JSON (docs/testing-clients.md) of a connection upgraded with `?whoami`.
fn whoami_through(tcp: &mut TcpStream, target: &str) -> serde_json::Value {
    let request = UPGRADE.replacen("GET / ", &format!("GET {target} "), 1);
    tcp.write_all(request.as_bytes()).unwrap();
    let head = read_head(tcp);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    let (_, opcode, payload) = support::read_server_frame(tcp);
    assert_eq!(opcode, 1);
    serde_json::from_slice(&payload).expect("whoami is JSON")
}

/// Through the proxy at `proxy`, a connection asking for `?fragment=2&close=CODE&reason=...`
/// after one echo gets its echo in two fragments, then that very Close: the proxy changed
/// neither.
fn close_and_fragments_pass_through(proxy: SocketAddr, code: u16, reason: &str) {
    let mut closing = raw_from("127.0.0.3", proxy);
    let query = format!(
        "GET /?fragment=2&close={code}&reason={}&after=1 ",
        reason.replace(' ', "%20")
    );
    let request = UPGRADE.replacen("GET / ", &query, 1);
    closing.write_all(request.as_bytes()).unwrap();
    assert!(read_head(&mut closing).starts_with("HTTP/1.1 101 "));
    closing
        .write_all(&support::client_frame(true, 1, b"abc"))
        .unwrap();
    let frames: Vec<_> = (0..3)
        .map(|_| support::read_server_frame(&mut closing))
        .collect();
    let close = [&code.to_be_bytes()[..], reason.as_bytes()].concat();
    assert_eq!(
        frames,
        [
            (false, 1, b"ab".to_vec()),
            (true, 0, b"c".to_vec()),
            (true, 8, close)
        ]
    );
}

#[test]
fn test_controls_check_nginx_path_headers_close_codes_and_fragments() {
    let server = Wsecho::start(&["--greeting-delay", "off", "--trusted-proxy", "127.0.0.1"]);
    let nginx = nginx(server.addr);

    // GET /echo before any upgrade: the client as nginx names it, nginx as the peer.
    let mut plain = raw_from("127.0.0.3", nginx.addr);
    plain
        .write_all(b"GET /echo HTTP/1.1\r\nHost: ws.example.com\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    plain.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200 "), "{response}");
    let body = &response[response.find("\r\n\r\n").unwrap() + 4..];
    let json: serde_json::Value = serde_json::from_str(body).expect("JSON");
    assert_eq!(json["address"], "127.0.0.3:0");
    assert!(
        json["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{json}"
    );

    // whoami through the upgrade: nginx passed Upgrade and Connection on.
    let mut ws = raw_from("127.0.0.3", nginx.addr);
    let json = whoami_through(&mut ws, "/chat?whoami");
    assert_eq!(json["path"], "/chat");
    let header = |name: &str| {
        json["headers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h[0].as_str().unwrap().eq_ignore_ascii_case(name))
            .map(|h| h[1].as_str().unwrap().to_string())
    };
    assert_eq!(header("upgrade").as_deref(), Some("websocket"), "{json}");
    assert_eq!(
        header("x-forwarded-for").as_deref(),
        Some("127.0.0.3"),
        "{json}"
    );

    // A Close with a code and a reason, and fragments, pass through unchanged.
    close_and_fragments_pass_through(nginx.addr, 4000, "via");
}

#[test]
fn test_controls_through_haproxy_show_its_client_and_pass_close_codes_and_fragments() {
    let server = Wsecho::start(&["--greeting-delay", "off", "--proxy-protocol"]);
    let haproxy = haproxy(server.addr);
    let mut ws = raw_from("127.0.0.3", haproxy.addr);
    let json = whoami_through(&mut ws, "/?whoami");
    // The PROXY header gives the client's port too.
    assert_eq!(
        json["address"],
        format!("127.0.0.3:{}", local_port(&ws)).as_str()
    );
    assert!(
        json["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{json}"
    );
    // A Close with a code and a reason, and fragments, pass through HAProxy unchanged.
    close_and_fragments_pass_through(haproxy.addr, 4001, "via haproxy");
}
