//! Lesson 2 of 4: the tutorial's greeting, "{time} hello client !!!", 2 s after connecting.
//!
//! What it adds: ONE timer thread for all clients (not a sleeping thread per greeting). Each
//! connection registers (due time, a `Sender` into its own inbox); the timer sleeps until the
//! earliest due time and sends the greeting into that inbox. The timer cannot write the socket
//! itself: the `WebSocket` belongs to the connection's thread, which is inside `read` with it.
//!
//! And that thread is stuck there: lesson 1's `read` blocks until the client speaks, so a quiet
//! client would get its greeting only with the echo of its next message (comment out the
//! `set_read_timeout` line below to watch it happen). The first fix everyone reaches for is
//! here: a read timeout that ticks, and a look at the inbox after every tick.
//!
//! The problem it leaves, kept by lesson 3 and solved by lesson 4: the tick; see [`TICK`].
//!
//! On Ctrl-C the process dies, and clients see the connection end with no Close frame (1006):
//! the threads are blocked in `read` or `accept`, none can write into another's socket safely,
//! and no thread knows every inbox (the timer drops each one once it has greeted).
//!
//! Run: `cargo run --example 02_greeting -- 3000`, then `websocat ws://127.0.0.1:3000`.

use std::io::ErrorKind::{TimedOut, WouldBlock};
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use log::{info, warn};
use simplelog::{Config, LevelFilter, WriteLogger};
use tungstenite::{Error, Message};

/// The port when none is given on the command line; 0 asks the system for any free port.
const DEFAULT_PORT: u16 = 3000;

/// How long after connecting a client is greeted: the tutorial's `setTimeout(…, 2000)`.
const GREETING_DELAY: Duration = Duration::from_secs(2);

/// How often a connection's thread gives up waiting for its client, to look at its inbox.
///
/// The price of the fix, paid by every connection, all the time:
/// - an idle client wakes its thread 1 s / 50 ms = 20 times a second, forever: CPU time and
///   power (the machine never sleeps deeply) spent finding nothing, times the number of clients;
/// - a greeting waits up to one tick in the inbox: latency up to 50 ms;
/// - the timeout can fire in the middle of a frame. Code that reads frames by hand would lose
///   its place; tungstenite keeps the partial frame in its buffer and goes on at the next `read`,
///   so it is safe here, but it is a hazard of the pattern.
///
/// A shorter tick buys latency with more wake-ups; no value gives both. Lesson 4 removes it.
const TICK: Duration = Duration::from_millis(50);

/// What a connection asks the timer for: at this time, send a greeting into this inbox.
type Greeting = (Instant, Sender<String>);

fn main() -> std::io::Result<()> {
    WriteLogger::init(LevelFilter::Info, Config::default(), std::io::stderr()).unwrap();
    let arg = std::env::args().nth(1);
    let port = arg.map_or(DEFAULT_PORT, |a| a.parse().expect("PORT: a number"));
    let listener = TcpListener::bind(("127.0.0.1", port))?;
    println!("ws://{}", listener.local_addr()?);
    std::io::stdout().flush()?;

    let (timer, requests) = crossbeam_channel::unbounded();
    thread::spawn(move || run_timer(requests));
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let timer = timer.clone();
        thread::spawn(move || serve(stream, timer));
    }
    Ok(())
}

/// The one timer thread: sleeps until the earliest greeting is due (or, with none pending, until
/// a request comes), then sends every greeting whose time has come.
fn run_timer(requests: Receiver<Greeting>) {
    let mut pending: Vec<Greeting> = Vec::new();
    loop {
        let next = match pending.iter().map(|(due, _)| *due).min() {
            Some(due) => requests.recv_deadline(due),
            None => requests.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match next {
            Ok(greeting) => pending.push(greeting),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let now = Instant::now();
        for (_, inbox) in pending.extract_if(.., |(due, _)| *due <= now) {
            // A client that has left has dropped its inbox: the send fails, and that is fine.
            let _ = inbox.send(greeting_text());
        }
    }
}

/// The tutorial's greeting. The time is UTC, computed by hand to need nothing but std.
fn greeting_text() -> String {
    let since_epoch = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH);
    let s = since_epoch.map_or(0, |d| d.as_secs()) % 86_400;
    let (h, m, s) = (s / 3600, s / 60 % 60, s % 60);
    format!("{h:02}:{m:02}:{s:02} hello client !!!")
}

/// One client: echo, and whatever the inbox holds, written at the next tick.
fn serve(stream: TcpStream, timer: Sender<Greeting>) {
    let Ok(peer) = stream.peer_addr() else { return };
    let mut ws = match tungstenite::accept(stream) {
        Ok(ws) => ws,
        Err(e) => return warn!("{peer}: no WebSocket handshake: {e}"),
    };
    info!("{peer} connected");
    let (to_me, inbox) = crossbeam_channel::unbounded();
    let due = Instant::now() + GREETING_DELAY;
    timer.send((due, to_me)).unwrap();
    // The fix. Without it `read` blocks until the client speaks, and the greeting waits with it.
    ws.get_ref().set_read_timeout(Some(TICK)).unwrap();
    let ended = 'connection: loop {
        match ws.read() {
            Ok(message @ (Message::Text(_) | Message::Binary(_))) => {
                if let Err(e) = ws.send(message) {
                    break e;
                }
            }
            Ok(_) => {}
            // A tick: the client said nothing for 50 ms (WouldBlock on Unix, TimedOut on
            // Windows). Not an error: it is our chance to look at the inbox.
            Err(Error::Io(e)) if matches!(e.kind(), WouldBlock | TimedOut) => {}
            Err(e) => break e,
        }
        while let Ok(text) = inbox.try_recv() {
            if let Err(e) = ws.send(Message::text(text)) {
                break 'connection e;
            }
        }
    };
    info!("{peer} closed ({ended})");
}
