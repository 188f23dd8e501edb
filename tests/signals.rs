//! The Linux backend wakes a connection's thread with `SIGURG`. Every thread of the server
//! blocks that signal from its birth, and only `ppoll` unblocks it while it sleeps, so a
//! `SIGURG` sent to the whole process can only end a `ppoll`: it never interrupts the greeting
//! timer, the signal thread, a parked spare or any other thread in another system call.

// The Linux backend's signal, read from /proc; the portable backend has no signal.
#![cfg(all(target_os = "linux", not(feature = "portable-poll")))]

mod support;

use support::Wsecho;
use tungstenite::Message;

/// SIGURG's number on Linux.
const SIGURG: u32 = 23;

/// ppoll's system call number, as /proc/PID/task/TID/syscall shows it.
#[cfg(target_arch = "x86_64")]
const PPOLL: &str = "271";
#[cfg(target_arch = "aarch64")]
const PPOLL: &str = "73";

/// Each thread of `pid`: its name, whether it blocks `signal`, and whether it sleeps in
/// `ppoll` right now (which unblocks the signal while it sleeps).
fn threads(pid: u32, signal: u32) -> Vec<(String, bool, bool)> {
    let mut found = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let Ok(status) = std::fs::read_to_string(dir.join("status")) else {
            continue; // it ended meanwhile
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .map(str::trim)
                .unwrap_or_default()
                .to_string()
        };
        let blocked = u64::from_str_radix(&field("SigBlk:"), 16).unwrap();
        let syscall = std::fs::read_to_string(dir.join("syscall")).unwrap_or_default();
        let in_ppoll = syscall.split_whitespace().next() == Some(PPOLL);
        found.push((field("Name:"), blocked & (1 << (signal - 1)) != 0, in_ppoll));
    }
    found
}

#[test]
fn every_thread_blocks_the_wake_signal_outside_ppoll() {
    let server = Wsecho::start(&["--broadcast", "--greeting-delay", "1h"]);
    let mut clients: Vec<_> = (0..3).map(|_| server.connect()).collect();
    for ws in &mut clients {
        ws.send(Message::text("here")).unwrap();
    }
    for ws in &mut clients {
        for _ in 0..3 {
            support::next_data(ws);
        }
    }
    let threads = threads(server.pid(), SIGURG);
    assert!(threads.len() > 5, "{threads:?}");
    let exposed: Vec<_> = threads
        .iter()
        .filter(|(_, blocked, in_ppoll)| !blocked && !in_ppoll)
        .collect();
    assert!(
        exposed.is_empty(),
        "threads that a process-wide SIGURG could interrupt: {exposed:?}"
    );
    // And a process-wide one does no harm.
    for _ in 0..20 {
        let status = std::process::Command::new("kill")
            .args(["-s", "URG", &server.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
    clients[0].send(Message::text("still")).unwrap();
    for ws in &mut clients {
        assert_eq!(support::next_data(ws), Message::text("still"));
    }
}
