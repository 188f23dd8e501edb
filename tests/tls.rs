//! TLS: `wss://` and `https://` on one port, with a certificate authority made at test time
//! and clients that trust only it.

#![cfg(feature = "tls")]

#[path = "support/pki.rs"]
mod pki;
mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use pki::Pki;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::ServerName;
use rustls::{ClientConnection, StreamOwned};
use support::{PATIENCE, Wsecho, expect_close, next_data};
use tungstenite::{Message, WebSocket};

type Tls = StreamOwned<ClientConnection, TcpStream>;

/// Starts wsecho with the certificate and key of `pki`, and `extra`.
fn start(pki: &Pki, extra: &[&str]) -> Wsecho {
    let tls = pki.tls_args();
    let mut args: Vec<&str> = tls.iter().map(String::as_str).collect();
    args.extend_from_slice(extra);
    Wsecho::start(&args)
}

/// A TLS connection to the server, as `localhost`, trusting only `ca_pem`; the handshake is
/// done (or failed) when it returns.
fn tls_to(addr: SocketAddr, ca_pem: &str) -> std::io::Result<Tls> {
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(PATIENCE))?;
    let name = ServerName::try_from("localhost").unwrap();
    let session = ClientConnection::new(pki::trusting(ca_pem), name).unwrap();
    let mut tls = StreamOwned::new(session, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(tls)
}

/// A WebSocket over TLS, the way a browser's `new WebSocket('wss://...')` opens one.
fn wss(addr: SocketAddr, ca_pem: &str) -> WebSocket<Tls> {
    let tls = tls_to(addr, ca_pem).expect("TLS handshake");
    let url = format!("wss://localhost:{}/", addr.port());
    let (ws, response) = tungstenite::client(url, tls).expect("WebSocket handshake");
    assert_eq!(response.status(), 101);
    ws
}

/// An HTTPS request; returns the whole response.
fn https(addr: SocketAddr, ca_pem: &str, request: &str) -> String {
    let mut tls = tls_to(addr, ca_pem).expect("TLS handshake");
    tls.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    let _ = tls.read_to_end(&mut response);
    String::from_utf8_lossy(&response).into_owned()
}

fn data(ws: &mut WebSocket<Tls>) -> Message {
    loop {
        match ws.read().expect("a message") {
            message @ (Message::Text(_) | Message::Binary(_)) => return message,
            _ => continue,
        }
    }
}

#[test]
fn text_binary_greeting_broadcast_and_close_over_wss() {
    let pki = Pki::new("session");
    let server = start(
        &pki,
        &[
            "--broadcast",
            "--greeting-delay",
            "300ms",
            "--greeting",
            "hi {time}",
        ],
    );
    assert!(server.url.starts_with("wss://127.0.0.1:"), "{}", server.url);
    let mut alice = wss(server.addr, &pki.ca);
    let mut bob = wss(server.addr, &pki.ca);
    server.wait_for_log(&["connected: path /", "TLS"]);
    for ws in [&mut alice, &mut bob] {
        match data(ws) {
            Message::Text(text) => assert!(text.starts_with("hi "), "{text}"),
            other => panic!("expected the greeting, got {other:?}"),
        }
    }
    alice.send(Message::text("héllo over TLS")).unwrap();
    for ws in [&mut alice, &mut bob] {
        assert_eq!(data(ws), Message::text("héllo over TLS"));
    }
    let big = vec![7u8; 100_000]; // several TLS records
    bob.send(Message::binary(big.clone())).unwrap();
    for ws in [&mut alice, &mut bob] {
        assert!(
            data(ws) == Message::binary(big.clone()),
            "the binary message, whole"
        );
    }
    alice.close(None).unwrap();
    loop {
        match alice.read() {
            Ok(_) => continue,
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("{e}"),
        }
    }
    server.wait_for_log(&["disconnected: code 1005", "closed by client"]);
}

