//! Rooms (`--broadcast`): the URL path names the room, a broadcast reaches its own room only,
//! bad names are refused, rooms are paced apart, and `--history N` gives a newcomer the room's
//! last N messages and then every later one, with no gap and no duplicate. The same session
//! runs on one instance and across two instances of a cluster on a real redis-server.

// These tests raise limits and read /proc: Linux only (the README's Platforms section).
#![cfg(target_os = "linux")]

#[cfg(feature = "cluster")]
#[path = "support/redis.rs"]
mod redis_server;
mod support;

use std::io::Write;
use std::net::TcpStream;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use support::{
    Client, Wsecho, client_frame, connect, http_exchange, next_data, raw_websocket_at,
    read_server_frame,
};
use tungstenite::Message;

const BINARY: u8 = 0x2;

/// Flags every server of these tests runs with: broadcast, no greeting (it would be one more
/// message to skip), and no pings, so that a client waiting for a message that never comes
/// times out after PATIENCE instead of being kept alive.
const BASE: [&str; 7] = [
    "--broadcast",
    "--greeting-delay",
    "off",
    "--ping-interval",
    "off",
    "--idle-timeout",
    "off",
];

/// Where the clients connect: one instance, or two instances of a cluster. A client's
/// `instance` picks which (on one instance, both are the same).
struct Deployment {
    servers: Vec<Wsecho>,
    #[cfg(feature = "cluster")]
    _redis: Option<redis_server::RedisServer>,
}

impl Deployment {
    fn one(extra: &[&str]) -> Deployment {
        let args: Vec<&str> = BASE.iter().chain(extra).copied().collect();
        Deployment {
            servers: vec![Wsecho::start(&args)],
            #[cfg(feature = "cluster")]
            _redis: None,
        }
    }

    #[cfg(feature = "cluster")]
    fn cluster(extra: &[&str]) -> Deployment {
        let redis = redis_server::RedisServer::start(&[]);
        let servers = (0..2)
            .map(|_| {
                let mut args: Vec<&str> = BASE.iter().chain(extra).copied().collect();
                args.extend(["--redis", &redis.url, "--redis-channel", &redis.channel]);
                let server = Wsecho::start(&args);
                server.wait_for_log(&["redis link up: subscribed to channel"]);
                server
            })
            .collect();
        Deployment {
            servers,
            _redis: Some(redis),
        }
    }

    fn server(&self, instance: usize) -> &Wsecho {
        &self.servers[instance % self.servers.len()]
    }

    /// A client in `room` (a URL path), on `instance`.
    fn client(&self, instance: usize, path: &str) -> Client {
        let url = format!("{}{path}", self.server(instance).url);
        connect(&url)
    }

    fn healthz(&self, instance: usize) -> String {
        let response = http_exchange(
            self.server(instance).addr,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        );
        response.split("\r\n\r\n").nth(1).unwrap_or("").to_string()
    }
}

/// Sends `hello` and reads until the client hears it back: from then on it is in its room
/// (and, in a cluster, its instance is subscribed) and misses no broadcast.
fn join(ws: &mut Client, hello: &str) {
    ws.send(Message::text(hello)).unwrap();
    while next_data(ws) != Message::text(hello) {}
}

fn rooms_are_isolated_from_each_other_and_the_lobby(deployment: &Deployment) {
    let mut lobby = deployment.client(0, "/");
    let mut rust_a = deployment.client(0, "/chat/rust");
    let mut rust_b = deployment.client(1, "/chat/rust?token=not-part-of-the-room");
    let mut go = deployment.client(1, "/chat/go");
    let mut spaced = deployment.client(0, "/caf%C3%A9%20bar");
    join(&mut lobby, "hello lobby");
    join(&mut rust_a, "hello rust a");
    join(&mut rust_b, "hello rust b");
    join(&mut go, "hello go");
    join(&mut spaced, "hello café");
    // rust_b's own hello reached rust_a too: skip it.
    assert_eq!(next_data(&mut rust_a), Message::text("hello rust b"));

    // Text and binary, each heard by both members of the room (in a cluster, whichever
    // instance they are on), in one order.
    rust_a.send(Message::text("fn main")).unwrap();
    assert_eq!(next_data(&mut rust_a), Message::text("fn main"));
    rust_b.send(Message::binary(vec![0, 1, 2])).unwrap();
    assert_eq!(next_data(&mut rust_b), Message::text("fn main"));
    for ws in [&mut rust_a, &mut rust_b] {
        assert_eq!(next_data(ws), Message::binary(vec![0, 1, 2]));
    }
    go.send(Message::text("func main")).unwrap();
    assert_eq!(next_data(&mut go), Message::text("func main"));
    lobby.send(Message::text("everyone?")).unwrap();
    assert_eq!(next_data(&mut lobby), Message::text("everyone?"));
    spaced.send(Message::text("☕")).unwrap();
    assert_eq!(next_data(&mut spaced), Message::text("☕"));

    // Nobody heard another room: the next thing each hears is a last probe of its own room.
    for (ws, probe) in [
        (&mut lobby, "probe lobby"),
        (&mut rust_a, "probe rust"),
        (&mut go, "probe go"),
        (&mut spaced, "probe café"),
    ] {
        ws.send(Message::text(probe)).unwrap();
        assert_eq!(
            next_data(ws),
            Message::text(probe),
            "another room leaked in"
        );
    }
    assert_eq!(next_data(&mut rust_b), Message::text("probe rust"));
    let log = deployment.server(0).log();
    assert!(log.contains("room \"chat/rust\""), "{log}");
    assert!(log.contains("room \"café bar\""), "{log}");
    assert!(log.contains("path /, room \"\""), "{log}");
}

