//! `wsload fanout`: broadcast completeness, order and delivery latency.
//!
//! One sender and N listeners connect to a server in broadcast mode, where
//! every message from any client goes to every client. The sender sends M
//! binary messages, each carrying its sequence number and the moment it was
//! sent; each listener checks that it sees 0, 1, 2, ... M-1 with nothing
//! missing, repeated or reordered, and records how long each took to arrive.
//!
//! Before the first counted message, the sender repeats a *sync* message
//! until every listener has seen one. A listener that receives it is
//! certainly registered with the server's broadcast group, so a message lost
//! at the start is the server's fault, not a race in the benchmark.

use super::{Errors, Report, ensure_opened, on_workers, row, verdict};
use crate::cli::FanoutArgs;
use crate::conn::{Conn, MessageKind};
use crate::stats::{self, Summary};
use crate::sys;
use crate::target::{self, Target};
use crate::worker::{CloseReason, Handler, Message, Worker};
use anyhow::{Result, bail};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// Sequence number that marks the sync message.
const SYNC: u64 = u64::MAX;
/// How often the sender repeats the sync message while waiting.
const SYNC_EVERY: Duration = Duration::from_millis(50);
/// How long to wait for every listener to see a sync message.
const SYNC_TIMEOUT: Duration = Duration::from_secs(10);
/// After the last send, how long to wait for stragglers before declaring
/// messages missing.
const DRAIN: Duration = Duration::from_secs(2);
/// Full speed: messages sent back to back before looking at incoming data.
const BURST: usize = 64;
/// How long to wait for the server to complete the closing handshakes.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Settings and cross-thread state of one run.
struct Shared {
    /// Timestamps in messages are nanoseconds since this instant.
    base: Instant,
    threads: usize,
    listeners: usize,
    messages: u64,
    rate: u64,
    size: usize,
    concurrency: usize,
    connect_deadline: Instant,
    timeout: Duration,
    /// Listeners that have received a sync message.
    synced: AtomicUsize,
    /// When the sender finished, in ns since `base` (-1: not yet).
    send_done_ns: AtomicI64,
    /// Set when the run cannot go on (e.g. the sync never arrived).
    abort: AtomicBool,
}

impl Shared {
    fn ns_since_base(&self, t: Instant) -> i64 {
        stats::nanos(t.saturating_duration_since(self.base))
    }
}

/// What one listener has seen.
struct Listener {
    synced: bool,
    next: u64,
    /// One bit per sequence number, to count distinct deliveries.
    seen: Vec<u64>,
    distinct: u64,
}

struct FanoutHandler<'a> {
    shared: &'a Shared,
    thread: usize,
    /// Local id of the sender connection, if this worker owns it.
    sender: Option<usize>,
    listeners: Vec<Listener>,
    local_listeners: usize,
    complete: usize,
    opened: usize,
    delivered: u64,
    out_of_order: u64,
    duplicates: u64,
    latencies_ns: Vec<i64>,
    last_delivery_ns: i64,
    texts: u64,
    sender_echoes: u64,
    errors: Errors,
    /// When the sender sent its first counted message (sender's thread only).
    first_send_ns: Option<i64>,
}

impl<'a> FanoutHandler<'a> {
    fn new(shared: &'a Shared, thread: usize, count: usize) -> Self {
        let words = shared.messages.div_ceil(64) as usize;
        let sender_gid = shared.listeners;
        let sender = (0..count).find(|&id| thread + id * shared.threads == sender_gid);
        let local_listeners = count - usize::from(sender.is_some());
        let listeners = (0..count)
            .map(|id| Listener {
                synced: false,
                next: 0,
                // The sender needs no bitmap.
                seen: if Some(id) == sender {
                    Vec::new()
                } else {
                    vec![0; words]
                },
                distinct: 0,
            })
            .collect();
        FanoutHandler {
            shared,
            thread,
            sender,
            listeners,
            local_listeners,
            complete: 0,
            opened: 0,
            delivered: 0,
            out_of_order: 0,
            duplicates: 0,
            latencies_ns: Vec::with_capacity(local_listeners * shared.messages as usize),
            last_delivery_ns: 0,
            texts: 0,
            sender_echoes: 0,
            errors: Errors::default(),
            first_send_ns: None,
        }
    }

    fn global_id(&self, id: usize) -> usize {
        self.thread + id * self.shared.threads
    }
}

