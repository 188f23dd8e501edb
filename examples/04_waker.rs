//! Lesson 4 of 4: the idea at the heart of wsecho, in miniature: a waker instead of a tick.
//!
//! What it adds over lessons 2 and 3: each connection's thread owns a NON-BLOCKING socket and a
//! `polling::Poller`, which does two jobs. It waits for the socket (readable, or writable when
//! the socket was full), and other threads can wake it with `Poller::notify`. Other threads
//! never touch the socket: they push a frame into the connection's queue (a bounded crossbeam
//! channel) and notify. The thread's loop: take the queue into tungstenite's outgoing buffer,
//! read and echo, write what the socket takes, then wait, with no timeout.
//!
//! What that buys, each point a problem of an earlier lesson:
//! - no tick: an idle client costs zero wake-ups and zero CPU (lesson 2's tick is gone);
//! - no lost wake-up, though nothing polls: see [`Mailbox::post`];
//! - writes never interleave: only the connection's own thread writes its socket, so no lock
//!   is held across a write and no one waits for anyone else's socket (lesson 3's stall);
//! - a slow client only fills its own queue: posting never waits, and while its socket is full
//!   its thread stops reading from it, so its echoes cannot pile up either.
//!
//! Only the greeting is posted here. wsecho posts broadcasts the same way (or, to a listener
//! with nothing queued, writes them straight in under a lock that keeps frames whole), counts
//! each queue in bytes, slows senders down while a listener is behind and closes one that stays
//! behind too long, and folds its own deadlines (pings, idle timeout) into the wait. On Linux
//! it waits with `ppoll` and wakes with a signal (no second descriptor per connection);
//! elsewhere it uses `polling`, as here.
//!
//! Run: `cargo run --example 04_waker -- 3000`, then `websocat ws://127.0.0.1:3000`.

use std::convert::Infallible;
use std::io::{ErrorKind, Write};
use std::net::{TcpListener, TcpStream};
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use log::{info, warn};
use polling::{Event, Events, Poller};
use simplelog::{Config, LevelFilter, WriteLogger};
use tungstenite::{Error, Message, WebSocket};

/// The port when none is given on the command line; 0 asks the system for any free port.
const DEFAULT_PORT: u16 = 3000;
/// How long after connecting a client is greeted, as in lesson 2.
const GREETING_DELAY: Duration = Duration::from_secs(2);

/// How many frames from other threads may wait for one connection. Bounded, so that a client
/// that does not keep up costs a bounded amount of memory; posting to a full queue fails at once
/// rather than making the poster wait (here the frame is dropped; wsecho counts bytes instead,
/// and paces the senders).
const QUEUE_FRAMES: usize = 64;

/// The socket's key in its poller. A poller watches one socket here, so any key will do
/// (except `usize::MAX`, which `polling` keeps for its own notifications).
const SOCKET: usize = 0;

/// How other threads reach one connection: its queue, and its poller as a waker.
#[derive(Clone)]
struct Mailbox {
    queue: Sender<Message>,
    waker: Arc<Poller>,
}

