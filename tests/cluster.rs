//! Several instances on one Redis (`--redis`): every client of every instance hears every
//! broadcast once, in one order; Redis going away and coming back; what start refuses; and
//! flow control across instances. Real redis-server, real instances, real clients, loopback.

// These tests read the server's memory and CPU time from /proc, and raise limits with the
// shell's ulimit: Linux only (the README's Platforms section says what runs where).
#![cfg(all(target_os = "linux", feature = "cluster"))]

#[path = "support/redis.rs"]
mod redis_server;
mod support;

use std::collections::HashSet;
use std::io::{ErrorKind, Write};
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use redis_server::{RedisServer, free_port, own_channel};
use support::{
    Client, Wsecho, client_frame, connect, http_exchange, next_data, proc_status_kib,
    raw_websocket, read_server_frame,
};
use tungstenite::Message;
use tungstenite::stream::MaybeTlsStream;

/// An instance of the cluster on `redis`, once its link is up. Instances of one test share a
/// channel of their own unless `extra` names one.
fn member(redis: &RedisServer, extra: &[&str]) -> Wsecho {
    let channel = redis.channel.clone();
    let mut args = vec![
        "--broadcast",
        "--greeting-delay",
        "off",
        "--redis",
        &redis.url,
        "--redis-channel",
        &channel,
        // No pings during a test: a client waiting for a message that never comes then times
        // out after PATIENCE instead of being kept waiting by the server's pings.
        "--ping-interval",
        "off",
        "--idle-timeout",
        "off",
    ];
    args.extend_from_slice(extra);
    let instance = Wsecho::start(&args);
    instance.wait_for_log(&["redis link up: subscribed to channel"]);
    instance
}

