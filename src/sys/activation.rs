//! systemd's two protocols for a service: socket activation (listening sockets handed over in
//! `LISTEN_FDS` and `LISTEN_PID`, from descriptor 3 on) and readiness (`sd_notify`: datagrams
//! like `READY=1` to the socket `NOTIFY_SOCKET` names). Both are read and spoken by the
//! `sd-notify` crate; what is here is turning a descriptor number into a listener, which only
//! this folder may do.
//!
//! Without `LISTEN_FDS` there is nothing to inherit, and without `NOTIFY_SOCKET` every
//! notification is a no-op: a server started by hand behaves exactly as it always did.

use std::io;
use std::net::TcpListener;

/// A state change for the service manager.
#[derive(Debug, Clone, Copy)]
// Only Unix has a service manager to tell; elsewhere the notices are dropped unread.
#[cfg_attr(not(unix), allow(dead_code))]
pub(crate) enum Notice<'a> {
    /// The server serves: its listeners accept.
    Ready,
    /// A reload (the TLS certificate, on SIGHUP) has begun; `Ready` ends it.
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    Reloading,
    /// The shutdown has begun.
    Stopping,
    /// One line for `systemctl status`.
    Status(&'a str),
}

/// The listening sockets the service manager handed this process, in order; empty when it
/// handed none (or handed them to another process: `LISTEN_PID` is not ours). A descriptor that
/// is not a listening TCP socket is an error that names it.
#[cfg(unix)]
pub(crate) fn inherited_listeners() -> io::Result<Vec<TcpListener>> {
    use std::os::fd::FromRawFd;

    let fds = sd_notify::listen_fds()
        .map_err(|e| io::Error::new(e.kind(), format!("LISTEN_FDS or LISTEN_PID: {e}")))?;
    let mut listeners = Vec::with_capacity(fds.len());
    for fd in fds {
        // SAFETY: the service manager passed this descriptor to this process for it to own
        // (sd_listen_fds(3)), and nothing else in the process knows of it: it is taken once,
        // here, and closed when the listener is dropped.
        let listener = unsafe { TcpListener::from_raw_fd(fd) };
        let socket = socket2::SockRef::from(&listener);
        let listening = socket
            .r#type()
            .is_ok_and(|kind| kind == socket2::Type::STREAM)
            && socket
                .local_addr()
                .is_ok_and(|addr| addr.as_socket().is_some())
            && listener.local_addr().is_ok();
        if !listening {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "descriptor {fd} handed over in LISTEN_FDS is not a TCP socket (a socket \
                     unit's ListenStream= with an address or a port is)"
                ),
            ));
        }
        listeners.push(listener);
    }
    Ok(listeners)
}

/// No service manager hands sockets over elsewhere.
#[cfg(not(unix))]
pub(crate) fn inherited_listeners() -> io::Result<Vec<TcpListener>> {
    Ok(Vec::new())
}

/// Tells the service manager, if one listens (`NOTIFY_SOCKET`), about these changes at once.
#[cfg(unix)]
pub(crate) fn notify(notices: &[Notice<'_>]) -> io::Result<()> {
    use sd_notify::NotifyState;

    let mut states: Vec<NotifyState<'_>> = Vec::with_capacity(notices.len() + 1);
    for notice in notices {
        match notice {
            Notice::Ready => states.push(NotifyState::Ready),
            Notice::Reloading => {
                states.push(NotifyState::Reloading);
                // systemd 253 and later want the time with it, to tell this reload from the
                // next; an older one ignores it.
                if let Ok(now) = NotifyState::monotonic_usec_now() {
                    states.push(now);
                }
            }
            Notice::Stopping => states.push(NotifyState::Stopping),
            Notice::Status(line) => states.push(NotifyState::Status(line)),
        }
    }
    sd_notify::notify(&states)
}

/// No service manager listens elsewhere.
#[cfg(not(unix))]
pub(crate) fn notify(_: &[Notice<'_>]) -> io::Result<()> {
    Ok(())
}

/// Whether a service manager listens for notifications.
pub(crate) fn notifying() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}
