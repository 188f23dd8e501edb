//! `wsload echo`: closed-loop request/echo throughput and latency.
//!
//! Each connection has exactly one message in flight: send, wait for the
//! echo, compare it byte for byte, send the next. Throughput therefore
//! measures how fast the server turns messages around, and the latency of
//! every message in the measured window is recorded exactly.

use super::{Errors, Report, ensure_opened, on_workers, room_workers, row, verdict};
use crate::cli::EchoArgs;
use crate::conn::{Conn, MessageKind};
use crate::stats::{self, Summary};
use crate::sys;
use crate::target::{self, Target};
use crate::worker::{CloseReason, Handler, Message, Worker};
use anyhow::{Result, bail};
use serde::Serialize;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// How long to wait for the server to complete the closing handshakes.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Everything a worker thread needs to know about the run.
struct Plan {
    kind: MessageKind,
    size: usize,
    threads: usize,
    concurrency: usize,
    connect_deadline: Instant,
    warmup: Duration,
    duration: Duration,
}

/// Per-connection state of the closed loop.
struct EchoConn {
    /// The message in flight (or last sent); the echo must equal it.
    payload: Vec<u8>,
    seq: u64,
    sent_at: Instant,
    waiting: bool,
}

/// What one worker thread measured.
struct EchoHandler<'a> {
    plan: &'a Plan,
    /// This worker's index, to turn local connection ids into global ones.
    thread: usize,
    conns: Vec<EchoConn>,
    running: bool,
    measure_from: Instant,
    stop_at: Instant,
    opened: usize,
    messages: u64,
    latencies_ns: Vec<i64>,
    unsolicited: u64,
    mismatches: Errors,
    errors: Errors,
}

impl<'a> EchoHandler<'a> {
    fn new(plan: &'a Plan, thread: usize, count: usize) -> Self {
        let now = Instant::now();
        let conns = (0..count)
            .map(|id| EchoConn {
                payload: pattern(plan.size, thread + id * plan.threads),
                seq: 0,
                sent_at: now,
                waiting: false,
            })
            .collect();
        EchoHandler {
            plan,
            thread,
            conns,
            running: false,
            measure_from: now,
            stop_at: now,
            opened: 0,
            messages: 0,
            latencies_ns: Vec::new(),
            unsolicited: 0,
            mismatches: Errors::default(),
            errors: Errors::default(),
        }
    }

    fn global_id(&self, id: usize) -> usize {
        self.thread + id * self.plan.threads
    }

    /// Stamps the next sequence number into connection `id`'s payload and
    /// sends it.
    fn send_next(&mut self, id: usize, conn: &mut Conn) {
        let c = &mut self.conns[id];
        c.seq += 1;
        stamp(&mut c.payload, c.seq);
        c.waiting = true;
        c.sent_at = Instant::now();
        conn.send(self.plan.kind, &c.payload);
    }
}

impl Handler for EchoHandler<'_> {
    fn on_open(&mut self, _id: usize, _conn: &mut Conn, _now: Instant) {
        self.opened += 1;
    }

    fn on_message(&mut self, id: usize, msg: Message<'_>, conn: &mut Conn, now: Instant) {
        let ours = match msg.kind {
            MessageKind::Binary => true,
            // In --text mode our messages are text too; they are recognised
            // by their length and the '#' that starts the sequence stamp.
            MessageKind::Text => {
                self.plan.kind == MessageKind::Text
                    && msg.data.len() == self.plan.size
                    && msg.data.first() == Some(&b'#')
            }
        };
        if !ours {
            // E.g. the server's greeting: not an echo, not an error.
            self.unsolicited += 1;
            return;
        }
        let gid = self.global_id(id);
        let c = &mut self.conns[id];
        if !c.waiting {
            self.mismatches.record(format!(
                "connection {gid}: received a message nobody asked for"
            ));
            return;
        }
        c.waiting = false;
        if msg.kind != self.plan.kind || msg.data != c.payload.as_slice() {
            let what = describe_mismatch(msg, self.plan.kind, &c.payload);
            let line = format!("connection {gid}, message {}: {what}", c.seq);
            // Fail loudly, right away: a wrong echo is a server bug.
            if self.mismatches.count < 5 {
                eprintln!("wsload: MISMATCH {line}");
            }
            self.mismatches.record(line);
            return; // this connection's stream can no longer be trusted
        }
        if c.sent_at >= self.measure_from && now <= self.stop_at {
            self.messages += 1;
            self.latencies_ns.push(stats::nanos(now - c.sent_at));
        }
        if self.running && now < self.stop_at {
            self.send_next(id, conn);
        }
    }

    fn on_close(&mut self, id: usize, reason: &CloseReason) {
        let gid = self.global_id(id);
        self.errors.record(format!("connection {gid}: {reason}"));
    }
}

