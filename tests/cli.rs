//! The command line as a user meets it: the ready line, flags, and one-line errors.

mod support;

use std::net::TcpListener;
use std::process::{Command, Output};

use support::{Wsecho, connect};
use tungstenite::Message;

fn wsecho(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wsecho"))
        .args(args)
        .output()
        .unwrap()
}

/// Asserts a failed run printed exactly one line, containing `expected`, and nothing else.
fn assert_one_line_error(output: &Output, expected: &str) {
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line, got:\n{stderr}");
    assert!(
        stderr.contains(expected),
        "{stderr:?} should contain {expected:?}"
    );
    assert!(output.stdout.is_empty());
}

#[test]
fn bad_flag_values_are_one_line_errors() {
    let output = wsecho(&["--port", "abc"]);
    assert_one_line_error(&output, "invalid value 'abc' for '--port <PORT>'");
    let output = wsecho(&["--greeting-delay", "soon"]);
    assert_one_line_error(&output, "expected a duration like 2s, 500ms or 1m");
    let output = wsecho(&["--max-message-size", "huge"]);
    assert_one_line_error(&output, "expected a size like 16MiB");
    let output = wsecho(&["--log-level", "loud"]);
    assert_one_line_error(&output, "invalid value 'loud' for '--log-level <LEVEL>'");
    let output = wsecho(&["--no-such-flag"]);
    assert_one_line_error(&output, "unexpected argument '--no-such-flag'");
}

#[test]
fn an_error_line_still_says_what_would_be_accepted() {
    let output = wsecho(&["--log-level", "loud"]);
    assert_one_line_error(
        &output,
        "[possible values: off, error, warn, info, debug, trace]; see --help",
    );
    let output = wsecho(&["--frobnicate"]);
    assert_one_line_error(&output, "unexpected argument '--frobnicate' found");
    assert_one_line_error(&output, "; see --help");
    let output = wsecho(&["--max-connections", "0"]);
    assert_one_line_error(&output, "expected a whole number above zero, got \"0\"");
    let output = wsecho(&["--close-timeout", "off"]);
    assert_one_line_error(
        &output,
        "expected a duration like 2s, 500ms or 1m; this one cannot be off",
    );
    let output = wsecho(&["--send-timeout", "soonish"]);
    assert_one_line_error(
        &output,
        "expected a duration like 2s, 500ms or 1m, not \"soonish\"",
    );
}

#[test]
fn a_port_in_use_is_a_one_line_error() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let output = wsecho(&["--host", "127.0.0.1", "--port", &port]);
    assert_one_line_error(&output, &format!("cannot listen on 127.0.0.1:{port}: "));
}

#[test]
fn an_unwritable_log_file_is_a_one_line_error() {
    let output = wsecho(&["--port", "0", "--log-file", "/nonexistent-dir/wsecho.log"]);
    assert_one_line_error(&output, "cannot open log file /nonexistent-dir/wsecho.log");
}

#[test]
fn help_lists_every_option_with_its_default() {
    let output = wsecho(&["--help"]);
    assert!(output.status.success());
    // Compare with the line wrapping undone.
    let help = String::from_utf8(output.stdout).unwrap();
    let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
    for option in [
        "--host <HOST>",
        "[default: 127.0.0.1]",
        "--port <PORT>",
        "[env: PORT=",
        "[default: 3000]",
        "--broadcast",
        "--greeting <TEXT>",
        "--greeting-delay <DURATION>",
        "[default: 2s]",
        "--no-demo-page",
        "--no-metrics",
        "--no-test-controls",
        "--tls-cert <PEM>",
        "[env: WSECHO_TLS_CERT=",
        "--tls-key <PEM>",
        "[env: WSECHO_TLS_KEY=",
        "--subprotocol",
        "--allow-origin",
        "--handshake-timeout",
        "--max-connections",
        "--max-connections-per-ip <N>",
        "--max-handshakes-per-ip <N>",
        "[default: 64]",
        "--max-memory <SIZE>",
        "[default: half the machine's memory]",
        "--max-message-size",
        "[default: 64MiB]",
        "--max-frame-size",
        "[default: 16MiB]",
        "--max-backlog",
        "--send-timeout <DURATION>",
        "[default: 10s]",
        "--ping-interval",
        "[default: 20s]",
        "--idle-timeout",
        "[default: 30s]",
        "--close-timeout",
        "[default: 5s]",
        "--redis <URL>",
        "[env: REDIS_URL]",
        "--redis-channel <NAME>",
        "[default: wsecho]",
        "--log-level",
        "[default: info]",
        "--log-file",
    ] {
        assert!(help.contains(option), "--help lacks {option}:\n{help}");
    }
}

#[test]
fn version_prints_the_name_and_the_cargo_version() {
    for flag in ["--version", "-V"] {
        let output = wsecho(&[flag]);
        assert_eq!(output.status.code(), Some(0), "{flag}");
        let stdout = String::from_utf8(output.stdout).unwrap();
        let expected = format!("wsecho {}\n", env!("CARGO_PKG_VERSION"));
        assert_eq!(stdout, expected, "{flag}");
        assert!(output.stderr.is_empty(), "{flag}");
    }
}

#[test]
fn port_zero_picks_a_free_port_and_the_log_and_ready_line_say_which() {
    let server = Wsecho::start(&[]);
    let port = server.addr.port();
    assert_ne!(port, 0);
    server.wait_for_log(&[&format!("listening on ws://127.0.0.1:{port} (echo mode")]);
    server.wait_for_log(&["room for", "connections"]);
}

#[test]
fn the_port_environment_variable_sets_the_port() {
    let free = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free.local_addr().unwrap().port();
    drop(free);
    let mut child = Command::new(env!("CARGO_BIN_EXE_wsecho"))
        .args(["--host", "127.0.0.1", "--greeting-delay", "off"])
        .env("PORT", port.to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), format!("ws://127.0.0.1:{port}"));
    let mut ws = connect(line.trim());
    ws.send(Message::text("via PORT")).unwrap();
    assert_eq!(support::next_data(&mut ws), Message::text("via PORT"));
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn the_log_file_gets_the_same_lines_and_log_level_off_silences_the_terminal() {
    let dir = std::env::temp_dir().join(format!("wsecho-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("wsecho.log");
    let server = Wsecho::start(&["--log-file", path.to_str().unwrap(), "--log-level", "info"]);
    drop(connect(&server.url));
    let line = server.wait_for_log(&["disconnected"]);
    let file = std::fs::read_to_string(&path).unwrap();
    assert!(file.contains("listening on ws://127.0.0.1:"), "{file}");
    let peer = line
        .split_whitespace()
        .find(|w| w.starts_with("127.0.0.1:"))
        .unwrap();
    assert!(file.contains(&format!("{peer} connected")), "{file}");
    std::fs::remove_dir_all(&dir).unwrap();

    let mut quiet = Wsecho::start(&["--log-level", "off"]);
    drop(connect(&quiet.url));
    quiet.signal("TERM");
    assert!(quiet.wait_exit().success());
    assert_eq!(
        quiet.log(),
        "",
        "nothing on the terminal but the ready line on stdout"
    );
}
