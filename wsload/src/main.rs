//! wsload: a lean load generator for WebSocket servers.
//!
//! It exists to benchmark `wsecho`, the server of this repository, on the
//! same small machine the server runs on, so it is built to cost as little
//! CPU as possible: a fixed handful of threads, each multiplexing its share
//! of the connections with epoll (mio), and hand-written framing with no
//! per-message allocation. See `wsload --help` for the modes.

mod cli;
mod conn;
mod frame;
mod handshake;
mod modes;
mod rng;
mod stats;
mod sys;
mod target;
mod tls;
mod worker;

use clap::Parser;
use cli::{Cli, Command};
use modes::Report;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("wsload: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Runs the chosen mode; `Ok(false)` means it ran but a check failed.
fn run(cli: Cli) -> anyhow::Result<bool> {
    if let Err(e) = sys::raise_fd_limit() {
        // Not fatal: small runs work with the default limit.
        eprintln!("wsload: warning: could not raise the file descriptor limit: {e:#}");
    }
    match cli.command {
        Command::Echo(args) => Ok(emit(&modes::echo::run(&args)?, args.common.json)),
        Command::Hold(args) => Ok(emit(&modes::hold::run(&args)?, args.common.json)),
        Command::Fanout(args) => Ok(emit(&modes::fanout::run(&args)?, args.common.json)),
        Command::Wait(args) => modes::wait::run(&args).map(|()| true),
        Command::Chat(args) => modes::chat::run(&args).map(|()| true),
    }
}

/// Prints a report as JSON or for people; returns whether it passed.
fn emit<R: Report>(report: &R, json: bool) -> bool {
    if json {
        match serde_json::to_string(report) {
            Ok(text) => println!("{text}"),
            Err(e) => eprintln!("wsload: error: cannot encode the report as JSON: {e}"),
        }
    } else {
        report.print_human();
    }
    report.passed()
}
