//! A real `redis-server` for the cluster tests: on a free loopback port, in a temporary
//! folder, with no persistence, killed when dropped. Readiness is a PING answered, never a
//! sleep. A missing `redis-server` fails the test with what to install; it never skips.

#![allow(dead_code)] // each test file uses part of this

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How long a redis-server may take to answer its first PING.
const READY_WITHIN: Duration = Duration::from_secs(10);

/// A running `redis-server`, killed (and its folder removed) when dropped.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    /// `redis://127.0.0.1:PORT/0`, with no password.
    pub url: String,
    /// A pub/sub channel for this server's test alone (see [`own_channel`]).
    pub channel: String,
    args: Vec<String>,
    dir: PathBuf,
}

/// The redis-server to run: `$REDIS_SERVER`, or `redis-server` on the PATH.
fn program() -> String {
    let program = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
    let found = Command::new(&program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "cannot run {program:?}: the cluster tests need a real Redis. Install it with \
         scripts/install-redis.sh (Debian's redis-server package; scripts/test.sh does it), or \
         set REDIS_SERVER to a redis-server binary"
    );
    program
}

/// A port nobody listens on right now (redis-server refuses `--port 0`).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A channel name no other test uses. Tests run in parallel, each with its own redis-server on
/// a free port; one that kills its server and starts it again on the same port may meet another
/// test's server there, and a channel of its own keeps the two clusters apart all the same.
pub fn own_channel() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "wsecho-test-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    )
}

impl RedisServer {
    /// Starts a redis-server with `args` added (e.g. `["--requirepass", "s3cret"]`) on a free
    /// port; tries another port if that one was taken in between.
    pub fn start(args: &[&str]) -> RedisServer {
        for _ in 0..5 {
            if let Some(server) = RedisServer::start_on(free_port(), args) {
                return server;
            }
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    /// Starts a redis-server on `port`; `None` if it exited at once (the port was taken).
    pub fn start_on(port: u16, args: &[&str]) -> Option<RedisServer> {
        let dir = std::env::temp_dir().join(format!("wsecho-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = RedisServer {
            child: None,
            port,
            url: format!("redis://127.0.0.1:{port}/0"),
            channel: own_channel(),
            args: args.iter().map(|a| a.to_string()).collect(),
            dir,
        };
        server.launch().then_some(server)
    }

    /// Starts the process again, on the same port with the same arguments, after [`kill`].
    ///
    /// [`kill`]: RedisServer::kill
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart after kill");
        assert!(
            self.launch(),
            "redis-server did not start again on port {}",
            self.port
        );
    }

    /// Kills the process at once (SIGKILL: no goodbye to its clients) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn launch(&mut self) -> bool {
        let port = self.port.to_string();
        let mut child = Command::new(program())
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port,
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--logfile", "", "--daemonize", "no"])
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                eprintln!("redis-server on port {port} exited at start: {status}");
                return false;
            }
            if answers_ping(self.port) {
                self.child = Some(child);
                return true;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                panic!("redis-server on port {port} did not answer PING within {READY_WITHIN:?}");
            }
            thread::sleep(Duration::from_millis(10)); // between connection attempts only
        }
    }

    /// Runs one command (as RESP) and returns Redis's raw reply.
    pub fn command(&self, args: &[&[u8]]) -> Vec<u8> {
        let mut tcp = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        tcp.write_all(&resp(args)).unwrap();
        let mut reply = vec![0; 512];
        let n = tcp.read(&mut reply).unwrap();
        reply.truncate(n);
        reply
    }

    /// PUBLISHes `payload` on `channel`; returns how many subscribers got it.
    pub fn publish(&self, channel: &str, payload: &[u8]) -> u64 {
        let reply = self.command(&[b"PUBLISH", channel.as_bytes(), payload]);
        let reply = String::from_utf8_lossy(&reply);
        reply
            .strip_prefix(':')
            .and_then(|n| n.trim_end().parse().ok())
            .unwrap_or_else(|| panic!("PUBLISH answered {reply:?}"))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A command in RESP: an array of bulk strings.
fn resp(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Whether a Redis on `port` answers PING (a NOAUTH refusal counts: it is up).
fn answers_ping(port: u16) -> bool {
    let Ok(mut tcp) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(1)));
    if tcp.write_all(&resp(&[b"PING"])).is_err() {
        return false;
    }
    let mut reply = [0u8; 64];
    match tcp.read(&mut reply) {
        Ok(n) => reply[..n].starts_with(b"+PONG") || reply[..n].starts_with(b"-NOAUTH"),
        Err(_) => false,
    }
}