/// A newcomer's view of a busy room: `HISTORY` messages of history at most, then the live
/// stream, every message numbered by its sender. With 20 newcomers joining while one sender
/// sends `COUNT` messages as fast as the server takes them, each newcomer must hear a run of
/// consecutive numbers that ends with the last one: nothing missing, nothing twice.
fn newcomers_to_a_busy_room_get_history_then_everything(deployment: &Deployment) {
    const COUNT: u32 = 3000;
    const HISTORY: u32 = 50;
    const NEWCOMERS: usize = 20;
    let mut sender = deployment.client(0, "/busy");
    join(&mut sender, "hello sender");
    // A listener that reads everything keeps the room flowing at the readers' pace.
    let mut first = deployment.client(1, "/busy");
    let start = Arc::new(Barrier::new(NEWCOMERS + 1));
    let newcomers: Vec<_> = (0..NEWCOMERS)
        .map(|i| {
            let start = Arc::clone(&start);
            let url = format!("{}/busy", deployment.server(i).url);
            thread::spawn(move || {
                start.wait();
                // Spread the joins over the burst.
                thread::sleep(Duration::from_millis(5 * i as u64));
                let mut ws = connect(&url);
                let mut expected: Option<u32> = None;
                let mut heard = 0u32;
                loop {
                    let number = match next_data(&mut ws) {
                        Message::Binary(b) => u32::from_be_bytes(b[..4].try_into().unwrap()),
                        Message::Text(t) if t.starts_with("hello") => continue,
                        other => panic!("newcomer {i}: {other:?}"),
                    };
                    if let Some(expected) = expected {
                        assert_eq!(number, expected, "newcomer {i}: a gap or a duplicate");
                    }
                    heard += 1;
                    if number == COUNT - 1 {
                        return heard;
                    }
                    expected = Some(number + 1);
                }
            })
        })
        .collect();
    start.wait();
    for n in 0..COUNT {
        let mut payload = n.to_be_bytes().to_vec();
        payload.extend_from_slice(&[n as u8; 60]);
        sender.send(Message::binary(payload)).unwrap();
        // The sender reads its own copies as it goes, like a browser would.
        if n % 64 == 63 {
            sender.flush().unwrap();
        }
    }
    sender.flush().unwrap();
    let mut last = 0;
    while last != COUNT - 1 {
        if let Message::Binary(b) = next_data(&mut first) {
            last = u32::from_be_bytes(b[..4].try_into().unwrap());
        }
    }
    for newcomer in newcomers {
        let heard = newcomer.join().unwrap();
        assert!(heard >= HISTORY.min(COUNT), "it heard {heard} messages");
    }
}

fn a_newcomer_gets_the_last_n_in_order_binary_kept_binary(deployment: &Deployment) {
    let mut sender = deployment.client(0, "/history");
    join(&mut sender, "hello 0");
    for n in 1..=7 {
        let message = if n % 2 == 0 {
            Message::binary(vec![n; 3])
        } else {
            Message::text(format!("message {n}"))
        };
        sender.send(message.clone()).unwrap();
        assert_eq!(next_data(&mut sender), message);
    }
    // --history 5: the last five, as they were sent, then the live stream.
    let mut newcomer = deployment.client(1, "/history");
    let expected = [
        Message::text("message 3"),
        Message::binary(vec![4; 3]),
        Message::text("message 5"),
        Message::binary(vec![6; 3]),
        Message::text("message 7"),
    ];
    for message in expected {
        assert_eq!(next_data(&mut newcomer), message);
    }
    sender.send(Message::text("live")).unwrap();
    assert_eq!(next_data(&mut newcomer), Message::text("live"));
    // Another room's newcomer gets its own room's history: none.
    let mut elsewhere = deployment.client(1, "/elsewhere");
    join(&mut elsewhere, "hello elsewhere");
}

