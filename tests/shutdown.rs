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
        "closed 3 open connections, 0 still closing",
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
    server.wait_for_log(&["shutting down: closing 1 connections"]);
    server.signal("INT");
    assert_eq!(server.wait_exit().code(), Some(130));
}
