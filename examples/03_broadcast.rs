//! Lesson 3 of 4: the tutorial's closing tip, "keep an array of connections to broadcast to
//! everyone". Every message goes to every client, the sender included.
//!
//! It adds one shared list of every client's socket, `Arc<Mutex<Vec<…>>>`, to lesson 2 (whose
//! greeting and tick it keeps). The thread that reads a message writes it into every socket
//! itself, under the list's lock. The problem it leaves for lesson 4: one slow client holds
//! everyone up ([`broadcast`]).
//!
//! On Ctrl-C the process dies, and clients see the connection end with no Close frame (1006):
//! the list reaches every socket but not the thread blocked in `read` on it, whose `WebSocket`,
//! not knowing of a Close written behind its back, would go on sending after it.
//!
//! Run: `cargo run --example 03_broadcast -- 3000`, then `websocat ws://127.0.0.1:3000` twice.

use std::io::ErrorKind::{TimedOut, WouldBlock};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use log::{info, warn};
use simplelog::{Config, LevelFilter, WriteLogger};
use tungstenite::protocol::frame::{Frame, coding::Data, coding::OpCode};
use tungstenite::{Error, Message};

/// The port when none is given on the command line; 0 asks the system for any free port.
const DEFAULT_PORT: u16 = 3000;
/// How long after connecting a client is greeted, as in lesson 2.
const GREETING_DELAY: Duration = Duration::from_secs(2);
/// Lesson 2's tick, kept: 20 wake-ups a second for every idle client, for the greeting's sake.
const TICK: Duration = Duration::from_millis(50);

/// How long a write into one client's socket may block before that client is dropped as too
/// slow. The lock is held all along, so EVERY other client waits as long. It bounds each write
/// call, not the frame: one that only partly fits takes two calls (so twice this), and a client
/// that reads a trickle stretches it further. Shorter drops clients on slow links.
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// The tutorial's array of connections: each client's address and a clone of its socket.
type Clients = Arc<Mutex<Vec<(SocketAddr, TcpStream)>>>;

/// What a connection asks the timer for: at this time, send a greeting into this inbox.
type Greeting = (Instant, Sender<String>);

fn main() -> std::io::Result<()> {
    WriteLogger::init(LevelFilter::Info, Config::default(), std::io::stderr()).unwrap();
    let arg = std::env::args().nth(1);
    let port = arg.map_or(DEFAULT_PORT, |a| a.parse().expect("PORT: a number"));
    let listener = TcpListener::bind(("127.0.0.1", port))?;
    println!("ws://{}", listener.local_addr()?);
    std::io::stdout().flush()?;

    let clients = Clients::default();
    let (timer, requests) = crossbeam_channel::unbounded();
    thread::spawn(move || run_timer(requests));
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let (clients, timer) = (clients.clone(), timer.clone());
        thread::spawn(move || serve(stream, clients, timer));
    }
    Ok(())
}

/// Lesson 2's timer thread, unchanged.
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
            let _ = inbox.send(greeting_text());
        }
    }
}

/// "HH:MM:SS hello client !!!", the time in UTC.
fn greeting_text() -> String {
    let since_epoch = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH);
    let s = since_epoch.map_or(0, |d| d.as_secs()) % 86_400;
    let (h, m, s) = (s / 3600, s / 60 % 60, s % 60);
    format!("{h:02}:{m:02}:{s:02} hello client !!!")
}

/// One client: its messages go to everyone; its inbox (the greeting) is written at the tick.
fn serve(stream: TcpStream, clients: Clients, timer: Sender<Greeting>) {
    let Ok(peer) = stream.peer_addr() else { return };
    // A socket option: it holds for every clone of the socket, from whichever thread writes.
    stream.set_write_timeout(Some(WRITE_TIMEOUT)).unwrap();
    let Ok(copy) = stream.try_clone() else { return };
    let mut ws = match tungstenite::accept(Guarded(stream, clients.clone())) {
        Ok(ws) => ws,
        Err(e) => return warn!("{peer}: no WebSocket handshake: {e}"),
    };
    clients.lock().unwrap().push((peer, copy));
    info!("{peer} connected");
    let (to_me, inbox) = crossbeam_channel::unbounded();
    let due = Instant::now() + GREETING_DELAY;
    timer.send((due, to_me)).unwrap();
    ws.get_ref().0.set_read_timeout(Some(TICK)).unwrap();
    let ended = 'connection: loop {
        match ws.read() {
            Ok(message @ (Message::Text(_) | Message::Binary(_))) => broadcast(&clients, message),
            // Off the list before tungstenite answers (at the next `read`): no frame may follow.
            Ok(Message::Close(_)) => clients.lock().unwrap().retain(|(addr, _)| *addr != peer),
            Ok(_) => {}
            Err(Error::Io(e)) if matches!(e.kind(), WouldBlock | TimedOut) => {}
            Err(e) => break e,
        }
        while let Ok(text) = inbox.try_recv() {
            if let Err(e) = ws.send(Message::text(text)) {
                break 'connection e;
            }
        }
    };
    clients.lock().unwrap().retain(|(addr, _)| *addr != peer);
    info!("{peer} closed ({ended})");
}

/// The tip as the tutorial writes it, `clients.forEach(c => c.send(message))`, in list order.
///
/// The frame is encoded once and written whole into each socket, under the lock, which keeps
/// the list still and two threads from writing one socket at once. It is also the trouble: a
/// client that stops reading fills its receive window and our send buffer (a few hundred KiB to
/// a few MiB), then `write_all` blocks, lock held, and no broadcast, greeting or pong reaches
/// anyone until WRITE_TIMEOUT drops that client. A queue per client instead moves the problem
/// into memory: unbounded it grows, bounded it fills and the broadcaster waits again. Lesson 4:
/// a bounded queue that only the client's own thread writes from, and a waker, not a tick.
fn broadcast(clients: &Clients, message: Message) {
    let (opcode, payload) = match message {
        Message::Text(text) => (Data::Text, text.into()),
        Message::Binary(bytes) => (Data::Binary, bytes),
        _ => return,
    };
    let mut bytes = Vec::new();
    let frame = Frame::message(payload, OpCode::Data(opcode), true);
    frame.format(&mut bytes).expect("a Vec takes any frame");
    let mut clients = clients.lock().unwrap();
    clients.retain(|(_, socket)| write_or_drop(socket, &bytes).is_ok());
}

/// Every write to a client, whoever makes it. One that failed may have sent half a frame, and
/// nothing can follow that: the socket is shut down, and the client's own thread leaves.
fn write_or_drop(mut socket: &TcpStream, bytes: &[u8]) -> std::io::Result<()> {
    let written = socket.write_all(bytes);
    if let (Err(e), Ok(peer)) = (&written, socket.peer_addr()) {
        warn!("{peer} dropped, too slow or gone: {e}");
    }
    if written.is_err() {
        let _ = socket.shutdown(Shutdown::Both);
    }
    written
}

/// The socket as its own thread's `WebSocket` sees it. Every write (the greeting, the pongs and
/// close replies tungstenite sends by itself) takes the list's lock, so frames never interleave.
struct Guarded(TcpStream, Clients);

impl Read for Guarded {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Guarded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _everyone = self.1.lock().unwrap();
        write_or_drop(&self.0, buf).map(|()| buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
