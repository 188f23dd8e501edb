//! Lesson 4 of 4: lesson 3's broadcast without its stall: a mailbox per client, and a waker
//! instead of a tick.
//!
//! What it adds: each connection's thread owns a NON-BLOCKING socket and a `polling::Poller`,
//! which waits for the socket and which other threads can wake with `Poller::notify`. Other
//! threads never touch the socket: they post to the client's *mailbox*, a queue plus that
//! waker ([`Mailbox::post`]); lesson 3's broadcast posts where it wrote ([`Clients::broadcast`]).
//! The thread's loop ([`Connection::run`]) writes what was posted, reads, then waits.
//!
//! What that buys, each point a problem of an earlier lesson:
//! - no tick: an idle client costs zero wake-ups and zero CPU (lesson 2's tick is gone);
//! - no lost wake-up, though nothing polls: see [`Mailbox::post`];
//! - no one waits for a slow client (lesson 3's stall): a post never waits, and only the
//!   client's own thread writes its socket, so frames never interleave;
//! - a client that stops reading costs bounded memory: [`MAX_BACKLOG`] bytes behind, it is let
//!   go with Close 1008, as wsecho does by default (`--slow-listener close`);
//! - Ctrl-C closes every client with 1001: any thread can reach every client's thread now.
//!
//! wsecho adds frames written straight into an idle listener's socket (no wake-up at all),
//! pings and the idle timeout in the wait, resuming, and on Linux `ppoll` with a signal as the
//! waker (one descriptor per connection; a poller here adds three on Linux): docs/the-loop.md
//! walks its loop.
//!
//! Run: `cargo run --example 04_waker -- 3000`, then `websocat ws://127.0.0.1:3000` twice.

use std::convert::Infallible;
use std::io::{self, ErrorKind, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use log::{info, warn};
use polling::{Event, Events, Poller};
use simplelog::{Config, LevelFilter, WriteLogger};
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Error, Message, WebSocket};

/// The port when none is given on the command line; 0 asks the system for any free port.
const DEFAULT_PORT: u16 = 3000;
/// How long after connecting a client is greeted, as in lesson 2.
const GREETING_DELAY: Duration = Duration::from_secs(2);

/// How far behind a client may fall: bytes posted to it that its thread has not taken yet.
/// Bytes, not messages: a message may be up to 64 MiB, so only bytes bound memory. 1 MiB is
/// far more than a client that keeps up ever has waiting (the kernel's socket buffers take a
/// burst first), and a thousand clients that stopped reading hold at most 1 GiB (tungstenite
/// holds 128 KiB and a message more: nothing is taken from a full socket's queue). wsecho's
/// `--max-backlog` is 4 MiB.
const MAX_BACKLOG: usize = 1 << 20;

/// The close reason a client gets when it is let go for falling behind.
const TOO_SLOW: &str = "too slow: fell more than 1 MiB behind";

/// How long a client has to answer our Close (wsecho's `--close-timeout`); also how long
/// Ctrl-C waits for every client's answer.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// The socket's key in its poller. A poller watches one socket here, so any key will do
/// (except `usize::MAX`, which `polling` keeps for its own notifications).
const SOCKET: usize = 0;

/// How other threads reach one client's thread. Held by the client list and by the client's
/// own thread; the timer holds a `Weak` only, so that a client that has left closes its
/// poller's descriptors at once, not when its greeting would have been due.
struct Mailbox {
    /// Unbounded as a channel: [`MAX_BACKLOG`] bounds it, in bytes.
    queue: Sender<Message>,
    /// Bytes posted and not yet taken by the client's thread.
    backlog: AtomicUsize,
    /// Set once a post would take the backlog past [`MAX_BACKLOG`]: the client is let go.
    overflowed: AtomicBool,
    waker: Poller,
}

