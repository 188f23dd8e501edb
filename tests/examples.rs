//! The four lessons in examples/, run as a student runs them: the example's own binary on a free
//! port (`0`), its one stdout line as the ready signal, tungstenite clients (and, where a client
//! must misbehave, a bare socket that did the handshake by hand), and the log on stderr.
//!
//! Nothing sleeps to wait for a server: readiness is the ready line, log lines are waited for
//! as they arrive. The only sleeps measure idleness (the context-switch counts, Linux only)
//! and poll for a lesson's exit after Ctrl-C.
//! Time limits are generous lower or upper bounds, never tight windows.

mod support;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Barrier, OnceLock, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use tungstenite::error::ProtocolError;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

/// Upper bound for anything a test waits for. Generous: it only matters when a test fails.
const PATIENCE: Duration = Duration::from_secs(20);

/// The lessons, as `cargo build --example` names them.
const LESSONS: [&str; 4] = ["01_echo", "02_greeting", "03_broadcast", "04_waker"];

/// What every greeting ends with.
const GREETING_END: &str = " hello client !!!";

/// `WRITE_TIMEOUT` in examples/03_broadcast.rs.
const LESSON_3_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// `GREETING_DELAY` in the lessons.
#[cfg(target_os = "linux")]
const LESSON_GREETING_DELAY: Duration = Duration::from_secs(2);

type Client = WebSocket<MaybeTlsStream<TcpStream>>;

/// `cargo test --test examples` builds this test, not the examples. So the first test to start
/// one builds them all, once, with the cargo that runs the tests: quick when they are up to
/// date, and it makes sure the lessons tested are the lessons in the source.
fn build_lessons() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let mut cargo = Command::new(env!("CARGO"));
        cargo.arg("build").current_dir(env!("CARGO_MANIFEST_DIR"));
        cargo.arg("--quiet");
        // Not with the variables cargo set for this test: some build scripts watch one, and
        // this build and the next plain `cargo build` would redo each other's work.
        for (key, _) in std::env::vars() {
            if set_by_cargo_for_the_test(&key) {
                cargo.env_remove(key);
            }
        }
        for lesson in LESSONS {
            cargo.args(["--example", lesson]);
        }
        let profile = profile_dir();
        match profile.file_name().and_then(|name| name.to_str()) {
            Some("debug") | None => {}
            Some(other) => {
                cargo.args(["--profile", other]);
            }
        }
        // The same target folder as this test binary, wherever CARGO_TARGET_DIR put it (when
        // the tests are built for another `--target`, the env var or the default must do).
        if let Some(target_dir) = profile
            .parent()
            .filter(|dir| dir.join("CACHEDIR.TAG").exists())
        {
            cargo.arg("--target-dir").arg(target_dir);
        }
        let status = cargo.status().expect("run cargo to build the examples");
        assert!(status.success(), "cargo build --example … failed: {status}");
    });
}

/// Whether cargo set this environment variable for the test it runs (as opposed to one that a
/// user set to configure cargo, which the build of the examples must see too).
fn set_by_cargo_for_the_test(key: &str) -> bool {
    let prefixes = [
        "CARGO_PKG_",
        "CARGO_BIN_",
        "CARGO_MANIFEST_",
        "CARGO_CRATE_",
    ];
    let names = ["CARGO_PRIMARY_PACKAGE", "CARGO_TARGET_TMPDIR", "OUT_DIR"];
    prefixes.iter().any(|prefix| key.starts_with(prefix)) || names.contains(&key)
}

/// target/debug (or whichever profile): this test binary is target/debug/deps/examples-HASH.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.parent()
        .and_then(|deps| deps.parent())
        .expect("the test binary lives in PROFILE/deps")
        .to_path_buf()
}

/// A running lesson, killed when dropped.
struct Lesson {
    child: Child,
    url: String,
    addr: SocketAddr,
    log: support::Log,
}

