//! The server: what `Server::bind` assembles from a configuration, and `Server::run`, which
//! accepts connections until shut down and then closes every client.
//!
//! Its parts, each in a module of its own: the listening sockets (`listen.rs`), the limits
//! derived from the system (`capacity.rs`), the accept loops and admission (`accept.rs`), and
//! shutting down (`shutdown.rs`).

mod accept;
mod capacity;
mod listen;
mod shutdown;

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use log::{info, warn};

use crate::admission::Admission;
#[cfg(feature = "cluster")]
use crate::cluster::Cluster;
#[cfg(feature = "tls")]
use crate::config::TlsFiles;
use crate::config::{Config, Mode, SlowListener};
use crate::connection::{OUT_OF_DESCRIPTORS_LOG_INTERVAL, PROXY_HEADER_LOG_INTERVAL, ServerState};
use crate::delivery::budget::Budget;
use crate::delivery::flow::Policy;
use crate::delivery::greeter::Greeter;
use crate::delivery::hub::{HistorySettings, Hub};
use crate::error::Error;
#[cfg(feature = "tls")]
use crate::error::TlsError;
use crate::logging::{Throttle, count};
use crate::metrics::Metrics;
use crate::sys;
use crate::sys::activation::Notice;
use crate::threads::Threads;
#[cfg(feature = "tls")]
use crate::tls::Tls;
use accept::NO_THREAD_LOG_INTERVAL;
pub use shutdown::ShutdownHandle;
use shutdown::{ShutdownRequest, shut_down};

/// Stack reserved for each connection's thread. Only the pages a thread touches use memory
/// (an idle connection touches a few KiB), so this is address space, not RAM; it is far above
/// what the deepest path needs (a handshake, a log line, a panic message) and far below the
/// 8 MiB default, which would spend the address space of 10,000 threads on nothing.
pub(crate) const CONNECTION_STACK_SIZE: usize = 256 * 1024;

/// In a cluster, a listener this many backlogs (`--max-backlog`) behind is closed at once (1008)
/// instead of at its send timeout. Its instance's subscriber does not pause for it (one channel
/// carries every room, and a pause would hold every room up), so broadcasts from the other
/// instances keep coming: four backlogs leave room for what local senders, paced at one
/// backlog, still had in flight through Redis, and bound what one stalled listener holds.
const CLUSTER_OVERFLOW_BACKLOGS: usize = 4;

/// A bound server, ready to [`run`](Server::run).
#[derive(Debug)]
pub struct Server {
    /// The listening sockets: the one bound to `--host`/`--port`, or those a service manager
    /// handed over (socket activation), which all serve the same configuration.
    listeners: Vec<TcpListener>,
    /// Whether the listeners were handed over: a service manager keeps them open across a
    /// restart.
    inherited: bool,
    shared: Arc<ServerState>,
    /// Set by a [`ShutdownHandle`]; wakes every accept loop.
    shutdown: Arc<ShutdownRequest>,
    /// The connection limit and the per-address caps, and what counts against them.
    admission: Arc<Admission>,
    capacity: usize,
    /// Connections refused because the system refused their thread, logged at most once per
    /// [`NO_THREAD_LOG_INTERVAL`].
    no_thread_log: Throttle,
    /// The connection threads: spares parked for the next clients, and their maker.
    threads: Threads,
}

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
        let (listeners, inherited) = listen::listeners(&config)?;
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

        let capacity = capacity::connection_limit(&config);
        sys::return_freed_memory();
        let budget = Arc::new(Budget::new(capacity::memory_ceiling(&config)));
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
        let shared = ServerState {
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
            goodbye: shutdown::goodbye(inherited),
        };
        let shutdown = ShutdownRequest::new(listeners.len())
            .map_err(|e| Error::Io("creating the accept loop's waker", e))?;
        if inherited {
            listen::log_handed_over(&listeners);
        }
        Ok(Server {
            listeners,
            inherited,
            shared: Arc::new(shared),
            shutdown: Arc::new(shutdown),
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
        ShutdownHandle(Arc::clone(&self.shutdown))
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
}