#[test]
fn one_instance_rooms_are_isolated_from_each_other_and_the_lobby() {
    rooms_are_isolated_from_each_other_and_the_lobby(&Deployment::one(&[]));
}

#[cfg(feature = "cluster")]
#[test]
fn two_instances_rooms_are_isolated_from_each_other_and_the_lobby() {
    rooms_are_isolated_from_each_other_and_the_lobby(&Deployment::cluster(&[]));
}

#[test]
fn one_instance_a_newcomer_gets_the_last_n_in_order_then_the_live_stream() {
    a_newcomer_gets_the_last_n_in_order_binary_kept_binary(&Deployment::one(&["--history", "5"]));
}

#[cfg(feature = "cluster")]
#[test]
fn two_instances_a_newcomer_gets_the_last_n_in_order_then_the_live_stream() {
    let deployment = Deployment::cluster(&["--history", "5"]);
    a_newcomer_gets_the_last_n_in_order_binary_kept_binary(&deployment);
}

#[test]
fn one_instance_twenty_newcomers_to_a_busy_room_miss_nothing_and_hear_nothing_twice() {
    newcomers_to_a_busy_room_get_history_then_everything(&Deployment::one(&["--history", "50"]));
}

#[cfg(feature = "cluster")]
#[test]
fn two_instances_twenty_newcomers_to_a_busy_room_miss_nothing_and_hear_nothing_twice() {
    let deployment = Deployment::cluster(&["--history", "50"]);
    newcomers_to_a_busy_room_get_history_then_everything(&deployment);
}

#[test]
fn bad_room_names_are_refused_with_a_reason() {
    let server = Wsecho::start(&BASE);
    for (path, why) in [
        ("/%FF", "not UTF-8"),
        ("/a%0Ab", "control character"),
        ("/a%2", "two hex digits"),
        (&format!("/{}", "x".repeat(129)), "over the limit of 128"),
    ] {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        );
        let response = http_exchange(server.addr, request.as_bytes());
        assert!(response.starts_with("HTTP/1.1 400 "), "{path}: {response}");
        assert!(response.contains(why), "{path}: {response}");
    }
    // 128 bytes is fine.
    let mut ws = connect(&format!("{}/{}", server.url, "x".repeat(128)));
    join(&mut ws, "hello");
    // Echo mode ignores the path, whatever it is.
    let echo = Wsecho::start(&["--greeting-delay", "off"]);
    let mut ws = connect(&format!("{}/%FF/anything", echo.url));
    ws.send(Message::text("echo")).unwrap();
    assert_eq!(next_data(&mut ws), Message::text("echo"));
}

/// Room "free" at full speed: a sender on `from` sends `count` messages of 4 KiB as fast as
/// the server takes them, and a listener on `to` hears every one in order, as does the sender.
fn free_room_at_full_speed(from: &Wsecho, to: &Wsecho, count: u32) {
    let mut sender = raw_websocket_at(from.addr, "/free");
    let mut listener = raw_websocket_at(to.addr, "/free");
    // Each is in the room once it hears its own hello (the other may hear it too).
    for (tcp, hello) in [
        (&mut listener, "hello listener"),
        (&mut sender, "hello sender"),
    ] {
        tcp.write_all(&client_frame(true, 0x1, hello.as_bytes()))
            .unwrap();
        while read_server_frame(tcp).2 != hello.as_bytes() {}
    }
    let mut writer = sender.try_clone().unwrap();
    thread::spawn(move || {
        for n in 0..count {
            let mut payload = n.to_be_bytes().to_vec();
            payload.resize(4096, n as u8);
            writer
                .write_all(&client_frame(true, BINARY, &payload))
                .unwrap();
        }
    });
    for expected in 0..count {
        let (_, mut opcode, mut payload) = read_server_frame(&mut listener);
        while payload == b"hello sender" {
            (_, opcode, payload) = read_server_frame(&mut listener);
        }
        assert_eq!(opcode, BINARY);
        assert_eq!(
            u32::from_be_bytes(payload[..4].try_into().unwrap()),
            expected
        );
        let (_, _, own) = read_server_frame(&mut sender);
        assert_eq!(u32::from_be_bytes(own[..4].try_into().unwrap()), expected);
    }
}

