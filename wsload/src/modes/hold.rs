//! `wsload hold`: many idle connections.
//!
//! Answers three questions about a server holding lots of quiet clients:
//! what each one costs in memory (RSS growth / connections), whether the
//! server burns CPU while nothing happens, and whether its per-connection
//! greeting timer fires on time when thousands are due at once. At the end
//! every connection must still echo, proving none was silently lost.

use super::{Errors, Report, ensure_opened, on_workers, row, verdict};
use crate::cli::HoldArgs;
use crate::conn::{Conn, MessageKind};
use crate::stats::{self, Summary};
use crate::sys;
use crate::target::{self, Target};
use crate::worker::{CloseReason, Handler, Message, Worker};
use anyhow::{Result, bail};
use serde::Serialize;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

/// How long the final echo check may take.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long to wait for the server to complete the closing handshakes.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Connecting and idling: only the server may talk.
    Quiet,
    /// Each connection has sent its probe and waits for the echo.
    Verifying,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
    NotSent,
    Sent,
    Echoed,
}

/// One worker thread's connections and findings.
struct HoldHandler {
    thread: usize,
    threads: usize,
    stage: Stage,
    opened_at: Vec<Option<Instant>>,
    /// Arrival of each connection's first text message.
    greeted_at: Vec<Option<Instant>>,
    probes: Vec<Probe>,
    probes_sent: usize,
    probes_settled: usize,
    echoed: usize,
    texts: u64,
    /// Connections lost after opening (counted apart from connect failures).
    dropped: Errors,
    connect_failures: Errors,
    /// Binary messages nobody asked for, or wrong probe echoes.
    bad_messages: Errors,
    last_open: Option<Instant>,
}

impl HoldHandler {
    fn new(thread: usize, threads: usize, count: usize) -> Self {
        HoldHandler {
            thread,
            threads,
            stage: Stage::Quiet,
            opened_at: vec![None; count],
            greeted_at: vec![None; count],
            probes: vec![Probe::NotSent; count],
            probes_sent: 0,
            probes_settled: 0,
            echoed: 0,
            texts: 0,
            dropped: Errors::default(),
            connect_failures: Errors::default(),
            bad_messages: Errors::default(),
            last_open: None,
        }
    }

    fn global_id(&self, id: usize) -> usize {
        self.thread + id * self.threads
    }

    fn opened(&self) -> usize {
        self.opened_at.iter().flatten().count()
    }
}

/// The probe a connection sends to prove it still works.
fn probe(gid: usize) -> Vec<u8> {
    format!("wsload-probe-{gid:08}").into_bytes()
}

impl Handler for HoldHandler {
    fn on_open(&mut self, id: usize, _conn: &mut Conn, now: Instant) {
        self.opened_at[id] = Some(now);
        self.last_open = Some(now);
    }

    fn on_message(&mut self, id: usize, msg: Message<'_>, _conn: &mut Conn, now: Instant) {
        if msg.kind == MessageKind::Text {
            self.texts += 1;
            self.greeted_at[id].get_or_insert(now);
            return;
        }
        let gid = self.global_id(id);
        if self.probes[id] != Probe::Sent {
            self.bad_messages
                .record(format!("connection {gid}: binary message nobody asked for"));
            return;
        }
        self.probes[id] = Probe::Echoed;
        self.probes_settled += 1;
        if msg.data == probe(gid).as_slice() {
            self.echoed += 1;
        } else {
            self.bad_messages.record(format!(
                "connection {gid}: probe echo differs from the probe"
            ));
        }
    }

    fn on_close(&mut self, id: usize, reason: &CloseReason) {
        let gid = self.global_id(id);
        if reason.before_open() {
            self.connect_failures
                .record(format!("connection {gid}: {reason}"));
            return;
        }
        self.dropped.record(format!("connection {gid}: {reason}"));
        if self.probes[id] == Probe::Sent {
            self.probes_settled += 1;
        }
    }

    fn is_done(&self) -> bool {
        self.stage == Stage::Verifying && self.probes_settled == self.probes_sent
    }
}

/// Shared settings of the worker threads.
struct Plan {
    threads: usize,
    concurrency: usize,
    connect_deadline: Instant,
    hold: Duration,
}

/// Runs one worker thread through the phases, meeting the main thread at
/// `barrier` twice: when all connections are open, and when the idle window
/// is over. Both meetings happen even after an error, or the others would
/// wait forever.
fn run_worker(
    mut worker: Worker,
    plan: &Plan,
    thread: usize,
    count: usize,
    barrier: &Barrier,
) -> Result<HoldHandler> {
    let mut h = HoldHandler::new(thread, plan.threads, count);
    let per_thread = plan.concurrency.div_ceil(plan.threads);
    let mut status = worker.connect(count, per_thread, plan.connect_deadline, &mut h);
    barrier.wait();
    let idle_until = Instant::now() + plan.hold;
    if status.is_ok() {
        status = worker.run_until(idle_until, &mut h);
    }
    barrier.wait();
    status?;

    h.stage = Stage::Verifying;
    for id in worker.open_ids() {
        let data = probe(h.global_id(id));
        h.probes[id] = Probe::Sent;
        h.probes_sent += 1;
        worker.send(id, MessageKind::Binary, &data, &mut h);
    }
    worker.run_until(Instant::now() + VERIFY_TIMEOUT, &mut h)?;
    worker.close_all(CLOSE_GRACE)?;
    Ok(h)
}