#[test]
fn the_demo_page_healthz_and_metrics_are_served_over_https() {
    let pki = Pki::new("https");
    let server = start(&pki, &[]);
    let page = https(
        server.addr,
        &pki.ca,
        "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    );
    assert!(
        page.starts_with("HTTP/1.1 200 OK\r\n") && page.contains("<html"),
        "{page}"
    );
    let health = https(
        server.addr,
        &pki.ca,
        "GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n",
    );
    assert!(health.contains("\"status\":\"ok\""), "{health}");
    let metrics = https(
        server.addr,
        &pki.ca,
        "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert!(
        metrics.contains("wsecho_http_requests_total{status=\"200\"} 2"),
        "{metrics}"
    );
}

#[test]
fn a_client_that_trusts_another_authority_is_refused_by_its_own_check() {
    let pki = Pki::new("untrusted");
    let server = start(&pki, &[]);
    let other = Pki::new("other-ca");
    let refused = tls_to(server.addr, &other.ca);
    assert!(
        refused.is_err(),
        "the handshake must fail against another CA"
    );
    // The server logs it once, and goes on serving.
    server.wait_for_log(&["TLS handshake failed"]);
    let mut ws = wss(server.addr, &pki.ca);
    ws.send(Message::text("still fine")).unwrap();
    assert_eq!(data(&mut ws), Message::text("still fine"));
}

/// What the server sends back, up to its close, to `bytes` sent on a raw TCP connection;
/// and how long that took.
fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> (Vec<u8>, Duration) {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    let started = Instant::now();
    tcp.write_all(bytes).unwrap();
    let mut got = Vec::new();
    let _ = tcp.read_to_end(&mut got);
    (got, started.elapsed())
}

#[test]
fn plain_http_garbage_and_stalled_handshakes_each_end_with_one_line_at_most() {
    let pki = Pki::new("bad-clients");
    let server = start(&pki, &["--handshake-timeout", "1s"]);

    let (answer, _) = raw_exchange(server.addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(answer.contains("use https:// or wss://"), "{answer}");

    let (answer, _) = raw_exchange(server.addr, b"\x00\x01garbage");
    assert!(answer.is_empty(), "{answer:?}");
    server.wait_for_log(&["dropped: not a TLS handshake"]);

    // A TLS record header announcing a handshake, then garbage: rustls refuses it.
    let (_, took) = raw_exchange(server.addr, b"\x16\x03\x01\x00\x05hello");
    assert!(
        took < Duration::from_secs(1),
        "closed at once, not at the timeout"
    );
    server.wait_for_log(&["TLS handshake failed"]);

    // The first bytes of a ClientHello, then nothing: dropped at the handshake timeout.
    let mut stalled = TcpStream::connect(server.addr).unwrap();
    stalled.set_read_timeout(Some(PATIENCE)).unwrap();
    stalled
        .write_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        .unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = stalled.read_to_end(&mut rest);
    assert!(
        started.elapsed() < Duration::from_secs(1 + 3),
        "{:?}",
        started.elapsed()
    );
    server.wait_for_log(&["dropped: no complete request within 1s"]);

    // One line each, not one per read or per record.
    let lines: Vec<_> = server
        .log()
        .lines()
        .filter(|l| l.contains("rejected") || l.contains("dropped"))
        .map(String::from)
        .collect();
    assert_eq!(lines.len(), 4, "{lines:#?}");
}

/// The certificate `openssl s_client` is given with these options, as PEM.
fn presented_certificate(addr: SocketAddr, options: &[&str]) -> String {
    let output = Command::new("openssl")
        .args(["s_client", "-connect", &addr.to_string()])
        .args(options)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl (scripts/test.sh installs it)");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let begin = text
        .find("-----BEGIN CERTIFICATE-----")
        .unwrap_or_else(|| panic!("{text}"));
    let end = text.find("-----END CERTIFICATE-----").unwrap() + "-----END CERTIFICATE-----".len();
    text[begin..end].to_string()
}

#[test]
fn clients_without_sni_or_with_another_name_get_the_one_certificate() {
    let pki = Pki::new("sni");
    let server = start(&pki, &[]);
    let ours = std::fs::read_to_string(pki.dir.join("cert.pem")).unwrap();
    for options in [&["-noservername"][..], &["-servername", "other.example"]] {
        assert_eq!(
            presented_certificate(server.addr, options).trim(),
            ours.trim(),
            "{options:?}"
        );
    }
}

/// Converts the PKCS#8 key at `from` with openssl into another encoding at `to`.
fn openssl(args: &[&str]) {
    let status = Command::new("openssl")
        .args(args)
        .status()
        .expect("openssl");
    assert!(status.success(), "openssl {args:?}");
}

#[test]
fn pkcs1_and_sec1_keys_work_too() {
    let pki = Pki::new("key-formats");
    // SEC1: the EC key rcgen made, in OpenSSL's traditional form.
    let sec1 = pki.path("sec1.pem");
    openssl(&["ec", "-in", &pki.path("key.pem"), "-out", &sec1]);
    assert!(
        std::fs::read_to_string(&sec1)
            .unwrap()
            .contains("BEGIN EC PRIVATE KEY")
    );
    let cert = pki.path("cert.pem");
    let server = Wsecho::start(&["--tls-cert", &cert, "--tls-key", &sec1]);
    let mut ws = wss(server.addr, &pki.ca);
    ws.send(Message::text("sec1")).unwrap();
    assert_eq!(data(&mut ws), Message::text("sec1"));

    // PKCS#1: an RSA key from openssl, certified by rcgen.
    let rsa = pki.path("rsa1.pem");
    openssl(&["genrsa", "-traditional", "-out", &rsa, "2048"]);
    let pkcs8 = pki.path("rsa8.pem");
    openssl(&["pkcs8", "-topk8", "-nocrypt", "-in", &rsa, "-out", &pkcs8]);
    let key = KeyPair::from_pem(&std::fs::read_to_string(&pkcs8).unwrap()).unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let rsa_cert = pki.path("rsa-cert.pem");
    std::fs::write(&rsa_cert, params.signed_by(&key, &ca).unwrap().pem()).unwrap();
    assert!(
        std::fs::read_to_string(&rsa)
            .unwrap()
            .contains("BEGIN RSA PRIVATE KEY")
    );
    let server = Wsecho::start(&["--tls-cert", &rsa_cert, "--tls-key", &rsa]);
    let mut ws = wss(server.addr, &ca.pem());
    ws.send(Message::text("pkcs1")).unwrap();
    assert_eq!(data(&mut ws), Message::text("pkcs1"));
}

/// Runs wsecho with these arguments, expecting it to refuse to start.
fn refused_start(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_wsecho"))
        .args(["--port", "0"])
        .args(args)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{args:?}");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    stderr
}

#[test]
fn missing_unreadable_mismatched_or_malformed_files_are_one_line_at_start() {
    let pki = Pki::new("bad-files");
    let (cert, key) = (pki.path("cert.pem"), pki.path("key.pem"));
    let missing = pki.path("nope.pem");
    let error = refused_start(&["--tls-cert", &missing, "--tls-key", &key]);
    assert!(
        error.contains(&format!("cannot use TLS certificate {missing}")),
        "{error}"
    );
    // A folder cannot be read as a file (and root could read any file).
    let folder = pki.dir.display().to_string();
    let error = refused_start(&["--tls-cert", &cert, "--tls-key", &folder]);
    assert!(
        error.contains(&format!("cannot use TLS key {folder}")),
        "{error}"
    );
    // The key of another certificate.
    let mut other = Pki::new("bad-files-other");
    other.issue("cert.pem", "key.pem");
    let error = refused_start(&["--tls-cert", &cert, "--tls-key", &other.path("key.pem")]);
    assert!(
        error.contains("is it the key of that certificate?"),
        "{error}"
    );
    // Not PEM at all, and a certificate where the key should be.
    let junk = pki.path("junk.pem");
    std::fs::write(&junk, "this is not a certificate\n").unwrap();
    let error = refused_start(&["--tls-cert", &junk, "--tls-key", &key]);
    assert!(error.contains("no CERTIFICATE in it"), "{error}");
    let error = refused_start(&["--tls-cert", &cert, "--tls-key", &cert]);
    assert!(error.contains("no private key in it"), "{error}");
    // PEM armour around garbage: the certificate is the broken file, not the key.
    let armoured = pki.path("armoured.pem");
    std::fs::write(&armoured, ARMOURED_GARBAGE).unwrap();
    let error = refused_start(&["--tls-cert", &armoured, "--tls-key", &key]);
    assert!(
        error.contains(&format!(
            "cannot use TLS certificate {armoured}: not a valid"
        )),
        "{error}"
    );
    assert!(!error.contains("key"), "{error}");
    // One without the other.
    let output = Command::new(env!("CARGO_BIN_EXE_wsecho"))
        .args(["--tls-cert", &cert])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--tls-key"));
}

/// A file that is PEM, with a CERTIFICATE in it, that is not a certificate.
const ARMOURED_GARBAGE: &str =
    "-----BEGIN CERTIFICATE-----\nZ2FyYmFnZQ==\n-----END CERTIFICATE-----\n";

fn replace(path: &Path, with: &Path) {
    std::fs::copy(with, path).unwrap();
}

#[test]
fn sighup_rotates_the_certificate_for_new_connections_only() {
    let mut pki = Pki::new("rotation");
    let server = start(&pki, &["--greeting-delay", "off"]);
    let old_ca = pki.ca.clone();
    let mut before = wss(server.addr, &old_ca);

    // New files, from a new authority, in place of the old ones.
    pki.issue("next-cert.pem", "next-key.pem");
    replace(&pki.dir.join("cert.pem"), &pki.dir.join("next-cert.pem"));
    replace(&pki.dir.join("key.pem"), &pki.dir.join("next-key.pem"));
    server.signal("HUP");
    server.wait_for_log(&["SIGHUP: reloaded the TLS certificate"]);
    let mut after = wss(server.addr, &pki.ca);
    after.send(Message::text("new")).unwrap();
    assert_eq!(data(&mut after), Message::text("new"));
    assert!(
        tls_to(server.addr, &old_ca).is_err(),
        "new connections get the new certificate"
    );
    // The connection opened before is untouched.
    before.send(Message::text("old")).unwrap();
    assert_eq!(data(&mut before), Message::text("old"));

    // A bad file is logged, and the certificate in use stays.
    std::fs::write(pki.dir.join("cert.pem"), "garbage").unwrap();
    server.signal("HUP");
    server.wait_for_log(&[
        "SIGHUP: cannot use TLS certificate",
        "the certificate in use stays",
    ]);
    std::fs::write(pki.dir.join("cert.pem"), ARMOURED_GARBAGE).unwrap();
    server.signal("HUP");
    let line = server.wait_for_log(&["SIGHUP: cannot use TLS certificate", "not a valid"]);
    assert!(!line.contains("key"), "{line}");
    let mut still = wss(server.addr, &pki.ca);
    still.send(Message::text("still")).unwrap();
    assert_eq!(data(&mut still), Message::text("still"));
    let _ = (expect_close, next_data); // shared helpers other tests use
}

#[test]
fn whoami_and_get_echo_show_the_tls_version_the_name_and_the_subprotocol() {
    let pki = Pki::new("whoami");
    let server = start(&pki, &["--greeting-delay", "off", "--subprotocol", "chat"]);
    let tls = tls_to(server.addr, &pki.ca).expect("TLS handshake");
    let url = format!("wss://localhost:{}/?whoami", server.addr.port());
    let mut request = tungstenite::client::IntoClientRequest::into_client_request(url).unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "chat".parse().unwrap());
    let (mut ws, _) = tungstenite::client(request, tls).expect("WebSocket handshake");
    let Message::Text(first) = data(&mut ws) else {
        panic!("whoami is text")
    };
    let json: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(json["subprotocol"], "chat");
    assert_eq!(
        json["tls"],
        serde_json::json!({"version": "TLSv1.3", "sni": "localhost"})
    );
    let echo = https(
        server.addr,
        &pki.ca,
        "GET /echo HTTP/1.1\r\nHost: localhost\r\n\r\n",
    );
    assert!(echo.starts_with("HTTP/1.1 200 "), "{echo}");
    assert!(
        echo.contains("\"tls\":{\"version\":\"TLSv1.3\",\"sni\":\"localhost\"}"),
        "{echo}"
    );
}

/// Under a service manager, a SIGHUP reload of the certificate is announced: RELOADING=1 while
/// it runs, READY=1 once it is done (read from a real NOTIFY_SOCKET).
#[cfg(target_os = "linux")]
#[test]
fn a_certificate_reload_tells_the_service_manager() {
    use std::os::unix::net::UnixDatagram;
    let pki = Pki::new("notify-reload");
    let dir = std::env::temp_dir().join(format!("wsecho-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("notify.sock");
    let _ = std::fs::remove_file(&path);
    let socket = UnixDatagram::bind(&path).unwrap();
    socket.set_read_timeout(Some(PATIENCE)).unwrap();
    let tls = pki.tls_args();
    let args: Vec<&str> = tls.iter().map(String::as_str).collect();
    let server = Wsecho::start_with_env(&[("NOTIFY_SOCKET", path.to_str().unwrap())], &args);
    let mut buf = [0u8; 4096];
    let mut next = || {
        let n = socket.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert!(next().lines().any(|line| line == "READY=1"));
    server.signal("HUP");
    let reloading = next();
    assert!(
        reloading.lines().any(|line| line == "RELOADING=1"),
        "{reloading:?}"
    );
    assert!(next().lines().any(|line| line == "READY=1"));
    server.wait_for_log(&["SIGHUP: reloaded the TLS certificate"]);
    let _ = std::fs::remove_dir_all(&dir);
}
