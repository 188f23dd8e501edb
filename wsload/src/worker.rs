//! The event loop: one `mio::Poll` driving many connections on one thread.
//!
//! wsload runs on the same two cores as the server it measures, so it must
//! not spend a thread (and its stack and context switches) per connection.
//! Each worker thread owns a share of the connections and multiplexes them
//! with epoll; the mode code only sees callbacks through [`Handler`].
//!
//! A `wss://` connection runs the same way: the socket is registered once,
//! edge-triggered, for both readable and writable, so whenever rustls has
//! something to send (`wants_write()`: the handshake, alerts, records the
//! socket did not take) the next writable edge flushes it, with no
//! re-registration. Reads go through `read_tls`, `process_new_packets` and
//! the session's `reader()`; the plaintext then takes the plain path. As on
//! the plain path, a read that empties the socket ends the connection's turn,
//! so one fast connection cannot keep the loop from the others.
//!
//! Connection ids are dense: the n-th connection a worker opens has id n, so
//! handlers can keep per-connection state in a plain `Vec`.

use crate::conn::{Conn, Fragmented, MessageKind, Phase};
use crate::frame::{self, Frame, MAX_PAYLOAD, Opcode};
use crate::handshake::{self, HandshakeError};
use crate::rng::Rng;
use crate::target::Target;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One whole data message, borrowed from the receive buffer.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    pub kind: MessageKind,
    pub data: &'a [u8],
}

/// Why a connection ended.
#[derive(Debug)]
pub enum CloseReason {
    /// TCP connect failed.
    Connect(io::Error),
    /// The server's upgrade response was unacceptable.
    Handshake(HandshakeError),
    /// The TLS handshake failed (the certificate was not trusted, say).
    TlsHandshake(rustls::Error),
    /// TLS failed after its handshake.
    Tls(rustls::Error),
    /// The handshake did not complete before the deadline.
    TimedOut,
    /// Read or write failed.
    Io(io::Error),
    /// The server broke the framing rules.
    Protocol(String),
    /// The server sent a close frame (with this status code, if any).
    ClosedByServer(Option<u16>),
    /// The TCP connection ended without a close frame.
    Eof,
    /// We asked to close and the server completed the closing handshake.
    Normal,
}

impl CloseReason {
    /// True if the connection was never opened.
    pub fn before_open(&self) -> bool {
        matches!(
            self,
            CloseReason::Connect(_)
                | CloseReason::Handshake(_)
                | CloseReason::TlsHandshake(_)
                | CloseReason::TimedOut
        )
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Connect(e) => write!(f, "connect failed: {e}"),
            CloseReason::Handshake(e) => write!(f, "handshake failed: {e}"),
            CloseReason::TlsHandshake(e) => write!(f, "TLS handshake failed: {e}"),
            CloseReason::Tls(e) => write!(f, "TLS error: {e}"),
            CloseReason::TimedOut => write!(f, "handshake timed out"),
            CloseReason::Io(e) => write!(f, "I/O error: {e}"),
            CloseReason::Protocol(e) => write!(f, "protocol error: {e}"),
            CloseReason::ClosedByServer(Some(code)) => {
                write!(f, "server closed the connection (code {code})")
            }
            CloseReason::ClosedByServer(None) => write!(f, "server closed the connection"),
            CloseReason::Eof => write!(f, "server dropped the TCP connection"),
            CloseReason::Normal => write!(f, "closed normally"),
        }
    }
}

/// What a mode does with connection events.
pub trait Handler {
    /// The handshake of connection `id` completed at `now`.
    fn on_open(&mut self, _id: usize, _conn: &mut Conn, _now: Instant) {}