/// The initial payload of connection `gid`: printable ASCII (valid UTF-8 for
/// --text), different for every connection so crossed wires are noticed.
fn pattern(size: usize, gid: usize) -> Vec<u8> {
    (0..size)
        .map(|i| b'a' + ((i * 7 + gid * 13) % 26) as u8)
        .collect()
}

/// Writes `#` and 15 hex digits of `seq` over the payload's first bytes, so
/// a stale or repeated echo differs from the expected one.
fn stamp(payload: &mut [u8], seq: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut tag = [b'#'; 16];
    for (i, digit) in tag[1..].iter_mut().enumerate() {
        *digit = HEX[((seq >> (4 * (14 - i))) & 0xF) as usize];
    }
    let n = payload.len().min(tag.len());
    payload[..n].copy_from_slice(&tag[..n]);
}

fn describe_mismatch(msg: Message<'_>, sent_kind: MessageKind, sent: &[u8]) -> String {
    if msg.kind != sent_kind {
        return format!("sent {sent_kind:?}, echo is {:?}", msg.kind);
    }
    if msg.data.len() != sent.len() {
        return format!("echo has {} bytes, sent {}", msg.data.len(), sent.len());
    }
    let at = msg
        .data
        .iter()
        .zip(sent)
        .position(|(a, b)| a != b)
        .unwrap_or(0);
    format!(
        "echo differs at byte {at}: got {:#04x}, sent {:#04x}",
        msg.data[at], sent[at]
    )
}

/// Runs one worker thread: connect its share, wait for the others, loop.
fn run_worker<'a>(
    mut worker: Worker,
    plan: &'a Plan,
    thread: usize,
    count: usize,
    barrier: &Barrier,
) -> Result<EchoHandler<'a>> {
    let mut h = EchoHandler::new(plan, thread, count);
    let per_thread = plan.concurrency.div_ceil(plan.threads);
    let connected = worker.connect(count, per_thread, plan.connect_deadline, &mut h);
    // Every thread must reach the barrier, even after a failure.
    barrier.wait();
    connected?;
    let start = Instant::now();
    h.running = true;
    h.measure_from = start + plan.warmup;
    h.stop_at = h.measure_from + plan.duration;
    for id in worker.open_ids() {
        if let Some(conn) = worker.open_conn(id) {
            h.send_next(id, conn);
        }
    }
    worker.run_until(h.stop_at, &mut h)?;
    h.running = false;
    worker.close_all(CLOSE_GRACE)?;
    Ok(h)
}