impl Lesson {
    /// Starts `examples/NAME.rs` on port 0 and waits for its ready line.
    fn start(name: &str) -> Lesson {
        build_lessons();
        let path = profile_dir()
            .join("examples")
            .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
        assert!(
            path.exists(),
            "{} is missing: cargo build --examples",
            path.display()
        );
        let mut command = Command::new(&path);
        command.arg("0").stdin(Stdio::null());
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        // As a shell starts it from a terminal: Ctrl-C (SIGINT) at its default action, even
        // where this test runs with SIGINT ignored (a script's background job), which the
        // lesson would inherit.
        #[cfg(unix)]
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: signal(2) is async-signal-safe, as pre_exec asks.
            unsafe {
                command.pre_exec(|| {
                    libc::signal(libc::SIGINT, libc::SIG_DFL);
                    Ok(())
                })
            };
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", path.display()));
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut lesson = Lesson {
            child,
            url: String::new(),
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            log: support::Log::follow(stderr),
        };
        // The ready line, read on a thread so that a lesson that never prints fails the test
        // after PATIENCE instead of hanging it.
        let (ready, ready_line) = mpsc::channel();
        thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = ready.send(line);
        });
        let line = ready_line.recv_timeout(PATIENCE).unwrap_or_default();
        lesson.url = line.trim_end().to_string();
        let port = lesson.url.strip_prefix("ws://127.0.0.1:").unwrap_or("");
        let port: u16 = port
            .parse()
            .unwrap_or_else(|_| panic!("{name}: ready line {line:?}, log: {}", lesson.log.text()));
        assert_ne!(
            port, 0,
            "{name} printed port 0, not the port it is listening on"
        );
        lesson.addr = SocketAddr::from(([127, 0, 0, 1], port));
        lesson
    }

    /// A tungstenite client, connected and with reads bounded by PATIENCE.
    fn connect(&self) -> Client {
        let (ws, _) = tungstenite::connect(&self.url).expect("connect");
        if let MaybeTlsStream::Plain(socket) = ws.get_ref() {
            socket.set_read_timeout(Some(PATIENCE)).unwrap();
        }
        ws
    }

    /// Connects, and waits until the lesson has logged the connection (and so has finished
    /// setting it up: lesson 3 adds a client to its list before logging it).
    fn connect_logged(&self) -> (Client, String) {
        let ws = self.connect();
        let me = local_addr(&ws).to_string();
        self.wait_for_log(&[&me, "connected"]);
        (ws, me)
    }

    /// Waits until a log line contains every one of `needles`; returns that line.
    fn wait_for_log(&self, needles: &[&str]) -> String {
        self.log.wait_for(needles)
    }

    /// Whether a log line so far contains every one of `needles`.
    fn logged(&self, needles: &[&str]) -> bool {
        self.log.has(needles)
    }

    /// Ctrl-C, as a terminal sends it: SIGINT.
    #[cfg(unix)]
    fn interrupt(&self) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-s", "INT", &pid]).status();
        assert!(status.unwrap().success(), "kill -s INT {pid}");
    }

    /// Waits for the lesson to exit, at most PATIENCE.
    #[cfg(unix)]
    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "no exit; log:\n{}",
                self.log.text()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Lesson {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn local_addr(ws: &Client) -> SocketAddr {
    match ws.get_ref() {
        MaybeTlsStream::Plain(socket) => socket.local_addr().unwrap(),
        _ => unreachable!("plain ws:// only"),
    }
}

/// The next text or binary message (pings and pongs are tungstenite's business).
fn next_data(ws: &mut Client) -> Message {
    loop {
        match ws.read() {
            Ok(message @ (Message::Text(_) | Message::Binary(_))) => return message,
            Ok(_) => {}
            Err(e) => panic!("read from {}: {e}", local_addr(ws)),
        }
    }
}

fn is_greeting(message: &Message) -> bool {
    matches!(message, Message::Text(text) if text.ends_with(GREETING_END))
}

/// The next text or binary message that is not the greeting.
fn next_not_greeting(ws: &mut Client) -> Message {
    loop {
        let message = next_data(ws);
        if !is_greeting(&message) {
            return message;
        }
    }
}

/// Closes the client's side and reads until the server has closed its side too.
fn close(mut ws: Client) {
    ws.close(None).unwrap();
    while ws.read().is_ok() {}
}

/// A bare socket that completed the opening handshake by hand: a client that will do what the
/// test says, such as never reading again.
fn raw_client(addr: SocketAddr) -> TcpStream {
    let mut socket = TcpStream::connect(addr).unwrap();
    socket.set_read_timeout(Some(PATIENCE)).unwrap();
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    socket.write_all(request.as_bytes()).unwrap();
    // Byte by byte, so as to take nothing past the end of the response.
    let mut head = Vec::new();
    let mut byte = [0];
    while !head.ends_with(b"\r\n\r\n") {
        socket.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    socket
}

/// The greeting arrives between 1.5 s and 10 s after connecting (the lessons say 2 s), and
/// the client's own message comes back to it (echo, or broadcast to everyone with the sender).
fn assert_greeting_and_own_message(name: &str) {
    let lesson = Lesson::start(name);
    let connecting = Instant::now();
    let mut ws = lesson.connect();
    ws.send(Message::text("is anyone there?")).unwrap();
    let (mut own, mut greeting) = (false, None);
    while !own || greeting.is_none() {
        match next_data(&mut ws) {
            message if is_greeting(&message) => greeting = Some(connecting.elapsed()),
            message => {
                assert_eq!(message, Message::text("is anyone there?"));
                own = true;
            }
        }
    }
    let after = greeting.unwrap();
    assert!(
        after >= Duration::from_millis(1500),
        "{name}: greeting after {after:?}"
    );
    assert!(
        after <= Duration::from_secs(10),
        "{name}: greeting after {after:?}"
    );
    ws.send(Message::binary(vec![0, 1, 2, 255])).unwrap();
    assert_eq!(next_data(&mut ws), Message::binary(vec![0, 1, 2, 255]));
}

/// Context switches (voluntary, involuntary) of every thread of process `pid` while nobody
/// talks to it for `quiet`.
#[cfg(target_os = "linux")]
fn switches_while_quiet(pid: u32, quiet: Duration) -> (u64, u64) {
    let count = |pid| {
        support::thread_switches(pid)
            .iter()
            .fold((0, 0), |(v, n), t| (v + t.voluntary, n + t.involuntary))
    };
    let before = count(pid);
    thread::sleep(quiet);
    let after = count(pid);
    (
        after.0.saturating_sub(before.0),
        after.1.saturating_sub(before.1),
    )
}

/// How many descriptors process `pid` has open.
#[cfg(target_os = "linux")]
fn open_descriptors(pid: u32) -> usize {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap();
    fds.count()
}

#[test]
fn lesson_01_echoes_text_and_binary_to_the_sender_only() {
    let lesson = Lesson::start("01_echo");
    let mut a = lesson.connect();
    let mut b = lesson.connect();
    a.send(Message::text("from a")).unwrap();
    b.send(Message::text("from b")).unwrap();
    a.send(Message::binary(vec![0xa, 0, 255])).unwrap();
    b.send(Message::binary(vec![0xb, 0, 255])).unwrap();
    assert_eq!(next_data(&mut a), Message::text("from a"));
    assert_eq!(next_data(&mut b), Message::text("from b"));
    assert_eq!(next_data(&mut a), Message::binary(vec![0xa, 0, 255]));
    assert_eq!(next_data(&mut b), Message::binary(vec![0xb, 0, 255]));
    // Had either echo gone to both clients, it would stand before these.
    for (ws, end) in [(&mut a, "a ends"), (&mut b, "b ends")] {
        ws.send(Message::text(end)).unwrap();
        assert_eq!(next_data(ws), Message::text(end));
    }
}

#[test]
fn lesson_01_logs_the_peer_address_on_connect_and_on_close() {
    let lesson = Lesson::start("01_echo");
    let (ws, me) = lesson.connect_logged();
    close(ws);
    lesson.wait_for_log(&[&me, "closed"]);
}

#[test]
fn lesson_02_greets_after_two_seconds_and_still_echoes() {
    assert_greeting_and_own_message("02_greeting");
}

/// The tick made visible: lesson 2's idle connection wakes its thread every 50 ms.
#[cfg(target_os = "linux")]
#[test]
fn lesson_02_an_idle_connection_wakes_up_many_times_a_second() {
    let lesson = Lesson::start("02_greeting");
    let mut ws = lesson.connect();
    // After the greeting only the tick is left to wake anything up.
    assert!(is_greeting(&next_data(&mut ws)));
    let (voluntary, _) = switches_while_quiet(lesson.child.id(), Duration::from_secs(1));
    assert!(
        voluntary >= 10,
        "{voluntary} wake-ups in 1 s of quiet: where is the tick?"
    );
}

#[test]
fn lesson_03_a_message_reaches_every_client_the_sender_included() {
    let lesson = Lesson::start("03_broadcast");
    let mut clients: Vec<Client> = (0..3).map(|_| lesson.connect_logged().0).collect();
    for (from, message) in [
        (0, Message::text("hello from the first")),
        (2, Message::binary(vec![3, 2, 1])),
    ] {
        clients[from].send(message.clone()).unwrap();
        for ws in &mut clients {
            assert_eq!(next_not_greeting(ws), message);
        }
    }
}

#[test]
fn lesson_03_greets_after_two_seconds_and_the_sender_gets_its_own_message() {
    assert_greeting_and_own_message("03_broadcast");
}

/// The problem lesson 3 leaves: a client that stops reading fills its socket, the broadcaster's
/// write blocks under the list's lock, and every client waits (at least WRITE_TIMEOUT) until
/// that client is dropped. Then everyone goes on.
#[test]
fn lesson_03_a_client_that_stops_reading_holds_everyone_up_until_it_is_dropped() {
    let lesson = Lesson::start("03_broadcast");
    // First in the list, so every broadcast writes to it before it writes to the sender.
    let mut slow = raw_client(lesson.addr);
    let slow_addr = slow.local_addr().unwrap().to_string();
    lesson.wait_for_log(&[&slow_addr, "connected"]);
    let (mut sender, _) = lesson.connect_logged();

    let payload = vec![7; 64 * 1024];
    let (started, mut longest, mut rounds) = (Instant::now(), Duration::ZERO, 0);
    while !lesson.logged(&[&slow_addr, "dropped"]) {
        assert!(
            started.elapsed() < 3 * PATIENCE,
            "not dropped after {rounds} broadcasts"
        );
        let round = Instant::now();
        sender.send(Message::binary(payload.clone())).unwrap();
        assert_eq!(
            next_not_greeting(&mut sender),
            Message::binary(payload.clone())
        );
        longest = longest.max(round.elapsed());
        rounds += 1;
    }
    // The write can fail no sooner than its timeout, and the sender's copy waited for it.
    assert!(
        longest >= LESSON_3_WRITE_TIMEOUT.mul_f32(0.9),
        "longest round trip {longest:?} in {rounds} broadcasts, yet the slow client was dropped"
    );
    // Everyone else goes on at once, and the dropped client's socket is closed.
    sender.send(Message::text("still here")).unwrap();
    assert_eq!(next_not_greeting(&mut sender), Message::text("still here"));
    let mut sink = vec![0; 1 << 20];
    loop {
        match slow.read(&mut sink) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the dropped client's socket is still open: {e}"),
        }
    }
}

/// Lessons 1 to 3 have no Ctrl-C handler: SIGINT kills the process, and the kernel closes its
/// sockets. A client sees the connection end with no Close frame (1006 in a browser).
#[cfg(unix)]
#[test]
fn lessons_01_to_03_die_on_ctrl_c_and_their_clients_get_no_close_frame() {
    use std::os::unix::process::ExitStatusExt;
    for name in ["01_echo", "02_greeting", "03_broadcast"] {
        let mut lesson = Lesson::start(name);
        let (mut ws, _) = lesson.connect_logged();
        lesson.interrupt();
        let ended = loop {
            match ws.read() {
                Ok(Message::Close(frame)) => panic!("{name} sent a Close on Ctrl-C: {frame:?}"),
                Ok(_) => continue, // a greeting, say
                Err(e) => break e,
            }
        };
        assert!(
            matches!(
                ended,
                tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake)
            ) || matches!(&ended, tungstenite::Error::Io(e) if e.kind() == ErrorKind::ConnectionReset),
            "{name}: the connection ended with {ended}"
        );
        let status = lesson.wait_exit();
        assert_eq!(
            status.signal(),
            Some(libc::SIGINT),
            "{name} exited with {status}"
        );
    }
}