/// Room "stalled" has a listener that reads nothing and a sender at full speed: its sender is
/// paced (held back) while its listener is behind. Room "free" meanwhile goes at full speed:
/// all of its messages arrive while the stalled listener is still connected (the send timeout
/// is far away), so nothing in "free" waited for "stalled".
#[test]
fn a_stalled_client_in_one_room_does_not_slow_another_room() {
    let server = Wsecho::start(
        &[
            &BASE[..],
            &[
                "--slow-listener",
                "wait",
                "--max-backlog",
                "256KiB",
                "--send-timeout",
                "1h",
            ],
        ]
        .concat(),
    );
    let stalled = raw_websocket_at(server.addr, "/stalled");
    let stalled_port = stalled.local_addr().unwrap().port();
    server.wait_for_log(&[&format!(":{stalled_port} connected: path /stalled")]);
    // The stalled room's sender floods without reading; it is soon paced.
    let flooder = raw_websocket_at(server.addr, "/stalled");
    let mut writer = flooder.try_clone().unwrap();
    thread::spawn(move || {
        let frame = client_frame(true, BINARY, &[7; 32 << 10]);
        while writer.write_all(&frame).is_ok() {}
    });
    // Wait until the stalled room is congested: its sender is paced.
    let flooder_port = flooder.local_addr().unwrap().port();
    server.wait_for_log(&[&format!(
        ":{flooder_port} paused: a listener of its room is behind"
    )]);
    // The free room at full speed: 2,000 messages of 4 KiB, every one heard in order.
    free_room_at_full_speed(&server, &server, 2000);
    // The stalled room is still stalled, and its listener still connected.
    assert!(
        !server
            .log()
            .contains(&format!(":{stalled_port} disconnected"))
    );
    assert!(!server.log().contains("too slow"));
    drop(stalled);
}

/// Across two instances: a stalled listener in room "stalled" on one, its sender flooding on
/// the other, and room "free" crossing the instances at full speed meanwhile: every message
/// of "free" arrives, in order, while "stalled" is stalled. (The stalled listener cannot pace
/// senders on the other instance; had it fallen four backlogs behind, it would be closed.)
#[cfg(feature = "cluster")]
#[test]
fn two_instances_a_stalled_client_in_one_room_does_not_slow_another_room() {
    let redis = redis_server::RedisServer::start(&[]);
    let flags = [
        "--slow-listener",
        "wait",
        "--max-backlog",
        "256KiB",
        "--send-timeout",
        "1h",
    ];
    let a = member(&redis, &flags);
    let b = member(&redis, &flags);
    let stalled = raw_websocket_at(b.addr, "/stalled");
    let stalled_port = stalled.local_addr().unwrap().port();
    b.wait_for_log(&[&format!(":{stalled_port} connected: path /stalled")]);
    let flooder = raw_websocket_at(a.addr, "/stalled");
    let mut writer = flooder.try_clone().unwrap();
    thread::spawn(move || {
        let frame = client_frame(true, BINARY, &[7; 32 << 10]);
        while writer.write_all(&frame).is_ok() {}
    });
    // The flooder does not read its own copies either: its instance paces it (for its own
    // copies, or for the publish queue it fills faster than Redis takes it).
    let flooder_port = flooder.local_addr().unwrap().port();
    a.wait_for_log(&[&format!(":{flooder_port} paused: ")]);

    // Fewer than four backlogs (1 MiB) in all: across instances a listener cannot pace the
    // sender, and one that many behind is let go by design, which a test reading both ends in
    // turn on a busy machine can let happen with more.
    free_room_at_full_speed(&a, &b, 200);
    drop((stalled, flooder));
}

