//! How frames reach a connection from other threads, and what holds them meanwhile.
//!
//! - `outbox`: a connection's mailbox and waker, and what happens to a listener that falls
//!   behind.
//! - `hub`: every open connection; broadcasts fan out from here.
//! - `resume`: a room's epoch and offsets, and where a resuming client starts.
//! - `greeter`: the one timer thread that sends every greeting.
//! - `budget`: the memory ceiling all of this counts against.

pub(crate) mod budget;
pub(crate) mod greeter;
pub(crate) mod hub;
pub(crate) mod outbox;
pub(crate) mod resume;
