//! The memory ceiling (`--max-memory`): many clients each streaming a large message cannot
//! take the server past it; small messages keep flowing; every big message completes or gets
//! 1013, and the process survives. And what an idle connection keeps: once quiet, a
//! connection gives back what a big message or the greeting made it hold, and loses nothing.

// These tests read the server's memory and CPU time from /proc, and raise limits with the
// shell's ulimit: Linux only (the README's Platforms section says what runs where).
#![cfg(target_os = "linux")]

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use support::{
    Wsecho, client_frame, close_code, connect, next_data, proc_status_kib, raw_websocket,
    read_server_frame, try_read_server_frame,
};
use tungstenite::Message;

const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CONTINUATION: u8 = 0x0;
const CLOSE: u8 = 0x8;

/// The ceiling the server runs with in these tests.
const CEILING_MIB: u64 = 64;

/// What the server may hold beyond the ceiling, documented in docs/design.md: its own baseline
/// (binary, threads, buffers: about 6 MiB), one read of 2 KiB per connection past the check,
/// the frame buffer tungstenite keeps per connection (up to one frame: 1 MiB here, 12 MiB for
/// the twelve), and the allocator's own overhead. Without the ceiling the peak is over 300 MiB.
const SLACK_MIB: u64 = 48;

/// How a big message ended for its client.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Its echo came back whole, with this many bytes.
    Echoed(usize),
    /// The server closed the connection with this code.
    Closed(u16),
}

/// Reads server frames until an echo or a Close arrives (a lost connection counts as 1006).
fn outcome(mut tcp: TcpStream) -> Outcome {
    loop {
        let Ok((_, opcode, payload)) = try_read_server_frame(&mut tcp) else {
            return Outcome::Closed(1006);
        };
        match opcode {
            CLOSE => return Outcome::Closed(close_code(&payload)),
            BINARY => {
                assert!(payload.iter().all(|&b| b == 0x5a), "the echo is corrupt");
                return Outcome::Echoed(payload.len());
            }
            _ => continue, // a ping
        }
    }
}

#[test]
fn clients_streaming_big_messages_stay_under_the_ceiling_and_small_messages_flow() {
    let server = Wsecho::start(&[
        "--greeting-delay",
        "off",
        "--max-memory",
        &format!("{CEILING_MIB}MiB"),
        "--max-message-size",
        "16MiB",
        "--max-frame-size",
        "1MiB",
        "--ping-interval",
        "2s",
        "--idle-timeout",
        "4s",
    ]);
    // Twelve clients, each sending a 13 MiB message in 1 MiB fragments: 156 MiB in all,
    // more than twice the ceiling.
    let fragment = vec![0x5a; 1 << 20];
    let fragments = 13;
    let big: Vec<_> = (0..12)
        .map(|_| {
            let tcp = raw_websocket(server.addr);
            let mut writer = tcp.try_clone().unwrap();
            let fragment = fragment.clone();
            thread::spawn(move || {
                for i in 0..fragments {
                    let opcode = if i == 0 { BINARY } else { CONTINUATION };
                    let frame = client_frame(i == fragments - 1, opcode, &fragment);
                    // Fails once the server gave up on this client: that is its outcome.
                    if writer.write_all(&frame).is_err() {
                        break;
                    }
                }
            });
            thread::spawn(move || outcome(tcp))
        })
        .collect();

    server.wait_for_log(&["memory ceiling reached"]);
    // While the big messages wait for memory, a client with small messages is served.
    let mut small = connect(&server.url);
    for i in 0..50 {
        let sent = small.send(Message::text(format!("small {i}")));
        let echo = sent.and_then(|()| small.read());
        assert_eq!(
            echo.ok(),
            Some(Message::text(format!("small {i}"))),
            "{}",
            server.log()
        );
    }

    let outcomes: Vec<Outcome> = big.into_iter().map(|t| t.join().unwrap()).collect();
    for outcome in &outcomes {
        assert!(
            matches!(outcome, Outcome::Echoed(n) if *n == fragments << 20)
                || matches!(outcome, Outcome::Closed(1013 | 1009)),
            "{outcomes:?}"
        );
    }
    let peak_mib = proc_status_kib(server.pid(), "VmHWM") >> 10;
    assert!(
        peak_mib < CEILING_MIB + SLACK_MIB,
        "peak memory {peak_mib} MiB, {outcomes:?}"
    );
    // The server lives on. (A new client: the first one, not reading while the test waited,
    // did not answer pings and may have timed out.)
    let mut after = connect(&server.url);
    after.send(Message::text("after")).unwrap();
    assert_eq!(next_data(&mut after), Message::text("after"));
    let health = support::http_exchange(server.addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(
        health.contains(&format!("\"memory_limit_bytes\":{}", CEILING_MIB << 20)),
        "{health}"
    );
}

#[test]
fn a_memory_ceiling_below_two_largest_messages_is_refused_at_start() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_wsecho"))
        .args(["--max-memory", "16MiB", "--max-message-size", "10MiB"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("--max-memory (16MiB) must be at least twice --max-message-size (10MiB)"),
        "{stderr}"
    );
}

/// Connections these tests hold at once: enough that what each keeps stands out of the
/// process's own noise by far (a burst's leftovers are tens of KiB each).
const QUIET_CLIENTS: usize = 400;

/// What a connection may keep, over its fresh figure, once it settled after a burst: the
/// docs/performance.md (where an idle connection's memory goes) says what this is (its channel's first block,
/// allocator rounding). Before connections gave memory back, a 64 KiB echo left 66 KiB and the
/// greeting 5.5 KiB (a third stack page).
const KEPT_AFTER_SETTLING_KIB: u64 = 3;

/// What glibc's allocator keeps for the whole process after big buffers come and go: each of
/// its arenas (up to eight per core) keeps up to 128 KiB free at its top, which its trim
/// leaves in place. Fixed, however many connections there are.
fn arenas_kib() -> u64 {
    let cores = thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    8 * cores * 128
}

/// How long the server may take to give the memory back: it settles a connection after a
/// second of quiet, and trims the heap at most once a second.
const SETTLE_PATIENCE: Duration = Duration::from_secs(15);

/// The server's resident anonymous memory (heap and stacks, not the program's code), in KiB.
fn rss(server: &Wsecho) -> u64 {
    proc_status_kib(server.pid(), "RssAnon")
}

/// Asserts that the server's memory comes back to within [`KEPT_AFTER_SETTLING_KIB`] per
/// client (plus `fixed_kib` for the whole process) of `fresh` within [`SETTLE_PATIENCE`].
fn gives_back(server: &Wsecho, fresh: u64, fixed_kib: u64, after: &str) {
    let limit = fresh + KEPT_AFTER_SETTLING_KIB * QUIET_CLIENTS as u64 + fixed_kib;
    let deadline = Instant::now() + SETTLE_PATIENCE;
    let mut now = rss(server);
    while now > limit && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
        now = rss(server);
    }
    assert!(
        now <= limit,
        "{after}, {} KiB per idle connection is still held",
        now.saturating_sub(fresh) / QUIET_CLIENTS as u64
    );
}

