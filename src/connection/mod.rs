//! One accepted TCP connection, from its first byte to its last, on a thread of its own
//! (spawned by `server.rs`): [`handle`] reads the request head and answers plain HTTP or
//! completes the WebSocket handshake, then [`run_client`] runs the client's loop (`client.rs`,
//! with its outgoing queue in `send_queue.rs`) until the connection ends.

mod boundary;
mod client;
mod controlled;
mod metered_reader;
mod pace;
mod read_size;
mod send_queue;
mod settle;
mod transport;
mod wire;

/// The first byte of a TLS connection: a handshake record (RFC 8446 section 5.1).
#[cfg(feature = "tls")]
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Refusals for lack of descriptors are logged at most once per this interval.
pub(crate) const OUT_OF_DESCRIPTORS_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Connections dropped for a missing or broken PROXY protocol header are logged at most once
/// per this interval: a client that connects straight to a `--proxy-protocol` port (or a
/// scanner) could otherwise write a line per connection.
pub(crate) const PROXY_HEADER_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The status of a refused connection: Service Unavailable.
pub(crate) const BUSY: u16 = 503;

/// The HTTP status of a completed WebSocket handshake.
const SWITCHING_PROTOCOLS: u16 = 101;

/// The least time given to a write or a peek at the end of the handshake deadline, so that a
/// deadline just passed still lets the answer go out (a zero timeout would mean "none").
const MIN_WRITE_TIME: Duration = Duration::from_millis(1);

use std::cell::Cell;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use log::{debug, info, warn};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::protocol::frame::coding::CloseCode;

use crate::admission::{Refusal, Ticket};
#[cfg(feature = "cluster")]
use crate::cluster::Cluster;
use crate::config::{Config, Mode};
use crate::connection::client::{Client, Summary};
use crate::connection::controlled::Requested;
use crate::connection::transport::Transport;
use crate::delivery::budget::Budget;
use crate::delivery::greeter::Greeter;
use crate::delivery::hub::{Hub, Membership, Room};
use crate::delivery::resume::Resume;
use crate::http::controls::{self, Controls};
use crate::http::handshake;
use crate::http::site::{self, Health, Inspect};
use crate::http::{self, Conn, HeadError, Response};
use crate::http::{query, room};
use crate::logging::Throttle;
use crate::metrics::Metrics;
use crate::proxy::protocol::{self, Header, ReadError};
use crate::proxy::{self, Peer, forwarded};
use crate::sys::{NoSigpipe, Waker};
#[cfg(feature = "tls")]
use crate::tls::Tls;

// What an idle connection keeps (docs/performance.md has the figures, from the bench's hold
// rows):
// - its thread's stack: the pages it touched of the 256 KiB reserved (server.rs), glibc's
//   thread bookkeeping among them; the handshake keeps its buffers on the heap so that the
//   stack stays shallow;
// - tungstenite's small state, and no read buffer: it has one only while the client sends
//   (read_size.rs);
// - the outbox (a channel and a waker), the socket's empty queue, and a hub entry;
// - in the kernel, not counted above: the thread's kernel stack and the socket with its
//   buffers. No other descriptor: the waker is a signal (sys/ppoll.rs).
// After a burst, the connection gives back what the burst grew (settle.rs).

/// What every connection thread shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) hub: Arc<Hub>,
    /// The cluster this instance belongs to, with `--redis`: broadcasts go through it.
    #[cfg(feature = "cluster")]
    pub(crate) cluster: Option<Cluster>,
    /// The memory ceiling every connection counts against.
    pub(crate) budget: Arc<Budget>,
    /// TLS, when the port speaks it.
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<Arc<Tls>>,
    /// What `/metrics` reports.
    pub(crate) metrics: Arc<Metrics>,
    /// Refusals for lack of descriptors, logged at most once per
    /// [`OUT_OF_DESCRIPTORS_LOG_INTERVAL`].
    pub(crate) out_of_descriptors_log: Throttle,
    /// Connections without a valid PROXY protocol header, logged at most once per
    /// [`PROXY_HEADER_LOG_INTERVAL`].
    pub(crate) proxy_header_log: Throttle,
    pub(crate) greeter: Option<Greeter>,
    /// Set when shutdown starts: late handshakes are refused, and late joiners close at once.
    pub(crate) shutting_down: AtomicBool,
    /// The Close every client gets at shutdown: 1001, or 1012 "service restart" when the
    /// listening socket outlives this process (socket activation).
    pub(crate) goodbye: (CloseCode, &'static str),
}