    /// A whole text or binary message arrived; `now` is taken right after
    /// the read that completed it.
    fn on_message(&mut self, id: usize, msg: Message<'_>, conn: &mut Conn, now: Instant);

    /// Connection `id` is gone (or never opened).
    fn on_close(&mut self, _id: usize, _reason: &CloseReason) {}

    /// Lets [`Worker::run_until`] return early once the mode has all it needs.
    fn is_done(&self) -> bool {
        false
    }
}

/// A handler that ignores everything, for the closing phase.
struct Ignore;

impl Handler for Ignore {
    fn on_message(&mut self, _: usize, _: Message<'_>, _: &mut Conn, _: Instant) {}
}

/// Size of the shared read buffer. Reads land here first and only a frame
/// split across two reads is copied into the connection's own buffer.
const SCRATCH: usize = 64 * 1024;

/// How many waiting upgrades [`Worker::upgrade_waiting`] completes before it
/// reads the responses that arrived meanwhile: a few hundred microseconds of
/// writes.
const UPGRADES_BETWEEN_READS: usize = 32;

/// Which server a connection goes to, by its local id (see [`Worker::with_route`]).
pub type Route = Arc<dyn Fn(usize) -> Arc<Target> + Send + Sync>;

/// Which local address a connection binds before it connects, by its local id (see
/// [`Worker::bind_sources`]).
pub type Source = Arc<dyn Fn(usize) -> IpAddr + Send + Sync>;

/// One event-loop thread's worth of connections.
pub struct Worker {
    target: Arc<Target>,
    /// Other servers for some connections; `None`: every connection goes to `target`.
    route: Option<Route>,
    /// The local address of each connection; `None`: the system picks it.
    source: Option<Source>,
    poll: Poll,
    events: Events,
    conns: Vec<Option<Conn>>,
    scratch: Vec<u8>,
    rng: Rng,
    /// Connections still connecting or handshaking (waiting ones included).
    starting: usize,
    /// Hold back the end of new connections' upgrade requests ([`Worker::defer_upgrades`]).
    defer_upgrades: bool,
    /// Connections whose upgrade request waits for its end ([`Worker::upgrade_waiting`]).
    waiting: usize,
    /// Connections not yet closed (in any phase).
    live: usize,
    /// Request targets that replace a connection's server's path in its next upgrade
    /// requests ([`Worker::set_path`]): fanout's resuming listeners name their position there.
    paths: HashMap<usize, String>,
    /// Servers that replace a connection's route for its next connections
    /// ([`Worker::set_target`]): chat's clients move to another instance when theirs is gone.
    targets: HashMap<usize, Arc<Target>>,
}

impl Worker {
    pub fn new(target: Arc<Target>) -> io::Result<Worker> {
        Ok(Worker {
            target,
            route: None,
            source: None,
            poll: Poll::new()?,
            events: Events::with_capacity(1024),
            conns: Vec::new(),
            scratch: vec![0; SCRATCH],
            rng: Rng::from_entropy(),
            starting: 0,
            defer_upgrades: false,
            waiting: 0,
            live: 0,
            paths: HashMap::new(),
            targets: HashMap::new(),
        })
    }

    /// A worker whose connection with local id `id` goes to `route(id)`: fanout's listeners
    /// spread over several instances of a cluster.
    pub fn with_route(target: Arc<Target>, route: Route) -> io::Result<Worker> {
        let mut worker = Worker::new(target)?;
        worker.route = Some(route);
        Ok(worker)
    }

    /// From now on, connection `id` binds the local address `source(id)` (port 0: the system
    /// picks a port) before it connects, for a server that counts its clients by address
    /// (`hold --source-addresses`).
    pub fn bind_sources(&mut self, source: Source) {
        self.source = Some(source);
    }

    /// The server of connection `id`.
    pub fn target_of(&self, id: usize) -> Arc<Target> {
        if let Some(target) = self.targets.get(&id) {
            return Arc::clone(target);
        }
        match &self.route {
            Some(route) => route(id),
            None => Arc::clone(&self.target),
        }
    }

