//! Messages between this connection and the others, both ways: its client's broadcasts, fanned
//! out to its room a round at a time, and what other threads handed it through its outbox
//! (broadcasts, history, the greeting, a Close).
//!
//! Invariant: only the connection's own thread touches [`Broadcasts`] and drains its inbox.
//! Other threads hand it frames only through its outbox (or straight into its socket, while
//! the send queue lends it to them: `send_queue.rs`), and receive its broadcasts only through
//! the hub.

use bytes::Bytes;

use crate::delivery::outbox::Delivery;

use super::Client;

/// Broadcasts read in one round are fanned out together (one wake-up per listener for the
/// lot), but never more than this many bytes at a time, so a round of big messages reaches the
/// hub, and its flow control, message by message.
const MAX_BROADCAST_BATCH: usize = 64 * 1024;

/// Messages read in this round, to broadcast together when the round ends.
#[derive(Default)]
pub(super) struct Broadcasts {
    pub(super) frames: Vec<Bytes>,
    pub(super) bytes: usize,
}

impl Client<'_> {
    /// The most bytes of broadcasts read before they are fanned out: [`MAX_BROADCAST_BATCH`],
    /// or a quarter of the backlog limit if that is less, so that one batch never puts a
    /// listener (the sender itself included) behind on its own.
    pub(super) fn broadcast_batch(&self) -> usize {
        MAX_BROADCAST_BATCH.min(self.place.shared.config.max_backlog / 4)
    }

    /// Broadcasts what this round read.
    pub(super) fn fan_out(&mut self) {
        if !self.reading.broadcasts.frames.is_empty() {
            let frames = &self.reading.broadcasts.frames;
            self.place.shared.metrics.broadcasts(frames.len() as u64);
            self.place.shared.broadcast(&self.place.room, frames);
            self.reading.broadcasts.frames.clear();
            self.reading.broadcasts.bytes = 0;
        }
    }

    /// Moves what other threads queued into the send queue. (They counted it when they
    /// handed it over.)
    pub(super) fn take_deliveries(&mut self) {
        // A broadcaster that found the socket full left the rest of its frame: it goes first.
        self.wire.queue.hold_writes();
        if self.controls.is_some() {
            return self.take_controlled_deliveries();
        }
        let mut close = None;
        for delivery in self.inbox.drain() {
            match delivery {
                // After a Close, nothing more may be sent (section 5.5.1): drop the frame.
                Delivery::Frame(frame) if close.is_some() || !self.ws.can_write() => {
                    self.inbox.written(frame.len());
                }
                Delivery::Frame(frame) => self.wire.queue.push(frame, true),
                Delivery::Close(code, reason) => close = Some((code, reason)),
            }
        }
        if let Some((code, reason)) = close {
            self.start_close(code, reason, "closed by server");
        }
    }

    /// [`Client::take_deliveries`] under test controls: each frame through
    /// [`Client::queue_message`], to be counted and fragmented.
    #[cold]
    #[inline(never)]
    fn take_controlled_deliveries(&mut self) {
        let deliveries: Vec<Delivery> = self.inbox.drain().collect();
        let mut close = None;
        for delivery in deliveries {
            match delivery {
                Delivery::Frame(frame) if close.is_some() || !self.ws.can_write() => {
                    self.inbox.written(frame.len());
                }
                Delivery::Frame(frame) => self.queue_message(frame, true),
                Delivery::Close(code, reason) => close = Some((code, reason)),
            }
        }
        if let Some((code, reason)) = close {
            self.start_close(code, reason, "closed by server");
        }
    }
}
