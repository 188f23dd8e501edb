//! wsecho: the WebSocket server of a classic "native WebSocket" tutorial, done properly.
//!
//! One OS thread per client runs a [`tungstenite`] read loop; a timer thread sends each client
//! a greeting; broadcasts and shutdown reach a client's thread through its outbox. The README
//! explains the design; each module explains its part:
//!
//! - [`server`]: the listener, one thread per connection, shutdown.
//! - [`admission`]: the connection limit and the per-address caps, checked at accept.
//! - [`connection`]: one connection's life: HTTP request, handshake, then [`client`].
//! - [`client`]: the loop a connection's thread runs after its handshake.
//! - [`outbox`], [`poll`]: how other threads hand a connection work and wake it, and how
//!   broadcasts are paced to the slowest reader.
//! - [`budget`]: the memory ceiling shared by all connections.
//! - [`socket`]: the outbound queue in front of each socket.
//! - [`hub`]: the open connections, broadcasts and counts.
//! - [`greeter`]: the one timer thread that sends every greeting.
//! - [`http`], [`handshake`], [`site`]: HTTP requests, the WebSocket handshake, the demo page.
//! - [`frame`]: encoding outgoing frames once.
//! - [`config`], [`cli`], [`logging`], [`error`]: settings, command line, logs, errors.

pub mod admission;
pub mod budget;
pub mod cli;
pub mod client;
pub mod config;
pub mod connection;
pub mod error;
pub mod frame;
pub mod greeter;
pub mod handshake;
pub mod http;
pub mod hub;
pub mod logging;
pub mod outbox;
pub mod poll;
pub mod server;
pub mod site;
pub mod socket;

pub use config::{Config, Greeting, Mode};
pub use error::Error;
pub use server::{Server, ShutdownHandle, Summary};