#[test]
fn after_a_big_message_an_idle_connection_gives_its_buffers_back() {
    let server = Wsecho::start(&["--greeting-delay", "off", "--max-handshakes-per-ip", "off"]);
    let mut clients: Vec<_> = (0..QUIET_CLIENTS)
        .map(|_| raw_websocket(server.addr))
        .collect();
    let fresh = rss(&server);

    let message = vec![0x5a; 64 * 1024];
    for tcp in &mut clients {
        tcp.write_all(&client_frame(true, BINARY, &message))
            .unwrap();
        assert_eq!(
            outcome(tcp.try_clone().unwrap()),
            Outcome::Echoed(message.len())
        );
    }
    gives_back(&server, fresh, arenas_kib(), "after one 64 KiB echo each");
}

/// Over plain TCP the greeting goes straight into the socket and the connection's thread
/// never wakes; were it woken, the wake-up's signal frame would touch a stack page, which the
/// connection must then give back.
#[test]
fn after_the_greeting_an_idle_connection_costs_what_it_did() {
    let server = Wsecho::start(&["--greeting-delay", "4s", "--max-handshakes-per-ip", "off"]);
    let mut clients: Vec<_> = (0..QUIET_CLIENTS)
        .map(|_| raw_websocket(server.addr))
        .collect();
    // A new connection settles one to two seconds after it starts (settle.rs spreads them),
    // giving back the stack its handshake touched; the fresh figure is taken after that and
    // before the first greeting is due.
    thread::sleep(Duration::from_millis(3000));
    let fresh = rss(&server);
    for tcp in &mut clients {
        let (_, opcode, greeting) = read_server_frame(tcp);
        assert_eq!(opcode, TEXT, "{greeting:?}");
    }
    gives_back(&server, fresh, 0, "after the greeting");
}