/// With one client, the broadcast is an echo: everything comes back, whatever its size.
#[test]
fn lesson_04_a_lone_client_gets_its_own_text_and_binary_back() {
    let lesson = Lesson::start("04_waker");
    let mut ws = lesson.connect();
    for message in [
        Message::text("text"),
        Message::binary(vec![0, 159, 146, 150]),
        Message::binary(vec![42; 300_000]),
    ] {
        ws.send(message.clone()).unwrap();
        assert_eq!(next_not_greeting(&mut ws), message);
    }
    let me = local_addr(&ws).to_string();
    close(ws);
    lesson.wait_for_log(&[&me, "closed"]);
}

#[test]
fn lesson_04_greets_after_two_seconds_and_the_sender_gets_its_own_message() {
    assert_greeting_and_own_message("04_waker");
}

#[test]
fn lesson_04_a_message_reaches_every_client_the_sender_included() {
    let lesson = Lesson::start("04_waker");
    let mut clients: Vec<Client> = (0..3).map(|_| lesson.connect_logged().0).collect();
    for (from, message) in [
        (0, Message::text("hello from the first")),
        (2, Message::binary(vec![3, 2, 1])),
    ] {
        clients[from].send(message.clone()).unwrap();
        for ws in &mut clients {
            assert_eq!(next_not_greeting(ws), message);
        }
    }
}