impl Handler for FanoutHandler<'_> {
    fn on_open(&mut self, _id: usize, _conn: &mut Conn, _now: Instant) {
        self.opened += 1;
    }

    fn on_message(&mut self, id: usize, msg: Message<'_>, _conn: &mut Conn, now: Instant) {
        if msg.kind == MessageKind::Text {
            self.texts += 1; // greetings: ignored, but counted
            return;
        }
        let shared = self.shared;
        let is_sync = msg.data.get(..8) == Some(&SYNC.to_le_bytes()[..]);
        if Some(id) == self.sender {
            // Broadcast includes the sender itself; count its copies of the
            // counted messages.
            self.sender_echoes += u64::from(!is_sync);
            return;
        }
        if msg.data.len() != shared.size {
            let gid = self.global_id(id);
            self.errors.record(format!(
                "listener {gid}: message of {} bytes, expected {}",
                msg.data.len(),
                shared.size
            ));
            return;
        }
        let seq = u64::from_le_bytes(msg.data[..8].try_into().expect("8 bytes"));
        let sent_ns = i64::from_le_bytes(msg.data[8..16].try_into().expect("8 bytes"));
        let listener = &mut self.listeners[id];
        if seq == SYNC {
            if !listener.synced {
                listener.synced = true;
                shared.synced.fetch_add(1, Ordering::AcqRel);
            }
            return;
        }
        if seq >= shared.messages {
            let gid = self.global_id(id);
            self.errors
                .record(format!("listener {gid}: unknown sequence number {seq}"));
            return;
        }
        let now_ns = shared.ns_since_base(now);
        self.latencies_ns.push(now_ns - sent_ns);
        self.last_delivery_ns = self.last_delivery_ns.max(now_ns);
        if seq != listener.next {
            self.out_of_order += 1;
        }
        listener.next = seq + 1;
        let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if listener.seen[word] & bit != 0 {
            self.duplicates += 1;
            return;
        }
        listener.seen[word] |= bit;
        listener.distinct += 1;
        self.delivered += 1;
        if listener.distinct == shared.messages {
            self.complete += 1;
        }
    }

    fn on_close(&mut self, id: usize, reason: &CloseReason) {
        let gid = self.global_id(id);
        let role = if Some(id) == self.sender {
            "sender"
        } else {
            "listener"
        };
        self.errors.record(format!("{role} {gid}: {reason}"));
        if Some(id) == self.sender {
            self.shared.abort.store(true, Ordering::Release);
        }
    }
}

/// The sender's progress.
struct Sender {
    id: usize,
    rate: u64,
    next_sync: Instant,
    sync_deadline: Instant,
    start: Option<Instant>,
    next_seq: u64,
    buf: Vec<u8>,
    finished: bool,
}

impl Sender {
    /// Sends whatever is due now; returns how long the event loop may sleep
    /// before the sender needs to run again.
    fn step(&mut self, worker: &mut Worker, h: &mut FanoutHandler<'_>, now: Instant) -> Duration {
        let shared = h.shared;
        if self.start.is_none() {
            if shared.synced.load(Ordering::Acquire) < shared.listeners {
                if now >= self.sync_deadline {
                    let synced = shared.synced.load(Ordering::Acquire);
                    h.errors.record(format!(
                        "only {synced} of {} listeners received the sync message within {:?}; \
                         is the server in broadcast mode?",
                        shared.listeners, SYNC_TIMEOUT
                    ));
                    shared.abort.store(true, Ordering::Release);
                    return Duration::ZERO;
                }
                if now >= self.next_sync {
                    self.send(worker, h, SYNC);
                    self.next_sync = now + SYNC_EVERY;
                }
                return self.next_sync - now;
            }
            self.start = Some(now);
        }
        let start = self.start.expect("set above");
        if shared.rate == 0 {
            // Full speed, but never queue in our own buffer: a message is
            // stamped only when the socket can take it, so its timestamp is
            // when it really left.
            for _ in 0..BURST {
                let busy = worker
                    .open_conn(self.id)
                    .is_none_or(|c| c.has_pending_output());
                if busy || self.next_seq == shared.messages {
                    break;
                }
                self.send(worker, h, self.next_seq);
                self.next_seq += 1;
            }
        } else {
            while self.next_seq < shared.messages && self.due(start, self.next_seq) <= now {
                self.send(worker, h, self.next_seq);
                self.next_seq += 1;
            }
        }
        if self.next_seq == shared.messages {
            self.finished = true;
            let done = shared.ns_since_base(Instant::now());
            shared.send_done_ns.store(done, Ordering::Release);
            return Duration::ZERO;
        }
        if shared.rate == 0 {
            let busy = worker
                .open_conn(self.id)
                .is_none_or(|c| c.has_pending_output());
            // When our buffer is full, sleep until the socket is writable.
            return if busy { SYNC_EVERY } else { Duration::ZERO };
        }
        self.due(start, self.next_seq)
            .saturating_duration_since(now)
    }

