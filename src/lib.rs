//! wsecho: the WebSocket server of a classic "native WebSocket" tutorial, done properly.
//!
//! It listens on one port, greets each client two seconds after it connects, echoes every
//! message back to its sender (or, with `--broadcast`, sends it to everyone), and serves a
//! browser demo page. It is built the simple way on purpose: a std `TcpListener`, one OS thread
//! per client running a [`tungstenite`] loop, one timer thread for greetings, and channels
//! between threads; no async runtime. `examples/01_echo.rs` to `04_waker.rs` build it up
//! lesson by lesson.
//!
//! # Reading the code
//!
//! The folders follow what runs where, each layer using only the ones below it. One message,
//! from accept to echo:
//!
//! 1. `server` (the main thread) accepts a TCP connection, asks `admission` whether a cap
//!    forbids it (the connection limit, per-address caps: a 503 if so), and hands it to a
//!    thread of its own, made ahead and parked until then (`threads`).
//!    Behind a proxy (`--trusted-proxy`, `--proxy-protocol`), `proxy` finds out who the client
//!    is, and the per-address caps count it from then on.
//! 2. `connection` (that thread, from here on) reads the HTTP request with `http`: the demo
//!    page, `/healthz` and `/metrics` are answered by `http::site`, an upgrade is checked by
//!    `http::handshake` and answered with 101.
//! 3. `connection::client` is the loop the thread then runs: it sleeps in `sys::wait` on its
//!    socket and its waker, reads a message with tungstenite, encodes the echo once (`frame`)
//!    and queues it in `connection::socket`, which writes it out.
//!
//! One broadcast, to every listener:
//!
//! 4. The receiving thread hands the encoded frame to `delivery::hub`, which pushes it into
//!    every listener's `delivery::outbox`: straight into the socket of a listener with nothing
//!    queued, or queued with one wake-up for its thread, which moves it to its own socket
//!    queue. The greeting takes the same road from the timer thread, `delivery::greeter`.
//! 5. `delivery::outbox` also paces broadcasts to the slowest reader (flow control), and
//!    `delivery::budget` keeps every byte held for clients under one memory ceiling.
//!
//! With `--redis` (the `cluster` feature), step 4 goes through Redis first: `cluster`
//! publishes the frame on the cluster's channel, and its subscriber thread fans out into the
//! hub what Redis delivers, in Redis's one order, on every instance. With TLS (the `tls`
//! feature), `tls` holds the certificate every connection starts from, and
//! `connection::transport` runs rustls inside the connection's own loop. `metrics` counts
//! what happens, for `GET /metrics` (the `metrics` feature).
//!
//! A client may also ask its own connection to misbehave, to test a client or a proxy (a
//! Close with a code, a reset, fragments, slow echoes, a burst, pings, a description of its
//! request): `http::controls` reads and checks those test controls in the URL's query, and
//! `connection::controlled` holds what a connection that asked for some does with them
//! (docs/testing-clients.md).
//!
//! Beside them: `config` (every setting, every limit a named constant with its reason),
//! `error`, `logging` (helpers for log lines), `sync` (locks that outlive a panic), and `sys`,
//! the one folder that talks to the operating system (all the `unsafe` code, and the two
//! backends that make the loop work on Linux, macOS and Windows). docs/design.md explains the
//! design.
//!
//! # Using it as a library
//!
//! ```no_run
//! let server = wsecho::Server::bind(wsecho::Config::default())?;
//! println!("{}", server.url());
//! server.run()?;
//! # Ok::<(), wsecho::Error>(())
//! ```
//!
//! On Linux, Android, FreeBSD and OpenBSD a running server wakes its connection threads with
//! the signal `SIGURG` and installs a process-wide handler for it that does nothing (see
//! `sys/ppoll.rs`); a program embedding wsecho should leave that signal to it.

#![deny(unsafe_code)]
#![warn(missing_docs)]
#![warn(unreachable_pub)]

mod admission;
#[cfg(feature = "cluster")]
mod cluster;
pub mod config;
mod connection;
mod delivery;
mod error;
mod frame;
mod http;
mod logging;
mod metrics;
mod proxy;
mod server;
mod sync;
mod sys;
mod threads;
#[cfg(feature = "tls")]
mod tls;

pub use config::{AddressRange, ClusterConfig, Config, Greeting, Mode, SlowListener, TlsFiles};
pub use error::{Error, TlsError};
#[cfg(feature = "tls")]
pub use server::TlsReloader;
pub use server::{Server, ShutdownHandle, Summary};
