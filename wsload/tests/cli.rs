//! End-to-end tests: the real `wsload` binary against small WebSocket
//! servers built on tungstenite, an independent implementation, so framing
//! or handshake mistakes in wsload cannot hide behind a matching mistake in
//! the server. Everything listens on 127.0.0.1 and every run lasts well
//! under a few seconds.
//!
//! The `wss://` tests serve the same servers over rustls's server side, with
//! a certificate authority and a server certificate made at test time.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, ServerConnection, StreamOwned};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

/// What the test server does with messages.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    Echo,
    /// Echo, but flip a byte of every third binary message.
    Corrupt,
    /// Send each message to every connected client.
    Broadcast,
}

type Peers = Arc<Mutex<Vec<Sender<Message>>>>;

/// A test server's stream: plain TCP or TLS over it.
trait Stream: Read + Write {
    fn tcp(&self) -> &TcpStream;
}

impl Stream for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl Stream for StreamOwned<ServerConnection, TcpStream> {
    fn tcp(&self) -> &TcpStream {
        &self.sock
    }
}

/// Starts a thread-per-connection server on a free loopback port; returns
/// its URL. `greeting` sends one text message that long after the handshake.
fn server(behaviour: Behaviour, greeting: Option<Duration>) -> String {
    start_server(behaviour, greeting, None)
}

/// [`server`] over TLS, with the certificate of `pki`: a wss:// URL.
fn tls_server(behaviour: Behaviour, greeting: Option<Duration>, pki: &Pki) -> String {
    start_server(behaviour, greeting, Some(pki.server_config()))
}

fn start_server(
    behaviour: Behaviour,
    greeting: Option<Duration>,
    tls: Option<Arc<ServerConfig>>,
) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let url = match tls {
        Some(_) => format!("wss://{addr}"),
        None => format!("ws://{addr}"),
    };
    let peers: Peers = Arc::default();
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let peers = peers.clone();
            let tls = tls.clone();
            thread::spawn(move || match tls {
                None => serve(stream, behaviour, greeting, peers),
                Some(config) => {
                    let Ok(session) = ServerConnection::new(config) else {
                        return;
                    };
                    // The TLS handshake happens in the WebSocket handshake's reads.
                    let stream = StreamOwned::new(session, stream);
                    serve(stream, behaviour, greeting, peers);
                }
            });
        }
    });
    url
}

fn serve<S: Stream>(stream: S, behaviour: Behaviour, greeting: Option<Duration>, peers: Peers) {
    let Ok(mut ws) = tungstenite::accept(stream) else {
        return;
    };
    let opened = Instant::now();
    let mut greet_at = greeting.map(|d| opened + d);
    // A short read timeout lets one thread both read and forward broadcasts.
    ws.get_mut()
        .tcp()
        .set_read_timeout(Some(Duration::from_millis(1)))
        .expect("timeout");
    let (tx, rx): (Sender<Message>, Receiver<Message>) = mpsc::channel();
    peers.lock().expect("peers").push(tx);
    let mut count = 0u64;
    loop {
        if greet_at.is_some_and(|t| Instant::now() >= t) {
            greet_at = None;
            if ws
                .send(Message::text("hello from the test server"))
                .is_err()
            {
                return;
            }
        }
        match ws.read() {
            Ok(msg @ (Message::Binary(_) | Message::Text(_))) => {
                count += 1;
                if !reply(&mut ws, behaviour, msg, count, &peers) {
                    return;
                }
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
        while let Ok(msg) = rx.try_recv() {
            if ws.send(msg).is_err() {
                return;
            }
        }
    }
}

fn reply<S: Stream>(
    ws: &mut WebSocket<S>,
    behaviour: Behaviour,
    msg: Message,
    count: u64,
    peers: &Peers,
) -> bool {
    match (behaviour, msg) {
        (Behaviour::Broadcast, msg) => {
            for peer in peers.lock().expect("peers").iter() {
                let _ = peer.send(msg.clone());
            }
            true
        }
        (Behaviour::Corrupt, Message::Binary(data)) if count.is_multiple_of(3) => {
            let mut data = data.to_vec();
            data[0] ^= 0xFF;
            ws.send(Message::binary(data)).is_ok()
        }
        (_, msg) => ws.send(msg).is_ok(),
    }
}

fn wsload(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wsload"))
        .args(args)
        .output()
        .expect("run wsload")
}

/// Runs wsload with `--json` and returns its exit code and report.
fn wsload_json(args: &[&str]) -> (i32, Value) {
    let mut all = args.to_vec();
    all.push("--json");
    let out = wsload(&all);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}); stdout: {stdout}; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().expect("exit code"), report)
}

