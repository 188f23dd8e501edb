//! `wsload chat` against the real thing, at small scale: a redis-server and two or three
//! wsecho instances (`--broadcast --history --redis`), a few rooms spread over them, and one
//! instance killed while the rooms chat.
//!
//! The server binary is `WSECHO_BIN` if set, else the workspace's own, built here in release
//! as `scripts/bench.sh` builds it (`cargo build --release --workspace`: quick when it is up to
//! date, and the same features, so that neither build undoes the other's). Redis is `REDIS_SERVER`
//! or `redis-server` on the PATH, as wsecho's own cluster tests have it.

use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

/// A child process killed when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wsecho_bin() -> &'static PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("WSECHO_BIN") {
            return PathBuf::from(bin);
        }
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let built = Command::new(cargo)
            .args([
                "build",
                "--release",
                "--quiet",
                "-p",
                "wsecho",
                "--bin",
                "wsecho",
            ])
            .current_dir(&root)
            .status()
            .expect("cargo runs");
        assert!(built.success(), "building wsecho failed");
        let target =
            std::env::var_os("CARGO_TARGET_DIR").map_or(root.join("target"), PathBuf::from);
        target.join("release").join("wsecho")
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn redis() -> (Running, u16) {
    let program = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
    let port = free_port();
    let child = Command::new(&program)
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run {program:?} ({e}): install it with scripts/install-redis.sh")
        });
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        thread::sleep(Duration::from_millis(20));
    }
    (Running(child), port)
}

/// A wsecho instance of the cluster on Redis `port`, and its URL.
fn instance(redis_port: u16, channel: &str) -> (Running, String) {
    let mut child = Command::new(wsecho_bin())
        .args([
            "--port",
            "0",
            "--broadcast",
            "--history",
            "100",
            "--greeting-delay",
            "off",
        ])
        .args(["--log-level", "off", "--redis-channel", channel])
        .arg("--redis")
        .arg(format!("redis://127.0.0.1:{redis_port}/0"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("wsecho starts");
    let mut url = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut url)
        .unwrap();
    let url = url.trim().to_string();
    assert!(url.starts_with("ws://"), "wsecho printed {url:?}");
    // Joined once /healthz says Redis is up.
    let addr = url
        .trim_start_matches("ws://")
        .trim_end_matches('/')
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut body = String::new();
        if let Ok(mut s) = TcpStream::connect(&addr) {
            let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
            let _ = std::io::Read::read_to_string(&mut s, &mut body);
        }
        if body.contains(r#""redis":"up""#) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{url} did not join Redis: {body}"
        );
        thread::sleep(Duration::from_millis(50));
    }
    (Running(child), url)
}

/// A `wsload chat` process, its commands written as the test goes.
struct Chat {
    child: Running,
    stdin: ChildStdin,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Chat {
    fn start(urls: &[&str], extra: &[&str]) -> Chat {
        let mut command = Command::new(env!("CARGO_BIN_EXE_wsload"));
        command.arg("chat");
        for url in urls {
            command.args(["--url", url]);
        }
        let mut child = command
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Chat {
            child: Running(child),
            stdin,
            lines,
        }
    }

    fn say(&mut self, command: &str) {
        writeln!(self.stdin, "{command}").unwrap();
    }

    fn answer(&mut self) -> Value {
        let line = self.lines.next().expect("a phase report").unwrap();
        serde_json::from_str(&line).unwrap()
    }

    fn run(&mut self, command: &str) -> Value {
        self.say(command);
        self.answer()
    }
}

fn n(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("no {key} in {v}"))
}

#[test]
fn chat_delivers_every_message_to_every_member_across_instances() {
    let (_redis, port) = redis();
    let (_a, a) = instance(port, "chat-a");
    let (_b, b) = instance(port, "chat-a");
    let mut chat = Chat::start(&[&a, &b], &["--clients", "40", "--room-size", "10"]);
    let open = chat.run("open");
    assert_eq!(
        (n(&open, "opened"), n(&open, "open_failed")),
        (40, 0),
        "{open}"
    );
    let first = chat.run("send first");
    assert_eq!(
        (n(&first, "sent"), n(&first, "delivered")),
        (1, 10),
        "{first}"
    );
    let all = chat.run("send all");
    assert_eq!(n(&all, "sent"), 4, "{all}");
    assert_eq!(n(&all, "delivered"), 40, "{all}");
    let talk = chat.run("chat 2");
    assert_eq!(n(&talk, "sent"), 8, "{talk}");
    assert_eq!(n(&talk, "delivered"), 80, "{talk}");
    for key in [
        "missing",
        "duplicates",
        "foreign",
        "moved",
        "offset_errors",
        "errors",
    ] {
        assert_eq!(n(&talk, key), 0, "{key}: {talk}");
    }
    assert!(talk["p99_us"].as_f64().unwrap() > 0.0, "{talk}");
    chat.say("quit");
    assert!(chat.child.0.wait().unwrap().success());
}

#[test]
fn the_clients_of_a_killed_instance_come_back_on_the_others_and_lose_nothing() {
    let (_redis, port) = redis();
    let (_a, a) = instance(port, "chat-b");
    let (_b, b) = instance(port, "chat-b");
    let (mut killed, c) = instance(port, "chat-b");
    // 60 clients, 20 on each instance, in 6 rooms of 10 that each span the three.
    let mut chat = Chat::start(
        &[&a, &b, &c],
        &["--clients", "60", "--room-size", "10", "--jitter", "200ms"],
    );
    assert_eq!(n(&chat.run("open"), "opened"), 60);
    chat.say("chat 4");
    thread::sleep(Duration::from_millis(1500));
    killed.0.kill().unwrap();
    let talk = chat.answer();
    assert_eq!(n(&talk, "moved"), 20, "{talk}");
    assert_eq!(n(&talk, "back"), 20, "{talk}");
    assert_eq!(n(&talk, "headers_recovered"), 20, "{talk}");
    assert_eq!(n(&talk, "connected"), 60, "{talk}");
    assert!(talk["all_back_s"].as_f64().is_some(), "{talk}");
    // Every message that reached its room reached every member, the moved ones through the
    // history of their room; none twice.
    for key in ["lost", "missing", "duplicates", "offset_errors"] {
        assert_eq!(n(&talk, key), 0, "{key}: {talk}");
    }
    assert_eq!(n(&talk, "missed"), n(&talk, "recovered"), "{talk}");
    let sent = n(&talk, "sent") - n(&talk, "never_entered");
    assert_eq!(n(&talk, "delivered"), sent * 10, "{talk}");
    // After the loss, the rooms still work on the two instances left.
    let after = chat.run("send all");
    assert_eq!(n(&after, "delivered"), 60, "{after}");
    chat.say("quit");
    assert!(chat.child.0.wait().unwrap().success());
}
