//! wsecho under a service manager: socket activation (the real `systemd-socket-activate`, and a
//! listening socket held by the test as systemd holds it), a restart through which no
//! connection is refused, readiness and stopping read from a real `NOTIFY_SOCKET`, and one
//! `execve` for the whole life of the server.

// systemd's protocols are Unix's, and these tests read /proc: Linux only.
#![cfg(target_os = "linux")]

mod support;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use support::{Client, PATIENCE, Wsecho, next_data};
use tungstenite::Message;

/// Echo mode, no greeting, a short close timeout: each test waits for what it checks.
const BASE: [&str; 4] = ["--greeting-delay", "off", "--close-timeout", "2s"];

/// A WebSocket client on `addr`, with reads bounded by [`PATIENCE`]; the error says what
/// failed (a refused connection, a handshake that timed out or was answered otherwise).
fn try_connect(addr: SocketAddr) -> Result<Client, String> {
    let tcp = TcpStream::connect_timeout(&addr, PATIENCE).map_err(|e| format!("connect: {e}"))?;
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    tcp.set_write_timeout(Some(PATIENCE)).unwrap();
    let url = format!("ws://{addr}/");
    // The stream as the client keeps it, so that nothing read with the 101 (a Close sent
    // right after it, say) is lost.
    let stream = tungstenite::stream::MaybeTlsStream::Plain(tcp);
    let (ws, response) =
        tungstenite::client::client(url.as_str(), stream).map_err(|e| format!("handshake: {e}"))?;
    if response.status() != 101 {
        return Err(format!("handshake answered {}", response.status()));
    }
    Ok(ws)
}

/// What became of one client: served, or told to come back (1012) and served after.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Served,
    CameBack,
}

/// Sends `text` and expects it back; a Close instead returns its code and reason.
fn echo(ws: &mut Client, text: &str) -> Result<(), (u16, String)> {
    ws.send(Message::text(text))
        .map_err(|e| (0, format!("send: {e}")))?;
    loop {
        match ws.read() {
            Ok(Message::Text(got)) if got == text => return Ok(()),
            Ok(Message::Close(frame)) => {
                let (code, reason) = frame.map_or((1005, String::new()), |f| {
                    (u16::from(f.code), f.reason.to_string())
                });
                // Complete the close handshake, as a browser does.
                while ws.read().is_ok() {}
                return Err((code, reason));
            }
            Ok(_) => {}
            Err(e) => return Err((0, format!("read: {e}"))),
        }
    }
}

/// A client that connects, is echoed, or is told to come back with 1012 and then is echoed
/// on its next connection.
fn one_client(addr: SocketAddr, n: usize) -> Result<Outcome, String> {
    let text = format!("client {n}");
    let mut ws = try_connect(addr)?;
    match echo(&mut ws, &text) {
        Ok(()) => Ok(Outcome::Served),
        Err((1012, _)) => {
            let mut again = try_connect(addr).map_err(|e| format!("coming back: {e}"))?;
            echo(&mut again, &text)
                .map(|()| Outcome::CameBack)
                .map_err(|e| format!("came back, then {e:?}"))
        }
        Err(other) => Err(format!("{other:?}")),
    }
}