#[test]
fn echo_passes_against_a_correct_server() {
    let url = server(Behaviour::Echo, None);
    let (code, r) = wsload_json(&[
        "echo",
        "--url",
        &url,
        "--connections",
        "4",
        "--size",
        "1000",
        "--duration",
        "500ms",
        "--warmup",
        "100ms",
    ]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["ok"], true);
    assert_eq!(r["opened"], 4);
    assert!(r["messages"].as_u64().unwrap() > 10, "{r}");
    assert_eq!(r["latency_us"]["count"], r["messages"]);
    assert_eq!(r["mismatches"], 0);
}

#[test]
fn echo_uses_large_frames_and_two_threads() {
    let url = server(Behaviour::Echo, None);
    let (code, r) = wsload_json(&[
        "echo",
        "--url",
        &url,
        "--connections",
        "3",
        "--size",
        "70000",
        "--duration",
        "300ms",
        "--warmup",
        "0s",
        "--threads",
        "2",
    ]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["threads"], 2);
    assert!(r["messages"].as_u64().unwrap() > 0);
}

#[test]
fn text_echo_counts_the_greeting_as_unsolicited() {
    let url = server(Behaviour::Echo, Some(Duration::from_millis(100)));
    let (code, r) = wsload_json(&[
        "echo",
        "--url",
        &url,
        "--connections",
        "2",
        "--text",
        "--duration",
        "400ms",
        "--warmup",
        "0s",
    ]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["unsolicited"], 2);
    assert_eq!(r["mismatches"], 0);
}

#[test]
fn echo_fails_loudly_on_a_wrong_echo() {
    let url = server(Behaviour::Corrupt, None);
    let (code, r) = wsload_json(&[
        "echo",
        "--url",
        &url,
        "--duration",
        "300ms",
        "--warmup",
        "0s",
    ]);
    assert_eq!(code, 1);
    assert_eq!(r["ok"], false);
    assert!(r["mismatches"].as_u64().unwrap() >= 1);
    assert!(
        r["first_error"].as_str().unwrap().contains("differs"),
        "{r}"
    );
}

#[test]
fn hold_measures_greetings_memory_and_still_echoes() {
    let url = server(Behaviour::Echo, Some(Duration::from_millis(100)));
    let pid = std::process::id().to_string();
    let mut args = vec![
        "hold",
        "--url",
        &url,
        "--connections",
        "20",
        "--hold",
        "500ms",
        "--greeting-delay",
        "100ms",
    ];
    // The server's figures come from /proc.
    let linux = cfg!(target_os = "linux");
    if linux {
        args.extend(["--pid", &pid]);
    }
    let (code, r) = wsload_json(&args);
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["opened"], 20);
    assert_eq!(r["greetings"], 20);
    assert_eq!(r["lateness_us"]["count"], 20);
    assert_eq!(r["still_echo"], 20);
    if linux {
        assert!(r["rss_per_conn_kib"].is_number());
        assert!(r["fds_per_conn"].is_number());
        assert!(r["fds_after"].as_u64().unwrap() >= 1);
        assert!(r["idle_cpu_s"].as_f64().unwrap() >= 0.0);
    }
}

#[test]
fn hold_then_echo_measures_again_after_the_greeting_and_a_message() {
    let url = server(Behaviour::Echo, Some(Duration::from_millis(100)));
    let pid = std::process::id().to_string();
    let args = [
        "hold",
        "--url",
        &url,
        "--connections",
        "20",
        "--hold",
        "300ms",
        "--greeting-delay",
        "100ms",
        "--pid",
        &pid,
        "--then-echo",
        "64KiB",
        "--settle",
        "100ms",
    ];
    if !cfg!(target_os = "linux") {
        // --pid needs /proc: the run is refused with a clear error.
        let out = wsload(&args);
        assert_eq!(out.status.code(), Some(1));
        return;
    }
    let (code, r) = wsload_json(&args);
    assert_eq!(code, 0, "{r}");
    assert_eq!(
        (r["greetings"].as_u64(), r["then_echoed"].as_u64()),
        (Some(20), Some(20))
    );
    assert_eq!(r["then_echo_bytes"], 65536);
    assert_eq!(r["settle_s"], 0.1);
    for key in [
        "kernel_per_conn_kib",
        "total_per_conn_kib",
        "after_greeting_rss_per_conn_kib",
        "after_greeting_total_per_conn_kib",
        "after_message_rss_per_conn_kib",
        "after_message_kernel_per_conn_kib",
        "after_message_total_per_conn_kib",
    ] {
        assert!(r[key].is_number(), "{key}: {r}");
    }
    assert_eq!(r["still_echo"], 20);
}