    /// Opens `count` connections with at most `max_starting` handshakes in
    /// flight, processing events for already open ones meanwhile. Returns
    /// when every connection is open or has failed; connections still not
    /// open at `deadline` are reported to the handler as timed out. After
    /// [`Worker::defer_upgrades`], a connection is done here once its TCP
    /// connect completed, and waits for [`Worker::upgrade_waiting`].
    pub fn connect<H: Handler>(
        &mut self,
        count: usize,
        max_starting: usize,
        deadline: Instant,
        h: &mut H,
    ) -> io::Result<()> {
        let first = self.conns.len();
        let mut started = 0;
        loop {
            while started < count && self.starting - self.waiting < max_starting.max(1) {
                self.start_connect(h);
                started += 1;
            }
            if started == count && self.starting == self.waiting {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            self.poll_once(Some(deadline - now), h)?;
        }
        self.time_out_starting(first, h);
        for id in first + started..first + count {
            h.on_close(id, &CloseReason::TimedOut);
        }
        Ok(())
    }

    /// Reports every connection from `first` on that is still connecting or
    /// handshaking as timed out (those waiting for [`Worker::upgrade_waiting`]
    /// are left to it).
    fn time_out_starting<H: Handler>(&mut self, first: usize, h: &mut H) {
        for id in first..self.conns.len() {
            if self.conns[id]
                .as_ref()
                .is_some_and(|c| c.phase.is_starting() && c.phase != Phase::Waiting)
            {
                self.remove(id, CloseReason::TimedOut, h);
            }
        }
    }

    /// Gives up on connection `id` if it is still connecting or handshaking: it is closed and
    /// reported to the handler as timed out. An open or closed connection is left as it is.
    pub fn abandon<H: Handler>(&mut self, id: usize, h: &mut H) {
        if self
            .conns
            .get(id)
            .and_then(Option::as_ref)
            .is_some_and(|c| c.phase.is_starting())
        {
            self.remove(id, CloseReason::TimedOut, h);
        }
    }

    /// Has connection `id` (one not opened yet, or one to be opened again with
    /// [`Worker::reopen`]) ask for `path` (path and query) instead of its server's path.
    pub fn set_path(&mut self, id: usize, path: String) {
        self.paths.insert(id, path);
    }

    /// Has connection `id` (one not opened yet, or one to be opened again with
    /// [`Worker::reopen`]) go to `target` instead of the server its route names.
    pub fn set_target(&mut self, id: usize, target: Arc<Target>) {
        self.targets.insert(id, target);
    }

    /// Opens connection `id` again, once it has closed: a new TCP connection and handshake
    /// under the same id, reported to the handler like the first (`on_open`, or `on_close`
    /// if it fails). Returns false, doing nothing, if `id` was never opened or is still open.
    pub fn reopen<H: Handler>(&mut self, id: usize, h: &mut H) -> bool {
        if self.conns.get(id).is_none_or(Option::is_some) {
            return false;
        }
        self.open_at(id, h);
        true
    }

    /// From now on, [`Worker::connect`] sends each connection's upgrade request
    /// without its last line break, and stops there: `hold --upgrade-together`
    /// completes them all at once later, so that the handshakes complete
    /// together rather than spread over the time the server takes to accept
    /// every connection. Sending the rest of the request at once keeps the
    /// client the one that retransmits: a connection whose handshake's last ACK
    /// the server dropped (its accept queue was full) gets in again as soon as
    /// the request's bytes are resent, where a silent client would wait on the
    /// server's own SYN-ACK retries, seconds apart, or be forgotten.
    pub fn defer_upgrades(&mut self) {
        self.defer_upgrades = true;
    }

    /// Connections whose upgrade request waits for its end.
    pub fn waiting(&self) -> usize {
        self.waiting
    }

    /// Completes the upgrade request of every waiting connection, back to
    /// back, then handles events until every handshake has completed or
    /// failed; those not open at `deadline` are reported to the handler as
    /// timed out.
    pub fn upgrade_waiting<H: Handler>(&mut self, deadline: Instant, h: &mut H) -> io::Result<()> {
        let mut sent = 0;
        for id in 0..self.conns.len() {
            let Some(conn) = self.conns[id]
                .as_mut()
                .filter(|c| c.phase == Phase::Waiting)
            else {
                continue;
            };
            conn.phase = Phase::Handshaking;
            self.waiting -= 1;
            conn.send_raw(handshake::REQUEST_END);
            if let Some(e) = conn.error.take() {
                self.remove(id, CloseReason::Io(e), h);
            }
            // Read the responses that came meanwhile, so that a handshake is
            // stamped open when its response arrives, not once all are sent.
            sent += 1;
            if sent % UPGRADES_BETWEEN_READS == 0 {
                self.poll_once(Some(Duration::ZERO), h)?;
            }
        }
        while self.starting > 0 {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            self.poll_once(Some(deadline - now), h)?;
        }
        self.time_out_starting(0, h);
        Ok(())
    }

    /// Sends connection `id`'s upgrade request (over TLS, starts the TLS
    /// handshake, which carries the request once it is done); after
    /// [`Worker::defer_upgrades`], all of it but its last line break.
    fn send_request(&mut self, id: usize) -> Result<(), CloseReason> {
        let target = self.target_of(id);
        let session = match &self.target.tls {
            Some(tls) => Some(tls.session().map_err(CloseReason::TlsHandshake)?),
            None => None,
        };
        let key = handshake::encode_key(self.rng.bytes16());
        let Some(conn) = self.conns.get_mut(id).and_then(Option::as_mut) else {
            return Ok(());
        };
        if let Some(session) = session {
            conn.start_tls(session);
        }
        conn.accept = handshake::accept_key(&key);
        let path = self
            .paths
            .get(&id)
            .map_or(target.path.as_str(), String::as_str);
        let request = handshake::request(&target.host_header, path, &key);
        let mut bytes = request.as_bytes();
        if self.defer_upgrades {
            bytes = bytes
                .strip_suffix(handshake::REQUEST_END)
                .expect("a request ends with an empty line");
            conn.phase = Phase::Waiting;
            self.waiting += 1;
        } else {
            conn.phase = Phase::Handshaking;
        }
        // With TLS, rustls keeps the request until its handshake is done.
        conn.send_raw(bytes);
        Ok(())
    }

    fn start_connect<H: Handler>(&mut self, h: &mut H) {
        let id = self.conns.len();
        self.conns.push(None);
        self.open_at(id, h);
    }

    /// Starts connecting connection `id`, whose slot is empty.
    fn open_at<H: Handler>(&mut self, id: usize, h: &mut H) {
        let addr = self.target_of(id).addr;
        let connected = match &self.source {
            Some(source) => connect_from(source(id), addr),
            None => TcpStream::connect(addr),
        };
        let stream = match connected {
            Ok(s) => s,
            Err(e) => return h.on_close(id, &CloseReason::Connect(e)),
        };
        let mut conn = Conn::new(stream, Rng::with_seed(self.rng.next_u64()));
        if let Err(e) = self.poll.registry().register(
            &mut conn.stream,
            Token(id),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            return h.on_close(id, &CloseReason::Connect(e));
        }
        self.conns[id] = Some(conn);
        self.starting += 1;
        self.live += 1;
    }

    /// Waits up to `timeout` for events and handles them.
    pub fn poll_once<H: Handler>(
        &mut self,
        timeout: Option<Duration>,
        h: &mut H,
    ) -> io::Result<()> {
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        // Move the events out so handling them may borrow `self` mutably.
        let events = std::mem::replace(&mut self.events, Events::with_capacity(0));
        for event in events.iter() {
            let readable = event.is_readable() || event.is_read_closed() || event.is_error();
            let must_drain = event.is_read_closed() || event.is_error();
            self.handle_event(
                event.token().0,
                readable,
                event.is_writable(),
                must_drain,
                h,
            );
        }
        self.events = events;
        Ok(())
    }

    /// Handles events until `deadline` or until the handler reports done.
    pub fn run_until<H: Handler>(&mut self, deadline: Instant, h: &mut H) -> io::Result<()> {
        while !h.is_done() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            self.poll_once(Some(deadline - now), h)?;
        }
        Ok(())
    }