impl Shared {
    /// Sends a client's broadcasts to everyone in its room: in a cluster, to Redis, which sends them back
    /// to every instance, this one included; otherwise straight to every local connection.
    pub(crate) fn broadcast(&self, room: &Room, frames: &[Bytes]) {
        #[cfg(feature = "cluster")]
        if let Some(cluster) = &self.cluster {
            return cluster.publish(room.name(), frames);
        }
        self.hub.broadcast_in(room, frames);
    }

    /// Whether `ip` is a trusted proxy's, whose forwarding headers name its client.
    pub(crate) fn trusts(&self, ip: std::net::IpAddr) -> bool {
        proxy::is_trusted(&self.config.trusted_proxies, ip)
    }

    /// Whether this port speaks TLS.
    pub(crate) fn speaks_tls(&self) -> bool {
        #[cfg(feature = "tls")]
        return self.tls.is_some();
        #[cfg(not(feature = "tls"))]
        false
    }

    /// tungstenite's settings, derived from ours; the read step is the connection's own
    /// (`read_size.rs`).
    fn websocket_config(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            // Every frame tungstenite writes (pongs, closes) goes straight into our queue,
            // which does its own batching (see send_queue.rs).
            .write_buffer_size(0)
            .max_message_size(Some(self.config.max_message_size))
            // A frame longer than the largest message can only make a message too big, and the
            // frame limit is checked on the header, before tungstenite reserves room for the
            // payload: so the smaller limit refuses it at once, without waiting for its bytes.
            .max_frame_size(Some(
                self.config.max_frame_size.min(self.config.max_message_size),
            ))
    }
}

/// Serves one connection to its end.
///
/// Two steps in two functions that are never inlined into one: the request's locals (its
/// head, headers, handshake answer) leave the stack before the WebSocket's loop begins. A
/// thread keeps every stack page it ever touched, so an idle connection costs the deeper of
/// the two steps, not their sum.
///
/// `ticket` is the connection's place under the caps. It is given back before the line that
/// says the client disconnected, so a client that reads that line may come straight back.
/// (A panic gives it back too, as it unwinds.)
pub(crate) fn handle(stream: TcpStream, client: &Cell<Peer>, shared: &Shared, mut ticket: Ticket) {
    let peer = client.get().addr;
    // The mailbox first: its waker may need descriptors (the portable backend's poller), and
    // a client the server cannot wake is better told "busy" than upgraded and dropped.
    let waker = match Waker::try_new() {
        Ok(waker) => waker,
        Err(e) => return refuse_out_of_descriptors(stream, peer, shared, &e),
    };
    // One deadline for everything before the upgrade: the PROXY header, TLS, the request.
    let deadline = Instant::now() + shared.config.handshake_timeout;
    let Some(arrived) = arrive(&stream, peer, shared, &mut ticket, deadline) else {
        return;
    };
    client.set(arrived);
    if let Some(upgraded) = answer_request(stream, client, shared, &mut ticket, deadline) {
        run_client(upgraded, waker, client.get(), shared, ticket);
    }
}