/// `/healthz`: the status code and the body.
fn healthz(instance: &Wsecho) -> (u16, String) {
    let response = http_exchange(instance.addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    let status = response[9..12].parse().unwrap();
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

/// Sends `hello` and reads until the client hears it back: from then on it is in its
/// instance's hub and misses no broadcast. Returns nothing it read before.
fn join(ws: &mut Client, hello: &str) {
    ws.send(Message::text(hello)).unwrap();
    while next_data(ws) != Message::text(hello) {}
}

fn is_hello(message: &Message) -> bool {
    matches!(message, Message::Text(t) if t.starts_with("hello "))
}

/// Message `n` of sender `s`: text for even `n`, binary for odd, each telling who and which.
fn message(s: usize, n: usize) -> Message {
    if n.is_multiple_of(2) {
        Message::text(format!("sender {s} text {n} ✓"))
    } else {
        Message::binary(vec![s as u8, n as u8, 0x00, 0xff])
    }
}

fn sender_of(message: &Message) -> usize {
    match message {
        Message::Text(t) => t["sender ".len()..]
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap(),
        Message::Binary(b) => usize::from(b[0]),
        other => panic!("not a broadcast: {other:?}"),
    }
}

/// `instances` instances on one Redis, two listeners on each and one sender on each; every
/// sender sends `PER_SENDER` messages, text and binary, all at once.
fn every_client_hears_every_broadcast_once_in_one_order(instances: usize) {
    const PER_SENDER: usize = 100;
    let redis = RedisServer::start(&[]);
    let servers: Vec<Wsecho> = (0..instances).map(|_| member(&redis, &[])).collect();
    let mut listeners: Vec<Client> = servers
        .iter()
        .flat_map(|server| [server.connect(), server.connect()])
        .collect();
    for (i, ws) in listeners.iter_mut().enumerate() {
        join(ws, &format!("hello from listener {i}"));
    }
    let ready = Arc::new(Barrier::new(instances));
    let total = instances * PER_SENDER;
    let senders: Vec<_> = servers
        .iter()
        .enumerate()
        .map(|(s, server)| {
            let (url, ready) = (server.url.clone(), Arc::clone(&ready));
            thread::spawn(move || {
                let mut ws = connect(&url);
                join(&mut ws, &format!("hello from sender {s}"));
                ready.wait();
                for n in 0..PER_SENDER {
                    ws.send(message(s, n)).unwrap();
                }
                // A sender hears every broadcast too, its own included.
                let mut heard = Vec::new();
                while heard.len() < total {
                    match next_data(&mut ws) {
                        m if is_hello(&m) => continue,
                        m => heard.push(m),
                    }
                }
                heard
            })
        })
        .collect();
    let mut heard: Vec<Vec<Message>> = senders
        .into_iter()
        .map(|s| {
            s.join().unwrap_or_else(|_| {
                for (i, server) in servers.iter().enumerate() {
                    eprintln!("--- instance {i}:\n{}", server.log());
                }
                panic!("a sender did not hear everything");
            })
        })
        .collect();
    // A last message after everything: whatever a listener hears before it is all it gets.
    listeners[0].send(Message::text("the end")).unwrap();
    for ws in &mut listeners {
        let mut got = Vec::new();
        loop {
            match next_data(ws) {
                m if m == Message::text("the end") => break,
                m if is_hello(&m) => continue,
                m => got.push(m),
            }
        }
        heard.push(got);
    }
    // Every client: every message once, in the one order Redis delivered them.
    for (client, got) in heard.iter().enumerate() {
        assert_eq!(
            got.len(),
            total,
            "client {client} heard {} messages",
            got.len()
        );
        assert!(got == &heard[0], "client {client} heard another order");
    }
    // Each sender's messages in the order it sent them, kind and bytes unchanged.
    for s in 0..instances {
        let from_s: Vec<&Message> = heard[0].iter().filter(|m| sender_of(m) == s).collect();
        let expected: Vec<Message> = (0..PER_SENDER).map(|n| message(s, n)).collect();
        assert_eq!(from_s.len(), PER_SENDER);
        assert!(
            from_s.iter().zip(&expected).all(|(a, b)| *a == b),
            "sender {s}'s order"
        );
    }
    let distinct: HashSet<String> = heard[0].iter().map(|m| format!("{m:?}")).collect();
    assert_eq!(distinct.len(), total, "no message twice");
    // The messages really crossed Redis: every instance published its sender's.
    for server in &servers {
        let (status, body) = healthz(server);
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("\"redis\":\"up\""), "{body}");
        assert!(!body.contains("\"redis_published\":0,"), "{body}");
    }
}

#[test]
fn two_instances_every_client_hears_every_broadcast_once_in_one_order() {
    every_client_hears_every_broadcast_once_in_one_order(2);
}

#[test]
fn three_instances_every_client_hears_every_broadcast_once_in_one_order() {
    every_client_hears_every_broadcast_once_in_one_order(3);
}

#[test]
fn redis_killed_and_restarted_local_clients_go_on_and_the_cluster_comes_back() {
    let mut redis = RedisServer::start(&[]);
    let a = member(&redis, &[]);
    let b = member(&redis, &[]);
    let (mut a1, mut a2, mut b1) = (a.connect(), a.connect(), b.connect());
    join(&mut a1, "hello a1");
    join(&mut a2, "hello a2");
    join(&mut b1, "hello b1");
    a1.send(Message::text("before")).unwrap();
    for ws in [&mut a1, &mut a2, &mut b1] {
        while next_data(ws) != Message::text("before") {}
    }

    redis.kill();
    a.wait_for_log(&["redis link down: the subscription to redis://127.0.0.1"]);
    b.wait_for_log(&["redis link down"]);
    let (status, body) = healthz(&a);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"status\":\"degraded\""), "{body}");
    assert!(body.contains("\"redis\":\"down\""), "{body}");
    let metrics = http_exchange(a.addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(metrics.contains("\nwsecho_redis_up 0\n"), "{metrics}");
    // This instance's clients still hear each other, at once; a newcomer gets in too.
    a1.send(Message::text("during")).unwrap();
    assert_eq!(next_data(&mut a1), Message::text("during"));
    assert_eq!(next_data(&mut a2), Message::text("during"));
    let mut a3 = a.connect();
    join(&mut a3, "hello a3");
    assert_eq!(next_data(&mut a1), Message::text("hello a3"));
    a.wait_for_log(&["broadcasts go to this instance's clients only"]);
    let page = http_exchange(a.addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(page.starts_with("HTTP/1.1 200"), "the demo page");

    redis.restart();
    a.wait_for_log(&["redis link up again after"]);
    b.wait_for_log(&["redis link up again after"]);
    let (status, body) = healthz(&a);
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("\"redis\":\"up\",\"redis_outages\":1,\"redis_local_only\":2,"),
        "{body}"
    );
    let metrics = http_exchange(a.addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(metrics.contains("\nwsecho_redis_up 1\n"), "{metrics}");
    assert!(metrics.contains("\nwsecho_redis_outages 1\n"), "{metrics}");
    // Across instances again, without restarting them. b1 never heard what a said meanwhile.
    a1.send(Message::text("after")).unwrap();
    assert_eq!(next_data(&mut b1), Message::text("after"));
    for ws in [&mut a1, &mut a2, &mut a3] {
        while next_data(ws) != Message::text("after") {}
    }
    b1.send(Message::binary(vec![1, 2, 3])).unwrap();
    assert_eq!(next_data(&mut a3), Message::binary(vec![1, 2, 3]));
}

#[test]
fn an_unreachable_redis_at_start_starts_degraded_and_joins_when_it_comes() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}/0");
    let channel = own_channel();
    let instance = Wsecho::start(&[
        "--broadcast",
        "--greeting-delay",
        "off",
        "--redis",
        &url,
        "--redis-channel",
        &channel,
    ]);
    instance.wait_for_log(&["redis link down: cannot reach redis://127.0.0.1"]);
    let (status, body) = healthz(&instance);
    assert_eq!(status, 503, "{body}");
    let mut ws = instance.connect();
    join(&mut ws, "hello alone"); // local delivery while down
    let redis = RedisServer::start_on(port, &[]).expect("redis-server on the chosen port");
    instance.wait_for_log(&["redis link up again after"]);
    ws.send(Message::text("through redis")).unwrap();
    assert_eq!(next_data(&mut ws), Message::text("through redis"));
    let (status, body) = healthz(&instance);
    assert_eq!(status, 200, "{body}");
    // (Received, not published: the publisher counts once Redis has answered, which may come
    // after the message is back.)
    assert!(body.contains("\"redis_received\":1"), "{body}");
    drop(redis);
}

