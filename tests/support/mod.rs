//! What the integration tests share: a real `wsecho` process on a free loopback port, its log,
//! and clients (tungstenite's, and raw TCP for clients that misbehave on purpose).
//!
//! The server is the real binary, started as a user would, so every test also covers the
//! command line, the ready line and the log. Readiness is the URL line on standard output;
//! log lines are waited for as they arrive. Nothing sleeps to wait for the server.

#![allow(dead_code)] // each test file uses part of this

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

/// Upper bound for anything a test waits for. Generous: it only matters when a test fails.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// The environment wsecho is deployed with (deploy/wsecho.service, deploy/Containerfile):
/// glibc's per-thread allocation cache off. Every server a test starts has it, unless the
/// test sets `GLIBC_TUNABLES` itself.
pub const DEPLOYED_TUNABLES: (&str, &str) = ("GLIBC_TUNABLES", "glibc.malloc.tcache_count=0");

pub type Client = WebSocket<MaybeTlsStream<TcpStream>>;

/// A running `wsecho` process, killed when dropped.
pub struct Wsecho {
    child: Child,
    pub url: String,
    pub addr: SocketAddr,
    log: Log,
}

/// A process's log, line by line as it writes it, and a way to wait for a line without
/// sleeping: every new line wakes the waiters.
#[derive(Clone)]
pub struct Log(Arc<(Mutex<Vec<String>>, Condvar)>);

impl Log {
    /// Collects the lines `stream` (a child's standard error, say) writes, on a thread.
    pub fn follow(stream: impl Read + Send + 'static) -> Log {
        let log = Log(Arc::new((Mutex::new(Vec::new()), Condvar::new())));
        let sink = log.clone();
        thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                sink.0.0.lock().unwrap().push(line);
                sink.0.1.notify_all();
            }
        });
        log
    }

    /// Waits until a line contains every one of `needles`; returns that line.
    pub fn wait_for(&self, needles: &[&str]) -> String {
        let matches = |l: &str| needles.iter().all(|n| l.contains(n));
        let log = self.wait(
            |log| log.lines().any(matches),
            &format!("a line with {needles:?}"),
        );
        log.lines()
            .find(|l| matches(l))
            .expect("just found")
            .to_string()
    }

    /// Waits until the log as a whole satisfies `done`, at most [`PATIENCE`]; returns it.
    pub fn wait_until(&self, done: impl Fn(&str) -> bool) -> String {
        self.wait(done, "what the test waits for")
    }

    fn wait(&self, done: impl Fn(&str) -> bool, what: &str) -> String {
        let (lines, arrived) = &*self.0;
        let deadline = Instant::now() + PATIENCE;
        let mut lines = lines.lock().unwrap();
        loop {
            let log = lines.join("\n");
            if done(&log) {
                return log;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no {what} in the log:\n{log}");
            lines = arrived.wait_timeout(lines, left).unwrap().0;
        }
    }

    /// Whether a line so far contains every one of `needles`.
    pub fn has(&self, needles: &[&str]) -> bool {
        let lines = self.0.0.lock().unwrap();
        lines.iter().any(|l| needles.iter().all(|n| l.contains(n)))
    }

    /// Every line so far.
    pub fn text(&self) -> String {
        self.0.0.lock().unwrap().join("\n")
    }
}

impl Wsecho {
    /// Starts `wsecho --host 127.0.0.1 --port 0 --log-level debug ARGS` and waits for its
    /// ready line. Later flags override earlier ones, so ARGS may change any of these.
    pub fn start(args: &[&str]) -> Wsecho {
        Wsecho::launch(Command::new(env!("CARGO_BIN_EXE_wsecho")), args)
    }

    /// Like [`Wsecho::start`], with the shell's `ulimit LIMITS` first (`-n 40` sets the
    /// open-file limit, `-S -n 64` its soft limit only). The shell then becomes wsecho, so
    /// [`Wsecho::pid`] is the server's.
    pub fn start_with_ulimit(limits: &str, args: &[&str]) -> Wsecho {
        let mut shell = Command::new("sh");
        let script = format!("ulimit {limits} && exec \"$0\" \"$@\"");
        shell.args(["-c", &script, env!("CARGO_BIN_EXE_wsecho")]);
        Wsecho::launch(shell, args)
    }

    /// Like [`Wsecho::start`], with these environment variables set for the server.
    pub fn start_with_env(env: &[(&str, &str)], args: &[&str]) -> Wsecho {
        let mut command = Command::new(env!("CARGO_BIN_EXE_wsecho"));
        command.envs(env.iter().copied());
        Wsecho::launch(command, args)
    }

    /// Like [`Wsecho::start`], run by `program` with `program_args` before wsecho's path
    /// (`strace -f`, say). [`Wsecho::pid`] is then `program`'s.
    pub fn start_via(program: &str, program_args: &[&str], args: &[&str]) -> Wsecho {
        let mut command = Command::new(program);
        command.args(program_args).arg(env!("CARGO_BIN_EXE_wsecho"));
        Wsecho::launch(command, args)
    }