/// 2,000 clients in 2,000 rooms: `/healthz` counts them, and once the clients leave the rooms
/// are freed and it counts none.
#[test]
fn two_thousand_clients_in_two_thousand_rooms_and_empty_rooms_are_freed() {
    let server = Wsecho::start(&BASE);
    let clients: Vec<TcpStream> = (0..2000)
        .map(|i| raw_websocket_at(server.addr, &format!("/room/{i}")))
        .collect();
    let rooms_in = |body: &str| -> u64 {
        let at = body.find("\"rooms\":").expect("a rooms count") + "\"rooms\":".len();
        body[at..]
            .split([',', '}'])
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let deployment = Deployment {
        servers: vec![server],
        #[cfg(feature = "cluster")]
        _redis: None,
    };
    let body = deployment.healthz(0);
    assert_eq!(rooms_in(&body), 2000, "{body}");
    assert!(body.contains("\"connections\":2000,"), "{body}");
    drop(clients);
    deployment
        .server(0)
        .wait_until(|log| log.matches(" disconnected: ").count() == 2000);
    // A connection's thread logs its "disconnected" line and then leaves its room: with 2,000
    // ending at once, some are still on their way out, so ask until the last room is gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut body = deployment.healthz(0);
    while rooms_in(&body) > 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
        body = deployment.healthz(0);
    }
    assert_eq!(rooms_in(&body), 0, "{body}");
}

/// `--history-ttl`: an idle room's history is forgotten, and the room with it.
#[test]
fn an_idle_rooms_history_expires_and_the_room_is_freed() {
    let deployment = Deployment::one(&["--history", "10", "--history-ttl", "1s"]);
    let mut sender = deployment.client(0, "/brief");
    join(&mut sender, "hello");
    drop(sender);
    deployment
        .server(0)
        .wait_until(|log| log.contains(" disconnected: "));
    assert!(
        deployment.healthz(0).contains("\"rooms\":1,"),
        "the history keeps it"
    );
    // Nothing can signal an expiry the server only notices when asked: wait out the TTL.
    thread::sleep(Duration::from_millis(1500));
    assert!(deployment.healthz(0).contains("\"rooms\":0,"));
    let mut newcomer = deployment.client(0, "/brief");
    join(&mut newcomer, "a fresh start");
}

/// An instance of the cluster on `redis` with these flags, once its link is up.
#[cfg(feature = "cluster")]
fn member(redis: &redis_server::RedisServer, extra: &[&str]) -> Wsecho {
    let mut args: Vec<&str> = BASE.iter().chain(extra).copied().collect();
    args.extend(["--redis", &redis.url, "--redis-channel", &redis.channel]);
    let server = Wsecho::start(&args);
    server.wait_for_log(&["redis link up: subscribed to channel"]);
    server
}

/// The history lives in Redis: an instance that starts after the room's messages were sent
/// gives its newcomer the same last N, and a newcomer arriving while Redis is down gets what
/// its instance heard, with a log line saying so.
#[cfg(feature = "cluster")]
#[test]
fn history_lives_in_redis_and_falls_back_to_the_instance_while_redis_is_down() {
    let mut redis = redis_server::RedisServer::start(&[]);
    let first = member(&redis, &["--history", "3"]);
    let mut sender = connect(&format!("{}/kept", first.url));
    for n in 1..=5 {
        let text = format!("kept {n}");
        sender.send(Message::text(text.clone())).unwrap();
        assert_eq!(next_data(&mut sender), Message::text(text));
    }
    // A second instance, started now: it heard none of it.
    let late = member(&redis, &["--history", "3"]);
    let mut newcomer = connect(&format!("{}/kept", late.url));
    for n in 3..=5 {
        assert_eq!(next_data(&mut newcomer), Message::text(format!("kept {n}")));
    }
    sender.send(Message::text("live")).unwrap();
    assert_eq!(next_data(&mut newcomer), Message::text("live"));
    // In Redis: the room's list, trimmed to the last three, with the TTL on it.
    let key = format!("{}:history:kept", redis.channel);
    let ttl = String::from_utf8_lossy(&redis.command(&[b"PTTL", key.as_bytes()])).into_owned();
    let ms: i64 = ttl
        .trim_start_matches(':')
        .trim()
        .parse()
        .expect("a PTTL reply");
    assert!(ms > 0 && ms <= 600_000, "PTTL {ttl:?}");
    let len = String::from_utf8_lossy(&redis.command(&[b"LLEN", key.as_bytes()])).into_owned();
    assert!(len.starts_with(":3"), "LLEN {len:?}");

    // Redis goes away: the late instance's newcomer gets what that instance heard.
    redis.kill();
    late.wait_for_log(&["redis link down"]);
    let mut offline = connect(&format!("{}/kept", late.url));
    for expected in ["kept 4", "kept 5", "live"] {
        assert_eq!(next_data(&mut offline), Message::text(expected));
    }
    let port = support::local_port(&offline);
    late.wait_for_log(&[
        &format!(":{port} gets the history of room \"kept\" from this instance only"),
        "the link to Redis is down",
    ]);
}
