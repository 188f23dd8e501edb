//! The listening sockets: the ones a service manager handed over (socket activation), or the
//! one bound here to `--host` and `--port`.
//!
//! Sockets handed over are used as they are: the service manager chose their addresses and
//! backlog, and keeps them open across a restart. A socket bound here gets a backlog of
//! [`LISTEN_BACKLOG`]. Only the thread that calls `Server::bind` runs this, before any accept
//! loop exists; afterwards each listener is read by its own accept loop only.

use std::io;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};

use log::info;

use crate::config::Config;
use crate::error::Error;
use crate::logging::count;
use crate::sys;

/// The listen backlog of a socket wsecho binds itself: connections the kernel completes and
/// holds before the accept loop takes them. 10,000 clients cut off at once come back at once;
/// Linux caps it at `net.core.somaxconn` (4,096 since Linux 5.4), and a connection past it is
/// not refused but retried by its client a second later. A socket unit sets its own
/// (`Backlog=` in deploy/wsecho.socket).
const LISTEN_BACKLOG: i32 = 4096;

/// The listening sockets, non-blocking, and whether a service manager handed them over.
pub(super) fn listeners(config: &Config) -> Result<(Vec<TcpListener>, bool), Error> {
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
    Ok((listeners, inherited))
}

/// Logs the sockets a service manager handed over, and that `--host` and `--port` go unused.
pub(super) fn log_handed_over(listeners: &[TcpListener]) {
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

/// The first of `addrs` that binds, or the last failure.
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
