//! Errors that stop the server from starting or running. Each reads as one line.

use std::fmt;
use std::io;
use std::net::SocketAddr;

/// Why the server could not start or run.
#[derive(Debug)]
pub enum Error {
    /// The host name could not be resolved.
    #[allow(missing_docs)] // the fields say it
    Resolve { host: String, source: io::Error },
    /// The address is taken, not ours, or needs privileges.
    #[allow(missing_docs)]
    Bind { addr: SocketAddr, source: io::Error },
    /// The TLS certificate or key could not be used.
    Tls(TlsError),
    /// The configuration asks for something this build leaves out (a cargo feature).
    NotBuiltIn {
        /// What was asked for, like `TLS`.
        what: &'static str,
        /// The cargo feature that brings it.
        feature: &'static str,
    },
    /// Some other system call failed; the text says during what.
    Io(&'static str, io::Error),
    /// The cluster's Redis cannot be joined, and retrying would not help (a refused password).
    Redis(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Resolve { host, source } => write!(f, "cannot resolve host {host:?}: {source}"),
            Error::Bind { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            Error::Tls(e) => write!(f, "{e}"),
            Error::NotBuiltIn { what, feature } => write!(
                f,
                "this wsecho was built without {what}; build it with the cargo feature \
                 {feature:?} (on by default)"
            ),
            Error::Io(during, e) => write!(f, "{during}: {e}"),
            Error::Redis(why) => write!(f, "cannot join the cluster: {why}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Resolve { source, .. } | Error::Bind { source, .. } | Error::Io(_, source) => {
                Some(source)
            }
            Error::Tls(e) => Some(e),
            Error::NotBuiltIn { .. } | Error::Redis(_) => None,
        }
    }
}

/// Why the TLS certificate or key could not be used; reads as one line naming the file.
#[derive(Debug)]
pub struct TlsError(pub(crate) String);

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsError {}