/// Runs wsecho to its exit; asserts one line on standard error, exit status 1.
fn fails_with_one_line(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_wsecho"))
        .args(["--host", "127.0.0.1", "--port", "0"])
        .args(args)
        .env_remove("REDIS_URL")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line, got:\n{stderr}");
    assert!(output.stdout.is_empty(), "no ready line");
    stderr
}

#[test]
fn a_bad_url_or_a_refused_password_is_one_line_and_exit_1() {
    let error = fails_with_one_line(&["--broadcast", "--redis", "localhost:6379"]);
    assert!(error.contains("--redis: not a Redis URL"), "{error}");
    let error = fails_with_one_line(&["--redis", "redis://127.0.0.1:6379/0"]);
    assert!(error.contains("needs --broadcast"), "{error}");

    let redis = RedisServer::start(&["--requirepass", "s3cret"]);
    let wrong = format!("redis://:wrong@127.0.0.1:{}/0", redis.port);
    let error = fails_with_one_line(&["--broadcast", "--redis", &wrong]);
    assert!(
        error.contains("wsecho: error: cannot join the cluster: redis://:***@"),
        "{error}"
    );
    assert!(error.contains("check the password"), "{error}");
    assert!(
        !error.contains("wrong"),
        "the password is never shown: {error}"
    );
    let error = fails_with_one_line(&["--broadcast", "--redis", &redis.url]);
    assert!(
        error.contains("check the password"),
        "no password at all: {error}"
    );

    // The right one, from the environment as a deployment would pass it.
    let url = format!("redis://:s3cret@127.0.0.1:{}/0", redis.port);
    let instance = Wsecho::start_with_env(&[("REDIS_URL", &url)], &["--broadcast"]);
    instance.wait_for_log(&["redis link up: subscribed to channel \"wsecho\" on redis://:***@"]);
    assert!(!instance.log().contains("s3cret"), "{}", instance.log());
}