    /// Sends a message on open connection `id` from outside a callback.
    /// Returns false if the connection is not open (or just failed).
    pub fn send<H: Handler>(
        &mut self,
        id: usize,
        kind: MessageKind,
        data: &[u8],
        h: &mut H,
    ) -> bool {
        let Some(conn) = self.open_conn(id) else {
            return false;
        };
        conn.send(kind, data);
        if let Some(e) = conn.error.take() {
            self.remove(id, CloseReason::Io(e), h);
            return false;
        }
        true
    }

    /// The connection `id` if it is open.
    pub fn open_conn(&mut self, id: usize) -> Option<&mut Conn> {
        self.conns
            .get_mut(id)
            .and_then(Option::as_mut)
            .filter(|c| c.phase == Phase::Open)
    }

    /// Ids of all open connections.
    pub fn open_ids(&self) -> Vec<usize> {
        (0..self.conns.len())
            .filter(|&id| {
                self.conns[id]
                    .as_ref()
                    .is_some_and(|c| c.phase == Phase::Open)
            })
            .collect()
    }

    /// Closes every connection politely: sends a close frame, waits up to
    /// `grace` for the server to finish the closing handshake and drop the
    /// TCP connection, then drops whatever is left.
    pub fn close_all(&mut self, grace: Duration) -> io::Result<()> {
        for id in 0..self.conns.len() {
            let Some(conn) = self.conns[id].as_mut() else {
                continue;
            };
            match conn.phase {
                Phase::Open => {
                    conn.send_frame(Opcode::Close, &1000u16.to_be_bytes());
                    conn.phase = Phase::Closing;
                    if let Some(e) = conn.error.take() {
                        self.remove(id, CloseReason::Io(e), &mut Ignore);
                    }
                }
                Phase::Connecting | Phase::Waiting | Phase::Handshaking => {
                    self.remove(id, CloseReason::TimedOut, &mut Ignore);
                }
                Phase::Closing => {}
            }
        }
        let deadline = Instant::now() + grace;
        while self.live > 0 {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            self.poll_once(Some(deadline - now), &mut Ignore)?;
        }
        self.conns.clear();
        self.live = 0;
        self.starting = 0;
        Ok(())
    }

    fn remove<H: Handler>(&mut self, id: usize, reason: CloseReason, h: &mut H) {
        // Dropping the socket closes it, which also removes it from epoll.
        let Some(conn) = self.conns.get_mut(id).and_then(Option::take) else {
            return;
        };
        if conn.phase.is_starting() {
            self.starting -= 1;
        }
        if conn.phase == Phase::Waiting {
            self.waiting -= 1;
        }
        self.live -= 1;
        drop(conn);
        h.on_close(id, &reason);
    }

