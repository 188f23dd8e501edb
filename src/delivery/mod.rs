//! How frames reach a connection from other threads, and what holds them meanwhile.
//!
//! - `hub`: every open connection, by room; broadcasts fan out from here. Its children:
//!   `rooms` finds a room by name, `newcomers` admits a connection with its room's history,
//!   `numbering` keeps each room's epoch and offsets for clients that resume.
//! - `outbox`: a connection's mailbox and waker, and the count of what waits in it;
//!   its child `lending` lends an idle connection's socket to the threads that write to it.
//! - `sweep`: a wide room's fan-out, spread over the cores.
//! - `flow`: what happens to a listener that falls behind, and to its room's senders.
//! - `wait_list`: connections that stopped reading, waiting for another thread to wake them.
//! - `resume`: a room's epoch and offsets, and where a resuming client starts.
//! - `greeter`: the one timer thread that sends every greeting.
//! - `budget`: the memory ceiling all of this counts against.
//!
//! # How a broadcast flows
//!
//! A client's thread reads a message and hands its frame to the [`hub`], which, under the
//! room's lock, numbers it, keeps it in the room's history, and asks the room's [`flow`] for a
//! [`Batch`](flow::Batch): whether the frame may go straight into idle sockets. It then pushes
//! the batch into every member's [`outbox`] (over several cores in a wide room: `sweep`):
//! straight into the socket a listener lent (`outbox/lending.rs`), or into its mailbox with
//! one wake-up. Each listener's thread drains
//! its mailbox and writes to its client. A listener whose backlog passes the high mark is
//! behind: depending on the policy it is let go, or its room's [`flow`] holds the senders back,
//! and they wait on a [`wait_list`] until the last listener behind catches up and wakes them.

pub(crate) mod budget;
pub(crate) mod flow;
pub(crate) mod greeter;
pub(crate) mod hub;
pub(crate) mod outbox;
pub(crate) mod resume;
mod sweep;
pub(crate) mod wait_list;
