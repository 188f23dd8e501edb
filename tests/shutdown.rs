//! Stopping the server: Ctrl-C or SIGTERM closes every client properly; a second Ctrl-C
//! does not wait.

mod support;

use support::{Wsecho, connect, expect_close, raw_websocket, read_server_frame};

#[test]
fn sigterm_closes_every_client_with_1001_and_exits_0() {
    let mut server = Wsecho::start(&["--greeting-delay", "off"]);
    let mut clients: Vec<_> = (0..3).map(|_| connect(&server.url)).collect();
    for _ in &clients {
        server.wait_for_log(&["connected: path /"]);
    }
    server.signal("TERM");
    for ws in &mut clients {
        // tungstenite answers the server's Close while reading it, as browsers do.
        assert_eq!(expect_close(ws), (1001, "server shutting down".to_string()));
    }
    let status = server.wait_exit();
    assert_eq!(status.code(), Some(0), "log:\n{}", server.log());
    server.wait_for_log(&["shutting down: closing 3 connections"]);
    server.wait_for_log(&[
        "stopped: served 3 connections",
        "closed 3 connections open at shutdown, 0 still closing",
    ]);
    // Every client answered the Close: none waited for the close timeout.
    assert!(!server.log().contains("no reply"), "{}", server.log());
}

#[test]
fn ctrl_c_with_nobody_connected_exits_0() {
    let mut server = Wsecho::start(&[]);
    server.signal("INT");
    assert_eq!(server.wait_exit().code(), Some(0));
    server.wait_for_log(&["stopped: served 0 connections"]);
}

#[test]
fn a_client_that_never_answers_close_is_dropped_after_the_close_timeout() {
    let mut server = Wsecho::start(&["--greeting-delay", "off", "--close-timeout", "300ms"]);
    let mut silent = raw_websocket(server.addr);
    server.wait_for_log(&["connected: path /"]);
    server.signal("TERM");
    let (_, opcode, payload) = read_server_frame(&mut silent);
    assert_eq!((opcode, &payload[..2]), (0x8, &1001u16.to_be_bytes()[..]));
    assert_eq!(server.wait_exit().code(), Some(0));
    server.wait_for_log(&["no reply to the server's Close in time"]);
}

#[test]
fn a_second_ctrl_c_exits_at_once() {
    // A long close timeout and a client that never replies: only the second Ctrl-C ends it.
    let mut server = Wsecho::start(&["--greeting-delay", "off", "--close-timeout", "10m"]);
    let _silent = raw_websocket(server.addr);
    server.wait_for_log(&["connected: path /"]);
    server.signal("INT");
    server.wait_for_log(&["shutting down: closing 1 connection"]);
    // A person's second press comes well after the first was acknowledged; signals that
    // arrive together are one request (see the next test).
    std::thread::sleep(std::time::Duration::from_millis(500));
    server.signal("INT");
    assert_eq!(server.wait_exit().code(), Some(130));
}

#[test]
fn sigterm_sent_twice_at_once_is_one_request_and_shuts_down_gracefully() {
    // As `timeout` does: to the process, and to its group, at the same moment.
    let mut server = Wsecho::start(&["--greeting-delay", "off", "--close-timeout", "1s"]);
    let mut silent = raw_websocket(server.addr);
    server.wait_for_log(&["connected: path /"]);
    let pid = server.pid().to_string();
    let both = std::process::Command::new("sh")
        .args(["-c", "kill -s TERM $0; kill -s TERM $0", &pid])
        .status()
        .unwrap();
    assert!(both.success());
    let (_, opcode, _) = read_server_frame(&mut silent);
    assert_eq!(opcode, 0x8, "the client got the server's Close");
    assert_eq!(server.wait_exit().code(), Some(0), "log:\n{}", server.log());
    assert!(
        !server.log().contains("exiting at once"),
        "{}",
        server.log()
    );
}

#[test]
fn sigterm_right_after_the_ready_line_is_a_graceful_shutdown() {
    // The handler is installed before the ready line, so a script that waits for the line and
    // signals at once never kills the server by the signal's default action.
    for _ in 0..10 {
        let mut server = Wsecho::start(&[]);
        server.signal("TERM");
        let status = server.wait_exit();
        assert_eq!(status.code(), Some(0), "{status:?}, log:\n{}", server.log());
    }
}

/// A connection that is open but has sent no request does not hold the shutdown up for its
/// handshake timeout: under socket activation the next process starts only once this one
/// has exited, and every client waits meanwhile.
#[test]
fn a_client_that_never_sends_its_request_does_not_hold_the_shutdown_up() {
    // Shutdown waits up to twice the close timeout for connections: 20 s here.
    let mut server = Wsecho::start(&["--handshake-timeout", "60s", "--close-timeout", "10s"]);
    let idle = support::raw(server.addr);
    server.wait_for_log(&["listening on"]);
    let asked = std::time::Instant::now();
    server.signal("TERM");
    assert!(server.wait_exit().success());
    assert!(
        asked.elapsed() < std::time::Duration::from_secs(10),
        "waited {:?} for a request that was never coming",
        asked.elapsed()
    );
    drop(idle);
}