    fn handle_event<H: Handler>(
        &mut self,
        id: usize,
        readable: bool,
        writable: bool,
        must_drain: bool,
        h: &mut H,
    ) {
        let Some(conn) = self.conns.get_mut(id).and_then(Option::as_mut) else {
            return;
        };
        if conn.phase == Phase::Connecting {
            match connect_result(&conn.stream) {
                Ok(false) => return,
                Err(e) => return self.remove(id, CloseReason::Connect(e), h),
                Ok(true) => {
                    // Small messages must go out at once, not wait for Nagle.
                    if let Err(e) = conn.stream.set_nodelay(true) {
                        return self.remove(id, CloseReason::Connect(e), h);
                    }
                    if let Err(reason) = self.send_request(id) {
                        return self.remove(id, reason, h);
                    }
                }
            }
        } else if writable && conn.has_pending_output() {
            conn.flush();
        }
        let Some(conn) = self.conns.get_mut(id).and_then(Option::as_mut) else {
            return;
        };
        let was_starting = conn.phase.is_starting();
        let mut outcome = if readable {
            self.read(id, must_drain, h)
        } else {
            None
        };
        let Some(conn) = self.conns.get_mut(id).and_then(Option::as_mut) else {
            return;
        };
        if was_starting && conn.phase == Phase::Open {
            self.starting -= 1;
        }
        if outcome.is_none() {
            outcome = conn.error.take().map(CloseReason::Io);
        }
        if let Some(reason) = outcome {
            self.remove(id, reason, h);
        }
    }

    /// Reads everything available on connection `id` and dispatches it.
    ///
    /// With edge-triggered epoll one must read until `WouldBlock`, but a
    /// read that returns less than the buffer size has already emptied the
    /// socket, so the extra system call is skipped (as tokio does) unless the
    /// event says the peer closed, in which case we must read on to see EOF.
    fn read<H: Handler>(&mut self, id: usize, must_drain: bool, h: &mut H) -> Option<CloseReason> {
        let Worker { conns, scratch, .. } = self;
        let conn = conns.get_mut(id).and_then(Option::as_mut)?;
        if conn.tls.is_some() {
            return read_tls(conn, id, scratch, must_drain, h);
        }
        loop {
            match conn.stream.read(scratch) {
                Ok(0) if conn.phase == Phase::Closing => return Some(CloseReason::Normal),
                Ok(0) => return Some(CloseReason::Eof),
                Ok(n) => {
                    let now = Instant::now();
                    if let Some(reason) = ingest(conn, id, &scratch[..n], h, now) {
                        return Some(reason);
                    }
                    if n < scratch.len() && !must_drain {
                        return None;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Some(CloseReason::Io(e)),
            }
        }
    }
}

/// [`Worker::read`] for a TLS connection: reads records, decrypts them, and
/// hands the plaintext to [`ingest`]. Whatever rustls has to send in return
/// (handshake messages, and the upgrade request once the handshake is done)
/// is flushed after each read.
///
/// It stops where the plain path stops: after a socket read that came back
/// shorter than rustls asked for, which emptied the socket (rustls asks for
/// 4 KiB at a time, so a full read may leave more), unless the event says
/// the peer closed and the loop must read on to the end. Reading on until
/// `WouldBlock` instead would be unfair: in a closed loop the handler sends
/// the next message from inside `ingest`, and a server that answers before
/// the next `read_tls` keeps this one connection in the loop, echo after
/// echo, while every other connection's event waits. Stopping leaves nothing
/// behind: every complete record has been decrypted and its plaintext taken,
/// and whatever arrives later raises a new edge.
fn read_tls<H: Handler>(
    conn: &mut Conn,
    id: usize,
    scratch: &mut [u8],
    must_drain: bool,
    h: &mut H,
) -> Option<CloseReason> {
    loop {
        let tls = conn.tls.as_mut()?;
        let mut socket = NoteShort::new(&mut conn.stream);
        let eof = match tls.read_tls(&mut socket) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Some(CloseReason::Io(e)),
        };
        let emptied = socket.short;
        if let Err(e) = tls.process_new_packets() {
            // rustls has queued an alert that tells the server why; send it
            // if the socket takes it now.
            let handshaking = tls.is_handshaking();
            let _ = tls.write_tls(&mut conn.stream);
            return Some(if handshaking {
                CloseReason::TlsHandshake(e)
            } else {
                CloseReason::Tls(e)
            });
        }
        if let Some(reason) = read_plaintext(conn, id, scratch, h) {
            return Some(reason);
        }
        conn.flush();
        if eof {
            return Some(end_of_stream(conn));
        }
        if emptied && !must_drain {
            return None;
        }
    }
}

/// A reader that notes whether its last read returned less than was asked
/// for: for a socket, that the read emptied it.
struct NoteShort<R> {
    inner: R,
    short: bool,
}

impl<R: Read> NoteShort<R> {
    fn new(inner: R) -> NoteShort<R> {
        NoteShort {
            inner,
            short: false,
        }
    }
}

impl<R: Read> Read for NoteShort<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.short = n < buf.len();
        Ok(n)
    }
}

/// Hands all the plaintext rustls has decrypted to [`ingest`].
fn read_plaintext<H: Handler>(
    conn: &mut Conn,
    id: usize,
    scratch: &mut [u8],
    h: &mut H,
) -> Option<CloseReason> {
    loop {
        let tls = conn.tls.as_mut()?;
        match tls.reader().read(scratch) {
            // The server sent close_notify.
            Ok(0) => return Some(end_of_stream(conn)),
            Ok(n) => {
                let now = Instant::now();
                if let Some(reason) = ingest(conn, id, &scratch[..n], h, now) {
                    return Some(reason);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
            // TCP ended without close_notify: for a WebSocket, whose close
            // frames say where the data ends, the same as a plain EOF.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Some(end_of_stream(conn));
            }
            Err(e) => return Some(CloseReason::Io(e)),
        }
    }
}

/// Why a connection whose server stopped sending ends.
fn end_of_stream(conn: &Conn) -> CloseReason {
    if conn.phase == Phase::Closing {
        CloseReason::Normal
    } else {
        CloseReason::Eof
    }
}

/// Starts a non-blocking connect to `addr` from the local address `local` (the system picks
/// the port), as [`TcpStream::connect`] does from whatever address the system picks.
fn connect_from(local: IpAddr, addr: SocketAddr) -> io::Result<TcpStream> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    socket
        .bind(&SocketAddr::new(local, 0).into())
        .map_err(|e| io::Error::new(e.kind(), format!("binding {local}: {e}")))?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        // The connect goes on; the socket reports its end as writable (or an error).
        Err(e) if in_progress(&e) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(socket.into()))
}

