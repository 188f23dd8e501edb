//! Accepting connections: one loop per listening socket, each on a thread of its own, that
//! admits what it accepts ([`Admission`]) and gives it a connection thread, or answers 503.
//!
//! An accept loop must never block on a client: everything it does to a connection is
//! non-blocking, and a refusal is one short write. Each loop alone touches its listener, its
//! waker and its backoff; connection threads only get what it hands them (the socket, the
//! ticket, [`ServerState`]), and the counters behind `/metrics` and the caps are shared by all.
//!
//! [`Admission`]: crate::admission::Admission
//! [`ServerState`]: crate::connection::ServerState

use std::cell::Cell;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use log::{error, info, warn};

use super::Server;
use crate::admission::Ticket;
use crate::connection::{self, Busy};
use crate::proxy::{self, Peer};
use crate::sync;
use crate::sys::activation::Notice;
use crate::sys::{self, Interest, Waker};

/// When accept fails for lack of descriptors (EMFILE), it is retried after this pause,
/// doubling up to [`MAX_ACCEPT_BACKOFF`]: the pending connection keeps the listener
/// readable, so retrying at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Under a service manager, how often the accept loop may update the status line `systemctl
/// status` shows (the connection count): only when the count changed, and only then.
const STATUS_INTERVAL: Duration = Duration::from_secs(5);

/// Refusals for want of a thread are logged at most once per this interval.
pub(super) const NO_THREAD_LOG_INTERVAL: Duration = Duration::from_secs(10);

impl Server {
    /// Accepts on listener `index` until shutdown; on a failure, asks every other loop to
    /// stop too.
    pub(super) fn accept_until_shutdown(&self, index: usize) -> io::Result<()> {
        let result = self.accept_on(index);
        if result.is_err() {
            self.shutdown.request();
        }
        result
    }

    fn accept_on(&self, index: usize) -> io::Result<()> {
        let listener = &self.listeners[index];
        let waker = self.shutdown.waker(index);
        let accepted = self.accept_with(listener, waker, index == 0);
        // The waker outlives the listener (a ShutdownHandle keeps it): let go of the socket
        // first, as the portable backend's poller requires.
        waker.forget(listener);
        accepted
    }

    /// The loop itself; the `first` loop keeps the service manager's status line current.
    fn accept_with(&self, listener: &TcpListener, waker: &Waker, first: bool) -> io::Result<()> {
        // Under a service manager, the first loop keeps the status line's count current.
        let mut status = (first && sys::activation::notifying()).then(|| (Instant::now(), 0usize));
        let mut backoff: Option<Duration> = None;
        loop {
            // While backing off, wait on the shutdown waker only; the pending connection
            // would report the listener readable again at once.
            let interest = Interest {
                read: backoff.is_none(),
                write: false,
            };
            let timeout = match (backoff, status) {
                (Some(backoff), _) => Some(backoff),
                (None, Some(_)) => Some(STATUS_INTERVAL),
                (None, None) => None,
            };
            sys::wait(Some(listener), interest, waker, timeout)?;
            if self.shutdown.is_requested() {
                return Ok(());
            }
            if let Some((last, shown)) = &mut status
                && last.elapsed() >= STATUS_INTERVAL
            {
                *last = Instant::now();
                let open = self.shared.hub.open_connections();
                if open != *shown {
                    *shown = open;
                    self.notify(&[Notice::Status(&self.status(open))]);
                }
            }
            loop {
                match listener.accept() {
                    Ok((stream, peer)) => {
                        if backoff.take().is_some() {
                            info!("accepting connections again");
                        }
                        self.admit(stream, peer);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if sys::is_out_of_descriptors(&e) => {
                        if backoff.is_none() {
                            warn!("cannot accept connections: {e}; retrying with backoff");
                        }
                        let next = backoff.map_or(ACCEPT_BACKOFF, |b| b * 2);
                        backoff = Some(next.min(MAX_ACCEPT_BACKOFF));
                        break;
                    }
                    // A connection that failed between SYN and accept (ECONNABORTED, say)
                    // concerns that client only.
                    Err(e) => {
                        warn!("accept failed: {e}");
                        break;
                    }
                }
            }
        }
    }

    /// Gives an accepted connection its thread, or a 503 when a cap is reached.
    fn admit(&self, stream: TcpStream, peer: SocketAddr) {
        // Where the system marks sockets rather than writes (Apple's), before any write.
        let _ = sys::no_sigpipe(&stream);
        // A connection that may come for another client is counted per address once the
        // client is known (connection::handle); until then, by the connection limit only.
        let config = &self.shared.config;
        let proxied =
            config.proxy_protocol || proxy::is_trusted(&config.trusted_proxies, peer.ip());
        let ticket: Ticket = match self.admission.admit(peer, !proxied) {
            Ok(ticket) => ticket,
            Err(refusal) => {
                return connection::reject_busy(&stream, &self.shared, Busy::Cap(refusal));
            }
        };
        let shared = Arc::clone(&self.shared);
        // The socket goes to the thread through this slot, so that it is still here to answer
        // 503 on if the system refuses the thread.
        let slot = Arc::new(Mutex::new(Some(stream)));
        let handed = Arc::clone(&slot);
        let spawned = self.threads.run(Box::new(move || {
            let Some(stream) = sync::lock(&handed).take() else {
                return;
            };
            drop(handed);
            // The client, once a proxy has named it: a panic's log line names it too.
            let client = Cell::new(Peer::direct(peer));
            let served = panic::catch_unwind(AssertUnwindSafe(|| {
                connection::handle(stream, &client, &shared, ticket)
            }));
            if let Err(panic) = served {
                report_panic(client.get(), panic.as_ref());
            }
        }));
        if let Err(e) = spawned
            && let Some(stream) = sync::lock(&slot).take()
        {
            if self.no_thread_log.pass().is_some() {
                warn!(
                    "{peer} rejected: 503, the system refused a thread for it ({e}); see the \
                     thread limit logged at start; logged at most once per {}s",
                    NO_THREAD_LOG_INTERVAL.as_secs()
                );
            }
            connection::reject_busy(&stream, &self.shared, Busy::NoThread);
        }
    }
}

/// Logs a connection thread's panic. Out of the thread's closure, so that its locals (the
/// message, the log line) do not sit in a frame under every connection's loop.
#[cold]
#[inline(never)]
fn report_panic(peer: Peer, panic: &(dyn std::any::Any + Send)) {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown cause".into());
    error!("{peer} connection thread panicked ({what}); connection dropped, server goes on");
}
