//! What a connection keeps between bursts: tungstenite's read step, fitted to the frames its
//! client sends (`read_size.rs`), and settling, which gives back what a burst left once the
//! connection is quiet (`settle.rs`).
//!
//! Invariant: only the connection's own thread touches this, and it makes the WebSocket again
//! only between two messages, with nothing half read and the protocol still open.

use std::time::Instant;

use log::trace;
use tungstenite::protocol::{Role, WebSocketContext};

use crate::connection::read_size::{self, ReadSize};
use crate::connection::settle::BIG_QUEUE;

use super::Client;

impl Client<'_> {
    /// Whether a burst grew tungstenite's read buffer or the queue past their quiet size.
    pub(super) fn grew(&self) -> bool {
        self.wire.reader.largest_frame() > read_size::SMALL as u64
            || self.wire.queue.peak_queued() > BIG_QUEUE
    }

    /// Moves tungstenite to the read step the client's frames call for (`read_size.rs`), if
    /// it is not there and the WebSocket can be made again now.
    pub(super) fn fit_read_size(&mut self) {
        if let Some(size) = self
            .reading
            .size
            .after_reading(self.wire.reader.largest_frame())
        {
            self.remake_websocket(size);
        }
    }

    /// Makes the WebSocket again around the same socket with the read step `size`, which also
    /// drops its read buffer, if that is safe: every byte read is parsed and every message
    /// whole (tungstenite's state is then empty but for its buffer), and the protocol is still
    /// open (a new WebSocket would forget a Close sent or received). Out of line: the new
    /// WebSocket is built in this frame, not under the loop.
    #[inline(never)]
    fn remake_websocket(&mut self, size: ReadSize) {
        let open = self.closing.by_server.is_none() && self.ws.can_write();
        if open && !self.reading.pending && self.wire.reader.between_messages() {
            self.ws = WebSocketContext::new(Role::Server, Some(size.apply(*self.ws.get_config())));
            self.reading.size = size;
        }
    }

    /// Gives back what the last burst left (see `settle.rs`), if the connection is quiet: no
    /// message half received, nothing queued, not waiting for others.
    #[inline(never)]
    pub(super) fn settle(&mut self, now: Instant) {
        if self.closing.by_server.is_some() || !self.ws.can_write() {
            return;
        }
        let quiet = self.wire.queue.queued() == 0
            && !self.reading.pacing.paused()
            && !self.reading.pending
            && self.wire.reader.between_messages();
        if !quiet {
            self.settling.postpone(now);
            return;
        }
        let grew = self.grew();
        if self.reading.size != ReadSize::Dormant {
            self.remake_websocket(ReadSize::Dormant);
        }
        self.wire.queue.shrink();
        self.wire.reader.forget_largest_frame();
        self.wire.queue.forget_peak();
        self.reading.broadcasts.frames = Vec::new();
        self.settling.settled(now, grew);
        trace!("{} settled: quiet, its memory given back", self.place.peer);
    }
}