/// Whether a non-blocking connect's error only says it goes on: EINPROGRESS on Unix,
/// WSAEWOULDBLOCK on Windows.
fn in_progress(e: &io::Error) -> bool {
    #[cfg(unix)]
    if e.raw_os_error() == Some(libc::EINPROGRESS) {
        return true;
    }
    e.kind() == io::ErrorKind::WouldBlock
}

/// Whether a non-blocking connect has finished (mio's documented recipe:
/// check `SO_ERROR`, then whether the socket has a peer yet).
fn connect_result(stream: &TcpStream) -> io::Result<bool> {
    if let Some(e) = stream.take_error()? {
        return Err(e);
    }
    match stream.peer_addr() {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
        Err(e) => Err(e),
    }
}

/// Feeds freshly read bytes to a connection: completes the handshake, then
/// parses frames. Bytes of an incomplete frame are kept in `conn.rx`.
fn ingest<H: Handler>(
    conn: &mut Conn,
    id: usize,
    data: &[u8],
    h: &mut H,
    now: Instant,
) -> Option<CloseReason> {
    if conn.phase == Phase::Waiting {
        // An answer to a request not yet complete can only be a refusal (503, say).
        conn.rx.extend_from_slice(data);
        return match handshake::check_response(&conn.rx, &conn.accept) {
            Ok(None) => None,
            Err(e) => Some(CloseReason::Handshake(e)),
            Ok(Some(_)) => Some(CloseReason::Protocol(
                "the server accepted the upgrade before the request was complete".into(),
            )),
        };
    }
    if conn.phase == Phase::Handshaking {
        conn.rx.extend_from_slice(data);
        match handshake::check_response(&conn.rx, &conn.accept) {
            Ok(None) => return None,
            Err(e) => return Some(CloseReason::Handshake(e)),
            Ok(Some(head_len)) => {
                conn.rx.drain(..head_len);
                conn.phase = Phase::Open;
                h.on_open(id, conn, now);
                if conn.rx.is_empty() {
                    return None;
                }
                // Frames arrived together with the response head.
                return parse_buffered(conn, id, &[], h, now);
            }
        }
    }
    if conn.rx.is_empty() {
        // Fast path: parse straight out of the shared read buffer.
        let (used, outcome) = parse_frames(conn, id, data, h, now);
        if outcome.is_none() {
            conn.rx.extend_from_slice(&data[used..]);
        }
        return outcome;
    }
    parse_buffered(conn, id, data, h, now)
}

/// Parses `conn.rx` followed by `more`. The buffer is moved out while frames
/// are dispatched, so handlers can use `conn` while borrowing the payload.
fn parse_buffered<H: Handler>(
    conn: &mut Conn,
    id: usize,
    more: &[u8],
    h: &mut H,
    now: Instant,
) -> Option<CloseReason> {
    let mut rx = std::mem::take(&mut conn.rx);
    rx.extend_from_slice(more);
    let (used, outcome) = parse_frames(conn, id, &rx, h, now);
    rx.drain(..used);
    conn.rx = rx;
    conn.trim_rx();
    outcome
}