/// Broadcasts are posted under the list's lock: clients that all send at once all hear every
/// message, once, each sender's in the order it sent them, and every client in the same order.
#[test]
fn lesson_04_clients_sending_at_once_all_hear_every_message_in_one_order() {
    const CLIENTS: usize = 6;
    const MESSAGES: usize = 30;
    let lesson = Lesson::start("04_waker");
    let start = Arc::new(Barrier::new(CLIENTS));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (mut ws, _) = lesson.connect_logged();
            let start = Arc::clone(&start);
            thread::spawn(move || {
                start.wait();
                for i in 0..MESSAGES {
                    ws.send(Message::text(format!("{c} {i}"))).unwrap();
                }
                let heard: Vec<String> = (0..CLIENTS * MESSAGES)
                    .map(|_| next_not_greeting(&mut ws).into_text().unwrap().to_string())
                    .collect();
                heard
            })
        })
        .collect();
    let heard: Vec<Vec<String>> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    for (c, theirs) in heard.iter().enumerate() {
        assert_eq!(
            theirs, &heard[0],
            "client {c} heard another order than client 0"
        );
    }
    for c in 0..CLIENTS {
        let from_c: Vec<&String> = heard[0]
            .iter()
            .filter(|m| m.starts_with(&format!("{c} ")))
            .collect();
        let sent: Vec<String> = (0..MESSAGES).map(|i| format!("{c} {i}")).collect();
        assert_eq!(
            from_c,
            sent.iter().collect::<Vec<_>>(),
            "client {c}'s messages"
        );
    }
}