/// Who the connection is for before a byte of HTTP or TLS: the PROXY protocol header's
/// client (`--proxy-protocol`), or the peer. Unless that is a trusted proxy, whose request
/// names the client later, it is counted under its address now (`Ticket::rehome`). `None`:
/// the connection was dropped (no valid header) or refused (a per-address cap).
fn arrive(
    stream: &TcpStream,
    peer: SocketAddr,
    shared: &Shared,
    ticket: &mut Ticket,
    deadline: Instant,
) -> Option<Peer> {
    let mut client = Peer::direct(peer);
    if shared.config.proxy_protocol {
        match protocol::read_header(stream, deadline) {
            Ok(Header::Client(addr)) => client = Peer::via(addr, peer),
            Ok(Header::Local) => {}
            Err(e) => {
                drop_without_proxy_header(peer, shared, &e);
                return None;
            }
        }
    }
    if !shared.trusts(client.addr.ip())
        && let Err(refusal) = ticket.rehome(client, client.addr.ip())
    {
        count_busy(shared, refusal);
        reject_busy(stream, refusal);
        return None;
    }
    Some(client)
}

/// Logs a connection dropped for its PROXY protocol header, at most once per
/// [`PROXY_HEADER_LOG_INTERVAL`] for all of them.
#[cold]
#[inline(never)]
fn drop_without_proxy_header(peer: SocketAddr, shared: &Shared, error: &ReadError) {
    let why = match error {
        ReadError::Timeout => format!(
            "no PROXY protocol header within {:?}",
            shared.config.handshake_timeout
        ),
        ReadError::Closed(0) => "closed before sending a PROXY protocol header".to_string(),
        ReadError::Closed(n) => {
            format!("closed after {n} bytes of a PROXY protocol header")
        }
        ReadError::Malformed(why) => why.clone(),
        ReadError::Io(e) => format!("lost before its PROXY protocol header: {e}"),
    };
    shared.metrics.reject("bad_request");
    if let Some(held_back) = shared.proxy_header_log.pass() {
        let more = if held_back > 0 {
            format!(" ({held_back} more since the last such line)")
        } else {
            String::new()
        };
        warn!(
            "{peer} dropped: {why} (--proxy-protocol: every connection must start with one)\
             {more}; such drops are logged once per {}s",
            PROXY_HEADER_LOG_INTERVAL.as_secs()
        );
    }
}

/// Counts a refusal by a cap: a 503.
fn count_busy(shared: &Shared, refusal: Refusal) {
    shared.metrics.http_response(BUSY);
    shared.metrics.reject(match refusal {
        Refusal::Full(_) => "limit",
        Refusal::AddressFull(_) | Refusal::AddressHandshakes(_) => "per_address",
    });
}

/// Refuses a connection by a cap, without blocking: the short 503 fits in the socket's empty
/// send buffer, and a client that does not read it loses nothing else. (Admission has logged
/// it, at most once per address and interval.) Before TLS: like every refusal at accept.
pub(crate) fn reject_busy(stream: &TcpStream, refusal: Refusal) {
    reject_with(stream, &format!("server busy: {refusal}"));
}