    /// Like [`Wsecho::start`], serving on `listener`, handed over as systemd does (socket
    /// activation: descriptor 3, `LISTEN_FDS=1`, `LISTEN_PID` its own pid). The test keeps
    /// its own copy of the socket open, as systemd does, so that it outlives the server.
    pub fn start_on_socket(listener: &std::net::TcpListener, args: &[&str]) -> Wsecho {
        // The socket comes in as standard input; the shell moves it to descriptor 3, names
        // its own pid (which exec keeps) and becomes wsecho.
        let socket = std::os::fd::OwnedFd::from(listener.try_clone().unwrap());
        let mut shell = Command::new("sh");
        let script = "exec 3<&0 0</dev/null; LISTEN_FDS=1 LISTEN_PID=$$ exec \"$0\" \"$@\"";
        shell.args(["-c", script, env!("CARGO_BIN_EXE_wsecho")]);
        Wsecho::launch_with_stdin(shell, Stdio::from(socket), args)
    }

    fn launch(command: Command, args: &[&str]) -> Wsecho {
        Wsecho::launch_with_stdin(command, Stdio::null(), args)
    }

    fn launch_with_stdin(mut command: Command, stdin: Stdio, args: &[&str]) -> Wsecho {
        command.stdin(stdin);
        // As deployed (deploy/wsecho.service, the container image), unless the test says
        // otherwise: the memory figures are the deployment's.
        if !command
            .get_envs()
            .any(|(name, _)| name == DEPLOYED_TUNABLES.0)
        {
            command.env(DEPLOYED_TUNABLES.0, DEPLOYED_TUNABLES.1);
        }
        let mut child = command
            .args(["--host", "127.0.0.1", "--port", "0", "--log-level", "debug"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start wsecho");
        let log = Log::follow(child.stderr.take().unwrap());
        let mut url = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut url)
            .unwrap();
        let url = url.trim().to_string();
        assert!(
            url.starts_with("ws://127.0.0.1:") || url.starts_with("wss://127.0.0.1:"),
            "ready line {url:?}, log: {}",
            log.text()
        );
        let addr = url
            .trim_start_matches("ws://")
            .trim_start_matches("wss://")
            .parse()
            .unwrap();
        Wsecho {
            child,
            url,
            addr,
            log,
        }
    }

    /// A tungstenite client connected to the server's root path.
    pub fn connect(&self) -> Client {
        connect(&self.url)
    }

    /// Waits until a log line contains every one of `needles`; returns that line.
    pub fn wait_for_log(&self, needles: &[&str]) -> String {
        self.log.wait_for(needles)
    }

    /// Waits until the log as a whole satisfies `done`; returns it.
    pub fn wait_until(&self, done: impl Fn(&str) -> bool) -> String {
        self.log.wait_until(done)
    }

    /// Every log line so far.
    pub fn log(&self) -> String {
        self.log.text()
    }

    /// Sends a signal (by name, as `kill -s` takes it) to the server.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args(["-s", name, &self.child.id().to_string()])
            .status();
        assert!(status.unwrap().success(), "kill -s {name}");
    }

    /// Waits for the server to exit; panics if it takes longer than [`PATIENCE`].
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "wsecho did not exit; log:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Wsecho {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The local port of a client's connection, as the server's log names it.
pub fn local_port(ws: &Client) -> u16 {
    match ws.get_ref() {
        MaybeTlsStream::Plain(tcp) => tcp.local_addr().unwrap().port(),
        _ => unreachable!("tests use plain ws://"),
    }
}

/// A tungstenite client for `url`, with reads bounded by [`PATIENCE`].
pub fn connect(url: &str) -> Client {
    let (ws, response) = tungstenite::connect(url).expect("WebSocket handshake");
    assert_eq!(response.status(), 101);
    if let MaybeTlsStream::Plain(tcp) = ws.get_ref() {
        tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    }
    ws
}

/// The next data message (text or binary), answering nothing else.
pub fn next_data(ws: &mut Client) -> Message {
    loop {
        match ws.read().expect("read a message") {
            message @ (Message::Text(_) | Message::Binary(_)) => return message,
            _ => continue,
        }
    }
}

/// Reads until the server's Close frame arrives and the close handshake completes, as a
/// browser does; returns the server's code and reason.
pub fn expect_close(ws: &mut Client) -> (u16, String) {
    let mut close = None;
    loop {
        match ws.read() {
            Ok(Message::Close(frame)) => {
                let frame = frame.map(|f| (f.code.into(), f.reason.to_string()));
                close = Some(frame.unwrap_or((1005, String::new())));
            }
            Ok(_) => continue,
            // tungstenite sends our reply, then reports the end of the connection.
            Err(tungstenite::Error::ConnectionClosed) if close.is_some() => return close.unwrap(),
            Err(e) => panic!("connection ended without a close handshake: {e}"),
        }
    }
}

/// A raw TCP connection, with reads bounded by [`PATIENCE`].
pub fn raw(addr: SocketAddr) -> TcpStream {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    tcp
}

/// A well-formed upgrade request for `/`.
pub const UPGRADE: &str = "GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
    Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Sec-WebSocket-Version: 13\r\n\r\n";

/// Sends `request` on a new raw connection and returns everything the server sends back
/// before it closes the connection.
pub fn http_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut tcp = raw(addr);
    tcp.write_all(request).unwrap();
    let mut response = Vec::new();
    tcp.read_to_end(&mut response)
        .expect("server closes the connection");
    String::from_utf8_lossy(&response).into_owned()
}

