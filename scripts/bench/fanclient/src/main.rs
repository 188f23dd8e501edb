//! fanclient: the fan-out measurement of `wsload fanout`, made by a second,
//! independent client, so that no fan-out figure of scripts/bench rests on
//! wsload alone. It shares no code with wsload: tokio-tungstenite's client,
//! a task per connection on tokio's multi-threaded runtime (a thread per
//! core), the way an application would write it.
//!
//! One sender and N listeners connect to a broadcast server; once every
//! listener has seen a sync message, the sender sends M messages of S bytes
//! at R a second, each carrying its sequence number and send time; each
//! listener checks it gets every message once, in order, and records receive
//! time − send time. The result is one line of JSON on stdout with wsload
//! fanout's keys; the exit status is 1 when a check failed, 2 on a usage error.
//!
//!   fanclient --url ws://127.0.0.1:PORT --listeners 5000 --messages 50 \
//!       --size 32 --rate 10 [--pid SERVER_PID] [--text]

mod args;
mod cpu;
mod listener;
mod payload;
mod report;
mod run;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args = match args::Args::parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(why) => {
            eprintln!("fanclient: {why}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let report = runtime.block_on(run::run(args));
    println!("{}", report.to_json());
    if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