/// Answers 503 with `why` on the accepting thread, without blocking it (see [`reject_busy`]).
pub(crate) fn reject_with(stream: &TcpStream, why: &str) {
    let response = Response::text(BUSY, why).to_bytes(false);
    let _ = stream.set_nonblocking(true);
    let _ = NoSigpipe(stream).write(&response);
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

/// Refuses a connection the server cannot give a waker: 503 at once, before reading, and one
/// log line per [`OUT_OF_DESCRIPTORS_LOG_INTERVAL`] however many are refused.
#[cold]
#[inline(never)]
fn refuse_out_of_descriptors(
    stream: TcpStream,
    peer: SocketAddr,
    shared: &Shared,
    error: &io::Error,
) {
    if shared.out_of_descriptors_log.pass().is_some() {
        warn!(
            "{peer} rejected: 503, cannot wait for it ({error}); such refusals are logged once \
             per {}s",
            OUT_OF_DESCRIPTORS_LOG_INTERVAL.as_secs()
        );
    }
    shared.metrics.http_response(BUSY);
    shared.metrics.reject("limit");
    let response = Response::text(BUSY, "server busy: out of descriptors");
    let _ = stream.set_nonblocking(true);
    let _ = NoSigpipe(&stream).write_all(&response.to_bytes(false));
}

/// A connection whose upgrade request was accepted; its 101 goes out once it is in its room
/// (see [`join`]).
struct Upgraded {
    /// Still blocking, under the handshake's deadline.
    transport: Transport,
    /// The 101 answer, and when it must have gone out.
    answer: Vec<u8>,
    deadline: Instant,
    /// Bytes the client sent after its request head: the start of its first frame.
    leftover: Vec<u8>,
    /// The room it joins; the lobby (empty) in echo mode.
    room: String,
    /// Where it asked to resume, with `?resume`.
    resume: Option<Resume>,
    /// What the "connected" log line says after the peer: path, room, origin, subprotocol.
    described: String,
    /// The test controls it asked for, if any (`http/controls.rs`).
    controls: Option<Box<Requested>>,
}

impl Upgraded {
    /// Sends the 101 and turns the stream to the loop's phase (non-blocking).
    fn switch(self) -> io::Result<(Transport, Vec<u8>)> {
        let Upgraded {
            mut transport,
            answer,
            deadline,
            leftover,
            ..
        } = self;
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(MIN_WRITE_TIME);
        transport.set_write_timeout(Some(left))?;
        transport.write_all(&answer)?;
        transport.flush()?;
        Ok((transport.into_nonblocking()?, leftover))
    }
}

/// Reads the request and answers it: plain HTTP (then the connection is done) or the
/// WebSocket handshake. With TLS, the TLS handshake comes first, under the same deadline.
#[inline(never)]
fn answer_request(
    stream: TcpStream,
    client: &Cell<Peer>,
    shared: &Shared,
    ticket: &mut Ticket,
    deadline: Instant,
) -> Option<Upgraded> {
    let config = &shared.config;
    let peer = client.get();
    #[cfg(feature = "tls")]
    let mut transport = match &shared.tls {
        None => Transport::Plain(Arc::new(stream)),
        Some(tls) => start_tls(stream, peer, tls, deadline, shared)?,
    };
    #[cfg(not(feature = "tls"))]
    let mut transport = Transport::Plain(Arc::new(stream));
    let head = http::read_head(&mut transport, deadline, config.max_request_head);
    // A trusted proxy's request names its client: counted under that address from here.
    let peer = match &head {
        Ok((request, _)) if shared.trusts(peer.addr.ip()) => {
            match forwarded::client(request, peer.addr, &config.trusted_proxies) {
                Ok(addr) => {
                    let named = Peer::via(addr, peer.socket());
                    if let Err(refusal) = ticket.rehome(named, addr.ip()) {
                        count_busy(shared, refusal);
                        let busy = Response::text(BUSY, format!("server busy: {refusal}"));
                        http::respond_and_close(&mut transport, &busy, false);
                        return None;
                    }
                    client.set(named);
                    named
                }
                Err(why) => {
                    ticket.handshake_done();
                    let response = Response::text(400, why);
                    refuse(&mut transport, peer, shared, response, false);
                    return None;
                }
            }
        }
        _ => peer,
    };
    // Whatever came of it, the client is no longer one whose request may never come: what
    // follows is the server's own quick work, so it stops counting as an unfinished handshake.
    ticket.handshake_done();
    let (request, leftover) = match head {
        Ok(head) => head,
        Err(HeadError::Timeout) => {
            info!(
                "{peer} dropped: no complete request within {:?}",
                config.handshake_timeout
            );
            return None;
        }
        Err(HeadError::Closed) => {
            debug!("{peer} closed before sending a request");
            return None;
        }
        Err(HeadError::Io(e)) if e.kind() == io::ErrorKind::InvalidData => {
            info!("{peer} dropped: TLS handshake failed: {e}");
            return None;
        }
        Err(HeadError::Io(e)) => {
            debug!("{peer} lost before sending a request: {e}");
            return None;
        }
        Err(HeadError::TooLarge) => {
            let limit = config.max_request_head;
            let why = format!(
                "request head over {limit} bytes or {} lines",
                http::MAX_HEADERS
            );
            refuse(
                &mut transport,
                peer,
                shared,
                Response::text(431, why),
                false,
            );
            return None;
        }
        Err(HeadError::Malformed(why)) => {
            refuse(
                &mut transport,
                peer,
                shared,
                Response::text(400, why),
                false,
            );
            return None;
        }
    };
    let head_only = request.method == "HEAD";
    if !handshake::is_websocket_request(&request) {
        let response = if config.test_controls && site::is_echo_request(&request) {
            let json = controls::whoami(
                &request,
                peer.addr,
                peer.socket(),
                None,
                transport.tls_info().as_ref(),
            );
            site::echo_request(json)
        } else {
            site::respond(&request, config.demo_page, shared)
        };
        info!(
            "{peer} {} {} -> {}",
            request.method, request.target, response.status
        );
        shared.metrics.http_response(response.status);
        http::respond_and_close(&mut transport, &response, head_only);
        return None;
    }
    let accepted = match handshake::check(&request, config) {
        Ok(accepted) => accepted,
        Err(response) => {
            refuse(&mut transport, peer, shared, response, head_only);
            return None;
        }
    };
    let found = room_and_position(&request.target, config).and_then(|(room, resume)| {
        let controls = if config.test_controls {
            Controls::parse(&request.target, config, resume.is_some())?
        } else {
            None
        };
        Ok((room, resume, controls))
    });
    let (room, resume, controls) = match found {
        Ok(found) => found,
        Err(why) => {
            refuse(
                &mut transport,
                peer,
                shared,
                Response::text(400, why),
                false,
            );
            return None;
        }
    };
    // A late handshake during shutdown: refused, unless the listening socket outlives this
    // process; then it is upgraded and told to come back (1012, in `join`), to be served by
    // the next process.
    if shared.shutting_down.load(Ordering::SeqCst) && shared.goodbye.0 != CloseCode::Restart {
        let response = Response::text(BUSY, "server shutting down");
        refuse(&mut transport, peer, shared, response, false);
        return None;
    }
    let origin = request.header("origin").unwrap_or("none");
    let subprotocol = accepted
        .subprotocol
        .as_deref()
        .map(|p| format!(", subprotocol {p}"));
    let in_room = match (&resume, config.mode) {
        (Some(Resume::After(epoch, offset)), _) => {
            format!(", room {room:?}, resuming after {epoch}:{offset}")
        }
        (Some(Resume::Newcomer), _) => format!(", room {room:?}, resuming"),
        (None, Mode::Broadcast) => format!(", room {room:?}"),
        (None, Mode::Echo) => String::new(),
    };
    let described = format!(
        "path {}{in_room}, origin {origin}{}{}",
        request.target,
        subprotocol.unwrap_or_default(),
        if transport.is_tls() { ", TLS" } else { "" }
    );
    let controls = controls.map(|controls| {
        let whoami = controls.whoami.then(|| {
            controls::whoami(
                &request,
                peer.addr,
                peer.socket(),
                accepted.subprotocol.as_deref(),
                transport.tls_info().as_ref(),
            )
        });
        Box::new(Requested { controls, whoami })
    });
    Some(Upgraded {
        transport,
        answer: handshake::switching_protocols(&accepted),
        deadline,
        leftover,
        room,
        resume,
        described,
        controls,
    })
}

/// The room a request joins, and where it asks to resume, or why it cannot be served. In
/// broadcast mode the path names the room; echo mode, and --single-room, ignore it.
fn room_and_position(target: &str, config: &Config) -> Result<(String, Option<Resume>), String> {
    let room = if config.mode == Mode::Broadcast && config.rooms {
        room::from_target(target)?
    } else {
        String::new()
    };
    Ok((room, resume_position(target, config)?))
}

/// Where the request asks to resume (`?resume`, see `delivery/resume.rs`), if it does, or why
/// that cannot be served.
fn resume_position(target: &str, config: &Config) -> Result<Option<Resume>, String> {
    let Some(value) = query::param(target, "resume")? else {
        return Ok(None);
    };
    if config.mode != Mode::Broadcast {
        return Err(
            "resume needs a server in broadcast mode (--broadcast --history N): an echo has \
             no position to resume from"
                .to_string(),
        );
    }
    if config.history == 0 {
        return Err(
            "resume needs a server that keeps history (--history N, N > 0): without it there \
             is nothing to resume from"
                .to_string(),
        );
    }
    Resume::parse(&value).map(Some)
}

/// Begins TLS on an accepted socket, or refuses what is not TLS: a browser or `curl` speaking
/// plain HTTP to the TLS port gets a plain 400 that says what to use instead; anything else
/// that does not start like a TLS handshake is dropped. One log line at most either way.
#[cfg(feature = "tls")]
#[inline(never)]
fn start_tls(
    stream: TcpStream,
    peer: Peer,
    tls: &Tls,
    deadline: Instant,
    shared: &Shared,
) -> Option<Transport> {
    let left = deadline.saturating_duration_since(Instant::now());
    let mut first = [0u8; 1];
    let peeked = stream
        .set_read_timeout(Some(left.max(MIN_WRITE_TIME)))
        .and_then(|()| stream.peek(&mut first));
    match peeked {
        Ok(0) => {
            debug!("{peer} closed before sending a request");
            None
        }
        Ok(_) if first[0] == TLS_HANDSHAKE_RECORD => match tls.accept() {
            Ok(session) => Some(Transport::tls(stream, session)),
            Err(e) => {
                warn!("{peer} dropped: cannot start a TLS session: {e}");
                None
            }
        },
        Ok(_) if first[0].is_ascii_uppercase() => {
            let why = "this port speaks TLS only: use https:// or wss://";
            refuse(
                &mut Transport::Plain(Arc::new(stream)),
                peer,
                shared,
                Response::text(400, why),
                false,
            );
            None
        }
        Ok(_) => {
            info!(
                "{peer} dropped: not a TLS handshake (first byte {:#04x})",
                first[0]
            );
            None
        }
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            info!(
                "{peer} dropped: no TLS handshake within {:?}",
                shared.config.handshake_timeout
            );
            None
        }
        Err(e) => {
            debug!("{peer} lost before sending a request: {e}");
            None
        }
    }
}

