//! Turning a connection away: 503 when the server has no room for it ([`Busy`]), 400 or
//! another 4xx when its request cannot be served, or a silent drop when it does not start with
//! the PROXY protocol header it owes.
//!
//! Every refusal is counted in `/metrics` once, here, and logged at most once: a flood of
//! refusals must not flood the log, so the busy ones are logged where a throttle decides
//! (admission's, or one in [`ServerState`]), and the rest by the functions below.
//!
//! Who calls what, from which thread: the accept loop's thread calls only [`reject_busy`],
//! which never blocks (every new connection waits behind it); every other function here runs
//! on the refused connection's own thread, which may linger over its answer.

use std::fmt;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use log::warn;

use crate::admission::Refusal;
use crate::connection::ServerState;
use crate::connection::transport::Transport;
use crate::http::{self, Response};
use crate::proxy::Peer;
use crate::proxy::protocol::ReadError;
use crate::sys::NoSigpipe;

/// Refusals for lack of descriptors are logged at most once per this interval.
pub(crate) const OUT_OF_DESCRIPTORS_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Connections dropped for a missing or broken PROXY protocol header are logged at most once
/// per this interval: a client that connects straight to a `--proxy-protocol` port (or a
/// scanner) could otherwise write a line per connection.
pub(crate) const PROXY_HEADER_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The status of a connection the server has no room for: Service Unavailable.
const BUSY: u16 = 503;

/// Why the server has no room for a connection: each is answered with a 503 that says so.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Busy {
    /// A cap (`admission.rs`), which admission has logged.
    Cap(Refusal),
    /// The system refused the connection a thread.
    NoThread,
    /// The system has no descriptor left for the connection's waker.
    OutOfDescriptors,
    /// Shutdown has begun, and no next process will take the connection over.
    ShuttingDown,
}

impl Busy {
    /// The reason `/metrics` counts it under.
    fn reason(self) -> &'static str {
        match self {
            Busy::Cap(Refusal::Full(_)) | Busy::NoThread | Busy::OutOfDescriptors => "limit",
            Busy::Cap(Refusal::AddressFull(_) | Refusal::AddressHandshakes(_)) => "per_address",
            Busy::ShuttingDown => "shutting_down",
        }
    }

    /// The 503 that tells the client.
    fn response(self) -> Response {
        Response::text(BUSY, self.to_string())
    }
}

impl fmt::Display for Busy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Busy::Cap(refusal) => write!(f, "server busy: {refusal}"),
            Busy::NoThread => f.write_str("server busy: no thread for this connection"),
            Busy::OutOfDescriptors => f.write_str("server busy: out of descriptors"),
            Busy::ShuttingDown => f.write_str("server shutting down"),
        }
    }
}

/// Counts a 503 in `/metrics`: every connection the server had no room for, whatever the
/// reason and wherever it was turned away.
fn count_busy(shared: &ServerState, busy: Busy) {
    shared.metrics.http_response(BUSY);
    shared.metrics.reject(busy.reason());
}

/// Answers 503 on a connection whose request has not been read, before TLS, without
/// blocking: the short response fits in the socket's empty send buffer, and a client that
/// does not read it loses nothing else. The caller has logged it, or decided not to.
pub(crate) fn reject_busy(stream: &TcpStream, shared: &ServerState, busy: Busy) {
    count_busy(shared, busy);
    let response = busy.response().to_bytes(false);
    let _ = stream.set_nonblocking(true);
    let _ = NoSigpipe(stream).write(&response);
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

/// Answers 503 on a connection whose request has been read: through its transport (TLS,
/// maybe), lingering for the client to read it like every answer. A cap's refusal has been
/// logged by admission; any other is logged here.
pub(super) fn refuse_busy(transport: &mut Transport, peer: Peer, shared: &ServerState, busy: Busy) {
    if !matches!(busy, Busy::Cap(_)) {
        warn!("{peer} rejected: {BUSY} {busy}");
    }
    count_busy(shared, busy);
    http::respond_and_close(transport, &busy.response(), false);
}

/// Refuses a request with 400, saying `why`.
pub(super) fn refuse_bad_request(
    transport: &mut Transport,
    peer: Peer,
    shared: &ServerState,
    why: impl Into<String>,
) {
    refuse(transport, peer, shared, Response::bad_request(why), false);
}

/// Sends an error response (4xx), logs and counts the rejection once, and closes the
/// connection.
#[cold]
#[inline(never)]
pub(super) fn refuse(
    transport: &mut Transport,
    peer: Peer,
    shared: &ServerState,
    response: Response,
    head_only: bool,
) {
    let why = String::from_utf8_lossy(&response.body);
    warn!("{peer} rejected: {} {}", response.status, why.trim_end());
    shared.metrics.http_response(response.status);
    shared.metrics.reject(match response.status {
        403 => "origin",
        _ => "bad_request",
    });
    http::respond_and_close(transport, &response, head_only);
}

/// Refuses a connection the server cannot give a waker: 503 at once, before reading, and one
/// log line per [`OUT_OF_DESCRIPTORS_LOG_INTERVAL`] however many are refused.
#[cold]
#[inline(never)]
pub(super) fn refuse_out_of_descriptors(
    stream: TcpStream,
    peer: SocketAddr,
    shared: &ServerState,
    error: &io::Error,
) {
    if shared.out_of_descriptors_log.pass().is_some() {
        warn!(
            "{peer} rejected: 503, cannot wait for it ({error}); such refusals are logged once \
             per {}s",
            OUT_OF_DESCRIPTORS_LOG_INTERVAL.as_secs()
        );
    }
    reject_busy(&stream, shared, Busy::OutOfDescriptors);
}

/// Logs a connection dropped for its PROXY protocol header, at most once per
/// [`PROXY_HEADER_LOG_INTERVAL`] for all of them.
#[cold]
#[inline(never)]
pub(super) fn drop_without_proxy_header(peer: SocketAddr, shared: &ServerState, error: &ReadError) {
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
