//! Shutting down: the request ([`ShutdownHandle`]), which wakes every accept loop, and what
//! follows once they have stopped: every client closed with a Close that says why, and
//! waited for, within bounds.
//!
//! Any thread may ask for shutdown (a signal handler, a test, an accept loop that failed);
//! asking twice is harmless. Only the thread that called `Server::run` closes the clients
//! ([`shut_down`]), once, after every accept loop has returned: no connection is admitted
//! while it runs.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use log::info;
use tungstenite::protocol::frame::coding::CloseCode;

use super::Summary;
use crate::admission::Admission;
use crate::connection::ServerState;
use crate::logging::count;
use crate::sys::Waker;

/// At shutdown, how long a connection accepted but whose request has not come yet is waited
/// for. A client's request follows its connection within milliseconds; one that has sent
/// nothing after this is slow or idle, and must not hold a restart up for its whole
/// `--handshake-timeout` (the next process starts only when this one has exited).
const HANDSHAKE_GRACE: Duration = Duration::from_millis(500);

/// The Close every client gets when the server stops: come back later, or, when the listening
/// socket was handed over by a service manager that keeps it open across a restart, come back
/// now (1012 "service restart": the next process is already queueing connections).
const SHUTTING_DOWN: (CloseCode, &str) = (CloseCode::Away, "server shutting down");
const RESTARTING: (CloseCode, &str) = (CloseCode::Restart, "service restart");

/// The Close every client gets at shutdown, depending on whether the listening sockets were
/// handed over by a service manager (and so outlive this process).
pub(super) fn goodbye(inherited: bool) -> (CloseCode, &'static str) {
    if inherited { RESTARTING } else { SHUTTING_DOWN }
}

/// Asks a running server to shut down; clone it into a signal handler or a test.
#[derive(Debug, Clone)]
pub struct ShutdownHandle(pub(super) Arc<ShutdownRequest>);

impl ShutdownHandle {
    /// Starts a graceful shutdown: stop accepting, close every client with 1001 (1012 when
    /// the listening socket was handed over by a service manager), wait for their replies for
    /// at most the close timeout.
    pub fn shutdown(&self) {
        self.0.request();
    }
}

#[derive(Debug)]
pub(super) struct ShutdownRequest {
    requested: AtomicBool,
    /// One per listener: each has an accept loop of its own.
    wakers: Vec<Waker>,
}

impl ShutdownRequest {
    /// Not requested yet, with a waker for each of `listeners` accept loops.
    pub(super) fn new(listeners: usize) -> io::Result<ShutdownRequest> {
        Ok(ShutdownRequest {
            requested: AtomicBool::new(false),
            wakers: (0..listeners)
                .map(|_| Waker::try_new())
                .collect::<io::Result<_>>()?,
        })
    }

    pub(super) fn request(&self) {
        self.requested.store(true, Ordering::SeqCst);
        for waker in &self.wakers {
            waker.wake();
        }
    }

    pub(super) fn is_requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// What wakes the accept loop of listener `index`.
    pub(super) fn waker(&self, index: usize) -> &Waker {
        &self.wakers[index]
    }
}

/// Closes every client with 1001 (1012 under socket activation) and waits for them, at most
/// the close timeout.
pub(super) fn shut_down(shared: &ServerState, admission: &Admission) -> Summary {
    shared.shutting_down.store(true, Ordering::SeqCst);
    let (code, reason) = shared.goodbye;
    let open = shared.hub.close_all(code, reason);
    info!(
        "shutting down: closing {}",
        count(open as u64, "connection")
    );
    // A client's thread gives the reply close_timeout, then lingers at most that long
    // more to send what is left; a little more covers the threads' own work.
    let wait = shared.config.close_timeout * 2 + Duration::from_millis(500);
    let until = Instant::now() + wait;
    shared.hub.wait_until_empty(wait);
    // And for the connections still in their handshake: answered, not cut off by the exit.
    admission.wait_until_none(
        until.saturating_duration_since(Instant::now()),
        HANDSHAKE_GRACE,
    );
    #[cfg(feature = "cluster")]
    if let Some(cluster) = &shared.cluster {
        cluster.stop();
    }
    let unfinished = shared.hub.open_connections();
    let summary = Summary {
        connections: shared.hub.accepted(),
        messages: shared.metrics.messages_received(),
        open_at_shutdown: open,
        unfinished,
    };
    info!(
        "stopped: served {} and {}; closed {} open at shutdown, {unfinished} still closing at \
         exit",
        count(summary.connections, "connection"),
        count(summary.messages, "message"),
        count(open as u64, "connection"),
    );
    summary
}