/// A raw connection that has completed the WebSocket handshake and will only do what the
/// test makes it do (no automatic pongs or close replies).
pub fn raw_websocket(addr: SocketAddr) -> TcpStream {
    upgrade(raw(addr))
}

/// [`raw_websocket`] for the request target `target` (a path, maybe with a query).
pub fn raw_websocket_at(addr: SocketAddr, target: &str) -> TcpStream {
    upgrade_at(raw(addr), target)
}

/// A masked client frame, as RFC 6455 section 5.2 lays it out.
pub fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = vec![if fin { 0x80 } else { 0 } | opcode];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n <= 0xffff => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// One unmasked server frame read from a raw connection: (fin, opcode, payload).
pub fn read_server_frame(tcp: &mut TcpStream) -> (bool, u8, Vec<u8>) {
    try_read_server_frame(tcp).expect("a server frame")
}

/// Like [`read_server_frame`], for a connection that may end instead.
pub fn try_read_server_frame(tcp: &mut TcpStream) -> std::io::Result<(bool, u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    tcp.read_exact(&mut head)?;
    assert_eq!(head[1] & 0x80, 0, "server frames are never masked");
    let len = match head[1] & 0x7f {
        126 => {
            let mut n = [0u8; 2];
            tcp.read_exact(&mut n)?;
            u16::from_be_bytes(n) as usize
        }
        127 => {
            let mut n = [0u8; 8];
            tcp.read_exact(&mut n)?;
            u64::from_be_bytes(n) as usize
        }
        n => n as usize,
    };
    let mut payload = vec![0; len];
    tcp.read_exact(&mut payload)?;
    Ok((head[0] & 0x80 != 0, head[0] & 0x0f, payload))
}

/// The close code in a Close frame's payload.
pub fn close_code(payload: &[u8]) -> u16 {
    u16::from_be_bytes([payload[0], payload[1]])
}

/// A raw TCP connection from the loopback address `source` (any of 127.0.0.0/8), for tests
/// that need "another client address".
pub fn raw_from(source: &str, addr: SocketAddr) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let from: SocketAddr = format!("{source}:0").parse().unwrap();
    socket.bind(&from.into()).unwrap();
    socket.connect(&addr.into()).unwrap();
    let tcp: TcpStream = socket.into();
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    tcp
}

/// Completes the WebSocket handshake on a raw connection (see [`raw_websocket`]).
pub fn upgrade(tcp: TcpStream) -> TcpStream {
    upgrade_at(tcp, "/")
}

/// The upgrade request for `target`: a path, maybe with a query.
pub fn upgrade_request(target: &str) -> String {
    UPGRADE.replacen("GET / ", &format!("GET {target} "), 1)
}

/// Completes the WebSocket handshake for the request target `target` on a raw connection.
pub fn upgrade_at(mut tcp: TcpStream, target: &str) -> TcpStream {
    tcp.write_all(upgrade_request(target).as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        tcp.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101 "),
        "{}",
        String::from_utf8_lossy(&head)
    );
    tcp
}

/// A line of `/proc/PID/status`, in KiB (`VmHWM` is the peak resident memory, `VmRSS` the
/// current one). Linux only, like the tests that read it.
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// One thread of a process, as /proc shows it: its id, its name, the context switches it
/// has made so far, voluntary and not, and whether it is asleep.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ThreadSwitches {
    pub tid: String,
    pub name: String,
    pub voluntary: u64,
    pub involuntary: u64,
    pub sleeping: bool,
}

/// Every thread of process `pid` (a thread that ends meanwhile is left out), sorted by id.
/// Linux only, like the tests that read it.
pub fn thread_switches(pid: u32) -> Vec<ThreadSwitches> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap();
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .map(str::trim)
                .unwrap_or_default()
                .to_owned()
        };
        threads.push(ThreadSwitches {
            tid: task.file_name().to_string_lossy().into_owned(),
            name: field("Name:"),
            voluntary: field("voluntary_ctxt_switches:").parse().unwrap_or(0),
            involuntary: field("nonvoluntary_ctxt_switches:").parse().unwrap_or(0),
            sleeping: field("State:").starts_with('S'),
        });
    }
    threads.sort();
    threads
}