impl Mailbox {
    /// Hands `message` to the client's thread. Never waits, never touches the socket.
    ///
    /// Push first, notify second, and no wake-up is lost. The client's thread empties its
    /// queue, and only then waits. If our push lands before it empties the queue, it takes the
    /// frame. If the push lands after, so does our notify: either the thread is already waiting
    /// and wakes up, or it is about to wait, and then its wait returns at once, because a notify
    /// that finds no one waiting is kept for the next wait. Either way it looks at the queue
    /// again. (Notify first, push second would leave a gap: the thread could wake, find nothing,
    /// and fall asleep just before the frame lands.)
    fn post(&self, message: Message) {
        if self.overflowed.load(SeqCst) {
            return; // being let go: it takes nothing more
        }
        let len = message.len();
        if self.backlog.fetch_add(len, SeqCst) + len > MAX_BACKLOG {
            // Too far behind. The poster cannot close it (only the client's own thread writes
            // its socket), and does not wait for it: it raises the flag and wakes that thread.
            self.backlog.fetch_sub(len, SeqCst);
            self.overflowed.store(true, SeqCst);
        } else if self.queue.send(message).is_err() {
            return; // the connection has ended; its queue went with it
        }
        let _ = self.waker.notify();
    }
}

/// Lesson 3's list of every client, holding mailboxes instead of sockets.
#[derive(Default)]
struct Clients {
    list: Mutex<List>,
    /// Told whenever a client leaves the list: Ctrl-C waits on it.
    left: Condvar,
}

#[derive(Default)]
struct List {
    mailboxes: Vec<Arc<Mailbox>>,
    /// Set by Ctrl-C: a client that joins after it is closed at once.
    stopping: bool,
}

impl Clients {
    fn join(&self, mailbox: &Arc<Mailbox>) {
        let mut list = self.list.lock().unwrap();
        if list.stopping {
            mailbox.post(goodbye());
        }
        list.mailboxes.push(Arc::clone(mailbox));
    }

    /// Lesson 3's `broadcast`, posting where it wrote. Under the lock, so that every client
    /// gets the messages in one order; and the lock is held for microseconds, whatever the
    /// clients do, since a post never waits.
    fn broadcast(&self, message: &Message) {
        for mailbox in &self.list.lock().unwrap().mailboxes {
            mailbox.post(message.clone());
        }
    }

    fn leave(&self, mailbox: &Arc<Mailbox>) {
        let mut list = self.list.lock().unwrap();
        list.mailboxes.retain(|other| !Arc::ptr_eq(other, mailbox));
        self.left.notify_all();
    }
}

/// Ctrl-C, on the thread the `ctrlc` crate runs it on. Like the timer, it never touches a
/// socket: it posts every client a Close 1001, waits until they have all answered (each
/// thread leaves the list as it ends), at most [`CLOSE_TIMEOUT`], and exits.
fn shut_down(clients: &Clients) {
    let mut list = clients.list.lock().unwrap();
    list.stopping = true;
    info!("shutting down: closing {} clients", list.mailboxes.len());
    for mailbox in &list.mailboxes {
        mailbox.post(goodbye());
    }
    let left = |list: &mut List| !list.mailboxes.is_empty();
    let (list, _) = clients
        .left
        .wait_timeout_while(list, CLOSE_TIMEOUT, left)
        .unwrap();
    info!("stopped; {} clients did not answer", list.mailboxes.len());
    std::process::exit(0);
}

/// 1001, "going away": what wsecho sends every client when it shuts down.
fn goodbye() -> Message {
    Message::Close(Some(close_frame(CloseCode::Away, "server shutting down")))
}

fn close_frame(code: CloseCode, reason: &'static str) -> CloseFrame {
    let reason = reason.into();
    CloseFrame { code, reason }
}

/// What a connection asks the timer for: at this time, post a greeting to this mailbox.
type Greeting = (Instant, Weak<Mailbox>);