#[test]
fn a_connection_that_gave_its_buffers_back_loses_nothing_even_mid_message() {
    let server = Wsecho::start(&["--greeting-delay", "off"]);
    let mut tcp = raw_websocket(server.addr);
    // Longer than the server's settle time (1 s, and up to 1 s more to spread connections).
    let quiet = Duration::from_millis(2500);

    // A big message grows the read buffer; the quiet after it makes the server rebuild it.
    let big = vec![0x5a; 64 * 1024];
    tcp.write_all(&client_frame(true, BINARY, &big)).unwrap();
    assert_eq!(
        outcome(tcp.try_clone().unwrap()),
        Outcome::Echoed(big.len())
    );
    thread::sleep(quiet);

    // Then a big message in two fragments, quiet in between: the server must keep the first.
    tcp.write_all(&client_frame(false, BINARY, &big)).unwrap();
    thread::sleep(quiet);
    tcp.write_all(&client_frame(true, CONTINUATION, &big))
        .unwrap();
    assert_eq!(
        outcome(tcp.try_clone().unwrap()),
        Outcome::Echoed(2 * big.len())
    );

    // And half a frame, quiet, then the rest.
    let frame = client_frame(true, BINARY, &big);
    let (first, rest) = frame.split_at(1000);
    tcp.write_all(first).unwrap();
    thread::sleep(quiet);
    tcp.write_all(rest).unwrap();
    assert_eq!(
        outcome(tcp.try_clone().unwrap()),
        Outcome::Echoed(big.len())
    );
}

#[test]
fn a_connection_reading_in_bigger_steps_after_a_big_message_loses_nothing() {
    let server = Wsecho::start(&["--greeting-delay", "off"]);
    let mut tcp = raw_websocket(server.addr);
    let small = vec![0x11; 32];
    let medium = vec![0x22; 5000];
    let large = vec![0x33; 20_000];

    // A small message and the start of a bigger one in one write, the rest a moment later: the
    // server first reads in small steps, and must not change them with half a frame in hand.
    let bigger = client_frame(true, BINARY, &medium);
    let (first, rest) = bigger.split_at(1000);
    let mut start = client_frame(true, BINARY, &small);
    start.extend_from_slice(first);
    tcp.write_all(&start).unwrap();
    assert_eq!(read_server_frame(&mut tcp), (true, BINARY, small.clone()));
    thread::sleep(Duration::from_millis(100));
    tcp.write_all(rest).unwrap();
    assert_eq!(read_server_frame(&mut tcp), (true, BINARY, medium.clone()));

    // Then messages of every size back to back, in one write: each comes back whole, in order.
    let sizes = [&small, &large, &small, &medium, &large];
    let burst: Vec<u8> = sizes
        .iter()
        .flat_map(|payload| client_frame(true, BINARY, payload))
        .collect();
    tcp.write_all(&burst).unwrap();
    for payload in sizes {
        assert_eq!(read_server_frame(&mut tcp), (true, BINARY, payload.clone()));
    }
}

/// The server's environment, as /proc shows it for its process.
#[cfg(target_env = "gnu")]
fn environment(server: &Wsecho) -> Vec<String> {
    let environ = std::fs::read(format!("/proc/{}/environ", server.pid())).unwrap();
    environ
        .split(|&byte| byte == 0)
        .map(|pair| String::from_utf8_lossy(pair).into_owned())
        .collect()
}

/// glibc keeps a cache of freed memory in every thread, which a thread per idle client pays for
/// with kilobytes each. The deployment turns it off (deploy/wsecho.service, the image); wsecho
/// started without that runs as it was started, in its own process, and says at start what the
/// cache costs and how to turn it off.
#[cfg(target_env = "gnu")]
#[test]
fn without_the_deployments_setting_the_server_says_what_the_cache_costs() {
    let server = Wsecho::start_with_env(&[("GLIBC_TUNABLES", "glibc.malloc.arena_max=4")], &[]);
    server.wait_for_log(&[
        "glibc's per-thread allocation cache: on (glibc's default)",
        "GLIBC_TUNABLES=glibc.malloc.tcache_count=0 to turn it off",
    ]);
    // Nothing was added to its environment: it did not run itself again.
    let environment = environment(&server).join("\n");
    assert!(!environment.contains("tcache_count"), "{environment}");
    // Named for its binary: `ps`, `pkill wsecho` and the journal see it.
    let name = std::fs::read_to_string(format!("/proc/{}/comm", server.pid())).unwrap();
    assert_eq!(name.trim_end(), "wsecho");
    let mut ws = server.connect();
    ws.send(Message::text("still the server")).unwrap();
    assert_eq!(next_data(&mut ws), Message::text("still the server"));
}

/// As deployed, the cache is off, and the log says so.
#[cfg(target_env = "gnu")]
#[test]
fn as_deployed_the_cache_is_off() {
    let server = Wsecho::start(&[]);
    server.wait_for_log(&["glibc's per-thread allocation cache: off"]);
}

/// A deployment that sets the cache's size itself keeps it.
#[cfg(target_env = "gnu")]
#[test]
fn a_deployments_own_cache_size_is_kept() {
    let server = Wsecho::start_with_env(&[("GLIBC_TUNABLES", "glibc.malloc.tcache_count=7")], &[]);
    server.wait_for_log(&["glibc's per-thread allocation cache: on (7 chunks of each size"]);
    assert!(
        environment(&server).contains(&"GLIBC_TUNABLES=glibc.malloc.tcache_count=7".into()),
        "{:?}",
        environment(&server)
    );
}
