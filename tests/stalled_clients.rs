//! Ending a client that stopped reading frees everything at once: its socket is reset, not
//! closed with a FIN that would wait in FIN-WAIT-1 behind the bytes it never took.
//!
//! Linux only: the sockets are read with iproute2's `ss` (scripts/need.sh ss iproute2).

#![cfg(target_os = "linux")]

mod support;

use std::net::TcpStream;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use support::{Wsecho, raw_websocket};
use tungstenite::Message;

/// Listeners that never read.
const STALLED: usize = 4;

/// What `ss` prints for these arguments.
fn ss(args: &[&str]) -> String {
    let output = Command::new("ss").args(args).output().unwrap_or_else(|e| {
        panic!(
            "cannot run ss ({e}): install it with scripts/need.sh ss iproute2 (Debian's \
             iproute2 package; scripts/test.sh does it)"
        )
    });
    assert!(output.status.success(), "ss {args:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The server's side of a client's connection in `ss -tn` output: lines whose peer is
/// `127.0.0.1:PORT` (the client's local port). With `-m`, each socket's line is followed by
/// its memory line, which is kept with it.
fn server_side(listing: &str, port: u16) -> Vec<String> {
    let peer = format!("127.0.0.1:{port}");
    let lines: Vec<&str> = listing.lines().collect();
    let mut found = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() >= 4 && fields[fields.len() - 1] == peer {
            let memory = lines.get(i + 1).filter(|next| next.contains("skmem"));
            found.push(format!("{line} {}", memory.copied().unwrap_or("")));
        }
    }
    found
}

#[test]
fn stalled_listeners_are_reset_and_leave_nothing_in_the_kernel() {
    let server = Wsecho::start(&[
        "--broadcast",
        "--greeting-delay",
        "off",
        "--send-timeout",
        "1s",
        "--close-timeout",
        "1s",
        "--max-backlog",
        "256KiB",
    ]);
    let stalled: Vec<TcpStream> = (0..STALLED).map(|_| raw_websocket(server.addr)).collect();
    let ports: Vec<u16> = stalled
        .iter()
        .map(|tcp| tcp.local_addr().unwrap().port())
        .collect();

    // A sender that reads its own copies, until the stalled listeners are gone.
    let done = Arc::new(AtomicBool::new(false));
    let sender = {
        let mut ws = server.connect();
        let done = Arc::clone(&done);
        thread::spawn(move || {
            let message = Message::binary(vec![7u8; 64 * 1024]);
            while !done.load(Ordering::SeqCst) {
                ws.send(message.clone()).unwrap();
                assert_eq!(support::next_data(&mut ws), message);
            }
        })
    };

    // While they stall: what the kernel holds for each (skmem's t: bytes in its send queue).
    server.wait_for_log(&["too slow"]);
    let during = ss(&["-tnm", "state", "established"]);
    for &port in &ports {
        eprintln!("stalled, server side: {:?}", server_side(&during, port));
    }

    for &port in &ports {
        server.wait_for_log(&[&format!("127.0.0.1:{port} disconnected"), "too slow"]);
    }
    done.store(true, Ordering::SeqCst);
    sender.join().unwrap();

    // None of their sockets waits in FIN-WAIT-1, and none holds bytes to send.
    let closing = ss(&["-tn", "state", "fin-wait-1"]);
    let memory = ss(&["-tnm"]);
    for &port in &ports {
        assert!(
            server_side(&closing, port).is_empty(),
            "port {port} in FIN-WAIT-1:\n{closing}"
        );
        for line in server_side(&memory, port) {
            let send_queue: u64 = line.split_whitespace().nth(2).unwrap().parse().unwrap();
            assert_eq!(send_queue, 0, "port {port}: {line}");
        }
    }
    // The stalled clients see a reset, not an orderly end.
    let mut reset = 0;
    for mut tcp in stalled {
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut sink = vec![0u8; 1 << 20];
        loop {
            match std::io::Read::read(&mut tcp, &mut sink) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    reset += 1;
                    break;
                }
                Err(e) => panic!("{e}"),
            }
        }
    }
    assert_eq!(reset, STALLED);
}
