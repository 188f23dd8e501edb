//! The first step on a TLS port: making sure the connection speaks TLS, and starting its
//! session, under the handshake's deadline.
//!
//! One byte is peeked before anything is read: a TLS handshake record starts with
//! [`TLS_HANDSHAKE_RECORD`], plain HTTP with an upper-case method name. Only the connection's
//! own thread calls this, once, before any other byte of the connection is read.

use std::io;
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Instant;

use log::{debug, info, warn};

use super::MIN_WRITE_TIME;
use super::refuse::refuse_bad_request;
use crate::connection::ServerState;
use crate::connection::transport::Transport;
use crate::proxy::Peer;
use crate::tls::Tls;

/// The first byte of a TLS connection: a handshake record (RFC 8446 section 5.1).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Begins TLS on an accepted socket, or refuses what is not TLS: a browser or `curl` speaking
/// plain HTTP to the TLS port gets a plain 400 that says what to use instead; anything else
/// that does not start like a TLS handshake is dropped. One log line at most either way.
#[inline(never)]
pub(super) fn start_tls(
    stream: TcpStream,
    peer: Peer,
    tls: &Tls,
    deadline: Instant,
    shared: &ServerState,
) -> Option<Transport> {
    let left = deadline.saturating_duration_since(Instant::now());
    let mut first = [0u8; 1];
    let peeked = stream
        .set_read_timeout(Some(left.max(MIN_WRITE_TIME)))
        .and_then(|()| stream.peek(&mut first));
    match peeked {
        Ok(0) => {
            debug!("{peer} closed before sending a request");
            None
        }
        Ok(_) if first[0] == TLS_HANDSHAKE_RECORD => match tls.accept() {
            Ok(session) => Some(Transport::tls(stream, session)),
            Err(e) => {
                warn!("{peer} dropped: cannot start a TLS session: {e}");
                None
            }
        },
        Ok(_) if first[0].is_ascii_uppercase() => {
            let why = "this port speaks TLS only: use https:// or wss://";
            refuse_bad_request(&mut Transport::Plain(Arc::new(stream)), peer, shared, why);
            None
        }
        Ok(_) => {
            info!(
                "{peer} dropped: not a TLS handshake (first byte {:#04x})",
                first[0]
            );
            None
        }
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            info!(
                "{peer} dropped: no TLS handshake within {:?}",
                shared.config.handshake_timeout
            );
            None
        }
        Err(e) => {
            debug!("{peer} lost before sending a request: {e}");
            None
        }
    }
}