impl Mailbox {
    /// Hands `message` to the connection's thread. Never waits, never touches the socket.
    ///
    /// Push first, notify second, and no wake-up is lost. The connection's thread empties its
    /// queue, and only then waits. If our push lands before it empties the queue, it takes the
    /// frame. If the push lands after, so does our notify: either the thread is already waiting
    /// and wakes up, or it is about to wait, and then its wait returns at once, because a notify
    /// that finds no one waiting is kept for the next wait. Either way it looks at the queue
    /// again. (Notify first, push second would leave a gap: the thread could wake, find nothing,
    /// and fall asleep just before the frame lands.)
    fn post(&self, message: Message) {
        match self.queue.try_send(message) {
            Ok(()) => {
                let _ = self.waker.notify();
            }
            // This client does not keep up. Only its own frame is lost; nobody waits.
            Err(TrySendError::Full(_)) => warn!("a client's queue is full: frame dropped"),
            // The connection has ended; its queue went with it.
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

/// What a connection asks the timer for: at this time, post a greeting to this mailbox.
type Greeting = (Instant, Mailbox);

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

/// Lesson 2's timer thread; it posts instead of sending. With no greeting pending it waits for
/// a request with no timeout: it, too, costs nothing while all is quiet.
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
        for (_, mailbox) in pending.extract_if(.., |(due, _)| *due <= now) {
            mailbox.post(Message::text(greeting_text()));
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

/// One client: the handshake (blocking, as before), then the loop on a non-blocking socket.
fn serve(stream: TcpStream, timer: Sender<Greeting>) {
    let Ok(peer) = stream.peer_addr() else { return };
    let ws = match tungstenite::accept(stream) {
        Ok(ws) => ws,
        Err(e) => return warn!("{peer}: no WebSocket handshake: {e}"),
    };
    let mut connection = match Connection::new(ws) {
        Ok(connection) => connection,
        Err(e) => return warn!("{peer}: {e}"),
    };
    info!("{peer} connected");
    let due = Instant::now() + GREETING_DELAY;
    let _ = timer.send((due, connection.mailbox()));
    let Err(ended) = connection.run();
    info!("{peer} closed ({ended})");
}

/// What one connection's thread owns.
struct Connection {
    ws: WebSocket<TcpStream>,
    poller: Arc<Poller>,
    /// Where other threads' frames wait, in order, for this thread to write them.
    inbox: Receiver<Message>,
    /// The other end of `inbox`, for [`Connection::mailbox`].
    queue: Sender<Message>,
}

impl Connection {
    fn new(ws: WebSocket<TcpStream>) -> std::io::Result<Connection> {
        // From now on a read with nothing to read, or a write into a full socket, returns
        // WouldBlock at once. tungstenite passes it up as `Error::Io` and loses nothing: a
        // partial frame read stays in its buffer, an unwritten one in its outgoing buffer.
        ws.get_ref().set_nonblocking(true)?;
        let poller = Arc::new(Poller::new()?);
        // SAFETY: `add` asks that the socket be deleted from the poller before it is closed.
        // The socket lives in `ws`, which is dropped only with the `Connection` built right
        // below, and `Connection`'s `Drop` deletes it first (on a panic, too).
        unsafe { poller.add(ws.get_ref(), Event::readable(SOCKET))? };
        let (queue, inbox) = crossbeam_channel::bounded(QUEUE_FRAMES);
        Ok(Connection {
            ws,
            poller,
            inbox,
            queue,
        })
    }

    /// How the timer (or anyone) reaches this connection.
    fn mailbox(&self) -> Mailbox {
        let queue = self.queue.clone();
        Mailbox {
            queue,
            waker: Arc::clone(&self.poller),
        }
    }

    /// The loop. Each turn does everything it can, then waits for what it lacks. It returns
    /// only when the connection ends: `ConnectionClosed` after a closing handshake, or an error.
    fn run(&mut self) -> tungstenite::Result<Infallible> {
        // One socket, so one event at most; and the loop never asks why it woke (a notify is
        // no event at all: `wait` just returns), since every turn does all the work anyway.
        let mut events = Events::with_capacity(NonZeroUsize::MIN);
        loop {
            // 1. Frames from other threads, into tungstenite's outgoing buffer. `full` means
            //    the socket took less than we gave it; tungstenite keeps the rest.
            let mut full = false;
            while !full {
                let Ok(message) = self.inbox.try_recv() else {
                    break;
                };
                full = would_block(self.ws.write(message))?;
            }
            // 2. The client's messages, echoed, until the socket has nothing more to read.
            //    Not while the socket is full: a client that sends without reading its echoes
            //    is not read from until it catches up (TCP then slows it down), so its echoes
            //    never pile up here. tungstenite queues pongs and close replies by itself.
            while !full {
                match self.ws.read() {
                    Ok(message @ (Message::Text(_) | Message::Binary(_))) => {
                        full = would_block(self.ws.write(message))?;
                    }
                    Ok(_) => {}
                    Err(Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
            // 3. Write what the socket takes.
            let ran_dry = !full;
            let full = would_block(self.ws.flush())?;
            if !ran_dry && !full {
                continue; // the socket caught up after all: back for what 1 and 2 left
            }
            // 4. Wait. `polling` registers in oneshot mode: an event disarms the socket. So
            //    arm it, every turn, with what we lack: room to write if the socket is full,
            //    else the client's next bytes. A notify wakes the wait either way, and one
            //    posted since step 1 makes it return at once (see [`Mailbox::post`]).
            let interest = if full {
                Event::writable(SOCKET)
            } else {
                Event::readable(SOCKET)
            };
            self.poller.modify(self.ws.get_ref(), interest)?;
            // No timeout: this thread has no deadline of its own (the timer thread keeps time
            // for everyone). An idle connection sleeps here until its client sends or another
            // thread posts: zero wake-ups, zero CPU.
            events.clear();
            self.poller.wait(&mut events, None)?;
        }
    }
}

impl Drop for Connection {
    /// Keeps the promise made to `Poller::add`: runs before the fields, so before the socket
    /// closes. (Other threads may still hold the poller, through a `Mailbox`; their notifies
    /// then wake no one.)
    fn drop(&mut self) {
        let _ = self.poller.delete(self.ws.get_ref());
    }
}

/// `Ok(true)` when the socket is full: tungstenite kept what it could not write, for later.
fn would_block(result: tungstenite::Result<()>) -> tungstenite::Result<bool> {
    match result {
        Ok(()) => Ok(false),
        Err(Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => Ok(true),
        Err(e) => Err(e),
    }
}
