//! The listening socket: accepting connections, one thread each, and shutting down.

use std::cell::Cell;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use log::{error, info, warn};

use crate::admission::{Admission, Refusal, Ticket};
#[cfg(feature = "cluster")]
use crate::cluster::Cluster;
#[cfg(feature = "tls")]
use crate::config::TlsFiles;
use crate::config::{self, Config, Mode, SlowListener};
use crate::connection::{
    self, BUSY, OUT_OF_DESCRIPTORS_LOG_INTERVAL, PROXY_HEADER_LOG_INTERVAL, Shared,
};
use crate::delivery::budget::Budget;
use crate::delivery::flow::Policy;
use crate::delivery::greeter::Greeter;
use crate::delivery::hub::{HistorySettings, Hub};
use crate::error::Error;
#[cfg(feature = "tls")]
use crate::error::TlsError;
use crate::logging::{Throttle, approx_size, count};
use crate::metrics::Metrics;
use crate::proxy::{self, Peer};
use crate::sync;
use crate::sys::activation::Notice;
use crate::sys::{self, Interest, Waker};
use crate::threads::{MAX_PARKED, Threads};
#[cfg(feature = "tls")]
use crate::tls::Tls;
use tungstenite::protocol::frame::coding::CloseCode;

/// Stack reserved for each connection's thread. Only the pages a thread touches use memory
/// (an idle connection touches a few KiB), so this is address space, not RAM; it is far above
/// what the deepest path needs (a handshake, a log line, a panic message) and far below the
/// 8 MiB default, which would spend the address space of 10,000 threads on nothing.
pub(crate) const CONNECTION_STACK_SIZE: usize = 256 * 1024;

/// Descriptors kept for everything else: standard streams, the listener, the log file,
/// the signal handler's pipe, and room for a few more.
const RESERVED_FDS: usize = 32;

/// Where the system has no open-file limit (Windows), the default connection cap: a thread
/// each, so a number a desktop machine's memory holds (about 20 KiB each when idle).
const UNLIMITED_CAPACITY: usize = 10_000;

/// An open-file limit above this is taken as this: a system's "unlimited" hard limit can be
/// 2^63, and no machine runs that many threads.
const MAX_DESCRIPTORS: usize = 1 << 24;

/// When accept fails for lack of descriptors (EMFILE), it is retried after this pause,
/// doubling up to [`MAX_ACCEPT_BACKOFF`]: the pending connection keeps the listener
/// readable, so retrying at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// In a cluster, a listener this many backlogs (`--max-backlog`) behind is closed at once (1008)
/// instead of at its send timeout. Its instance's subscriber does not pause for it (one channel
/// carries every room, and a pause would hold every room up), so broadcasts from the other
/// instances keep coming: four backlogs leave room for what local senders, paced at one
/// backlog, still had in flight through Redis, and bound what one stalled listener holds.
const CLUSTER_OVERFLOW_BACKLOGS: usize = 4;

/// The listen backlog of a socket wsecho binds itself: connections the kernel completes and
/// holds before the accept loop takes them. 10,000 clients cut off at once come back at once;
/// Linux caps it at `net.core.somaxconn` (4,096 since Linux 5.4), and a connection past it is
/// not refused but retried by its client a second later. A socket unit sets its own
/// (`Backlog=` in deploy/wsecho.socket).
const LISTEN_BACKLOG: i32 = 4096;

/// At shutdown, how long a connection accepted but whose request has not come yet is waited
/// for. A client's request follows its connection within milliseconds; one that has sent
/// nothing after this is slow or idle, and must not hold a restart up for its whole
/// `--handshake-timeout` (the next process starts only when this one has exited).
const HANDSHAKE_GRACE: Duration = Duration::from_millis(500);

/// Under a service manager, how often the accept loop may update the status line `systemctl
/// status` shows (the connection count): only when the count changed, and only then.
const STATUS_INTERVAL: Duration = Duration::from_secs(5);

/// The Close every client gets when the server stops: come back later, or, when the listening
/// socket was handed over by a service manager that keeps it open across a restart, come back
/// now (1012 "service restart": the next process is already queueing connections).
const SHUTTING_DOWN: (CloseCode, &str) = (CloseCode::Away, "server shutting down");
const RESTARTING: (CloseCode, &str) = (CloseCode::Restart, "service restart");