#[test]
fn a_restart_with_the_listening_socket_held_refuses_no_connection() {
    // The test holds the socket, as systemd's socket unit does.
    let socket = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    let mut first = Wsecho::start_on_socket(&socket, &BASE);
    first.wait_for_log(&[
        "handed over by the service manager",
        "--host and --port are ignored",
    ]);
    // Clients of the first process, connected before the switch.
    let mut old: Vec<Client> = (0..3).map(|_| try_connect(addr).unwrap()).collect();
    for (i, ws) in old.iter_mut().enumerate() {
        echo(ws, &format!("old {i}")).unwrap();
    }
    // A client every 5 ms through the switch.
    let (results, outcomes) = mpsc::channel();
    let opener = thread::spawn(move || {
        let mut clients = Vec::new();
        for n in 0..300 {
            let results = results.clone();
            clients.push(thread::spawn(move || {
                let _ = results.send((n, one_client(addr, n)));
            }));
            thread::sleep(Duration::from_millis(5));
        }
        clients
    });
    thread::sleep(Duration::from_millis(300));
    first.signal("TERM");
    // Its clients are told to come back now, the restart's code.
    for ws in &mut old {
        assert_eq!(
            support::expect_close(ws),
            (1012, "service restart".to_string())
        );
    }
    assert!(first.wait_exit().success());
    first.wait_for_log(&["stopped: served"]);
    let second = Wsecho::start_on_socket(&socket, &BASE);
    for client in opener.join().unwrap() {
        client.join().unwrap();
    }
    let outcomes: Vec<(usize, Result<Outcome, String>)> = outcomes.try_iter().collect();
    assert_eq!(outcomes.len(), 300);
    let failed: Vec<_> = outcomes.iter().filter(|(_, r)| r.is_err()).collect();
    assert!(
        failed.is_empty(),
        "refused, timed out or lost: {failed:?}\nfirst:\n{}\nsecond:\n{}",
        first.log(),
        second.log()
    );
    // The clients of the first process come back and are served by the second.
    for i in 0..3 {
        let mut back = try_connect(addr).unwrap();
        echo(&mut back, &format!("old {i} is back")).unwrap();
    }
    assert!(second.log().contains("connected"));
    assert!(!first.log().contains(" 503 "), "{}", first.log());
}

#[test]
fn without_a_handed_over_socket_a_stopping_server_says_1001() {
    let mut server = Wsecho::start(&BASE);
    let mut ws = server.connect();
    server.signal("TERM");
    assert_eq!(
        support::expect_close(&mut ws),
        (1001, "server shutting down".to_string())
    );
    assert!(server.wait_exit().success());
}

/// A free port on 127.0.0.1 for a program that binds it itself (bound and let go, then taken
/// by the program within milliseconds).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// wsecho run by the real `systemd-socket-activate`, listening on `addresses` (descriptors 3
/// and on), with `args`; it has served one echo on the first address, which is what makes
/// systemd-socket-activate start it. Stopped when dropped.
struct Activated {
    child: std::process::Child,
    log: support::Log,
    /// wsecho's ready line.
    ready: String,
}

impl Activated {
    fn start(addresses: &[&str], args: &[&str]) -> Activated {
        let mut command = Command::new("systemd-socket-activate");
        for address in addresses {
            command.args(["-l", address]);
        }
        let mut child = command
            .arg(env!("CARGO_BIN_EXE_wsecho"))
            .args(args)
            .args(BASE)
            .env(support::DEPLOYED_TUNABLES.0, support::DEPLOYED_TUNABLES.1)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("systemd-socket-activate (Debian's systemd package) runs");
        let log = support::Log::follow(child.stderr.take().unwrap());
        let last = addresses.last().expect("an address");
        log.wait_for(&[&format!("Listening on {last}")]);
        // It waits for the first connection before it runs wsecho: this one.
        let first: SocketAddr = addresses[0].parse().unwrap();
        let waking = thread::spawn(move || {
            let mut ws = try_connect(first).unwrap();
            echo(&mut ws, "activated").unwrap();
        });
        let mut ready = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut ready)
            .unwrap();
        waking.join().unwrap();
        Activated {
            child,
            log,
            ready: ready.trim().to_string(),
        }
    }
}

