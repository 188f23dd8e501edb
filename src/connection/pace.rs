//! Pacing: when a connection's loop must not read because of *other* connections, and how it
//! learns that it may again.
//!
//! Two things outside the connection stop it reading: in broadcast mode, a listener that is
//! behind (flow control, `delivery/flow.rs`), and, in any mode, the server's memory ceiling
//! (`budget.rs`). Either way the loop joins the wait list of what it waits for, so that the
//! thread that frees it wakes it; see `WaitList` on why no wake-up is lost. Its own client
//! not taking its echoes is the loop's own business (`Client::backpressured`).

use std::sync::Arc;
use std::time::Instant;

use crate::delivery::budget::Budget;
use crate::delivery::flow::Flow;
use crate::delivery::outbox::Outbox;

/// What the loop is waiting for before it reads again, and since when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Paused {
    /// A listener of its room is behind, or the cluster's publish queue is full (broadcast
    /// flow control).
    ForListeners(Instant),
    /// The server's memory is full.
    ForMemory(Instant),
}

/// Whether the loop may read, as other connections allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Turn {
    /// Wait: the loop is on a wait list and will be woken.
    Wait,
    /// Read.
    Read,
    /// Read, after a pause: the silence meanwhile says nothing about the client.
    ReadAfterPause,
}

/// A connection's place in the wait lists of other connections.
#[derive(Debug, Default)]
pub(crate) struct Pacing {
    paused: Option<Paused>,
    /// The generation of each wait list this connection is on, if it is: its room's senders,
    /// those waiting for the cluster's publish queue, those waiting for memory.
    listed_for_listeners: Option<u64>,
    listed_for_publishing: Option<u64>,
    listed_for_memory: Option<u64>,
}

impl Pacing {
    /// Whether the loop may read now. `flow` is its room's flow control in broadcast mode
    /// (`None` in echo mode, where no listener can hold a sender back); `in_progress` is what
    /// the connection holds of a message still arriving (see `Budget::may_read`).
    pub(crate) fn turn(
        &mut self,
        outbox: &Arc<Outbox>,
        flow: Option<&Flow>,
        budget: &Budget,
        in_progress: usize,
    ) -> Turn {
        if let Some(flow) = flow
            && (flow
                .senders()
                .join_while(outbox, &mut self.listed_for_listeners, || {
                    flow.listeners_behind()
                })
                || flow.common().waiting().join_while(
                    outbox,
                    &mut self.listed_for_publishing,
                    || flow.common().publish_full(),
                ))
        {
            if !matches!(self.paused, Some(Paused::ForListeners(_))) {
                self.paused = Some(Paused::ForListeners(Instant::now()));
            }
            return Turn::Wait;
        }
        if budget
            .waiting()
            .join_while(outbox, &mut self.listed_for_memory, || {
                !budget.may_read(in_progress)
            })
        {
            if !matches!(self.paused, Some(Paused::ForMemory(_))) {
                self.paused = Some(Paused::ForMemory(Instant::now()));
                budget.note_full();
            }
            return Turn::Wait;
        }
        match self.paused.take() {
            Some(_) => Turn::ReadAfterPause,
            None => Turn::Read,
        }
    }

    /// Whether the loop is waiting for other connections.
    pub(crate) fn paused(&self) -> bool {
        self.paused.is_some()
    }

    /// Whether the loop waits for a listener to catch up: its client has more to broadcast,
    /// and cannot send it until then.
    pub(crate) fn waiting_for_listeners(&self) -> bool {
        matches!(self.paused, Some(Paused::ForListeners(_)))
    }

    /// Since when the loop has waited for memory, if it does.
    pub(crate) fn waiting_for_memory_since(&self) -> Option<Instant> {
        match self.paused {
            Some(Paused::ForMemory(since)) => Some(since),
            _ => None,
        }
    }
}