/// A bound server, ready to [`run`](Server::run).
#[derive(Debug)]
pub struct Server {
    /// The listening sockets: the one bound to `--host`/`--port`, or those a service manager
    /// handed over (socket activation), which all serve the same configuration.
    listeners: Vec<TcpListener>,
    /// Whether the listeners were handed over: a service manager keeps them open across a
    /// restart.
    inherited: bool,
    shared: Arc<Shared>,
    signal: Arc<Signal>,
    /// The connection limit and the per-address caps, and what counts against them.
    admission: Arc<Admission>,
    capacity: usize,
    /// Connections refused because the system refused their thread, logged at most once per
    /// [`NO_THREAD_LOG_INTERVAL`].
    no_thread_log: Throttle,
    /// The connection threads: spares parked for the next clients, and their maker.
    threads: Threads,
}

/// Refusals for want of a thread are logged at most once per this interval.
const NO_THREAD_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Reloads a running server's TLS certificate: new connections get the new one, open ones
/// keep theirs, and files that do not load leave the old certificate in use.
#[cfg(feature = "tls")]
#[derive(Debug, Clone)]
pub struct TlsReloader(Arc<Tls>);

#[cfg(feature = "tls")]
impl TlsReloader {
    /// Reads the certificate and key files again; on error the old certificate stays. A
    /// service manager is told of the reload (`RELOADING=1`, then `READY=1`).
    pub fn reload(&self) -> Result<(), TlsError> {
        let _ = sys::activation::notify(&[Notice::Reloading]);
        let reloaded = self.0.reload();
        let _ = sys::activation::notify(&[Notice::Ready]);
        reloaded
    }

    /// The files it reads.
    pub fn files(&self) -> &TlsFiles {
        self.0.files()
    }
}

/// Asks a running server to shut down; clone it into a signal handler or a test.
#[derive(Debug, Clone)]
pub struct ShutdownHandle(Arc<Signal>);

#[derive(Debug)]
struct Signal {
    requested: AtomicBool,
    /// One per listener: each has an accept loop of its own.
    wakers: Vec<Waker>,
}

impl ShutdownHandle {
    /// Starts a graceful shutdown: stop accepting, close every client with 1001 (1012 when
    /// the listening socket was handed over by a service manager), wait for their replies for
    /// at most the close timeout.
    pub fn shutdown(&self) {
        self.0.request();
    }
}

impl Signal {
    fn request(&self) {
        self.requested.store(true, Ordering::SeqCst);
        for waker in &self.wakers {
            waker.wake();
        }
    }
}

/// What the server did, reported when it stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// WebSocket connections served over the server's life.
    pub connections: u64,
    /// Messages received from clients over the server's life.
    pub messages: u64,
    /// Connections open at shutdown, and how many of them had not finished closing in time.
    pub open_at_shutdown: usize,
    /// How many of those had not finished closing when the server stopped waiting.
    pub unfinished: usize,
}