fn main() -> std::io::Result<()> {
    WriteLogger::init(LevelFilter::Info, Config::default(), std::io::stderr()).unwrap();
    let arg = std::env::args().nth(1);
    let port = arg.map_or(DEFAULT_PORT, |a| a.parse().expect("PORT: a number"));
    let listener = TcpListener::bind(("127.0.0.1", port))?;
    let clients = Arc::new(Clients::default());
    // Before the ready line: whoever waits for it may press Ctrl-C the moment it shows.
    let on_ctrl_c = Arc::clone(&clients);
    ctrlc::set_handler(move || shut_down(&on_ctrl_c)).map_err(io::Error::other)?;
    println!("ws://{}", listener.local_addr()?);
    std::io::stdout().flush()?;

    let (timer, requests) = crossbeam_channel::unbounded();
    thread::spawn(move || run_timer(requests));
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let (clients, timer) = (Arc::clone(&clients), timer.clone());
        thread::spawn(move || serve(stream, clients, timer));
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
            // A client that has left is gone, its mailbox and poller with it: no greeting.
            if let Some(mailbox) = mailbox.upgrade() {
                mailbox.post(Message::text(greeting_text()));
            }
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
fn serve(stream: TcpStream, clients: Arc<Clients>, timer: Sender<Greeting>) {
    let Ok(peer) = stream.peer_addr() else { return };
    let ws = match tungstenite::accept(stream) {
        Ok(ws) => ws,
        Err(e) => return warn!("{peer}: no WebSocket handshake: {e}"),
    };
    let mut connection = match Connection::new(ws, peer, Arc::clone(&clients)) {
        Ok(connection) => connection,
        Err(e) => return warn!("{peer}: {e}"),
    };
    clients.join(&connection.mailbox);
    info!("{peer} connected");
    let due = Instant::now() + GREETING_DELAY;
    let _ = timer.send((due, Arc::downgrade(&connection.mailbox)));
    let Err(ended) = connection.run();
    clients.leave(&connection.mailbox);
    // The socket and the poller close here: no other thread holds the mailbox any more.
    drop(connection);
    info!("{peer} closed ({ended})");
}

/// What one connection's thread owns.
struct Connection {
    ws: WebSocket<TcpStream>,
    peer: SocketAddr,
    mailbox: Arc<Mailbox>,
    /// Where posted messages wait, in order, for this thread to write them.
    inbox: Receiver<Message>,
    clients: Arc<Clients>,
    /// Once we have sent our Close: until when the client may take to answer.
    closing: Option<Instant>,
}

impl Connection {
    fn new(ws: WebSocket<TcpStream>, peer: SocketAddr, clients: Arc<Clients>) -> io::Result<Self> {
        // From now on a read with nothing to read, or a write into a full socket, returns
        // WouldBlock at once. tungstenite passes it up as `Error::Io` and loses nothing: a
        // partial frame read stays in its buffer, an unwritten one in its outgoing buffer.
        ws.get_ref().set_nonblocking(true)?;
        let (queue, inbox) = crossbeam_channel::unbounded();
        let mailbox = Arc::new(Mailbox {
            queue,
            backlog: AtomicUsize::new(0),
            overflowed: AtomicBool::new(false),
            waker: Poller::new()?,
        });
        // SAFETY: `add` asks that the socket be deleted from the poller before it is closed.
        // The socket lives in `ws`, which is dropped only with the `Connection` built right
        // below, and `Connection`'s `Drop` deletes it first (on a panic, too).
        unsafe { mailbox.waker.add(ws.get_ref(), Event::readable(SOCKET))? };
        let closing = None;
        Ok(Connection {
            ws,
            peer,
            mailbox,
            inbox,
            clients,
            closing,
        })
    }

    /// The loop. Each turn does everything it can, then waits for what it lacks. It returns
    /// only when the connection ends: `ConnectionClosed` after a closing handshake, or an error.
    fn run(&mut self) -> tungstenite::Result<Infallible> {
        // One socket, so one event at most; and the loop never asks why it woke (a notify is
        // no event at all: `wait` just returns), since every turn does all the work anyway.
        let mut events = Events::with_capacity(NonZeroUsize::MIN);
        // The socket took less than it was given (tungstenite keeps the rest). Kept from turn
        // to turn: while it holds, nothing more is taken from the queue, so what waits for a
        // client that does not read waits there, counted against MAX_BACKLOG.
        let mut full = false;
        loop {
            // 1. Fallen too far behind: let go. What it has not started to get is dropped;
            //    the Close follows what tungstenite holds already.
            if self.mailbox.overflowed.load(SeqCst) && self.ws.can_write() {
                warn!("{} {TOO_SLOW}: closing it", self.peer);
                self.inbox.try_iter().for_each(drop);
                full = self.close(close_frame(CloseCode::Policy, TOO_SLOW))?;
            }
            // 2. Posted messages, into tungstenite's outgoing buffer, while the socket has
            //    room. After a Close nothing more may be sent: the rest is dropped.
            while !full {
                let Ok(message) = self.inbox.try_recv() else {
                    break;
                };
                self.mailbox.backlog.fetch_sub(message.len(), SeqCst);
                full = match message {
                    Message::Close(Some(frame)) => self.close(frame)?,
                    _ if !self.ws.can_write() => false,
                    message => would_block(self.ws.write(message))?,
                };
            }
            // 3. The client's messages, to everyone, while it is caught up: its socket not
            //    full and its queue empty. A client that sends without reading is then read
            //    no faster than it reads (TCP slows it down), and its own copies never pile
            //    up in its queue. tungstenite queues pongs and close replies by itself.
            let mut ran_dry = false;
            while !full && !ran_dry && self.inbox.is_empty() {
                match self.ws.read() {
                    // Not once closing: a client on its way out says nothing more to anyone.
                    Ok(message @ (Message::Text(_) | Message::Binary(_))) => {
                        if self.ws.can_write() {
                            self.clients.broadcast(&message);
                        }
                    }
                    Ok(_) => {}
                    Err(Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => ran_dry = true,
                    Err(e) => return Err(e),
                }
            }
            // 4. Write what the socket takes.
            full = would_block(self.ws.flush())?;
            if !full && !ran_dry {
                continue; // what stopped the reading (a queue, a full socket) is gone: again
            }
            // 5. Wait. `polling` registers in oneshot mode: an event disarms the socket. So
            //    arm it, every turn, with what we lack: room to write if the socket is full,
            //    else the client's next bytes. A notify wakes the wait either way, and one
            //    posted since step 2 makes it return at once (see [`Mailbox::post`]).
            let interest = Event::new(SOCKET, !full, full);
            self.mailbox.waker.modify(self.ws.get_ref(), interest)?;
            // No timeout but our Close's: the timer thread keeps time for the greetings. An
            // idle connection sleeps here until its client sends or another thread posts:
            // zero wake-ups, zero CPU.
            let timeout = self
                .closing
                .map(|at| at.saturating_duration_since(Instant::now()));
            events.clear();
            self.mailbox.waker.wait(&mut events, timeout)?;
            if self.closing.is_some_and(|at| Instant::now() >= at) {
                let e = io::Error::new(ErrorKind::TimedOut, "no answer to our Close in time");
                return Err(Error::Io(e));
            }
        }
    }

    /// Starts the closing handshake, if no Close was sent or received yet, and gives the
    /// client [`CLOSE_TIMEOUT`] to answer. `Ok(true)`: the socket is full.
    fn close(&mut self, frame: CloseFrame) -> tungstenite::Result<bool> {
        if self.ws.can_write() {
            self.closing = Some(Instant::now() + CLOSE_TIMEOUT);
        }
        would_block(self.ws.close(Some(frame)))
    }
}

impl Drop for Connection {
    /// Keeps the promise made to `Poller::add`: runs before the fields, so before the socket
    /// closes. (The timer may hold the mailbox a moment longer; its notify wakes no one.)
    fn drop(&mut self) {
        let _ = self.mailbox.waker.delete(self.ws.get_ref());
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
