//! One accepted TCP connection, from its first byte to its last, on a thread of its own
//! (spawned by `server.rs`): [`handle`] reads the request head and answers plain HTTP or
//! completes the WebSocket handshake (`upgrade.rs`, after `tls_start.rs` on a TLS port), then
//! [`run_client`] runs the client's loop (`client.rs`, with its outgoing queue in
//! `send_queue.rs`) until the connection ends. A connection turned away on the way is answered
//! by `refuse.rs`.

// The steps before the client's loop: the request, TLS first on a TLS port, and refusals.
mod refuse;
#[cfg(feature = "tls")]
mod tls_start;
mod upgrade;

// The client's loop, and what it owns.
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

pub(crate) use refuse::{
    Busy, OUT_OF_DESCRIPTORS_LOG_INTERVAL, PROXY_HEADER_LOG_INTERVAL, reject_busy,
};

/// The HTTP status of a completed WebSocket handshake.
const SWITCHING_PROTOCOLS: u16 = 101;

/// The least time given to a write or a peek at the end of the handshake deadline, so that a
/// deadline just passed still lets the answer go out (a zero timeout would mean "none").
const MIN_WRITE_TIME: Duration = Duration::from_millis(1);

use std::cell::Cell;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use log::{debug, info};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::protocol::frame::coding::CloseCode;

use crate::admission::Ticket;
#[cfg(feature = "cluster")]
use crate::cluster::Cluster;
use crate::config::Config;
use crate::connection::client::{Client, Summary};
use crate::connection::refuse::{drop_without_proxy_header, refuse_out_of_descriptors};
use crate::connection::upgrade::{Upgraded, answer_request};
use crate::delivery::budget::Budget;
use crate::delivery::greeter::Greeter;
use crate::delivery::hub::{Hub, Membership, Room};
use crate::http::site::{Health, Inspect};
use crate::logging::Throttle;
use crate::metrics::Metrics;
use crate::proxy::protocol::{self, Header};
use crate::proxy::{self, Peer};
use crate::sys::Waker;
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

/// The server as every connection thread sees it: the configuration, the hub, the memory
/// budget and the rest, borrowed by each connection for its whole life.
#[derive(Debug)]
pub(crate) struct ServerState {
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

impl ServerState {
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
pub(crate) fn handle(
    stream: TcpStream,
    client: &Cell<Peer>,
    shared: &ServerState,
    mut ticket: Ticket,
) {
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
    shared: &ServerState,
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
        reject_busy(stream, shared, Busy::Cap(refusal));
        return None;
    }
    Some(client)
}

/// Runs an upgraded connection: joins the hub, schedules the greeting, runs the client's
/// loop until the connection ends, and logs how it ended.
///
/// In three functions that are never inlined into one, for the same reason as [`handle`]: the
/// loop runs in the frame of this one, and the locals of the steps before and after (the
/// metrics, the log line) would otherwise sit under it for the connection's whole life.
#[inline(never)]
fn run_client(upgraded: Upgraded, waker: Waker, peer: Peer, shared: &ServerState, ticket: Ticket) {
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
    shared: &'a ServerState,
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
fn leave(summary: &Summary, peer: Peer, shared: &ServerState) {
    shared.metrics.connection_closed(summary.ending.code);
    info!(
        "{peer} disconnected: {}, after {:.1?}, {}",
        summary.ending,
        summary.duration,
        crate::logging::count(summary.messages, "message")
    );
}

impl Inspect for ServerState {
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