/// Dispatches every whole frame in `data`; returns the bytes consumed and
/// the reason to close the connection, if any.
fn parse_frames<H: Handler>(
    conn: &mut Conn,
    id: usize,
    data: &[u8],
    h: &mut H,
    now: Instant,
) -> (usize, Option<CloseReason>) {
    let mut used = 0;
    loop {
        match frame::decode(&data[used..]) {
            Ok(None) => return (used, None),
            Err(e) => return (used, Some(CloseReason::Protocol(e.to_string()))),
            Ok(Some(frame)) => {
                used += frame.len;
                if let Some(reason) = dispatch(conn, id, frame, h, now) {
                    return (used, Some(reason));
                }
            }
        }
    }
}

/// Acts on one frame: data goes to the handler, pings are answered, a close
/// frame from the server is answered and ends the connection.
fn dispatch<H: Handler>(
    conn: &mut Conn,
    id: usize,
    frame: Frame<'_>,
    h: &mut H,
    now: Instant,
) -> Option<CloseReason> {
    let deliver = conn.phase == Phase::Open;
    match frame.opcode {
        Opcode::Text | Opcode::Binary => {
            if conn.fragment.is_some() {
                return Some(CloseReason::Protocol(
                    "new message started inside a fragmented one".into(),
                ));
            }
            let kind = if frame.opcode == Opcode::Text {
                MessageKind::Text
            } else {
                MessageKind::Binary
            };
            if !frame.fin {
                conn.fragment = Some(Fragmented {
                    kind,
                    data: frame.payload.to_vec(),
                });
            } else if deliver {
                let msg = Message {
                    kind,
                    data: frame.payload,
                };
                h.on_message(id, msg, conn, now);
            }
        }
        Opcode::Continuation => {
            let Some(fragment) = conn.fragment.as_mut() else {
                return Some(CloseReason::Protocol(
                    "continuation frame without a message to continue".into(),
                ));
            };
            if fragment.data.len() + frame.payload.len() > MAX_PAYLOAD {
                return Some(CloseReason::Protocol(format!(
                    "fragmented message exceeds {MAX_PAYLOAD} bytes"
                )));
            }
            fragment.data.extend_from_slice(frame.payload);
            if frame.fin {
                let whole = conn.fragment.take().expect("checked above");
                if deliver {
                    let msg = Message {
                        kind: whole.kind,
                        data: &whole.data,
                    };
                    h.on_message(id, msg, conn, now);
                }
            }
        }
        Opcode::Ping => conn.send_frame(Opcode::Pong, frame.payload),
        Opcode::Pong => {}
        Opcode::Close => {
            if conn.phase == Phase::Closing {
                // Our close was answered; the server drops TCP next.
                return None;
            }
            let code = frame
                .payload
                .get(..2)
                .map(|b| u16::from_be_bytes([b[0], b[1]]));
            conn.send_frame(Opcode::Close, frame.payload.get(..2).unwrap_or(&[]));
            return Some(CloseReason::ClosedByServer(code));
        }
    }
    conn.error.take().map(CloseReason::Io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};
    use std::io::Write;
    use std::net::{TcpListener, TcpStream as StdTcpStream};

    /// A client and a server session that completed their TLS handshake in
    /// memory, the client trusting a CA made for the test.
    fn sessions() -> (ClientConnection, ServerConnection) {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server_config = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(ca.der().clone()).unwrap();
        let client_config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = "localhost".try_into().unwrap();
        let mut client = ClientConnection::new(Arc::new(client_config), name).unwrap();
        let mut server = ServerConnection::new(Arc::new(server_config)).unwrap();
        // Ping-pong the handshake (and the server's session tickets) until
        // neither side has anything left to say.
        while client.is_handshaking()
            || server.is_handshaking()
            || client.wants_write()
            || server.wants_write()
        {
            let mut wire = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut wire).unwrap();
            }
            let mut rest = &wire[..];
            while !rest.is_empty() {
                server.read_tls(&mut rest).unwrap();
                server.process_new_packets().unwrap();
            }
            let mut wire = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut wire).unwrap();
            }
            let mut rest = &wire[..];
            while !rest.is_empty() {
                client.read_tls(&mut rest).unwrap();
                client.process_new_packets().unwrap();
            }
        }
        (client, server)
    }

    /// The server's end of a TLS connection whose client is a [`Conn`].
    struct Server {
        tls: ServerConnection,
        tcp: StdTcpStream,
        /// TLS bytes written so far.
        sent: usize,
    }

    impl Server {
        /// Sends one binary message (an unmasked server frame) at once.
        fn send(&mut self, payload: &[u8]) {
            let mut frame = vec![0x82];
            match payload.len() {
                n if n < 126 => frame.push(n as u8),
                n => {
                    frame.push(126);
                    frame.extend_from_slice(&(n as u16).to_be_bytes());
                }
            }
            frame.extend_from_slice(payload);
            self.tls.writer().write_all(&frame).unwrap();
            while self.tls.wants_write() {
                self.sent += self.tls.write_tls(&mut self.tcp).unwrap();
            }
        }
    }

    /// An open `wss://` connection over loopback, and its server's end.
    fn open_tls_conn() -> (Conn, Server) {
        let (client, server) = sessions();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let std_stream = StdTcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (tcp, _) = listener.accept().unwrap();
        std_stream.set_nonblocking(true).unwrap();
        let mut conn = Conn::new(TcpStream::from_std(std_stream), Rng::with_seed(1));
        conn.start_tls(client);
        conn.phase = Phase::Open;
        let server = Server {
            tls: server,
            tcp,
            sent: 0,
        };
        (conn, server)
    }

    /// Waits until `bytes` TLS bytes wait in the client's socket, as when its
    /// readable edge is handled.
    fn wait_arrived(conn: &Conn, bytes: usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut buf = vec![0; 64 * 1024];
        while conn.stream.peek(&mut buf).unwrap_or(0) < bytes {
            assert!(
                Instant::now() < deadline,
                "the server's bytes never arrived"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Counts messages, and has the server answer each of the first
    /// `answers` at once, like a fast echo server in a closed loop.
    /// A TLS connection to a server that answers its first `answers` messages at once.
    fn answered_tls_conn(answers: usize) -> (Conn, Answering) {
        let (conn, server) = open_tls_conn();
        let h = Answering {
            server,
            received: Vec::new(),
            answers,
        };
        (conn, h)
    }

    struct Answering {
        server: Server,
        received: Vec<usize>,
        answers: usize,
    }

    impl Handler for Answering {
        fn on_message(&mut self, _: usize, msg: Message<'_>, _: &mut Conn, _: Instant) {
            self.received.push(msg.data.len());
            if self.answers > 0 {
                self.answers -= 1;
                self.server.send(&[7; 32]);
            }
        }
    }

    #[test]
    fn a_tls_connection_whose_server_answers_at_once_gets_one_read_per_event() {
        let (mut conn, mut h) = answered_tls_conn(100);
        let mut scratch = vec![0; SCRATCH];
        h.server.send(&[7; 32]);
        let mut read = 0;
        for turn in 1..=3 {
            let sent = h.server.sent;
            wait_arrived(&conn, sent - read);
            // The answer to each message is on the socket before the read
            // could look again; it waits for the next event, like the others'.
            let outcome = read_tls(&mut conn, 0, &mut scratch, false, &mut h);
            assert!(outcome.is_none(), "{outcome:?}");
            assert_eq!(h.received.len(), turn);
            read = sent;
        }
    }

    #[test]
    fn a_tls_read_that_fills_the_buffer_reads_on() {
        let (mut conn, mut h) = answered_tls_conn(0);
        let mut scratch = vec![0; SCRATCH];
        // One record of ~10 KB: more than rustls reads at once.
        h.server.send(&[1; 10_000]);
        wait_arrived(&conn, h.server.sent);
        let outcome = read_tls(&mut conn, 0, &mut scratch, false, &mut h);
        assert!(outcome.is_none(), "{outcome:?}");
        assert_eq!(h.received, [10_000]);
    }

    #[test]
    fn a_tls_connection_the_server_closed_is_read_to_its_end() {
        let (mut conn, mut h) = answered_tls_conn(0);
        let mut scratch = vec![0; SCRATCH];
        h.server.send(&[7; 32]);
        h.server.tcp.shutdown(std::net::Shutdown::Write).unwrap();
        wait_arrived(&conn, h.server.sent);
        // The event says the peer closed: the read after the short one sees
        // the end of the stream.
        let outcome = read_tls(&mut conn, 0, &mut scratch, true, &mut h);
        assert!(matches!(outcome, Some(CloseReason::Eof)), "{outcome:?}");
        assert_eq!(h.received, [32]);
    }

    #[test]
    fn note_short_tells_a_short_read_from_a_full_one() {
        let data = [1u8; 10];
        let mut reader = NoteShort::new(&data[..]);
        let mut buf = [0; 4];
        assert_eq!(reader.read(&mut buf).unwrap(), 4);
        assert!(!reader.short);
        assert_eq!(reader.read(&mut buf).unwrap(), 4);
        assert!(!reader.short);
        assert_eq!(reader.read(&mut buf).unwrap(), 2);
        assert!(reader.short);
    }
}
