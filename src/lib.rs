//! wsecho: the WebSocket server of a classic "native WebSocket" tutorial, done properly.
//!
//! It listens on one port, greets each client two seconds after it connects, echoes every
//! message back to its sender (or, with `--broadcast`, sends it to everyone), and serves a
//! browser demo page. It is built the simple way on purpose: a std `TcpListener`, one OS thread
//! per client running a [`tungstenite`] loop, one timer thread for greetings, and channels
//! between threads; no async runtime.
//!
//! # Reading the code
//!
//! The folders follow what runs where. One message, from accept to echo:
//!
//! 1. [`server`] (the main thread) accepts a TCP connection, asks `admission` whether a cap
//!    forbids it (the connection limit, per-address caps: a 503 if so), and starts its thread.
//! 2. `connection` (that thread, from here on) reads the HTTP request with [`http`]: the demo
//!    page and `/healthz` are answered by `http::site`, an upgrade is checked by
//!    [`http::handshake`] and answered with 101.
//! 3. `connection::client` is the loop the thread then runs: it sleeps in `sys::wait` on its
//!    socket and its waker, reads a message with tungstenite, encodes the echo once
//!    (`delivery::frame`) and queues it in `connection::socket`, which writes it out.
//!
//! One broadcast, to every listener:
//!
//! 4. The receiving thread hands the encoded frame to `delivery::hub`, which writes it straight
//!    into the socket of each listener that has nothing queued, and pushes it into the
//!    `delivery::outbox` of the others and wakes their threads; each thread moves it to its own
//!    socket queue. The greeting takes the same road from the timer thread,
//!    `delivery::greeter`.
//! 5. `delivery::outbox` also paces broadcasts to the slowest reader (flow control), and
//!    `delivery::budget` keeps every byte held for clients under one memory ceiling.
//!
//! With `--redis`, `cluster` joins the instance to others: a client's broadcast goes to Redis
//! through a publisher thread, and a subscriber thread fans the channel out into the hub, so
//! that every client of every instance sees every broadcast in Redis's one order.
//!
//! With `--redis`, step 4 goes through Redis first: `cluster` publishes the frame on the
//! cluster's channel, and its subscriber thread fans out what Redis delivers, in Redis's
//! order, on every instance.
//!
//! With TLS, [`tls`] holds the certificate every connection starts from, and
//! `connection::transport` runs rustls inside the connection's own loop. `metrics` counts
//! what happens for `GET /metrics`.
//!
//! Beside them: [`config`] (every setting, every limit a named constant with its reason),
//! [`cli`] (the command line), [`logging`], [`error`], and `sys`, the one folder that talks to
//! the operating system (all the `unsafe` code, and the two backends that make the loop work on
//! Linux, macOS and Windows).
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

mod admission;
pub mod cli;
mod cluster;
pub mod config;
mod connection;
mod delivery;
pub mod error;
mod frame;
pub mod http;
pub mod logging;
mod metrics;
pub mod server;
mod sync;
mod sys;
pub mod tls;

pub use config::{Config, Greeting, Mode};
pub use error::Error;
pub use server::{Server, ShutdownHandle, Summary};