/// No tick: after the greeting, a connected client that says nothing costs no wake-up at all.
#[cfg(target_os = "linux")]
#[test]
fn lesson_04_an_idle_connection_costs_no_wake_ups() {
    let lesson = Lesson::start("04_waker");
    let mut ws = lesson.connect();
    assert!(is_greeting(&next_data(&mut ws)));
    // The server wrote the greeting a moment ago; let its threads get back to sleep.
    thread::sleep(Duration::from_millis(200));
    let (voluntary, involuntary) = switches_while_quiet(lesson.child.id(), Duration::from_secs(1));
    assert!(
        voluntary + involuntary <= 2,
        "{voluntary} voluntary and {involuntary} involuntary switches in 1 s of quiet"
    );
}

/// Lesson 3's stall, gone: a client that stops reading fills its socket, then its queue, and
/// meanwhile every other client gets every broadcast at once. Once its queue is full it is
/// let go: when it reads at last, it finds what it was sent and then Close 1008.
#[test]
fn lesson_04_a_client_that_stops_reading_holds_no_one_up_and_is_closed_with_1008() {
    let lesson = Lesson::start("04_waker");
    // First in the list, as in lesson 3's test: every broadcast is posted to it first.
    let mut slow = raw_client(lesson.addr);
    let slow_addr = slow.local_addr().unwrap().to_string();
    lesson.wait_for_log(&[&slow_addr, "connected"]);
    let (mut sender, _) = lesson.connect_logged();
    let (mut reader, _) = lesson.connect_logged();

    let payload = Message::binary(vec![7; 64 * 1024]);
    let (mut longest, mut sent) = (Duration::ZERO, 0);
    while !lesson.logged(&[&slow_addr, "too slow"]) {
        // The lesson lets go at 1 MiB queued, past what the sockets' buffers hold.
        assert!(
            sent < 64 << 20,
            "not let go after {sent} bytes of broadcasts"
        );
        let round = Instant::now();
        sender.send(payload.clone()).unwrap();
        for ws in [&mut sender, &mut reader] {
            assert_eq!(next_not_greeting(ws), payload);
        }
        longest = longest.max(round.elapsed());
        sent += 64 * 1024;
    }
    // Lesson 3 made every round wait WRITE_TIMEOUT (1 s) once the slow client's socket was full.
    assert!(
        longest < LESSON_3_WRITE_TIMEOUT / 2,
        "longest round trip {longest:?} in {sent} bytes of broadcasts: someone waited"
    );
    sender.send(Message::text("still here")).unwrap();
    for ws in [&mut sender, &mut reader] {
        assert_eq!(next_not_greeting(ws), Message::text("still here"));
    }
    let close = loop {
        match support::read_server_frame(&mut slow) {
            (_, 8, payload) => break payload,
            (_, 1 | 2, _) => continue,
            (_, opcode, _) => panic!("frame with opcode {opcode}"),
        }
    };
    let reason = String::from_utf8_lossy(&close[2..]);
    assert_eq!(support::close_code(&close), 1008, "reason {reason:?}");
    assert!(reason.contains("too slow"), "reason {reason:?}");
}

