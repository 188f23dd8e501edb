//! A panic in one connection's thread is logged, and everyone else is served as before.
//! The server runs in-process here, so the test can set the hidden panic hook and read the log.

mod support;

use std::sync::Mutex;
use std::thread;

use log::{Log, Metadata, Record};
use support::{connect, next_data};
use tungstenite::Message;
use wsecho::{Config, Server};

/// Keeps every log line, for the assertions below.
struct Capture(Mutex<Vec<String>>);

impl Log for Capture {
    fn enabled(&self, _: &Metadata) -> bool {
        true
    }
    fn log(&self, record: &Record) {
        self.0
            .lock()
            .unwrap()
            .push(format!("[{}] {}", record.level(), record.args()));
    }
    fn flush(&self) {}
}

static LOG: Capture = Capture(Mutex::new(Vec::new()));

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

    let log = LOG.0.lock().unwrap().join("\n");
    assert!(log.contains("connection thread panicked"), "{log}");
    assert!(log.contains("server goes on"), "{log}");

    stop.shutdown();
    let summary = running.join().unwrap().unwrap();
    assert_eq!(summary.connections, 3);
}