/// Runs an upgraded connection: joins the hub, schedules the greeting, runs the client's
/// loop until the connection ends, and logs how it ended.
///
/// In three functions that are never inlined into one, for the same reason as [`handle`]: the
/// loop runs in the frame of this one, and the locals of the steps before and after (the
/// metrics, the log line) would otherwise sit under it for the connection's whole life.
#[inline(never)]
fn run_client(upgraded: Upgraded, waker: Waker, peer: Peer, shared: &Shared, ticket: Ticket) {
    let Some((membership, client)) = join(upgraded, waker, peer, shared) else {
        return;
    };
    let summary = client.run();
    drop(ticket);
    leave(&summary, peer, shared);
    drop(membership);
}

/// Joins its room (and gets its history), answers 101, schedules the greeting, and makes the
/// client. In its room before the 101 goes out: a client that saw its upgrade hears every
/// broadcast sent after that. `None`: the 101 could not be sent (the room is left at once).
#[inline(never)]
fn join<'a>(
    mut upgraded: Upgraded,
    waker: Waker,
    peer: Peer,
    shared: &'a Shared,
) -> Option<(Membership, Box<Client<'a>>)> {
    // In a cluster with history, a newcomer's history comes from Redis (cluster/mod.rs); while
    // the link is down, from this instance.
    #[cfg(feature = "cluster")]
    let cluster = shared
        .cluster
        .as_ref()
        .filter(|_| shared.config.history > 0);
    #[cfg(feature = "cluster")]
    let from_redis = cluster.is_some_and(|cluster| cluster.is_up());
    #[cfg(not(feature = "cluster"))]
    let from_redis = false;
    // A resuming client counts room messages: no greeting comes between them.
    let greeter = shared
        .greeter
        .as_ref()
        .filter(|_| upgraded.resume.is_none());
    let resume = upgraded.resume.take();
    let (membership, outbox, inbox) = shared.hub.join(&upgraded.room, waker, from_redis, resume);
    #[cfg(feature = "cluster")]
    match cluster {
        Some(cluster) if from_redis => {
            cluster.request_history(membership.room().name(), membership.id());
        }
        Some(_) => info!(
            "{peer} gets the history of room {:?} from this instance only: the link to Redis \
             is down",
            upgraded.room
        ),
        None => {}
    }
    let described = std::mem::take(&mut upgraded.described);
    let controls = upgraded.controls.take();
    let (transport, leftover) = match upgraded.switch() {
        Ok(switched) => switched,
        Err(e) => {
            debug!("{peer} lost during the handshake: {e}");
            return None;
        }
    };
    // The greeting falls due counting from the 101, before anything else: under a burst of
    // handshakes the log line below can wait its turn for many milliseconds.
    if let Some(greeter) = greeter {
        greeter.schedule(&outbox);
    }
    shared.metrics.http_response(SWITCHING_PROTOCOLS);
    info!("{peer} connected: {described}");
    if shared.shutting_down.load(Ordering::SeqCst) {
        // Shutdown's close_all may have run before we joined; close ourselves.
        let (code, reason) = shared.goodbye;
        let _ = outbox.close(code, reason);
    }
    // From here the hub holds the only strong reference; leaving it lets the outbox go.
    drop(outbox);
    shared.metrics.connection_opened();
    let room = Arc::clone(membership.room());
    let client = Client::start(transport, leftover, inbox, room, shared, peer, controls);
    Some((membership, client))
}

