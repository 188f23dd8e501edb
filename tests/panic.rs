//! A panic in one connection's thread is logged, and everyone else is served as before.
//! The server runs in-process here, so the test can set the hidden panic hook and read the log.

mod support;

use std::sync::{Condvar, Mutex};
use std::thread;
use std::time::Duration;

use log::{Log, Metadata, Record};
use support::{connect, next_data};
use tungstenite::Message;
use wsecho::{Config, Server};

/// Keeps every log line, for the assertions below, and signals each new one.
struct Capture(Mutex<Vec<String>>, Condvar);

impl Capture {
    /// The log so far, once a line holds `needle` (the panicking thread logs after its
    /// socket is gone, so the other clients may be served before it does).
    fn wait_for(&self, needle: &str) -> String {
        let lines = self.0.lock().unwrap();
        let (lines, _) = self
            .1
            .wait_timeout_while(lines, Duration::from_secs(30), |lines| {
                !lines.iter().any(|line| line.contains(needle))
            })
            .unwrap();
        lines.join("\n")
    }
}

impl Log for Capture {
    fn enabled(&self, _: &Metadata) -> bool {
        true
    }
    fn log(&self, record: &Record) {
        self.0
            .lock()
            .unwrap()
            .push(format!("[{}] {}", record.level(), record.args()));
        self.1.notify_all();
    }
    fn flush(&self) {}
}

static LOG: Capture = Capture(Mutex::new(Vec::new()), Condvar::new());

#[test]
fn a_panicking_connection_is_logged_and_the_server_goes_on() {
    log::set_logger(&LOG).unwrap();
    log::set_max_level(log::LevelFilter::Info);
    let config = Config {
        port: 0,
        greeting: None,
        panic_on_message: Some("boom".into()),
        close_timeout: std::time::Duration::from_millis(100),
        ..Config::default()
    };
    let server = Server::bind(config).unwrap();
    let url = server.url();
    let stop = server.shutdown_handle();
    let running = thread::spawn(move || server.run());

    let mut bystander = connect(&url);
    let mut victim = connect(&url);
    victim.send(Message::text("boom")).unwrap();
    // The victim's connection is gone: its thread unwound and dropped the socket.
    assert!(victim.read().is_err());

    bystander.send(Message::text("still here?")).unwrap();
    assert_eq!(next_data(&mut bystander), Message::text("still here?"));
    let mut newcomer = connect(&url);
    newcomer.send(Message::text("and me")).unwrap();
    assert_eq!(next_data(&mut newcomer), Message::text("and me"));

    let log = LOG.wait_for("connection thread panicked");
    assert!(log.contains("connection thread panicked"), "{log}");
    assert!(log.contains("server goes on"), "{log}");

    stop.shutdown();
    let summary = running.join().unwrap().unwrap();
    assert_eq!(summary.connections, 3);
}