/// Runs the echo benchmark.
pub fn run(args: &EchoArgs) -> Result<EchoReport> {
    let target: Arc<Target> = Arc::new(target::from_args(&args.server)?);
    let connections = args.connections as usize;
    let threads = usize::from(args.common.threads).min(connections);
    let plan = Plan {
        kind: if args.text {
            MessageKind::Text
        } else {
            MessageKind::Binary
        },
        size: args.size,
        threads,
        concurrency: args.common.concurrency as usize,
        connect_deadline: Instant::now() + args.common.connect_timeout,
        warmup: args.warmup,
        duration: args.duration,
    };
    if plan.duration.is_zero() {
        bail!("--duration must be longer than 0");
    }
    let workers = room_workers(&target, args.rooms, threads)?;
    let barrier = Barrier::new(threads);
    let cpu_before = sys::own_cpu_seconds();

    let run = |worker, t, count| run_worker(worker, &plan, t, count, &barrier);
    let (results, ()): (Vec<Result<EchoHandler<'_>>>, ()) =
        on_workers(workers, connections, run, || ());

    let mut report = EchoReport {
        mode: "echo",
        url: target.url.clone(),
        connections: args.connections,
        opened: 0,
        size: args.size,
        text: args.text,
        threads,
        warmup_s: args.warmup.as_secs_f64(),
        duration_s: args.duration.as_secs_f64(),
        messages: 0,
        msgs_per_s: 0.0,
        mb_per_s: 0.0,
        latency_us: Summary::default(),
        unsolicited: 0,
        mismatches: 0,
        errors: 0,
        first_error: None,
        client_cpu_s: None,
        ok: false,
    };
    let mut latencies = Vec::new();
    let mut mismatches = Errors::default();
    let mut errors = Errors::default();
    for result in results {
        let h = result?;
        report.opened += h.opened;
        report.messages += h.messages;
        report.unsolicited += h.unsolicited;
        latencies.extend_from_slice(&h.latencies_ns);
        mismatches.merge(h.mismatches);
        errors.merge(h.errors);
    }
    let seconds = args.duration.as_secs_f64();
    report.msgs_per_s = report.messages as f64 / seconds;
    report.mb_per_s = report.messages as f64 * args.size as f64 / seconds / 1e6;
    report.latency_us = stats::summarize_ns(&mut latencies);
    report.mismatches = mismatches.count;
    report.errors = errors.count;
    report.first_error = mismatches.first.or(errors.first);
    report.client_cpu_s = sys::own_cpu_seconds()
        .zip(cpu_before)
        .map(|(now, before)| now - before);
    ensure_opened(report.opened, &target.url, report.first_error.as_deref())?;
    report.ok = report.mismatches == 0
        && report.errors == 0
        && report.opened == connections
        && report.messages > 0;
    Ok(report)
}

/// The figures of an echo run.
#[derive(Debug, Serialize)]
pub struct EchoReport {
    pub mode: &'static str,
    pub url: String,
    pub connections: u64,
    pub opened: usize,
    pub size: usize,
    pub text: bool,
    pub threads: usize,
    pub warmup_s: f64,
    pub duration_s: f64,
    /// Echoes received in the measured window.
    pub messages: u64,
    pub msgs_per_s: f64,
    /// Payload megabytes (10^6 bytes) per second in each direction.
    pub mb_per_s: f64,
    pub latency_us: Summary,
    /// Messages the server sent on its own (e.g. greetings).
    pub unsolicited: u64,
    pub mismatches: u64,
    /// Connections that failed to open or died during the run.
    pub errors: u64,
    pub first_error: Option<String>,
    /// CPU time wsload itself used, to show what the measurement cost (none
    /// where the system has no `getrusage`).
    pub client_cpu_s: Option<f64>,
    pub ok: bool,
}

impl Report for EchoReport {
    fn passed(&self) -> bool {
        self.ok
    }

    fn print_human(&self) {
        let kind = if self.text { "text" } else { "binary" };
        println!(
            "echo {}: {} connections x {} B {kind}, {:.1} s measured after {:.1} s warm-up, {} thread(s)",
            self.url, self.connections, self.size, self.duration_s, self.warmup_s, self.threads
        );
        row("opened", format!("{} of {}", self.opened, self.connections));
        row(
            "throughput",
            format!(
                "{:.0} msgs/s, {:.2} MB/s ({} echoes)",
                self.msgs_per_s, self.mb_per_s, self.messages
            ),
        );
        row("latency", self.latency_us.line());
        row(
            "unsolicited",
            format!("{} text message(s)", self.unsolicited),
        );
        row("mismatches", self.mismatches);
        row("errors", self.errors);
        if let Some(first) = &self.first_error {
            row("first error", first);
        }
        if let Some(cpu) = self.client_cpu_s {
            row("client cpu", format!("{cpu:.2} s"));
        }
        row("result", verdict(self.ok));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_sequence_numbers() {
        let mut p = pattern(20, 3);
        stamp(&mut p, 0x1234);
        assert_eq!(&p[..16], b"#000000000001234");
        assert!(p.is_ascii());
        let mut short = pattern(4, 0);
        stamp(&mut short, 0xffff_ffff);
        assert_eq!(&short, b"#000");
    }

    #[test]
    fn patterns_differ_between_connections() {
        assert_ne!(pattern(64, 1), pattern(64, 2));
        assert!(std::str::from_utf8(&pattern(4096, 7)).is_ok());
    }

    #[test]
    fn mismatch_descriptions() {
        let msg = |kind, data| Message { kind, data };
        assert_eq!(
            describe_mismatch(
                msg(MessageKind::Binary, b"abd"),
                MessageKind::Binary,
                b"abc"
            ),
            "echo differs at byte 2: got 0x64, sent 0x63"
        );
        assert_eq!(
            describe_mismatch(msg(MessageKind::Binary, b"ab"), MessageKind::Binary, b"abc"),
            "echo has 2 bytes, sent 3"
        );
        assert_eq!(
            describe_mismatch(msg(MessageKind::Text, b"abc"), MessageKind::Binary, b"abc"),
            "sent Binary, echo is Text"
        );
    }
}