/// Counts and logs how the connection ended.
#[inline(never)]
fn leave(summary: &Summary, peer: Peer, shared: &Shared) {
    shared.metrics.connection_closed(summary.ending.code);
    info!(
        "{peer} disconnected: {}, after {:.1?}, {}",
        summary.ending,
        summary.duration,
        crate::logging::count(summary.messages, "message")
    );
}

/// Sends an error response, logs and counts the rejection once, and closes the connection.
#[cold]
#[inline(never)]
fn refuse(
    transport: &mut Transport,
    peer: Peer,
    shared: &Shared,
    response: Response,
    head_only: bool,
) {
    let why = String::from_utf8_lossy(&response.body);
    warn!("{peer} rejected: {} {}", response.status, why.trim_end());
    shared.metrics.http_response(response.status);
    shared.metrics.reject(match response.status {
        403 => "origin",
        BUSY => "shutting_down",
        _ => "bad_request",
    });
    http::respond_and_close(transport, &response, head_only);
}

impl Inspect for Shared {
    fn health(&self) -> Health {
        #[cfg(feature = "cluster")]
        let cluster = self.cluster.as_ref().map(|cluster| {
            let health = cluster.health();
            (health.up, health.json_fields())
        });
        #[cfg(not(feature = "cluster"))]
        let cluster = None;
        Health {
            connections: self.hub.open_connections(),
            uptime: self.hub.uptime(),
            messages: self.metrics.messages_received(),
            mode: self.config.mode,
            greeting_delay: self.config.greeting.as_ref().map(|greeting| greeting.delay),
            rooms: self.hub.rooms_open(),
            memory_bytes: self.budget.used(),
            memory_limit_bytes: self.budget.limit(),
            cluster,
        }
    }

    fn metrics(&self) -> Option<String> {
        #[cfg(feature = "metrics")]
        if self.config.metrics {
            #[cfg(feature = "cluster")]
            let redis = self.cluster.as_ref().map(|cluster| {
                let health = cluster.health();
                (health.up, health.outages)
            });
            #[cfg(not(feature = "cluster"))]
            let redis = None;
            let (used, limit) = (self.budget.used(), self.budget.limit());
            return Some(
                self.metrics
                    .render(used, limit, self.hub.rooms_open(), redis),
            );
        }
        None
    }
}