impl Server {
    /// Binds the listening socket and starts the greeting timer. Nothing is accepted until
    /// [`run`](Server::run); a client that connects before is held in the kernel's backlog.
    ///
    /// On Linux it blocks `SIGURG`, its threads' wake-up signal, in the calling thread first,
    /// so that every thread it makes inherits the block: call it before making threads of
    /// your own, or block `SIGURG` in them (see `sys/ppoll.rs`).
    pub fn bind(config: Config) -> Result<Server, Error> {
        // Before any thread is made.
        sys::prepare_wakers().map_err(|e| Error::Io("blocking the wake-up signal", e))?;
        // The files first: a bad certificate is the likelier mistake, and reported before
        // anything else happens.
        #[cfg(feature = "tls")]
        let tls = match &config.tls {
            Some(files) => Some(Arc::new(Tls::load(files.clone()).map_err(Error::Tls)?)),
            None => None,
        };
        #[cfg(not(feature = "tls"))]
        if config.tls.is_some() {
            return Err(Error::NotBuiltIn {
                what: "TLS",
                feature: "tls",
            });
        }
        let handed_over = sys::activation::inherited_listeners()
            .map_err(|e| Error::Io("taking the sockets the service manager handed over", e))?;
        let inherited = !handed_over.is_empty();
        let listeners = if inherited {
            handed_over
        } else {
            let addrs: Vec<SocketAddr> = (config.host.as_str(), config.port)
                .to_socket_addrs()
                .map_err(|source| Error::Resolve {
                    host: config.host.clone(),
                    source,
                })?
                .collect();
            vec![bind_first(&addrs).map_err(|(addr, source)| Error::Bind { addr, source })?]
        };
        for listener in &listeners {
            listener
                .set_nonblocking(true)
                .map_err(|e| Error::Io("listener setup", e))?;
        }
        // Before anything is logged: a refused password is one line, like a port in use.
        #[cfg(feature = "cluster")]
        let cluster = config.cluster.as_ref().map(Cluster::connect).transpose()?;
        #[cfg(not(feature = "cluster"))]
        if config.cluster.is_some() {
            return Err(Error::NotBuiltIn {
                what: "clusters",
                feature: "cluster",
            });
        }

        // Raised and logged with --max-connections too: the connections it allows need
        // their descriptors and threads all the same.
        let fits = connection_capacity().min(thread_capacity());
        let capacity = match config.max_connections {
            Some(n) if n > fits => {
                warn!(
                    "--max-connections {n} is more than the open-file and thread limits allow \
                     ({fits}); past that, new clients wait or get 503 until others leave"
                );
                n
            }
            Some(n) => n,
            None => fits,
        };
        sys::return_freed_memory();
        let budget = Arc::new(Budget::new(memory_ceiling(&config)));
        let metrics = Arc::new(Metrics::new(config.cluster.is_some()));
        let greeter = match &config.greeting {
            Some(greeting) => Some(
                Greeter::start(greeting.clone(), Arc::clone(&budget), Arc::clone(&metrics))
                    .map_err(|e| Error::Io("greeting timer", e))?,
            ),
            None => None,
        };
        let admission = Admission::new(
            capacity,
            config.max_connections_per_address,
            config.max_handshakes_per_address,
        );
        let history = HistorySettings {
            len: config.history,
            ttl: config.history_ttl,
        };
        let policy = match config.slow_listener {
            SlowListener::Close => Policy::let_go(config.max_backlog),
            // In a cluster, senders on other instances cannot be paced by a listener here.
            SlowListener::Wait => Policy::pace(
                config
                    .cluster
                    .is_some()
                    .then(|| CLUSTER_OVERFLOW_BACKLOGS * config.max_backlog),
            ),
        };
        let hub = Arc::new(Hub::new(
            config.max_backlog,
            history,
            policy,
            Arc::clone(&metrics),
        ));
        #[cfg(feature = "cluster")]
        let cluster = match cluster {
            Some(joining) => {
                let limits = crate::cluster::Limits {
                    max_message_size: config.max_message_size,
                    max_backlog: config.max_backlog,
                    history,
                };
                Some(joining.start(&hub, &budget, limits)?)
            }
            None => None,
        };
        let shared = Shared {
            hub,
            #[cfg(feature = "cluster")]
            cluster,
            config,
            budget,
            #[cfg(feature = "tls")]
            tls,
            metrics,
            out_of_descriptors_log: Throttle::new(OUT_OF_DESCRIPTORS_LOG_INTERVAL),
            proxy_header_log: Throttle::new(PROXY_HEADER_LOG_INTERVAL),
            greeter,
            shutting_down: AtomicBool::new(false),
            goodbye: if inherited { RESTARTING } else { SHUTTING_DOWN },
        };
        let wakers = listeners
            .iter()
            .map(|_| Waker::try_new())
            .collect::<io::Result<_>>()
            .map_err(|e| Error::Io("creating the accept loop's waker", e))?;
        let signal = Signal {
            requested: AtomicBool::new(false),
            wakers,
        };
        if inherited {
            let addrs: Vec<String> = listeners
                .iter()
                .filter_map(|listener| listener.local_addr().ok())
                .map(|addr| addr.to_string())
                .collect();
            info!(
                "serving on {} handed over by the service manager ({}): --host and --port are \
                 ignored",
                count(listeners.len() as u64, "listening socket"),
                addrs.join(", ")
            );
        }
        Ok(Server {
            listeners,
            inherited,
            shared: Arc::new(shared),
            signal: Arc::new(signal),
            admission: Arc::new(admission),
            capacity,
            no_thread_log: Throttle::new(NO_THREAD_LOG_INTERVAL),
            threads: Threads::start(CONNECTION_STACK_SIZE)
                .map_err(|e| Error::Io("starting the connection threads' maker", e))?,
        })
    }

