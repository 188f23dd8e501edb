//! Lesson 1 of 4: the tutorial's echo server, in the shape wsecho keeps to the end.
//!
//! A std `TcpListener`, one OS thread per client, `tungstenite::accept` for the opening
//! handshake, then a blocking loop: read a message, write it back to the sender. Ping/pong and
//! the closing handshake are tungstenite's job. It is the classic 40-line Node tutorial minus its
//! greeting and its broadcast, and it is sound: a blocked thread costs nothing while it waits.
//!
//! The problem it leaves for lesson 2: the thread spends its life blocked in `read`, so it can
//! only write in answer to its client. Nothing else (a timer, another client) can reach it.
//!
//! On Ctrl-C the process dies, and clients see the connection end with no Close frame (1006):
//! every thread is blocked in `read` or `accept`, and none can write into another's socket
//! safely (a Close written there could land in the middle of that thread's echo).
//!
//! Run: `cargo run --example 01_echo -- 3000`, then `websocat ws://127.0.0.1:3000`.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::thread;

use log::{info, warn};
use simplelog::{Config, LevelFilter, WriteLogger};
use tungstenite::Message;

/// The port when none is given on the command line: the tutorial's. 0 asks the system for any
/// free port (the tests do that).
const DEFAULT_PORT: u16 = 3000;

fn main() -> std::io::Result<()> {
    // The log goes to stderr, so that stdout carries one line only: where to connect.
    WriteLogger::init(LevelFilter::Info, Config::default(), std::io::stderr()).unwrap();
    let arg = std::env::args().nth(1);
    let port = arg.map_or(DEFAULT_PORT, |a| a.parse().expect("PORT: a number"));
    let listener = TcpListener::bind(("127.0.0.1", port))?;
    // The real address, so that port 0 prints the port the system chose; flushed at once,
    // since whoever started us (a script, a test) may be waiting for this line.
    println!("ws://{}", listener.local_addr()?);
    std::io::stdout().flush()?;

    for stream in listener.incoming() {
        match stream {
            // One thread per client: it may block as long as it likes without holding up others.
            Ok(stream) => {
                thread::spawn(move || serve(stream));
            }
            Err(e) => warn!("accept failed: {e}"),
        }
    }
    Ok(())
}

/// One client, from the opening handshake to the end of the connection.
fn serve(stream: TcpStream) {
    let Ok(peer) = stream.peer_addr() else { return };
    let mut ws = match tungstenite::accept(stream) {
        Ok(ws) => ws,
        Err(e) => return warn!("{peer}: no WebSocket handshake: {e}"),
    };
    info!("{peer} connected");
    let ended = loop {
        // Blocks until the client sends a whole message. While it waits, the thread sleeps.
        match ws.read() {
            // `send` is write + flush: the echo leaves now, not when some buffer fills.
            Ok(message @ (Message::Text(_) | Message::Binary(_))) => {
                if let Err(e) = ws.send(message) {
                    break e;
                }
            }
            // A ping: tungstenite queued the pong and sends it at the next `read` or `send`.
            // A close: tungstenite queued the answer too; the next `read` sends it and then
            // returns `ConnectionClosed`.
            Ok(_) => {}
            Err(e) => break e,
        }
    };
    // `ConnectionClosed` after a closing handshake; anything else is how the connection broke.
    info!("{peer} closed ({ended})");
}