    /// When message `seq` is due at the configured rate.
    fn due(&self, start: Instant, seq: u64) -> Instant {
        // Only called when the rate is non-zero.
        start + Duration::from_secs_f64(seq as f64 / self.rate as f64)
    }

    fn send(&mut self, worker: &mut Worker, h: &mut FanoutHandler<'_>, seq: u64) {
        self.buf[..8].copy_from_slice(&seq.to_le_bytes());
        let sent_ns = h.shared.ns_since_base(Instant::now());
        self.buf[8..16].copy_from_slice(&sent_ns.to_le_bytes());
        if !worker.send(self.id, MessageKind::Binary, &self.buf, h) {
            h.shared.abort.store(true, Ordering::Release);
        }
    }
}

/// Runs one worker thread: connect, wait for all threads, then deliver (and,
/// on the thread that owns the sender connection, send) until every local
/// listener has everything, the drain time after the last send is over, or
/// the timeout strikes.
fn run_worker<'a>(
    mut worker: Worker,
    shared: &'a Shared,
    thread: usize,
    count: usize,
    barrier: &Barrier,
) -> Result<FanoutHandler<'a>> {
    let mut h = FanoutHandler::new(shared, thread, count);
    let per_thread = shared.concurrency.div_ceil(shared.threads);
    let connected = worker.connect(count, per_thread, shared.connect_deadline, &mut h);
    barrier.wait();
    connected?;
    let start = Instant::now();
    let deadline = start + shared.timeout;
    let mut sender = h.sender.map(|id| Sender {
        id,
        rate: shared.rate,
        next_sync: start,
        sync_deadline: start + SYNC_TIMEOUT,
        start: None,
        next_seq: 0,
        buf: (0..shared.size).map(|i| i as u8).collect(),
        finished: false,
    });
    if h.sender.is_some() && worker.open_conn(h.sender.unwrap_or(0)).is_none() {
        h.errors.record("the sender connection did not open");
        shared.abort.store(true, Ordering::Release);
    }
    loop {
        let now = Instant::now();
        if shared.abort.load(Ordering::Acquire) || now >= deadline {
            break;
        }
        let mut wait = SYNC_EVERY;
        match sender.as_mut() {
            Some(s) if !s.finished => wait = s.step(&mut worker, &mut h, now),
            _ => {
                if h.complete == h.local_listeners {
                    break;
                }
                let done_ns = shared.send_done_ns.load(Ordering::Acquire);
                if done_ns >= 0 && shared.ns_since_base(now) > done_ns + stats::nanos(DRAIN) {
                    break;
                }
            }
        }
        worker.poll_once(Some(wait.min(deadline - now)), &mut h)?;
    }
    worker.close_all(CLOSE_GRACE)?;
    if let Some(s) = sender {
        h.first_send_ns = s.start.map(|t| shared.ns_since_base(t));
    }
    Ok(h)
}

