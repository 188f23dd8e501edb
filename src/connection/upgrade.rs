//! The request, read and answered: plain HTTP (the demo page, `/healthz`, `/metrics`), which
//! ends the connection, or a WebSocket upgrade, checked and ready to switch ([`Upgraded`]).
//!
//! Everything here runs under the one deadline `handle` set for the whole handshake, and on
//! the connection's own thread only: nothing in it is shared but what [`ServerState`] holds, and
//! the caps are touched only through the connection's own [`Ticket`].

use std::cell::Cell;
use std::io::{self, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use log::{debug, info};
use tungstenite::protocol::frame::coding::CloseCode;

use super::MIN_WRITE_TIME;
use super::refuse::{Busy, refuse, refuse_bad_request, refuse_busy};
#[cfg(feature = "tls")]
use super::tls_start::start_tls;
use crate::admission::Ticket;
use crate::config::{Config, Mode};
use crate::connection::ServerState;
use crate::connection::controlled::Requested;
use crate::connection::transport::Transport;
use crate::delivery::resume::Resume;
use crate::http::controls::{self, Controls};
use crate::http::handshake;
use crate::http::site;
use crate::http::{self, Conn, HeadError, Response};
use crate::http::{query, room};
use crate::proxy::{Peer, forwarded};

/// A connection whose upgrade request was accepted; its 101 goes out once it is in its room
/// (see `join` in `connection/mod.rs`).
pub(super) struct Upgraded {
    /// Still blocking, under the handshake's deadline.
    transport: Transport,
    /// The 101 answer, and when it must have gone out.
    answer: Vec<u8>,
    deadline: Instant,
    /// Bytes the client sent after its request head: the start of its first frame.
    leftover: Vec<u8>,
    /// The room it joins; the lobby (empty) in echo mode.
    pub(super) room: String,
    /// Where it asked to resume, with `?resume`.
    pub(super) resume: Option<Resume>,
    /// What the "connected" log line says after the peer: path, room, origin, subprotocol.
    pub(super) described: String,
    /// The test controls it asked for, if any (`http/controls.rs`).
    pub(super) controls: Option<Box<Requested>>,
}

impl Upgraded {
    /// Sends the 101 and turns the stream to the loop's phase (non-blocking).
    pub(super) fn switch(self) -> io::Result<(Transport, Vec<u8>)> {
        let Upgraded {
            mut transport,
            answer,
            deadline,
            leftover,
            ..
        } = self;
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(MIN_WRITE_TIME);
        transport.set_write_timeout(Some(left))?;
        transport.write_all(&answer)?;
        transport.flush()?;
        Ok((transport.into_nonblocking()?, leftover))
    }
}

/// Reads the request and answers it: plain HTTP (then the connection is done) or the
/// WebSocket handshake. With TLS, the TLS handshake comes first, under the same deadline.
#[inline(never)]
pub(super) fn answer_request(
    stream: TcpStream,
    client: &Cell<Peer>,
    shared: &ServerState,
    ticket: &mut Ticket,
    deadline: Instant,
) -> Option<Upgraded> {
    let config = &shared.config;
    let peer = client.get();
    #[cfg(feature = "tls")]
    let mut transport = match &shared.tls {
        None => Transport::Plain(Arc::new(stream)),
        Some(tls) => start_tls(stream, peer, tls, deadline, shared)?,
    };
    #[cfg(not(feature = "tls"))]
    let mut transport = Transport::Plain(Arc::new(stream));
    let head = http::read_head(&mut transport, deadline, config.max_request_head);
    // A trusted proxy's request names its client: counted under that address from here.
    let peer = match &head {
        Ok((request, _)) if shared.trusts(peer.addr.ip()) => {
            match forwarded::client(request, peer.addr, &config.trusted_proxies) {
                Ok(addr) => {
                    let named = Peer::via(addr, peer.socket());
                    if let Err(refusal) = ticket.rehome(named, addr.ip()) {
                        refuse_busy(&mut transport, named, shared, Busy::Cap(refusal));
                        return None;
                    }
                    client.set(named);
                    named
                }
                Err(why) => {
                    ticket.handshake_done();
                    refuse_bad_request(&mut transport, peer, shared, why);
                    return None;
                }
            }
        }
        _ => peer,
    };
    // Whatever came of it, the client is no longer one whose request may never come: what
    // follows is the server's own quick work, so it stops counting as an unfinished handshake.
    ticket.handshake_done();
    let (request, leftover) = match head {
        Ok(head) => head,
        Err(HeadError::Timeout) => {
            info!(
                "{peer} dropped: no complete request within {:?}",
                config.handshake_timeout
            );
            return None;
        }
        Err(HeadError::Closed) => {
            debug!("{peer} closed before sending a request");
            return None;
        }
        Err(HeadError::Io(e)) if e.kind() == io::ErrorKind::InvalidData => {
            info!("{peer} dropped: TLS handshake failed: {e}");
            return None;
        }
        Err(HeadError::Io(e)) => {
            debug!("{peer} lost before sending a request: {e}");
            return None;
        }
        Err(HeadError::TooLarge) => {
            let limit = config.max_request_head;
            let why = format!(
                "request head over {limit} bytes or {} lines",
                http::MAX_HEADERS
            );
            refuse(
                &mut transport,
                peer,
                shared,
                Response::text(431, why),
                false,
            );
            return None;
        }
        Err(HeadError::Malformed(why)) => {
            refuse_bad_request(&mut transport, peer, shared, why);
            return None;
        }
    };
    let head_only = request.method == "HEAD";
    if !handshake::is_websocket_request(&request) {
        let response = if config.test_controls && site::is_echo_request(&request) {
            let json = controls::whoami(
                &request,
                peer.addr,
                peer.socket(),
                None,
                transport.tls_info().as_ref(),
            );
            site::echo_request(json)
        } else {
            site::respond(&request, config.demo_page, shared)
        };
        info!(
            "{peer} {} {} -> {}",
            request.method, request.target, response.status
        );
        shared.metrics.http_response(response.status);
        http::respond_and_close(&mut transport, &response, head_only);
        return None;
    }
    let accepted = match handshake::check(&request, config) {
        Ok(accepted) => accepted,
        Err(response) => {
            refuse(&mut transport, peer, shared, response, head_only);
            return None;
        }
    };
    let found = room_and_position(&request.target, config).and_then(|(room, resume)| {
        let controls = if config.test_controls {
            Controls::parse(&request.target, config, resume.is_some())?
        } else {
            None
        };
        Ok((room, resume, controls))
    });
    let (room, resume, controls) = match found {
        Ok(found) => found,
        Err(why) => {
            refuse_bad_request(&mut transport, peer, shared, why);
            return None;
        }
    };
    // A late handshake during shutdown: refused, unless the listening socket outlives this
    // process; then it is upgraded and told to come back (1012, in `join`), to be served by
    // the next process.
    if shared.shutting_down.load(Ordering::SeqCst) && shared.goodbye.0 != CloseCode::Restart {
        refuse_busy(&mut transport, peer, shared, Busy::ShuttingDown);
        return None;
    }
    let origin = request.header("origin").unwrap_or("none");
    let subprotocol = accepted
        .subprotocol
        .as_deref()
        .map(|p| format!(", subprotocol {p}"));
    let in_room = match (&resume, config.mode) {
        (Some(Resume::After(epoch, offset)), _) => {
            format!(", room {room:?}, resuming after {epoch}:{offset}")
        }
        (Some(Resume::Newcomer), _) => format!(", room {room:?}, resuming"),
        (None, Mode::Broadcast) => format!(", room {room:?}"),
        (None, Mode::Echo) => String::new(),
    };
    let described = format!(
        "path {}{in_room}, origin {origin}{}{}",
        request.target,
        subprotocol.unwrap_or_default(),
        if transport.is_tls() { ", TLS" } else { "" }
    );
    let controls = controls.map(|controls| {
        let whoami = controls.whoami.then(|| {
            controls::whoami(
                &request,
                peer.addr,
                peer.socket(),
                accepted.subprotocol.as_deref(),
                transport.tls_info().as_ref(),
            )
        });
        Box::new(Requested { controls, whoami })
    });
    Some(Upgraded {
        transport,
        answer: handshake::switching_protocols(&accepted),
        deadline,
        leftover,
        room,
        resume,
        described,
        controls,
    })
}

/// The room a request joins, and where it asks to resume, or why it cannot be served. In
/// broadcast mode the path names the room; echo mode, and --single-room, ignore it.
fn room_and_position(target: &str, config: &Config) -> Result<(String, Option<Resume>), String> {
    let room = if config.mode == Mode::Broadcast && config.rooms {
        room::from_target(target)?
    } else {
        String::new()
    };
    Ok((room, resume_position(target, config)?))
}

/// Where the request asks to resume (`?resume`, see `delivery/resume.rs`), if it does, or why
/// that cannot be served.
fn resume_position(target: &str, config: &Config) -> Result<Option<Resume>, String> {
    let Some(value) = query::param(target, "resume")? else {
        return Ok(None);
    };
    if config.mode != Mode::Broadcast {
        return Err(
            "resume needs a server in broadcast mode (--broadcast --history N): an echo has \
             no position to resume from"
                .to_string(),
        );
    }
    if config.history == 0 {
        return Err(
            "resume needs a server that keeps history (--history N, N > 0): without it there \
             is nothing to resume from"
                .to_string(),
        );
    }
    Resume::parse(&value).map(Some)
}
