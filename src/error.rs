//! Errors that stop the server from starting or running. Each reads as one line.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Why the server could not start or run.
#[derive(Debug)]
pub enum Error {
    /// The host name could not be resolved.
    #[allow(missing_docs)] // the fields say it
    Resolve { host: String, source: io::Error },
    /// The address is taken, not ours, or needs privileges.
    #[allow(missing_docs)]
    Bind { addr: SocketAddr, source: io::Error },
    /// The log file could not be opened for appending.
    #[allow(missing_docs)]
    LogFile { path: PathBuf, source: io::Error },
    /// The log was already set up in this process.
    Logger(log::SetLoggerError),
    /// The TLS certificate or key could not be used.
    Tls(crate::tls::TlsError),
    /// The Ctrl-C / SIGTERM handler could not be installed.
    Signal(ctrlc::Error),
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
            Error::LogFile { path, source } => {
                write!(f, "cannot open log file {}: {source}", path.display())
            }
            Error::Logger(e) => write!(f, "cannot set up logging: {e}"),
            Error::Signal(e) => write!(f, "cannot install the Ctrl-C handler: {e}"),
            Error::Tls(e) => write!(f, "{e}"),
            Error::Io(during, e) => write!(f, "{during}: {e}"),
            Error::Redis(why) => write!(f, "cannot join the cluster: {why}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Resolve { source, .. }
            | Error::Bind { source, .. }
            | Error::LogFile { source, .. }
            | Error::Io(_, source) => Some(source),
            Error::Logger(e) => Some(e),
            Error::Signal(e) => Some(e),
            Error::Tls(e) => Some(e),
            Error::Redis(_) => None,
        }
    }
}
