//! One accepted TCP connection, from its first byte to its last: read the request head, answer
//! plain HTTP or complete the WebSocket handshake, then serve the client (`client.rs`, with its
//! outgoing queue in `socket.rs`). Each runs on its own thread, spawned by `server.rs`.

pub(crate) mod client;
pub(crate) mod socket;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use log::{debug, info, warn};
use tungstenite::WebSocket;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{Role, WebSocketConfig};

use crate::admission::Ticket;
use crate::config::Config;
use crate::connection::client::Client;
use crate::connection::socket::Socket;
use crate::delivery::budget::Budget;
use crate::delivery::greeter::Greeter;
use crate::delivery::hub::Hub;
use crate::http::handshake;
use crate::http::site;
use crate::http::{self, HeadError, Response};

// What an idle connection keeps, about 14.5 KiB in all (scripts/bench.sh, hold rows):
// - its thread's stack: two touched 4 KiB pages of the 256 KiB reserved (server.rs), one of
//   them the thread's own bookkeeping; the handshake keeps its buffers on the heap so the
//   stack stays that shallow;
// - tungstenite's read buffer, READ_BUFFER_SIZE below, and its small state;
// - the outbox (a channel and a waker), the socket's empty queue, and a hub entry;
// - in the kernel, not counted above: the socket and its buffers. No other descriptor: the
//   waker is a signal (poll.rs).

/// tungstenite reads the socket at most this much at a time, into a buffer of at least this
/// size that it zero-fills before each read, so every connection that ever received a byte
/// keeps this much resident. Its default, 128 KiB, would be most of what an idle connection
/// costs. 2 KiB holds the small messages of chat-like traffic in one read and keeps an idle
/// connection near 15 KiB in all (measured: scripts/bench.sh, hold rows); the price is more
/// reads for big messages (a 4 KiB message takes three, a 16 MiB one eight thousand, which is
/// still milliseconds).
pub const READ_BUFFER_SIZE: usize = 2 * 1024;

/// What every connection thread shares.
#[derive(Debug)]
pub struct Shared {
    pub config: Config,
    pub hub: Arc<Hub>,
    /// The memory ceiling every connection counts against.
    pub budget: Arc<Budget>,
    pub greeter: Option<Greeter>,
    /// Set when shutdown starts: late handshakes are refused, and late joiners close at once.
    pub shutting_down: AtomicBool,
}

impl Shared {
    /// tungstenite's settings, derived from ours.
    fn websocket_config(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER_SIZE)
            // Every frame tungstenite writes (pongs, closes) goes straight into our queue,
            // which does its own batching (see socket.rs).
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
pub fn serve(stream: TcpStream, peer: SocketAddr, shared: &Shared, ticket: &mut Ticket) {
    if let Some(upgraded) = answer_request(stream, peer, shared, ticket) {
        serve_websocket(upgraded, peer, shared);
    }
}

/// A connection whose handshake has completed.
struct Upgraded {
    stream: TcpStream,
    /// Bytes the client sent after its request head: the start of its first frame.
    leftover: Vec<u8>,
}

/// Reads the request and answers it: plain HTTP (then the connection is done) or the
/// WebSocket handshake.
#[inline(never)]
fn answer_request(
    mut stream: TcpStream,
    peer: SocketAddr,
    shared: &Shared,
    ticket: &mut Ticket,
) -> Option<Upgraded> {
    let config = &shared.config;
    let deadline = Instant::now() + config.handshake_timeout;
    let head = http::read_head(&mut stream, deadline, config.max_request_head);
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
            refuse(&mut stream, peer, Response::text(431, why), false);
            return None;
        }
        Err(HeadError::Malformed(why)) => {
            refuse(&mut stream, peer, Response::text(400, why), false);
            return None;
        }
    };
    let head_only = request.method == "HEAD";
    if !handshake::is_websocket_request(&request) {
        let response = site::respond(&request, shared);
        info!(
            "{peer} {} {} -> {}",
            request.method, request.target, response.status
        );
        http::respond_and_close(&mut stream, &response, head_only);
        return None;
    }
    let accepted = match handshake::check(&request, config) {
        Ok(accepted) => accepted,
        Err(response) => {
            refuse(&mut stream, peer, response, head_only);
            return None;
        }
    };
    if shared.shutting_down.load(Ordering::SeqCst) {
        let response = Response::text(503, "server shutting down");
        refuse(&mut stream, peer, response, false);
        return None;
    }
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(std::time::Duration::from_millis(1));
    let sent = stream
        .set_write_timeout(Some(left))
        .and_then(|()| stream.write_all(&handshake::switching_protocols(&accepted)))
        .and_then(|()| stream.set_nonblocking(true))
        // Frames are whole messages queued by us; Nagle's algorithm would only delay them.
        .and_then(|()| stream.set_nodelay(true));
    if let Err(e) = sent {
        debug!("{peer} lost during the handshake: {e}");
        return None;
    }
    let origin = request.header("origin").unwrap_or("none");
    let subprotocol = accepted
        .subprotocol
        .as_deref()
        .map(|p| format!(", subprotocol {p}"));
    info!(
        "{peer} connected: path {}, origin {origin}{}",
        request.target,
        subprotocol.unwrap_or_default()
    );
    Some(Upgraded { stream, leftover })
}

/// Serves an upgraded connection: joins the hub, schedules the greeting, runs the client's
/// loop until the connection ends, and logs how it ended.
#[inline(never)]
fn serve_websocket(upgraded: Upgraded, peer: SocketAddr, shared: &Shared) {
    let config = &shared.config;
    let (outbox, inbox) = shared.hub.mailbox();
    let _membership = shared.hub.join(Arc::clone(&outbox));
    if shared.shutting_down.load(Ordering::SeqCst) {
        // Shutdown's close_all may have run before we joined; close ourselves.
        let _ = outbox.close(CloseCode::Away, "server shutting down");
    }
    if let Some(greeter) = &shared.greeter {
        greeter.schedule(&outbox);
    }
    // From here the hub holds the only strong reference; leaving it lets the outbox go.
    drop(outbox);

    let socket = Socket::new(upgraded.stream, Arc::clone(&shared.budget));
    let ws = WebSocket::from_partially_read(
        socket,
        upgraded.leftover,
        Role::Server,
        Some(shared.websocket_config()),
    );
    let summary = Client::new(ws, inbox, config, &shared.hub, &shared.budget, peer).run();
    info!(
        "{peer} disconnected: {}, after {:.1?}, {}",
        summary.ending,
        summary.duration,
        crate::logging::count(summary.messages, "message")
    );
}

/// Sends an error response, logs the rejection once, and closes the connection.
fn refuse(stream: &mut TcpStream, peer: SocketAddr, response: Response, head_only: bool) {
    let why = String::from_utf8_lossy(&response.body);
    warn!("{peer} rejected: {} {}", response.status, why.trim_end());
    http::respond_and_close(stream, &response, head_only);
}