impl Drop for Activated {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn under_systemd_socket_activate_it_serves_on_the_socket_it_is_handed() {
    let listen = format!("127.0.0.1:{}", free_port());
    // --host and --port are ignored: the socket it is handed is what it serves.
    let activated = Activated::start(&[&listen], &["--host", "127.0.0.9", "--port", "1"]);
    assert_eq!(
        activated.ready,
        format!("ws://{listen}"),
        "{}",
        activated.log.text()
    );
    activated.log.wait_for(&[
        "serving on 1 listening socket handed over by the service manager",
        "--host and --port are ignored",
    ]);
}

/// Reads the next notification from `socket`, at most [`PATIENCE`] away.
fn next_notification(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf).expect("a notification");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn it_tells_the_service_manager_when_it_serves_and_when_it_stops() {
    let dir = std::env::temp_dir().join(format!("wsecho-notify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("notify.sock");
    let _ = std::fs::remove_file(&path);
    let socket = UnixDatagram::bind(&path).unwrap();
    socket.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut server = Wsecho::start_with_env(&[("NOTIFY_SOCKET", path.to_str().unwrap())], &BASE);
    let ready = next_notification(&socket);
    assert!(ready.lines().any(|line| line == "READY=1"), "{ready:?}");
    assert!(
        ready.contains(&format!("STATUS=serving 0 connections on {}", server.url)),
        "{ready:?}"
    );
    let mut ws = server.connect();
    echo(&mut ws, "counted").unwrap();
    server.signal("TERM");
    let stopping = next_notification(&socket);
    assert!(
        stopping.lines().any(|line| line == "STOPPING=1"),
        "{stopping:?}"
    );
    assert!(server.wait_exit().success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn without_notify_socket_nothing_is_sent_and_nothing_changes() {
    let server = Wsecho::start(&BASE);
    let mut ws = server.connect();
    echo(&mut ws, "plain").unwrap();
    assert!(!server.log().contains("NOTIFY_SOCKET"));
}

#[test]
fn the_server_runs_once_one_execve_from_start_to_stop() {
    let trace = std::env::temp_dir().join(format!("wsecho-execve-{}.txt", std::process::id()));
    let trace_arg = trace.to_str().unwrap().to_string();
    let mut server = Wsecho::start_via(
        "strace",
        &["-f", "-e", "trace=execve", "-o", &trace_arg],
        &BASE,
    );
    let mut ws = server.connect();
    assert_eq!(
        {
            ws.send(Message::text("once")).unwrap();
            next_data(&mut ws)
        },
        Message::text("once")
    );
    // The server is strace's child: stop it, as a service manager would.
    let children =
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", server.pid())).unwrap();
    let wsecho = children.split_whitespace().next().expect("strace's child");
    assert!(
        Command::new("kill")
            .args(["-s", "TERM", wsecho])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + PATIENCE;
    assert!(server.wait_exit().success() || Instant::now() < deadline);
    let traced = std::fs::read_to_string(&trace).unwrap();
    let execs: Vec<&str> = traced
        .lines()
        .filter(|line| line.contains("execve("))
        .collect();
    assert_eq!(execs.len(), 1, "{traced}");
    assert!(execs[0].ends_with("= 0"), "{traced}");
    let _ = std::fs::remove_file(&trace);
}

/// The deployment files set what wsecho no longer sets itself: glibc's per-thread cache off.
/// (CI checks the units with systemd-analyze verify; tests/image.rs checks the image's
/// process.)
#[test]
fn the_unit_and_the_image_turn_glibcs_per_thread_cache_off() {
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let unit = std::fs::read_to_string(deploy.join("wsecho.service")).unwrap();
    assert!(
        unit.lines()
            .any(|line| line == "Environment=GLIBC_TUNABLES=glibc.malloc.tcache_count=0"),
        "{unit}"
    );
    let image = std::fs::read_to_string(deploy.join("Containerfile")).unwrap();
    assert!(
        image
            .lines()
            .any(|line| line == "ENV GLIBC_TUNABLES=glibc.malloc.tcache_count=0"),
        "{image}"
    );
}

#[test]
fn handed_several_sockets_it_serves_every_one_of_them() {
    let (first, second) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let activated = Activated::start(&[&first, &second], &[]);
    activated
        .log
        .wait_for(&["serving on 2 listening sockets handed over by the service manager"]);
    let mut ws = try_connect(second.parse().unwrap()).unwrap();
    echo(&mut ws, "on the second").unwrap();
}