/// Runs the hold test.
pub fn run(args: &HoldArgs) -> Result<HoldReport> {
    if let Some(delay) = args.greeting_delay
        && args.hold <= delay
    {
        bail!("--hold must be longer than --greeting-delay, or the greetings cannot arrive");
    }
    let target: Arc<Target> = Arc::new(target::from_args(&args.server)?);
    let connections = args.connections as usize;
    let threads = usize::from(args.common.threads).min(connections);
    let plan = Plan {
        threads,
        concurrency: args.common.concurrency as usize,
        connect_deadline: Instant::now() + args.common.connect_timeout,
        hold: args.hold,
    };
    let rss_before = args.pid.map(sys::rss_bytes).transpose()?;
    let fds_before = args.pid.map(sys::open_fds).transpose()?;
    let workers = (0..threads)
        .map(|_| Worker::new(target.clone()))
        .collect::<std::io::Result<Vec<_>>>()?;
    // The workers plus this thread, which takes the server's figures.
    let barrier = Barrier::new(threads + 1);
    let started = Instant::now();

    let run = |worker, t, count| run_worker(worker, &plan, t, count, &barrier);
    let (results, server): (Vec<Result<HoldHandler>>, _) =
        on_workers(workers, connections, run, || {
            barrier.wait();
            let open_s = started.elapsed().as_secs_f64();
            let server = args.pid.map(|pid| -> Result<ServerFigures> {
                let rss_after = sys::rss_bytes(pid)?;
                let fds_after = sys::open_fds(pid)?;
                let cpu_start = sys::cpu_seconds(pid)?;
                thread::sleep(args.hold);
                Ok(ServerFigures {
                    rss_after,
                    fds_after,
                    cpu_start,
                    cpu_end: sys::cpu_seconds(pid)?,
                })
            });
            if args.pid.is_none() {
                thread::sleep(args.hold);
            }
            barrier.wait();
            (open_s, server)
        });

    let handlers = results.into_iter().collect::<Result<Vec<_>>>()?;
    let (open_s, server) = (server.0, server.1.transpose()?);
    let mut report = HoldReport {
        mode: "hold",
        url: target.url.clone(),
        connections: args.connections,
        opened: 0,
        threads,
        open_s,
        hold_s: args.hold.as_secs_f64(),
        pid: args.pid,
        rss_before_kib: rss_before.map(|b| b / 1024),
        rss_after_kib: None,
        rss_per_conn_kib: None,
        fds_before,
        fds_after: None,
        fds_per_conn: None,
        idle_cpu_s: None,
        greeting_delay_s: args.greeting_delay.map(|d| d.as_secs_f64()),
        greetings: 0,
        lateness_us: None,
        text_messages: 0,
        still_echo: 0,
        connect_failures: 0,
        dropped: 0,
        bad_messages: 0,
        first_error: None,
        ok: false,
    };
    let mut lateness_ns = Vec::new();
    let (mut failures, mut dropped, mut bad) =
        (Errors::default(), Errors::default(), Errors::default());
    for h in handlers {
        report.opened += h.opened();
        report.greetings += h.greeted_at.iter().flatten().count();
        report.text_messages += h.texts;
        report.still_echo += h.echoed;
        if let Some(delay) = args.greeting_delay {
            for (opened, greeted) in h.opened_at.iter().zip(&h.greeted_at) {
                if let (Some(opened), Some(greeted)) = (opened, greeted) {
                    lateness_ns.push(lateness(*opened + delay, *greeted));
                }
            }
        }
        failures.merge(h.connect_failures);
        dropped.merge(h.dropped);
        bad.merge(h.bad_messages);
    }
    if let Some(server) = server {
        report.rss_after_kib = Some(server.rss_after / 1024);
        report.fds_after = Some(server.fds_after);
        if let (Some(before), true) = (rss_before, report.opened > 0) {
            let growth = server.rss_after as f64 - before as f64;
            report.rss_per_conn_kib = Some(growth / 1024.0 / report.opened as f64);
        }
        if let (Some(before), true) = (fds_before, report.opened > 0) {
            let growth = server.fds_after as f64 - before as f64;
            report.fds_per_conn = Some(growth / report.opened as f64);
        }
        report.idle_cpu_s = Some(server.cpu_end - server.cpu_start);
    }
    if args.greeting_delay.is_some() {
        report.lateness_us = Some(stats::summarize_ns(&mut lateness_ns));
    }
    report.connect_failures = failures.count;
    report.dropped = dropped.count;
    report.bad_messages = bad.count;
    report.first_error = failures.first.or(dropped.first).or(bad.first);
    ensure_opened(report.opened, &target.url, report.first_error.as_deref())?;
    report.ok = report.opened == connections
        && report.still_echo == connections
        && report.dropped == 0
        && report.bad_messages == 0
        && (args.greeting_delay.is_none() || report.greetings == connections);
    Ok(report)
}