#[test]
fn hold_upgrade_together_opens_every_connection_in_its_room() {
    if !cfg!(target_os = "linux") {
        return; // --upgrade-together counts the server's descriptors in /proc
    }
    let url = server(Behaviour::Echo, Some(Duration::from_millis(100)));
    // The server is this process, whose other tests open and close sockets
    // meanwhile: whether its count reached the connections' is not asserted.
    let pid = std::process::id().to_string();
    let (code, r) = wsload_json(&[
        "hold",
        "--url",
        &format!("{url}/soak"),
        "--connections",
        "20",
        "--hold",
        "500ms",
        "--greeting-delay",
        "100ms",
        "--pid",
        &pid,
        "--upgrade-together",
        "--rooms",
        "4",
    ]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(
        (
            r["opened"].as_u64(),
            r["greetings"].as_u64(),
            r["still_echo"].as_u64()
        ),
        (Some(20), Some(20), Some(20)),
        "{r}"
    );
    assert_eq!(
        (r["upgrade_together"].as_bool(), r["rooms"].as_u64()),
        (Some(true), Some(4))
    );
    assert!(r["accepted_before_upgrade"].is_boolean(), "{r}");
    assert!(r["opened_within_s"].as_f64().unwrap() < 1.0, "{r}");
}

#[test]
fn hold_then_echo_needs_a_pid() {
    let out = wsload(&["hold", "--url", "ws://127.0.0.1:1", "--then-echo", "1KiB"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn fanout_checks_every_delivery() {
    let url = server(Behaviour::Broadcast, Some(Duration::from_millis(50)));
    // The server runs in this process; its CPU time comes from /proc.
    let pid = std::process::id().to_string();
    let linux = cfg!(target_os = "linux");
    for rate in ["0", "2000"] {
        let mut args = vec![
            "fanout",
            "--url",
            &url,
            "--listeners",
            "5",
            "--messages",
            "200",
            "--rate",
            rate,
        ];
        if linux {
            args.extend(["--pid", &pid]);
        }
        let (code, r) = wsload_json(&args);
        assert_eq!(code, 0, "{r}");
        assert_eq!(r["delivered"], 1000);
        assert_eq!(r["missing"], 0);
        assert_eq!(r["out_of_order"], 0);
        assert_eq!(r["latency_us"]["count"], 1000);
        if linux {
            assert!(r["server_cpu_s"].as_f64().unwrap() >= 0.0, "{r}");
        } else {
            assert!(r["server_cpu_s"].is_null(), "{r}");
        }
    }
}

#[test]
fn fanout_slow_listener_reads_at_its_rate_and_gets_everything() {
    let url = server(Behaviour::Broadcast, None);
    let (code, r) = wsload_json(&[
        "fanout",
        "--url",
        &url,
        "--listeners",
        "3",
        "--messages",
        "100",
        "--size",
        "1KiB",
        "--slow-listener",
        "64KiB",
        "--timeout",
        "20s",
    ]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["delivered"], 300);
    assert_eq!(r["slow_rate"], 65536);
    assert_eq!(r["slow_delivered"], 100);
    assert_eq!(r["slow_missing"], 0);
    assert_eq!(r["slow_out_of_order"], 0);
    assert_eq!(r["slow_closed_by_server"], false);
    assert!(r["slow_close_code"].is_null());
    // 100 frames of 1028 bytes at 64 KiB/s take at least 1.5 s to read.
    let took = r["slow_last_delivery_s"].as_f64().unwrap();
    assert!((1.4..15.0).contains(&took), "{took}");
}

#[test]
fn fanout_without_a_slow_listener_has_no_slow_fields() {
    let url = server(Behaviour::Broadcast, None);
    let (code, r) = wsload_json(&[
        "fanout",
        "--url",
        &url,
        "--listeners",
        "2",
        "--messages",
        "10",
    ]);
    assert_eq!(code, 0, "{r}");
    assert!(r.get("slow_delivered").is_none(), "{r}");
}

#[test]
fn fanout_spreads_listeners_over_listener_urls() {
    // Two spellings of one broadcasting server stand for two instances of a cluster.
    let url = server(Behaviour::Broadcast, None);
    let other = url.replace("127.0.0.1", "localhost") + "/other";
    let (code, r) = wsload_json(&[
        "fanout",
        "--url",
        &url,
        "--listener-url",
        &url,
        "--listener-url",
        &other,
        "--listeners",
        "4",
        "--messages",
        "50",
    ]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["delivered"], 200);
    assert_eq!(r["listener_urls"][1], other.as_str());
    // The loopback rule holds for listener URLs too.
    let out = wsload(&[
        "fanout",
        "--url",
        &url,
        "--listener-url",
        "ws://192.0.2.1:9/",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a loopback address"), "{err}");
}

/// A broadcasting server that numbers its one room's messages and lets clients resume by
/// position, as wsecho `--broadcast --history N` does (see wsload's `fanout/resume.rs` for
/// the wire format), written here apart from both: `?resume` (a newcomer) or
/// `?resume=EPOCH:OFFSET`, a JSON header first, then every message after the position.
/// Clients without `?resume` (the sender) get only what is broadcast after they joined.
/// It keeps every message. With `cut_after` N > 0 it closes each connection that joined as
/// a newcomer with 1008 once it has sent it N messages, as wsecho lets go a listener that
/// fell behind; a connection that resumed is never cut.
fn resume_server(cut_after: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("ws://{}", listener.local_addr().expect("addr"));
    let room = Arc::new(Mutex::new(NumberedRoom::default()));
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let room = room.clone();
            thread::spawn(move || serve_numbered(stream, &room, cut_after));
        }
    });
    url
}

#[derive(Default)]
struct NumberedRoom {
    /// Every message so far: message n (offset n) is `messages[n - 1]`.
    messages: Vec<Message>,
    members: Vec<Sender<Message>>,
}

const EPOCH: &str = "test-epoch-1";

// The handshake callback's error type is tungstenite's (an HTTP response), not ours.
#[allow(clippy::result_large_err)]
fn serve_numbered(stream: TcpStream, room: &Mutex<NumberedRoom>, cut_after: usize) {
    let mut query = None;
    let callback = |request: &tungstenite::handshake::server::Request,
                    response: tungstenite::handshake::server::Response| {
        query = request.uri().query().map(str::to_string);
        Ok(response)
    };
    let Ok(mut ws) = tungstenite::accept_hdr(stream, callback) else {
        return;
    };
    // None: no resume; Some(None): a newcomer; Some(Some((epoch, offset))): a position.
    let resume: Option<Option<(String, usize)>> = query.as_deref().and_then(|q| {
        q.split('&').find_map(|pair| match pair.split_once('=') {
            None if pair == "resume" => Some(None),
            Some(("resume", "")) => Some(None),
            Some(("resume", value)) => {
                let (epoch, offset) = value.rsplit_once(':').expect("EPOCH:OFFSET");
                Some(Some((
                    epoch.to_string(),
                    offset.parse().expect("an offset"),
                )))
            }
            _ => None,
        })
    });
    ws.get_mut()
        .set_read_timeout(Some(Duration::from_millis(1)))
        .expect("timeout");
    let (tx, rx) = mpsc::channel();
    {
        // Header, history and membership under the room's lock: nothing missing, nothing twice.
        let mut room = room.lock().expect("room");
        if let Some(position) = &resume {
            let newest = room.messages.len();
            let (from, recovered) = match position {
                Some((epoch, offset)) if epoch == EPOCH && *offset <= newest => (*offset, true),
                _ => (0, false),
            };
            let header =
                format!(r#"{{"epoch":"{EPOCH}","offset":{from},"recovered":{recovered}}}"#);
            let mut ok = ws.send(Message::text(header)).is_ok();
            for msg in &room.messages[from..] {
                ok = ok && ws.send(msg.clone()).is_ok();
            }
            if !ok {
                return;
            }
        }
        room.members.push(tx);
    }
    let cut = (cut_after > 0 && resume == Some(None)).then_some(cut_after);
    let mut sent = 0;
    loop {
        match ws.read() {
            Ok(msg @ (Message::Binary(_) | Message::Text(_))) => {
                let mut room = room.lock().expect("room");
                room.messages.push(msg.clone());
                room.members.retain(|peer| peer.send(msg.clone()).is_ok());
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
        while let Ok(msg) = rx.try_recv() {
            if cut.is_some_and(|n| sent == n) {
                let frame = tungstenite::protocol::CloseFrame {
                    code: tungstenite::protocol::frame::coding::CloseCode::Policy,
                    reason: "too slow: fell behind its room".into(),
                };
                let _ = ws.close(Some(frame));
                // Finish the closing handshake, then drop the connection.
                let deadline = Instant::now() + Duration::from_secs(2);
                while Instant::now() < deadline && ws.read().is_ok() {}
                return;
            }
            if ws.send(msg).is_err() {
                return;
            }
            sent += 1;
        }
    }
}

#[test]
fn fanout_resume_comes_back_after_a_1008_and_gets_everything() {
    // Every listener is let go after 60 messages (sync messages included) and resumes.
    let url = resume_server(60);
    let (code, r) = wsload_json(&[
        "fanout",
        "--url",
        &url,
        "--listeners",
        "4",
        "--messages",
        "300",
        "--rate",
        "1000",
        "--resume",
        "--timeout",
        "20s",
    ]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(
        (r["delivered"].as_u64(), r["missing"].as_u64()),
        (Some(1200), Some(0)),
        "{r}"
    );
    assert_eq!(
        (r["out_of_order"].as_u64(), r["duplicates"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(r["resume_closed_1008"], 4, "{r}");
    assert_eq!(r["resume_reconnects"], 4, "{r}");
    assert_eq!(r["resume_recovered"], 4, "{r}");
    assert_eq!(r["resume_not_recovered"], 0, "{r}");
    assert_eq!(r["resume_lost"], 0, "{r}");
    assert_eq!(r["resume_offset_errors"], 0, "{r}");
    // What was sent while a listener was away came from the history.
    assert!(r["resume_caught_up"].as_u64().unwrap() <= 1200, "{r}");
}

#[test]
fn fanout_resume_brings_a_slow_listener_back_too() {
    // The slow listener is let go after 60 messages like the others, comes back and reads
    // on at its rate: 200 frames of about 1 KiB at 64 KiB/s, about 3 s.
    let url = resume_server(60);
    let (code, r) = wsload_json(&[
        "fanout",
        "--url",
        &url,
        "--listeners",
        "2",
        "--messages",
        "200",
        "--size",
        "1KiB",
        "--slow-listener",
        "64KiB",
        "--resume",
        "--timeout",
        "20s",
    ]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(
        (r["delivered"].as_u64(), r["slow_delivered"].as_u64()),
        (Some(400), Some(200)),
        "{r}"
    );
    assert_eq!(r["slow_missing"], 0, "{r}");
    assert_eq!(r["slow_closed_by_server"], false, "{r}");
    assert_eq!(r["slow_reconnects"], 1, "{r}");
    assert_eq!(r["resume_closed_1008"], 3, "{r}");
    assert_eq!(r["resume_recovered"], 3, "{r}");
    assert_eq!(r["resume_lost"], 0, "{r}");
}

#[test]
fn fanout_leave_after_times_the_catch_up_from_history() {
    let url = resume_server(0);
    let (code, r) = wsload_json(&[
        "fanout",
        "--url",
        &url,
        "--listeners",
        "2",
        "--messages",
        "501",
        "--resume",
        "--leave-after",
        "1",
        "--timeout",
        "20s",
    ]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["delivered"], 1002, "{r}");
    assert_eq!(r["resume_leave_after"], 1);
    assert_eq!(r["resume_left"], 2, "{r}");
    assert_eq!(r["resume_recovered"], 2, "{r}");
    // Each missed the 500 sent after its first, all sent before it came back.
    assert_eq!(r["resume_caught_up"], 1000, "{r}");
    assert_eq!(r["resume_catch_up_count"], 2, "{r}");
    assert!(r["resume_catch_up_max_us"].as_f64().unwrap() > 0.0, "{r}");
    // Their latency leaves out what they caught up: the first message each.
    assert_eq!(r["latency_us"]["count"], 2, "{r}");
}

#[test]
fn fanout_resume_against_a_server_without_it_fails_clearly() {
    let url = server(Behaviour::Broadcast, None);
    let (code, r) = wsload_json(&[
        "fanout",
        "--url",
        &url,
        "--listeners",
        "2",
        "--messages",
        "10",
        "--resume",
        "--timeout",
        "5s",
    ]);
    assert_eq!(code, 1, "{r}");
    assert!(r["resume_offset_errors"].as_u64().unwrap() >= 2, "{r}");
    assert!(
        r["first_error"]
            .as_str()
            .unwrap()
            .contains("not a resume header"),
        "{r}"
    );
    // --leave-after needs --resume, and must leave something to miss.
    let out = wsload(&["fanout", "--url", &url, "--leave-after", "1"]);
    assert_eq!(out.status.code(), Some(2));
    let out = wsload(&[
        "fanout",
        "--url",
        &url,
        "--resume",
        "--messages",
        "5",
        "--leave-after",
        "5",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("must be below --messages"), "{err}");
}

/// A server that restarts: the first `count` connections are closed with 1012 "service
/// restart" once all of them are open, the `busy` connections after them are answered 503,
/// and every later one is echoed. Returns its URL and each connection's peer address.
fn restarting_server(count: usize, busy: usize) -> (String, Arc<Mutex<Vec<SocketAddr>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("ws://{}", listener.local_addr().expect("addr"));
    let peers: Arc<Mutex<Vec<SocketAddr>>> = Arc::default();
    let seen = peers.clone();
    let open = Arc::new((Mutex::new(0usize), Condvar::new()));
    thread::spawn(move || {
        for (n, stream) in listener.incoming().flatten().enumerate() {
            seen.lock().unwrap().push(stream.peer_addr().expect("peer"));
            let open = open.clone();
            thread::spawn(move || {
                if n < count {
                    close_with_1012_once_all_open(stream, &open, count);
                } else if n < count + busy {
                    answer_503(stream);
                } else {
                    serve(stream, Behaviour::Echo, None, Arc::default());
                }
            });
        }
    });
    (url, peers)
}

/// Opens the WebSocket, waits until `count` are open, closes it with 1012 and completes the
/// closing handshake.
fn close_with_1012_once_all_open(stream: TcpStream, open: &(Mutex<usize>, Condvar), count: usize) {
    let Ok(mut ws) = tungstenite::accept(stream) else {
        return;
    };
    let (lock, all_open) = open;
    let mut n = lock.lock().unwrap();
    *n += 1;
    all_open.notify_all();
    let (_n, _) = all_open
        .wait_timeout_while(n, Duration::from_secs(10), |n| *n < count)
        .unwrap();
    let restart = CloseFrame {
        code: CloseCode::Restart,
        reason: "service restart".into(),
    };
    let _ = ws.close(Some(restart));
    while ws.read().is_ok() {}
}

/// Reads the request head and answers 503, as a server at its limits does.
fn answer_503(mut stream: TcpStream) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).is_ok_and(|n| n == 1) {
        head.push(byte[0]);
    }
    let _ = stream.write_all(
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
}

#[test]
fn hold_reconnect_brings_every_connection_back_from_its_source_address() {
    let (url, peers) = restarting_server(6, 0);
    let out = wsload(&[
        "hold",
        "--url",
        &url,
        "--connections",
        "6",
        "--hold",
        "10s",
        "--reconnect",
        "--jitter",
        "100ms",
        "--source-addresses",
        "3",
        "--threads",
        "2",
        "--json",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let r: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    assert_eq!(out.status.code(), Some(0), "{r}");
    assert!(
        stderr.contains("wsload: hold --reconnect: 6 of 6 connections open"),
        "{stderr}"
    );
    assert_eq!(r["ok"], true);
    assert_eq!(r["reconnect_back"], 6, "{r}");
    assert_eq!(r["reconnect_closed_1012"], 6);
    assert_eq!(r["reconnect_reconnects"], 6);
    assert_eq!(r["reconnect_refused"], 0);
    assert_eq!(r["reconnect_busy"], 0);
    assert_eq!(r["reconnect_count"], 6);
    assert_eq!(r["reconnect_jitter_s"], 0.1);
    assert_eq!(r["dropped"], 0);
    assert_eq!(r["still_echo"], 6);
    assert_eq!(r["source_addresses"], 3);
    // Every connection closes before it comes back, well within the 10 s hold.
    let all_back = r["reconnect_all_back_s"].as_f64().unwrap();
    assert!(all_back < 5.0, "{r}");
    assert!(
        r["reconnect_max_us"].as_f64().unwrap() <= all_back * 1e6,
        "{r}"
    );
    // Two connections from each address, the second life from the same one as the first.
    let peers = peers.lock().unwrap();
    assert_eq!(peers.len(), 12);
    for k in 1..=3u8 {
        let from = peers
            .iter()
            .filter(|p| p.ip() == IpAddr::from([127, 0, 0, k]));
        assert_eq!(from.count(), 4, "{peers:?}");
    }
}

#[test]
fn hold_reconnect_counts_503s_and_fails_but_still_gets_everyone_back() {
    let (url, _) = restarting_server(4, 2);
    let (code, r) = wsload_json(&[
        "hold",
        "--url",
        &url,
        "--connections",
        "4",
        "--hold",
        "10s",
        "--reconnect",
    ]);
    assert_eq!(code, 1, "{r}");
    assert_eq!(r["ok"], false);
    assert_eq!(r["reconnect_back"], 4, "{r}");
    assert_eq!(r["reconnect_busy"], 2);
    assert_eq!(r["reconnect_refused"], 0);
    assert_eq!(r["reconnect_failed"], 0);
    assert_eq!(r["still_echo"], 4);
    let first = r["reconnect_first_failure"].as_str().unwrap();
    assert!(first.contains("503"), "{first}");
}

#[test]
fn hold_reconnect_counts_what_never_came_back() {
    // A server that closes every connection with 1012 and then is gone: refused, over and
    // over, until the hold ends.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("ws://{}", listener.local_addr().expect("addr"));
    thread::spawn(move || {
        let open = (Mutex::new(0usize), Condvar::new());
        let streams: Vec<TcpStream> = listener.incoming().take(2).flatten().collect();
        drop(listener);
        thread::scope(|s| {
            for stream in streams {
                let open = &open;
                s.spawn(move || close_with_1012_once_all_open(stream, open, 2));
            }
        });
    });
    let (code, r) = wsload_json(&[
        "hold",
        "--url",
        &url,
        "--connections",
        "2",
        "--hold",
        "1s",
        "--reconnect",
        "--concurrency",
        "2",
    ]);
    assert_eq!(code, 1, "{r}");
    assert_eq!(r["reconnect_back"], 0, "{r}");
    assert_eq!(r["reconnect_closed_1012"], 2);
    assert!(r["reconnect_refused"].as_u64().unwrap() >= 2, "{r}");
    assert_eq!(r["reconnect_all_back_s"], Value::Null);
    assert_eq!(r["still_echo"], 0);
}

#[test]
fn refuses_non_loopback_targets() {
    let out = wsload(&["echo", "--url", "ws://192.0.2.1:9/"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a loopback address"), "{err}");
    assert!(err.contains("--allow-remote"), "{err}");
    assert_eq!(err.lines().count(), 1, "one-line error expected: {err}");
}

#[test]
fn bad_arguments_exit_with_2() {
    for args in [
        &["echo", "--url", "ws://127.0.0.1:1", "--size", "0"][..],
        &["echo", "--url", "ws://127.0.0.1:1", "--duration", "soon"],
        &["hold", "--url", "ws://127.0.0.1:1", "--connections", "0"],
        &["bogus"],
    ] {
        assert_eq!(wsload(args).status.code(), Some(2), "{args:?}");
    }
}

#[test]
fn unreachable_server_is_a_clear_error() {
    // Bind and drop to get a port nobody listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("ws://127.0.0.1:{port}");
    let out = wsload(&["echo", "--url", &url, "--duration", "1s"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refused"));
    let out = wsload(&["wait", "--url", &url, "--timeout", "200ms"]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn wait_returns_once_the_server_answers() {
    let url = server(Behaviour::Echo, None);
    let out = wsload(&["wait", "--url", &url, "--timeout", "5s"]);
    assert!(out.status.success(), "{out:?}");
}

/// A certificate authority and a server certificate it issued for
/// `localhost` and 127.0.0.1, with the authority's PEM in a file of its own
/// (the folder is removed on drop).
struct Pki {
    dir: PathBuf,
    cert_pem: String,
    key_pem: String,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("wsload-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "wsload test CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca =
            CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key")).expect("CA");
        let key = KeyPair::generate().expect("key");
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .expect("params");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &ca).expect("certificate");
        std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write ca.pem");
        Pki {
            dir,
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// The file with the authority's certificate, for `--ca`.
    fn ca(&self) -> String {
        self.dir.join("ca.pem").display().to_string()
    }

    fn server_config(&self) -> Arc<ServerConfig> {
        let chain = vec![CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).expect("cert")];
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).expect("key");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server config");
        Arc::new(config)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn hold_over_tls_measures_and_still_echoes() {
    let pki = Pki::new("hold");
    let url = tls_server(Behaviour::Echo, Some(Duration::from_millis(100)), &pki);
    let pid = std::process::id().to_string();
    let ca = pki.ca();
    let mut args = vec![
        "hold",
        "--url",
        &url,
        "--ca",
        &ca,
        "--connections",
        "20",
        "--hold",
        "500ms",
        "--greeting-delay",
        "100ms",
        "--threads",
        "2",
    ];
    let linux = cfg!(target_os = "linux");
    if linux {
        args.extend(["--pid", &pid]);
    }
    let (code, r) = wsload_json(&args);
    assert_eq!(code, 0, "{r}");
    assert!(r["url"].as_str().unwrap().starts_with("wss://"), "{r}");
    assert_eq!(r["opened"], 20);
    assert_eq!(r["greetings"], 20);
    assert_eq!(r["still_echo"], 20);
    assert_eq!(r["dropped"], 0);
    if linux {
        assert!(r["rss_per_conn_kib"].is_number());
        assert!(r["fds_per_conn"].is_number());
    }
}

#[test]
fn echo_over_tls_checks_small_and_multi_record_messages() {
    let pki = Pki::new("echo");
    let url = tls_server(Behaviour::Echo, None, &pki);
    let ca = pki.ca();
    // 32 B fits one record; 100,000 B spans seven (16 KiB each) on the way
    // out and back.
    for (size, threads) in [("32", "1"), ("100000", "2")] {
        let (code, r) = wsload_json(&[
            "echo",
            "--url",
            &url,
            "--ca",
            &ca,
            "--connections",
            "3",
            "--size",
            size,
            "--duration",
            "400ms",
            "--warmup",
            "0s",
            "--threads",
            threads,
        ]);
        assert_eq!(code, 0, "{r}");
        assert_eq!(r["opened"], 3);
        assert!(r["messages"].as_u64().unwrap() > 0, "{r}");
        assert_eq!(r["mismatches"], 0);
        assert_eq!(r["errors"], 0);
    }
}

#[test]
fn echo_over_tls_still_catches_a_wrong_echo() {
    let pki = Pki::new("corrupt");
    let url = tls_server(Behaviour::Corrupt, None, &pki);
    let ca = pki.ca();
    let (code, r) = wsload_json(&[
        "echo",
        "--url",
        &url,
        "--ca",
        &ca,
        "--duration",
        "300ms",
        "--warmup",
        "0s",
    ]);
    assert_eq!(code, 1, "{r}");
    assert!(r["mismatches"].as_u64().unwrap() >= 1, "{r}");
}

#[test]
fn fanout_over_tls_checks_every_delivery_and_the_slow_listener() {
    let pki = Pki::new("fanout");
    let url = tls_server(Behaviour::Broadcast, None, &pki);
    let ca = pki.ca();
    let (code, r) = wsload_json(&[
        "fanout",
        "--url",
        &url,
        "--ca",
        &ca,
        "--listeners",
        "4",
        "--messages",
        "100",
        "--size",
        "1KiB",
        "--slow-listener",
        "64KiB",
        "--timeout",
        "20s",
    ]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["delivered"], 400);
    assert_eq!(r["missing"], 0);
    assert_eq!(r["out_of_order"], 0);
    assert_eq!(r["slow_delivered"], 100);
    assert_eq!(r["slow_missing"], 0);
    assert_eq!(r["slow_closed_by_server"], false);
    // 100 frames of 1028 decrypted bytes at 64 KiB/s take at least 1.5 s.
    let took = r["slow_last_delivery_s"].as_f64().unwrap();
    assert!((1.4..15.0).contains(&took), "{took}");
}

#[test]
fn tls_trusts_only_the_given_authority() {
    let pki = Pki::new("trusted");
    let other = Pki::new("other");
    let url = tls_server(Behaviour::Echo, None, &pki);
    let other_ca = other.ca();
    let out = wsload(&[
        "hold",
        "--url",
        &url,
        "--ca",
        &other_ca,
        "--connections",
        "2",
        "--hold",
        "100ms",
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("TLS handshake failed"), "{err}");
    // Both authorities have the same name, so the signature is what fails.
    assert!(err.contains("invalid peer certificate"), "{err}");
    assert_eq!(err.lines().count(), 1, "one-line error expected: {err}");
}

#[test]
fn tls_checks_the_server_name() {
    let pki = Pki::new("name");
    let url = tls_server(Behaviour::Echo, None, &pki);
    let ca = pki.ca();
    // The URL's host is 127.0.0.1, which the certificate names; so is localhost.
    for name in [None, Some("localhost")] {
        let mut args = vec!["wait", "--url", &url, "--ca", &ca, "--timeout", "5s"];
        if let Some(name) = name {
            args.extend(["--server-name", name]);
        }
        let out = wsload(&args);
        assert!(out.status.success(), "{name:?}: {out:?}");
    }
    let out = wsload(&[
        "wait",
        "--url",
        &url,
        "--ca",
        &ca,
        "--server-name",
        "elsewhere.example",
        // Long enough for a TLS handshake on a busy machine: the name error ends it early.
        "--timeout",
        "5s",
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not valid for name \"elsewhere.example\""),
        "{err}"
    );
}

#[test]
fn wss_without_a_ca_is_a_clear_error() {
    let out = wsload(&["hold", "--url", "wss://127.0.0.1:9/", "--hold", "1s"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--ca"), "{err}");
    assert_eq!(err.lines().count(), 1, "one-line error expected: {err}");
}