    /// The address actually bound (with the real port when the config said 0); with sockets
    /// handed over by a service manager, the first one's.
    pub fn local_addr(&self) -> SocketAddr {
        self.listeners[0]
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Whether the listening sockets were handed over by a service manager (socket
    /// activation): it keeps them open across a restart, so clients are told to come back at
    /// once (1012) when this process stops.
    pub fn inherited(&self) -> bool {
        self.inherited
    }

    /// The URL clients connect to, like `ws://127.0.0.1:3000` (`wss://` with TLS).
    pub fn url(&self) -> String {
        let scheme = if self.shared.speaks_tls() {
            "wss"
        } else {
            "ws"
        };
        format!("{scheme}://{}", self.local_addr())
    }

    /// A handle that reloads the TLS certificate (on SIGHUP, say); `None` without TLS.
    #[cfg(feature = "tls")]
    pub fn tls_reloader(&self) -> Option<TlsReloader> {
        self.shared
            .tls
            .as_ref()
            .map(|tls| TlsReloader(Arc::clone(tls)))
    }

    /// How many connections are accepted at once.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// A handle that shuts this server down from another thread (a signal handler, a test).
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(Arc::clone(&self.signal))
    }

    /// Accepts connections until shut down, then closes every client and returns.
    pub fn run(self) -> Result<Summary, Error> {
        let config = &self.shared.config;
        let mode = match config.mode {
            Mode::Echo => "echo",
            Mode::Broadcast => "broadcast",
        };
        let greeting = match &config.greeting {
            Some(g) => format!("greeting after {:?}", g.delay),
            None => "no greeting".to_string(),
        };
        info!(
            "listening on {} ({mode} mode, {greeting}, up to {} connections)",
            self.url(),
            self.capacity
        );
        self.notify(&[Notice::Ready, Notice::Status(&self.status(0))]);
        // One accept loop per listener, the first on this thread. A loop that fails stops the
        // others; either way every client is then closed properly, below.
        let server = &self;
        let accepted = std::thread::scope(|scope| {
            let others: Vec<_> = (1..server.listeners.len())
                .map(|i| scope.spawn(move || server.accept_until_shutdown(i)))
                .collect();
            let first = server.accept_until_shutdown(0);
            let others = others.into_iter().map(|other| {
                other
                    .join()
                    .unwrap_or_else(|_| Err(io::Error::other("an accept loop panicked")))
            });
            std::iter::once(first)
                .chain(others)
                .collect::<io::Result<Vec<()>>>()
        });
        self.notify(&[
            Notice::Stopping,
            Notice::Status("stopping: closing every connection"),
        ]);
        drop(self.listeners);
        let summary = shut_down(&self.shared, &self.admission);
        accepted.map_err(|e| Error::Io("accepting connections", e))?;
        Ok(summary)
    }

    /// Tells the service manager, if any, and logs (once) if it cannot be told.
    fn notify(&self, notices: &[Notice<'_>]) {
        if let Err(e) = sys::activation::notify(notices) {
            warn!("cannot notify the service manager (NOTIFY_SOCKET): {e}");
        }
    }

    /// The status line for `systemctl status`.
    fn status(&self, connections: usize) -> String {
        format!(
            "serving {} on {}",
            count(connections as u64, "connection"),
            self.url()
        )
    }

    /// Accepts on listener `index` until shutdown; on a failure, asks every other loop to
    /// stop too.
    fn accept_until_shutdown(&self, index: usize) -> io::Result<()> {
        let result = self.accept_on(index);
        if result.is_err() {
            self.signal.request();
        }
        result
    }

    fn accept_on(&self, index: usize) -> io::Result<()> {
        let listener = &self.listeners[index];
        let waker = &self.signal.wakers[index];
        // Under a service manager, the first loop keeps the status line's count current.
        let mut status =
            (index == 0 && sys::activation::notifying()).then(|| (Instant::now(), 0usize));
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
            if self.signal.requested.load(Ordering::SeqCst) {
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
                self.shared.metrics.http_response(BUSY);
                self.shared.metrics.reject(match refusal {
                    Refusal::Full(_) => "limit",
                    Refusal::AddressFull(_) | Refusal::AddressHandshakes(_) => "per_address",
                });
                return connection::reject_busy(&stream, refusal);
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
            self.shared.metrics.http_response(BUSY);
            self.shared.metrics.reject("limit");
            if self.no_thread_log.pass().is_some() {
                warn!(
                    "{peer} rejected: 503, the system refused a thread for it ({e}); see the \
                     thread limit logged at start; logged at most once per {}s",
                    NO_THREAD_LOG_INTERVAL.as_secs()
                );
            }
            connection::reject_with(&stream, "server busy: no thread for this connection");
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

/// Closes every client with 1001 (1012 under socket activation) and waits for them, at most
/// the close timeout.
fn shut_down(shared: &Shared, admission: &Admission) -> Summary {
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

fn bind_first(addrs: &[SocketAddr]) -> Result<TcpListener, (SocketAddr, io::Error)> {
    let mut last = None;
    for &addr in addrs {
        match bind(addr) {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some((addr, e)),
        }
    }
    Err(last.unwrap_or_else(|| {
        let none = SocketAddr::from(([0, 0, 0, 0], 0));
        (
            none,
            io::Error::new(io::ErrorKind::NotFound, "the host name has no address"),
        )
    }))
}

/// A listening socket on `addr` with a backlog of [`LISTEN_BACKLOG`], as std's `bind` would
/// make it otherwise (std's backlog is 128).
fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    // As std does on Unix: a restarted server may bind while old connections are in
    // TIME_WAIT. (On Windows the flag means sharing the port, which std does not ask for.)
    #[cfg(unix)]
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// Threads kept for everything but connections: the main thread, the greeting timer, the
/// signal thread, the cluster's two, the connection threads' maker and its spares
/// (`threads.rs`), and room for a few more.
const RESERVED_THREADS: u64 = 16 + MAX_PARKED as u64;

/// How many connections the system's thread settings leave room for (a thread each): past it,
/// new clients get 503, never a dropped TCP connection. Logged beside the descriptor cap.
fn thread_capacity() -> usize {
    let Some((room, setting, value)) = sys::thread_room() else {
        return usize::MAX;
    };
    let capacity = usize::try_from(room.saturating_sub(RESERVED_THREADS))
        .unwrap_or(usize::MAX)
        .max(1);
    info!(
        "thread limit: room for {capacity} connections ({setting} {value}; raise it for more, \
         see docs/deploying.md)"
    );
    capacity
}

/// Raises the open-file limit, and derives how many connections fit under it.
fn connection_capacity() -> usize {
    let Some(fds) = sys::raise_open_file_limit() else {
        info!("no open-file limit here: room for {UNLIMITED_CAPACITY} connections");
        return UNLIMITED_CAPACITY;
    };
    let fds = usize::try_from(fds)
        .unwrap_or(usize::MAX)
        .min(MAX_DESCRIPTORS);
    let capacity = fds.saturating_sub(RESERVED_FDS) / sys::FDS_PER_CONNECTION;
    info!(
        "open-file limit {fds}: room for {capacity} connections ({} descriptor{} each, waiting \
         with {})",
        sys::FDS_PER_CONNECTION,
        if sys::FDS_PER_CONNECTION == 1 {
            ""
        } else {
            "s"
        },
        sys::BACKEND
    );
    capacity.max(1)
}

/// The memory ceiling: the configured one, or a share of the machine's memory.
fn memory_ceiling(config: &Config) -> usize {
    if let Some(limit) = config.max_memory {
        info!("memory ceiling {} (--max-memory)", approx_size(limit));
        return limit;
    }
    let (limit, from) = match sys::physical_memory() {
        Some(total) => (
            usize::try_from(total / config::MEMORY_FRACTION).unwrap_or(usize::MAX),
            format!(
                "1/{} of this machine's {}",
                config::MEMORY_FRACTION,
                approx_size(usize::try_from(total).unwrap_or(usize::MAX))
            ),
        ),
        None => (
            config::FALLBACK_MAX_MEMORY,
            "the machine's memory is unknown".to_string(),
        ),
    };
    // Room for at least one largest message and its echo, whatever the machine.
    let limit = limit.max(2 * config.max_message_size);
    info!(
        "memory ceiling {} ({from}); set it with --max-memory",
        approx_size(limit)
    );
    limit
}