/// The server's figures taken once every connection is open (`--pid`).
struct ServerFigures {
    rss_after: u64,
    fds_after: u64,
    /// CPU seconds at the start and the end of the idle window.
    cpu_start: f64,
    cpu_end: f64,
}

/// How late `actual` is relative to `due`, in signed nanoseconds (negative:
/// early, which happens by a few microseconds because the server starts its
/// timer when it *sends* the 101 response and we stamp when we *read* it).
fn lateness(due: Instant, actual: Instant) -> i64 {
    if actual >= due {
        stats::nanos(actual - due)
    } else {
        -stats::nanos(due - actual)
    }
}

/// The figures of a hold run.
#[derive(Debug, Serialize)]
pub struct HoldReport {
    pub mode: &'static str,
    pub url: String,
    pub connections: u64,
    pub opened: usize,
    pub threads: usize,
    /// Seconds from the first connect to the last connection open.
    pub open_s: f64,
    pub hold_s: f64,
    pub pid: Option<u32>,
    pub rss_before_kib: Option<u64>,
    pub rss_after_kib: Option<u64>,
    /// (RSS after all opened - RSS before) / connections opened.
    pub rss_per_conn_kib: Option<f64>,
    /// File descriptors the server had open before connecting (`/proc/PID/fd`).
    pub fds_before: Option<u64>,
    pub fds_after: Option<u64>,
    /// (descriptors after all opened - before) / connections opened.
    pub fds_per_conn: Option<f64>,
    /// Server CPU seconds (user + system) during the idle window.
    pub idle_cpu_s: Option<f64>,
    pub greeting_delay_s: Option<f64>,
    /// Connections that received at least one text message.
    pub greetings: usize,
    /// First text message arrival minus (handshake completion + delay).
    pub lateness_us: Option<Summary>,
    pub text_messages: u64,
    /// Connections that echoed the final probe correctly.
    pub still_echo: usize,
    pub connect_failures: u64,
    /// Connections lost after they had opened.
    pub dropped: u64,
    pub bad_messages: u64,
    pub first_error: Option<String>,
    pub ok: bool,
}

impl Report for HoldReport {
    fn passed(&self) -> bool {
        self.ok
    }

    fn print_human(&self) {
        println!(
            "hold {}: {} connections held idle for {:.1} s, {} thread(s)",
            self.url, self.connections, self.hold_s, self.threads
        );
        row(
            "opened",
            format!(
                "{} of {} in {:.2} s",
                self.opened, self.connections, self.open_s
            ),
        );
        if let (Some(before), Some(after)) = (self.rss_before_kib, self.rss_after_kib) {
            let per = self.rss_per_conn_kib.unwrap_or(0.0);
            row(
                "server RSS",
                format!("{before} KiB -> {after} KiB, {per:.2} KiB per connection"),
            );
        }
        if let (Some(before), Some(after)) = (self.fds_before, self.fds_after) {
            let per = self.fds_per_conn.unwrap_or(0.0);
            row(
                "server fds",
                format!("{before} -> {after}, {per:.2} per connection"),
            );
        }
        if let Some(cpu) = self.idle_cpu_s {
            row(
                "idle CPU",
                format!(
                    "{cpu:.3} s over {:.1} s (pid {})",
                    self.hold_s,
                    self.pid.unwrap_or(0)
                ),
            );
        }
        if let (Some(delay), Some(lateness)) = (self.greeting_delay_s, &self.lateness_us) {
            row(
                "greetings",
                format!(
                    "{} of {} (expected {delay:.1} s after the handshake)",
                    self.greetings, self.opened
                ),
            );
            row("lateness", lateness.line());
        } else {
            row("text msgs", self.text_messages);
        }
        row(
            "still echo",
            format!("{} of {}", self.still_echo, self.connections),
        );
        row(
            "failures",
            format!(
                "{} connect, {} dropped, {} bad messages",
                self.connect_failures, self.dropped, self.bad_messages
            ),
        );
        if let Some(first) = &self.first_error {
            row("first error", first);
        }
        row("result", verdict(self.ok));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lateness_is_signed() {
        let t = Instant::now();
        let later = t + Duration::from_micros(1500);
        assert_eq!(lateness(t, later), 1_500_000);
        assert_eq!(lateness(later, t), -1_500_000);
    }

    #[test]
    fn probes_are_distinct() {
        assert_ne!(probe(1), probe(2));
    }
}
