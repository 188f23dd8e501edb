//! The client behind a proxy: who a connection is for, when a proxy made it.
//!
//! Behind a reverse proxy every connection comes from the proxy's address. Two ways tell the
//! server who the client is, each trusted only where the operator says so:
//!
//! - `--trusted-proxy RANGE`: a peer in one of these ranges names its client in the request's
//!   `Forwarded` (RFC 7239) or `X-Forwarded-For` header (`forwarded.rs`). From any other peer
//!   those headers are ignored, so a client cannot claim another address by sending them.
//! - `--proxy-protocol`: every connection begins with a PROXY protocol header, v1 text or v2
//!   binary (`protocol.rs`), which names the client before any byte of HTTP or TLS.
//!
//! Both may be on: the PROXY header names the peer, and if that peer is a trusted proxy, its
//! forwarding headers name the client (a TCP load balancer in front of an HTTP proxy).
//!
//! The address found is the one the per-address limits count (`admission.rs`: a connection
//! that may name another client is admitted against the connection limit only, and counted
//! per address once its client is known) and the one every log line names, with the proxy it
//! came through: `203.0.113.7:0 via 127.0.0.1:51234`.

pub(crate) mod forwarded;
pub(crate) mod protocol;

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use crate::config::AddressRange;

/// A connection's client, as the limits count it and the log names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Peer {
    /// The client's address. A header that gives no port (`X-Forwarded-For`) gives port 0.
    pub(crate) addr: SocketAddr,
    /// The proxy the connection came through (the TCP peer), if the client is another.
    pub(crate) via: Option<SocketAddr>,
}

impl Peer {
    /// A client connected straight to the server.
    pub(crate) fn direct(addr: SocketAddr) -> Peer {
        Peer { addr, via: None }
    }

    /// `client`, as named by the proxy at `proxy` (the TCP peer); the proxy itself when the
    /// two are the same.
    pub(crate) fn via(client: SocketAddr, proxy: SocketAddr) -> Peer {
        Peer {
            addr: client,
            via: (client != proxy).then_some(proxy),
        }
    }

    /// The TCP peer: the proxy, or the client itself.
    pub(crate) fn socket(&self) -> SocketAddr {
        self.via.unwrap_or(self.addr)
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.via {
            Some(proxy) => write!(f, "{} via {proxy}", self.addr),
            None => write!(f, "{}", self.addr),
        }
    }
}

/// Whether `ip` is in one of the trusted proxies' ranges.
pub(crate) fn is_trusted(trusted: &[AddressRange], ip: IpAddr) -> bool {
    trusted.iter().any(|range| range.contains(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_names_the_proxy_it_came_through() {
        let proxy: SocketAddr = "127.0.0.1:51234".parse().unwrap();
        let client: SocketAddr = "203.0.113.7:0".parse().unwrap();
        assert_eq!(
            Peer::via(client, proxy).to_string(),
            "203.0.113.7:0 via 127.0.0.1:51234"
        );
        assert_eq!(Peer::via(proxy, proxy).to_string(), "127.0.0.1:51234");
        assert_eq!(Peer::via(client, proxy).socket(), proxy);
    }
}
