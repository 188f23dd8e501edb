//! The memory ceiling (`--max-memory`): many clients each streaming a large message cannot
//! take the server past it; small messages keep flowing; every big message completes or gets
//! 1013, and the process survives.

// These tests read the server's memory and CPU time from /proc, and raise limits with the
// shell's ulimit: Linux only (the README's Platforms section says what runs where).
#![cfg(target_os = "linux")]

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::thread;

use support::{
    Wsecho, client_frame, close_code, connect, next_data, proc_status_kib, raw_websocket,
    try_read_server_frame,
};
use tungstenite::Message;

const BINARY: u8 = 0x2;
const CONTINUATION: u8 = 0x0;
const CLOSE: u8 = 0x8;

/// The ceiling the server runs with in these tests.
const CEILING_MIB: u64 = 64;

/// What the server may hold beyond the ceiling, documented in the README: its own baseline
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