#[test]
fn messages_on_the_channel_are_checked_and_others_can_publish_broadcasts() {
    let redis = RedisServer::start(&[]);
    let instance = member(&redis, &["--redis-channel", "room 1"]);
    let mut ws = instance.connect();
    join(&mut ws, "hello");
    // Not frames: refused, logged, counted; the client hears nothing of them.
    assert_eq!(redis.publish("room 1", b"hello world"), 1);
    assert_eq!(redis.publish("room 1", &[0x81, 0x01, 0xff]), 1); // text that is not UTF-8
    instance.wait_for_log(&["refused a message on channel \"room 1\"", "first byte 0x68"]);
    // The wire format, from another program: a frame as a server sends it.
    assert_eq!(redis.publish("room 1", &[0x81, 0x02, b'h', b'i']), 1);
    assert_eq!(redis.publish("room 1", &[0x82, 0x03, 1, 2, 3]), 1);
    assert_eq!(next_data(&mut ws), Message::text("hi"));
    assert_eq!(next_data(&mut ws), Message::binary(vec![1, 2, 3]));
    // Another channel is another cluster.
    assert_eq!(redis.publish("wsecho", &[0x81, 0x02, b'n', b'o']), 0);
    let (_, body) = healthz(&instance);
    assert!(body.contains("\"redis_malformed\":2,"), "{body}");
}

/// A 50 MiB burst sent at full speed on one instance, while the other has a listener that
/// reads nothing: the other instance's memory stays bounded (the stalled listener is closed
/// once it is four backlogs behind), and the sender's instance is not held back by it.
#[test]
fn a_burst_on_one_instance_cannot_grow_another_instances_memory() {
    const BINARY: u8 = 0x2;
    let (count, size) = (800u32, 64usize << 10);
    let redis = RedisServer::start(&[]);
    let a = member(&redis, &[]);
    let b = member(&redis, &["--send-timeout", "2s"]);
    let stalled = raw_websocket(b.addr);
    let stalled_port = stalled.local_addr().unwrap().port();
    b.wait_for_log(&[&format!(":{stalled_port} connected")]);

    let sender = raw_websocket(a.addr);
    let a_port = sender.local_addr().unwrap().port();
    a.wait_for_log(&[&format!(":{a_port} connected")]);
    let mut writer = sender.try_clone().unwrap();
    thread::spawn(move || {
        for seq in 0..count {
            let mut payload = vec![seq as u8; size];
            payload[..4].copy_from_slice(&seq.to_be_bytes());
            writer
                .write_all(&client_frame(true, BINARY, &payload))
                .unwrap();
        }
    });
    // The sender reads its own copies, in order: its instance goes at full speed.
    let mut reader = sender;
    for expected in 0..count {
        let (_, opcode, payload) = read_server_frame(&mut reader);
        assert_eq!(opcode, BINARY);
        assert_eq!(
            u32::from_be_bytes(payload[..4].try_into().unwrap()),
            expected
        );
    }
    // The stalled listener is closed once it is four backlogs behind (its instance cannot
    // pace the sender on the other one), long before its send timeout.
    b.wait_for_log(&[&format!(":{stalled_port} too slow")]);
    let peak = proc_status_kib(b.pid(), "VmHWM");
    assert!(
        peak < 48 << 10,
        "instance b peaked at {peak} KiB for a 50 MiB burst"
    );
    drop(stalled);
    // b is still a member (if Redis dropped its subscription meanwhile, it has rejoined): a
    // probe sent on a reaches a client of b, once b's link is up again.
    let mut late = b.connect();
    if let MaybeTlsStream::Plain(tcp) = late.get_mut() {
        tcp.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
    }
    let mut probe = a.connect();
    join(&mut probe, "hello probe");
    let deadline = Instant::now() + support::PATIENCE;
    'probe: loop {
        assert!(Instant::now() < deadline, "b never heard a again");
        probe.send(Message::text("are you there")).unwrap();
        loop {
            match late.read() {
                Ok(Message::Text(t)) if t.as_str() == "are you there" => break 'probe,
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                {
                    continue 'probe;
                }
                Err(e) => panic!("b's client: {e}"),
            }
        }
    }
}