/// Runs the fan-out test.
pub fn run(args: &FanoutArgs) -> Result<FanoutReport> {
    if args.size < 16 {
        bail!("--size must be at least 16 bytes (sequence number and timestamp)");
    }
    let target: Arc<Target> =
        Arc::new(target::resolve(&args.server.url, args.server.allow_remote)?);
    let listeners = args.listeners as usize;
    let connections = listeners + 1;
    let threads = usize::from(args.common.threads).min(connections);
    let shared = Shared {
        base: Instant::now(),
        threads,
        listeners,
        messages: args.messages,
        rate: args.rate,
        size: args.size,
        concurrency: args.common.concurrency as usize,
        connect_deadline: Instant::now() + args.common.connect_timeout,
        timeout: args.timeout,
        synced: AtomicUsize::new(0),
        send_done_ns: AtomicI64::new(-1),
        abort: AtomicBool::new(false),
    };
    let workers = (0..threads)
        .map(|_| Worker::new(target.clone()))
        .collect::<std::io::Result<Vec<_>>>()?;
    let barrier = Barrier::new(threads);
    let cpu_before = sys::own_cpu_seconds();

    let run = |worker, t, count| run_worker(worker, &shared, t, count, &barrier);
    let (results, ()): (Vec<Result<FanoutHandler<'_>>>, ()) =
        on_workers(workers, connections, run, || ());

    let expected = args.listeners * args.messages;
    let mut report = FanoutReport {
        mode: "fanout",
        url: target.url.clone(),
        listeners: args.listeners,
        messages: args.messages,
        rate: args.rate,
        size: args.size,
        threads,
        opened: 0,
        expected,
        delivered: 0,
        missing: 0,
        out_of_order: 0,
        duplicates: 0,
        deliveries_per_s: 0.0,
        send_s: 0.0,
        latency_us: Summary::default(),
        text_messages: 0,
        sender_echoes: 0,
        errors: 0,
        first_error: None,
        client_cpu_s: 0.0,
        ok: false,
    };
    let mut latencies = Vec::with_capacity(expected as usize);
    let mut errors = Errors::default();
    let (mut first_send_ns, mut last_delivery_ns) = (None, 0);
    for result in results {
        let h = result?;
        report.opened += h.opened;
        report.delivered += h.delivered;
        report.out_of_order += h.out_of_order;
        report.duplicates += h.duplicates;
        report.text_messages += h.texts;
        report.sender_echoes += h.sender_echoes;
        latencies.extend_from_slice(&h.latencies_ns);
        last_delivery_ns = last_delivery_ns.max(h.last_delivery_ns);
        first_send_ns = first_send_ns.or(h.first_send_ns);
        errors.merge(h.errors);
    }
    report.missing = expected - report.delivered;
    if let Some(first) = first_send_ns {
        let done = shared.send_done_ns.load(Ordering::Acquire);
        if done >= first {
            report.send_s = (done - first) as f64 / 1e9;
        }
        if last_delivery_ns > first {
            report.deliveries_per_s =
                report.delivered as f64 / ((last_delivery_ns - first) as f64 / 1e9);
        }
    }
    report.latency_us = stats::summarize_ns(&mut latencies);
    report.errors = errors.count;
    report.first_error = errors.first;
    report.client_cpu_s = sys::own_cpu_seconds() - cpu_before;
    ensure_opened(report.opened, &target.url, report.first_error.as_deref())?;
    report.ok = report.opened == connections
        && report.missing == 0
        && report.out_of_order == 0
        && report.duplicates == 0
        && report.errors == 0;
    Ok(report)
}

/// The figures of a fan-out run.
#[derive(Debug, Serialize)]
pub struct FanoutReport {
    pub mode: &'static str,
    pub url: String,
    pub listeners: u64,
    pub messages: u64,
    /// Messages per second asked for; 0 means full speed.
    pub rate: u64,
    pub size: usize,
    pub threads: usize,
    /// Connections opened, listeners plus the sender.
    pub opened: usize,
    /// listeners x messages.
    pub expected: u64,
    /// Distinct messages received, summed over listeners.
    pub delivered: u64,
    pub missing: u64,
    /// Deliveries whose sequence number was not the previous one plus one.
    pub out_of_order: u64,
    pub duplicates: u64,
    /// Deliveries per second, from the first send to the last delivery.
    pub deliveries_per_s: f64,
    /// Seconds the sender took to send everything.
    pub send_s: f64,
    pub latency_us: Summary,
    /// Text messages (greetings) received and ignored.
    pub text_messages: u64,
    /// Broadcast copies the sender received of its own messages.
    pub sender_echoes: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub client_cpu_s: f64,
    pub ok: bool,
}

impl Report for FanoutReport {
    fn passed(&self) -> bool {
        self.ok
    }

    fn print_human(&self) {
        let rate = if self.rate == 0 {
            "full speed".to_string()
        } else {
            format!("{}/s", self.rate)
        };
        println!(
            "fanout {}: {} listeners x {} messages of {} B at {rate}, {} thread(s)",
            self.url, self.listeners, self.messages, self.size, self.threads
        );
        row(
            "opened",
            format!("{} of {}", self.opened, self.listeners + 1),
        );
        row(
            "delivered",
            format!(
                "{} of {} ({:.0} deliveries/s, sent in {:.3} s)",
                self.delivered, self.expected, self.deliveries_per_s, self.send_s
            ),
        );
        row("latency", self.latency_us.line());
        row(
            "order",
            format!(
                "{} missing, {} out of order, {} duplicates",
                self.missing, self.out_of_order, self.duplicates
            ),
        );
        row(
            "ignored",
            format!(
                "{} text message(s), {} copies to the sender",
                self.text_messages, self.sender_echoes
            ),
        );
        row("errors", self.errors);
        if let Some(first) = &self.first_error {
            row("first error", first);
        }
        row("client cpu", format!("{:.2} s", self.client_cpu_s));
        row("result", verdict(self.ok));
    }
}