/// A client that sends without reading its copies is not read from once its socket is full
/// (so its copies do not pile up in the server), and a client that comes next is served at once.
#[test]
fn lesson_04_a_client_that_sends_without_reading_is_held_back_and_no_one_else_waits() {
    let lesson = Lesson::start("04_waker");
    let mut flood = raw_client(lesson.addr);
    // A masked binary frame of 64 KiB, masked with a key of zeros: the payload as it is.
    let mut frame = vec![0x82, 0x80 | 127];
    frame.extend_from_slice(&(64u64 * 1024).to_be_bytes());
    frame.extend_from_slice(&[0; 4]);
    frame.resize(frame.len() + 64 * 1024, 0x55);
    flood
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut sent = 0;
    let held_back = loop {
        match flood.write(&frame[sent % frame.len()..]) {
            Ok(n) => sent += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                break true;
            }
            Err(e) => panic!("flood: {e}"),
        }
        if sent > 256 << 20 {
            break false;
        }
    };
    assert!(
        held_back,
        "the server read {sent} bytes from a client that reads nothing"
    );
    // Connected only now: a listener that read nothing of the flood would be let go for it.
    let (mut other, _) = lesson.connect_logged();
    other.send(Message::text("and me?")).unwrap();
    assert_eq!(next_not_greeting(&mut other), Message::text("and me?"));
}

/// The greeting timer holds each client's mailbox weakly: clients that left close their
/// socket and their poller (epoll, eventfd and timerfd) at once, not when their greeting would
/// have been due. A strong reference kept 3 descriptors per client open for 2 s.
#[cfg(target_os = "linux")]
#[test]
fn lesson_04_clients_that_left_free_their_descriptors_at_once() {
    const CLIENTS: usize = 10;
    let lesson = Lesson::start("04_waker");
    let pid = lesson.child.id();
    let before = open_descriptors(pid);
    let first = Instant::now();
    let clients: Vec<_> = (0..CLIENTS).map(|_| lesson.connect_logged()).collect();
    let open = open_descriptors(pid);
    assert!(
        open >= before + 2 * CLIENTS,
        "{open} descriptors open with {CLIENTS} clients, {before} before: a socket and a poller each"
    );
    for (ws, me) in clients {
        close(ws);
        // Logged once the connection is dropped, and with it whatever it alone held.
        lesson.wait_for_log(&[&me, "closed"]);
    }
    let after = open_descriptors(pid);
    assert!(
        first.elapsed() < LESSON_GREETING_DELAY,
        "too slow to tell: the first greeting fell due before the count"
    );
    assert!(
        after <= before,
        "{after} descriptors open after {CLIENTS} clients left, {before} before they came"
    );
}

/// Ctrl-C: every client gets Close 1001 through its mailbox, answers, and the lesson exits 0.
#[cfg(unix)]
#[test]
fn lesson_04_ctrl_c_closes_every_client_with_1001_and_exits() {
    let mut lesson = Lesson::start("04_waker");
    let mut clients: Vec<Client> = (0..3).map(|_| lesson.connect_logged().0).collect();
    lesson.interrupt();
    for ws in &mut clients {
        let (code, reason) = support::expect_close(ws);
        assert_eq!(code, 1001, "reason {reason:?}");
    }
    let status = lesson.wait_exit();
    assert!(status.success(), "04_waker exited with {status}");
}
