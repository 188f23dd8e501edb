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
//!
//! With `--slow-listener RATE` one more listener, on a thread of its own,
//! reads its socket at most RATE bytes per second (see `fanout/slow.rs`).
//!
//! With `--resume` the listeners connect with `?resume`, keep their room's
//! epoch and offset, and come back with `?resume=EPOCH:OFFSET` whenever their
//! connection ends (see `fanout/resume.rs`); with `--leave-after N` each one
//! also leaves on purpose after N messages and comes back once everything is
//! sent, to time catching up from the room's history.
//!
//! With `--pid PID` the server's CPU time (user + system, from `/proc`) is
//! read when the sender sends its first counted message and again when the
//! last listener has every message (the slow listener aside), or, if one
//! never does, when wsload gives up on it: what the sending cost the server,
//! without the connections' opening or closing.

// The backoff of a comeback that failed is hold --reconnect's too.
pub(super) mod resume;
mod slow;

use super::{Errors, Report, ensure_opened, on_workers, row, verdict};
use crate::cli::FanoutArgs;
use crate::conn::{Conn, MessageKind};
use crate::rng::Rng;
use crate::stats::{self, Summary};
use crate::sys;
use crate::target::{self, Target};
use crate::worker::{CloseReason, Handler, Message, Worker};
use anyhow::{Result, bail};
use resume::{Counts, Ending, ResumeReport, Resumer, State};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, Instant};

/// Sequence number that marks the sync message.
const SYNC: u64 = u64::MAX;
/// How often the sender repeats the sync message while waiting.
const SYNC_EVERY: Duration = Duration::from_millis(50);
/// How long to wait for every listener to see a sync message.
const SYNC_TIMEOUT: Duration = Duration::from_secs(10);
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
    /// `--drain` (2 s by default): once everything is sent, how long nothing
    /// may arrive before what is still missing is declared lost. Counted from
    /// the last arrival, not the last send: a server pacing a slow reader
    /// holds the sender back by reading it late, so its last messages may
    /// still be on the way seconds after the sender's socket took them.
    drain: Duration,
    /// Listeners that must see a sync message before counting starts: the
    /// fast ones and the slow one, if any.
    sync_target: usize,
    /// Listeners that have received a sync message.
    synced: AtomicUsize,
    /// When the sender finished, in ns since `base` (-1: not yet).
    send_done_ns: AtomicI64,
    /// Set when the run cannot go on (e.g. the sync never arrived).
    abort: AtomicBool,
    /// Listeners (the fast ones) that have received every counted message.
    complete: AtomicUsize,
    /// With `--pid`: the server's CPU time over the sending.
    server_cpu: Option<ServerCpu>,
    /// `--resume`: the listeners resume by position and come back.
    resume: bool,
    /// `--leave-after N`: each listener leaves once after N counted messages.
    leave_after: Option<u64>,
    /// Counted messages sent so far.
    sent: AtomicU64,
    /// With `--resume`: the sender's copies of its own counted messages, received.
    sender_copies: AtomicU64,
}

impl Shared {
    fn ns_since_base(&self, t: Instant) -> i64 {
        stats::nanos(t.saturating_duration_since(self.base))
    }

    /// True once the sender has sent everything and nothing has arrived for
    /// the drain time, both before `now`; `last_arrival_ns` is when the
    /// caller last received a message (ns since `base`).
    fn drained(&self, last_arrival_ns: i64, now: Instant) -> bool {
        let done_ns = self.send_done_ns.load(Ordering::Acquire);
        done_ns >= 0
            && self.ns_since_base(now) > done_ns.max(last_arrival_ns) + stats::nanos(self.drain)
    }

    /// True once the sender has sent everything and the room has it all (the
    /// sender got its own copy of every message back), or, if those copies do
    /// not all come, the drain time after the last send: when a listener that
    /// left on purpose comes back. True on an abort too.
    fn sent_all(&self, now: Instant) -> bool {
        let done_ns = self.send_done_ns.load(Ordering::Acquire);
        if done_ns < 0 {
            return self.abort.load(Ordering::Acquire);
        }
        self.sender_copies.load(Ordering::Acquire) >= self.messages
            || self.ns_since_base(now) > done_ns + stats::nanos(self.drain)
    }

    /// True once every listener (the fast ones) has every counted message.
    fn all_complete(&self) -> bool {
        self.complete.load(Ordering::Acquire) >= self.listeners
    }

    /// The sender is about to send its first counted message: the server's
    /// CPU time is read (with `--pid`).
    fn sending_starts(&self) -> Result<()> {
        self.server_cpu.as_ref().map_or(Ok(()), ServerCpu::start)
    }

    /// Counts a listener that now has every counted message; the last one
    /// reads the server's CPU time at the end of the sending (with `--pid`).
    fn listener_complete(&self) -> Result<()> {
        let complete = self.complete.fetch_add(1, Ordering::AcqRel) + 1;
        match &self.server_cpu {
            Some(cpu) if complete == self.listeners => cpu.end(),
            _ => Ok(()),
        }
    }

    /// A worker leaves without every listener complete (the timeout, the
    /// drain time, an abort): the sending ends now, unless it ended already.
    fn giving_up(&self) -> Result<()> {
        self.server_cpu.as_ref().map_or(Ok(()), ServerCpu::end)
    }
}

/// The server's CPU time at the first counted send and at the end of the
/// sending (`--pid`), each read once, by whichever thread gets there first.
struct ServerCpu {
    pid: u32,
    start: OnceLock<f64>,
    end: OnceLock<f64>,
}

impl ServerCpu {
    fn new(pid: u32) -> ServerCpu {
        ServerCpu {
            pid,
            start: OnceLock::new(),
            end: OnceLock::new(),
        }
    }

    fn start(&self) -> Result<()> {
        self.read_into(&self.start)
    }

    /// The end of the sending; nothing before it started.
    fn end(&self) -> Result<()> {
        if self.start.get().is_none() {
            return Ok(());
        }
        self.read_into(&self.end)
    }

    fn read_into(&self, at: &OnceLock<f64>) -> Result<()> {
        if at.get().is_none() {
            // Two threads may both read; the first value stays.
            let _ = at.set(sys::cpu_seconds(self.pid)?);
        }
        Ok(())
    }

    /// CPU seconds the server used from the start to the end of the sending.
    fn seconds(&self) -> Option<f64> {
        Some(self.end.get()? - self.start.get()?)
    }
}

/// What a listener makes of a binary message.
enum Payload {
    Sync,
    Counted { seq: u64, sent_ns: i64 },
}

/// Reads a binary message's sequence number (and send time), or says why it
/// is not one the sender sent.
fn classify(data: &[u8], shared: &Shared) -> Result<Payload, String> {
    if data.len() != shared.size {
        return Err(format!(
            "message of {} bytes, expected {}",
            data.len(),
            shared.size
        ));
    }
    let seq = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
    if seq == SYNC {
        return Ok(Payload::Sync);
    }
    if seq >= shared.messages {
        return Err(format!("unknown sequence number {seq}"));
    }
    let sent_ns = i64::from_le_bytes(data[8..16].try_into().expect("8 bytes"));
    Ok(Payload::Counted { seq, sent_ns })
}

/// What one listener has seen.
struct Listener {
    synced: bool,
    next: u64,
    /// One bit per sequence number, to count distinct deliveries.
    seen: Vec<u64>,
    distinct: u64,
}

/// How a counted message arrived at a listener.
struct Arrival {
    /// Its sequence number was the previous one plus one.
    in_order: bool,
    /// Not seen before (not a duplicate).
    new: bool,
}

impl Listener {
    /// A listener expecting `messages` counted messages (0 for the sender,
    /// which needs no bitmap).
    fn new(messages: u64) -> Listener {
        Listener {
            synced: false,
            next: 0,
            seen: vec![0; messages.div_ceil(64) as usize],
            distinct: 0,
        }
    }

    /// Notes a sync message; the first one counts this listener as synced.
    fn sync(&mut self, shared: &Shared) {
        if !self.synced {
            self.synced = true;
            shared.synced.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Notes counted message `seq` (below the number of messages).
    fn record(&mut self, seq: u64) -> Arrival {
        let in_order = seq == self.next;
        self.next = seq + 1;
        let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        let new = self.seen[word] & bit == 0;
        if new {
            self.seen[word] |= bit;
            self.distinct += 1;
        }
        Arrival { in_order, new }
    }
}

struct FanoutHandler<'a> {
    shared: &'a Shared,
    thread: usize,
    /// Local id of the sender connection, if this worker owns it.
    sender: Option<usize>,
    listeners: Vec<Listener>,
    opened: usize,
    delivered: u64,
    out_of_order: u64,
    duplicates: u64,
    latencies_ns: Vec<i64>,
    last_delivery_ns: i64,
    /// When this worker last received a binary message of any kind.
    last_arrival_ns: i64,
    texts: u64,
    sender_echoes: u64,
    errors: Errors,
    /// When the sender sent its first counted message (sender's thread only).
    first_send_ns: Option<i64>,
    /// With `--resume`: each connection's position and comings and goings,
    /// by local id (the sender's entry unused); empty without.
    resumers: Vec<Resumer>,
    resume_counts: Counts,
    /// How long each reconnection took to catch up.
    catch_ups_ns: Vec<i64>,
    /// Listeners away (not connected), to come back.
    away: usize,
    /// The backoff's jitter.
    rng: Rng,
}

impl<'a> FanoutHandler<'a> {
    fn new(shared: &'a Shared, thread: usize, count: usize) -> Self {
        let sender_gid = shared.listeners;
        let sender = (0..count).find(|&id| thread + id * shared.threads == sender_gid);
        let local_listeners = count - usize::from(sender.is_some());
        let listeners = (0..count)
            .map(|id| {
                // The sender needs no bitmap.
                let counted = if Some(id) == sender {
                    0
                } else {
                    shared.messages
                };
                Listener::new(counted)
            })
            .collect();
        FanoutHandler {
            shared,
            thread,
            sender,
            listeners,
            opened: 0,
            delivered: 0,
            out_of_order: 0,
            duplicates: 0,
            latencies_ns: Vec::with_capacity(local_listeners * shared.messages as usize),
            last_delivery_ns: 0,
            last_arrival_ns: 0,
            texts: 0,
            sender_echoes: 0,
            errors: Errors::default(),
            first_send_ns: None,
            resumers: if shared.resume {
                vec![Resumer::new(); count]
            } else {
                Vec::new()
            },
            resume_counts: Counts::default(),
            catch_ups_ns: Vec::new(),
            away: 0,
            rng: Rng::from_entropy(),
        }
    }

    fn global_id(&self, id: usize) -> usize {
        self.thread + id * self.shared.threads
    }

    /// True for a listener of a `--resume` run.
    fn resuming(&self, id: usize) -> bool {
        !self.resumers.is_empty() && Some(id) != self.sender
    }
}

/// Why a resuming listener's connection ended, for its comeback.
fn ending(reason: &CloseReason) -> Ending {
    match reason {
        _ if reason.before_open() => Ending::NotOpened,
        CloseReason::ClosedByServer(code) => Ending::Closed(*code),
        CloseReason::Normal => Ending::Closed(Some(1000)),
        _ => Ending::Dropped,
    }
}

impl Handler for FanoutHandler<'_> {
    fn on_open(&mut self, id: usize, _conn: &mut Conn, _now: Instant) {
        if self.resuming(id) && self.resumers[id].state == State::Reconnecting {
            let sent = self.shared.sent.load(Ordering::Acquire);
            self.resumers[id].reopened(sent, &mut self.resume_counts);
            self.away -= 1;
            return;
        }
        self.opened += 1;
    }

    fn on_message(&mut self, id: usize, msg: Message<'_>, conn: &mut Conn, now: Instant) {
        let resuming = self.resuming(id);
        if resuming {
            // The first frame is the header; every data message after it is one room
            // message, the next offset.
            let r = &mut self.resumers[id];
            if r.awaiting_header() {
                if let Err(why) = r.on_header(msg.data, &mut self.resume_counts) {
                    let gid = self.global_id(id);
                    self.errors.record(format!("listener {gid}: {why}"));
                }
                return;
            }
            r.next_offset();
        }
        if msg.kind == MessageKind::Text {
            self.texts += 1; // greetings: ignored, but counted
            return;
        }
        let shared = self.shared;
        self.last_arrival_ns = shared.ns_since_base(now);
        let is_sync = msg.data.get(..8) == Some(&SYNC.to_le_bytes()[..]);
        if Some(id) == self.sender {
            // Broadcast includes the sender itself; count its copies of the
            // counted messages.
            self.sender_echoes += u64::from(!is_sync);
            if shared.resume && !is_sync {
                shared.sender_copies.fetch_add(1, Ordering::AcqRel);
            }
            return;
        }
        let (seq, sent_ns) = match classify(msg.data, shared) {
            Ok(Payload::Counted { seq, sent_ns }) => (seq, sent_ns),
            Ok(Payload::Sync) => return self.listeners[id].sync(shared),
            Err(why) => {
                let gid = self.global_id(id);
                return self.errors.record(format!("listener {gid}: {why}"));
            }
        };
        let now_ns = shared.ns_since_base(now);
        let mut caught_up = false;
        if resuming {
            let (counted, numbered) =
                self.resumers[id].on_counted(seq, now, &mut self.resume_counts);
            if let Err(why) = numbered {
                let gid = self.global_id(id);
                self.errors.record(format!("listener {gid}: {why}"));
            }
            if let Some(took) = counted.catch_up {
                self.catch_ups_ns.push(stats::nanos(took));
            }
            caught_up = counted.caught_up;
        }
        // What a resumed connection caught up was sent while it was away: its
        // wait is the catch-up's, not a delivery's latency.
        if !caught_up {
            self.latencies_ns.push(now_ns - sent_ns);
        }
        self.last_delivery_ns = self.last_delivery_ns.max(now_ns);
        let listener = &mut self.listeners[id];
        let arrival = listener.record(seq);
        self.out_of_order += u64::from(!arrival.in_order);
        if !arrival.new {
            self.duplicates += 1;
            return;
        }
        self.delivered += 1;
        if resuming && self.resumers[id].should_leave(shared.leave_after, listener.distinct) {
            conn.close(1000);
        }
        if listener.distinct == shared.messages
            && let Err(e) = shared.listener_complete()
        {
            self.errors
                .record(format!("cannot read the server's CPU time: {e:#}"));
        }
    }

    fn on_close(&mut self, id: usize, reason: &CloseReason) {
        let gid = self.global_id(id);
        // A resuming listener comes back, unless its first connection failed.
        if self.resuming(id) {
            let r = &mut self.resumers[id];
            if !reason.before_open() || r.state == State::Reconnecting {
                if matches!(
                    reason,
                    CloseReason::Handshake(_)
                        | CloseReason::Protocol(_)
                        | CloseReason::Tls(_)
                        | CloseReason::TlsHandshake(_)
                ) {
                    self.errors.record(format!("listener {gid}: {reason}"));
                }
                let was_away = r.is_away();
                r.on_end(
                    ending(reason),
                    Instant::now(),
                    &mut self.rng,
                    &mut self.resume_counts,
                );
                self.away += usize::from(!was_away);
                return;
            }
        }
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
            if shared.synced.load(Ordering::Acquire) < shared.sync_target {
                if now >= self.sync_deadline {
                    let synced = shared.synced.load(Ordering::Acquire);
                    h.errors.record(format!(
                        "only {synced} of {} listeners received the sync message within {:?}; \
                         is the server in broadcast mode?",
                        shared.sync_target, SYNC_TIMEOUT
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
            if let Err(e) = shared.sending_starts() {
                h.errors
                    .record(format!("cannot read the server's CPU time: {e:#}"));
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
        } else if seq != SYNC {
            h.shared.sent.store(seq + 1, Ordering::Release);
        }
    }
}

/// Brings back the resuming listeners that are due (those away on a timer
/// whose time has come, and those that left on purpose once everything is
/// sent), each asking for its position; returns how long until the next is
/// due, at most [`SYNC_EVERY`].
fn come_back(worker: &mut Worker, h: &mut FanoutHandler<'_>, now: Instant) -> Duration {
    let shared = h.shared;
    let sent_all = shared.sent_all(now);
    let mut next = SYNC_EVERY;
    for id in 0..h.resumers.len() {
        if Some(id) == h.sender {
            continue;
        }
        match h.resumers[id].due_in(now, sent_all) {
            Some(wait) if wait.is_zero() => {
                let path = h.resumers[id].path(&worker.target_of(id).path);
                worker.set_path(id, path);
                let sent = shared.sent.load(Ordering::Acquire);
                let had = h.listeners[id].next;
                h.resumers[id].reconnecting(now, sent, had);
                worker.reopen(id, h);
            }
            Some(wait) => next = next.min(wait),
            None => {}
        }
    }
    next
}

/// Runs one worker thread: connect, wait for all threads, then deliver (and,
/// on the thread that owns the sender connection, send) until every
/// listener has everything, nothing has arrived for the drain time after
/// the last send, or the timeout strikes. A worker whose own listeners are
/// done waits for the others' before it closes its connections, so that no
/// closing falls within the server's CPU time of the sending.
fn run_worker<'a>(
    mut worker: Worker,
    shared: &'a Shared,
    thread: usize,
    count: usize,
    barrier: &Barrier,
) -> Result<FanoutHandler<'a>> {
    let mut h = FanoutHandler::new(shared, thread, count);
    // Resuming listeners join as newcomers, with ?resume.
    for id in (0..h.resumers.len()).filter(|&id| Some(id) != h.sender) {
        let path = h.resumers[id].path(&worker.target_of(id).path);
        worker.set_path(id, path);
    }
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
                if shared.all_complete() {
                    break;
                }
                // Not while a listener is still to come back.
                if h.away == 0 && shared.drained(h.last_arrival_ns, now) {
                    break;
                }
            }
        }
        if h.away > 0 {
            wait = wait.min(come_back(&mut worker, &mut h, now));
        }
        worker.poll_once(Some(wait.min(deadline - now)), &mut h)?;
    }
    if !shared.all_complete()
        && let Err(e) = shared.giving_up()
    {
        h.errors
            .record(format!("cannot read the server's CPU time: {e:#}"));
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
    if let Some(n) = args.leave_after
        && n >= args.messages
    {
        bail!(
            "--leave-after {n} must be below --messages ({}): a listener leaves after N \
             messages to miss the rest",
            args.messages
        );
    }
    let target: Arc<Target> = Arc::new(target::from_args(&args.server)?);
    if args.resume
        && let Some(url) = std::iter::once(&args.server.url)
            .chain(&args.listener_urls)
            .find(|url| resume::has_resume_param(url))
    {
        bail!("{url} has a resume parameter already: --resume adds it to the listeners' URLs");
    }
    let listeners = args.listeners as usize;
    let connections = listeners + 1;
    let threads = usize::from(args.common.threads).min(connections);
    let connect_deadline = Instant::now() + args.common.connect_timeout;
    // A server whose CPU time cannot be read is an error before anything starts.
    if let Some(pid) = args.pid {
        sys::cpu_seconds(pid)?;
    }
    // Connected first, so that a failure is a clear error rather than a
    // sync message that never arrives.
    let slow_listener = args
        .slow_listener
        .map(|rate| slow::SlowListener::connect(&target, rate, connect_deadline, args.resume))
        .transpose()?;
    let shared = Shared {
        base: Instant::now(),
        threads,
        listeners,
        messages: args.messages,
        rate: args.rate,
        size: args.size,
        concurrency: args.common.concurrency as usize,
        connect_deadline,
        timeout: args.timeout,
        drain: args.drain,
        sync_target: listeners + usize::from(slow_listener.is_some()),
        synced: AtomicUsize::new(0),
        send_done_ns: AtomicI64::new(-1),
        abort: AtomicBool::new(false),
        complete: AtomicUsize::new(0),
        server_cpu: args.pid.map(ServerCpu::new),
        resume: args.resume,
        leave_after: args.leave_after,
        sent: AtomicU64::new(0),
        sender_copies: AtomicU64::new(0),
    };
    // Listeners on --listener-url servers, in turn; the sender (the last global id) on --url.
    let listener_targets = args
        .listener_urls
        .iter()
        .map(|url| {
            if url.starts_with("wss://") {
                bail!("--listener-url takes ws:// URLs only (TLS is for --url, with --ca): {url}");
            }
            target::resolve(url, args.server.allow_remote).map(Arc::new)
        })
        .collect::<Result<Vec<_>>>()?;
    let workers = (0..threads)
        .map(|t| {
            if listener_targets.is_empty() {
                return Worker::new(target.clone());
            }
            let (main, spread) = (target.clone(), listener_targets.clone());
            let route = move |id: usize| {
                let gid = t + id * threads;
                if gid == listeners {
                    Arc::clone(&main)
                } else {
                    Arc::clone(&spread[gid % spread.len()])
                }
            };
            Worker::with_route(target.clone(), Arc::new(route))
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    let barrier = Barrier::new(threads);
    let cpu_before = sys::own_cpu_seconds();

    let run = |worker, t, count| run_worker(worker, &shared, t, count, &barrier);
    // The slow listener reads on this thread while the workers run.
    let (results, slow): (Vec<Result<FanoutHandler<'_>>>, _) =
        on_workers(workers, connections, run, || {
            slow_listener.map(|l| l.run(&shared, Instant::now() + args.timeout))
        });

    let expected = args.listeners * args.messages;
    let mut report = FanoutReport {
        mode: "fanout",
        url: target.url.clone(),
        listener_urls: args.listener_urls.clone(),
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
        slow: None,
        resume: None,
        errors: 0,
        first_error: None,
        client_cpu_s: None,
        pid: args.pid,
        server_cpu_s: shared.server_cpu.as_ref().and_then(ServerCpu::seconds),
        ok: false,
    };
    let mut latencies = Vec::with_capacity(expected as usize);
    let mut errors = Errors::default();
    let (mut first_send_ns, mut last_delivery_ns) = (None, 0);
    let mut resume_counts = Counts::default();
    let mut catch_ups_ns = Vec::new();
    for result in results {
        let h = result?;
        resume_counts.merge(&h.resume_counts);
        catch_ups_ns.extend_from_slice(&h.catch_ups_ns);
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
    let mut lost = report.missing;
    if let (Some(outcome), Some(rate)) = (slow, args.slow_listener) {
        report.text_messages += outcome.texts;
        lost += args.messages - outcome.delivered;
        resume_counts.merge(&outcome.resume);
        catch_ups_ns.extend_from_slice(&outcome.catch_ups_ns);
        report.slow = Some(SlowListenerReport {
            slow_rate: rate,
            slow_delivered: outcome.delivered,
            slow_missing: args.messages - outcome.delivered,
            slow_out_of_order: outcome.out_of_order,
            slow_duplicates: outcome.duplicates,
            slow_bytes: outcome.bytes,
            slow_closed_by_server: outcome.closed_by_server,
            slow_close_code: outcome.close_code,
            slow_last_delivery_s: first_send_ns
                .zip(outcome.last_delivery_ns)
                .map(|(first, last)| (last - first) as f64 / 1e9),
            slow_error: outcome.errors.first.clone(),
            slow_reconnects: args.resume.then_some(outcome.resume.reconnects),
        });
        errors.merge(outcome.errors);
    }
    if args.resume {
        report.resume = Some(ResumeReport::new(
            &resume_counts,
            args.leave_after,
            lost,
            &mut catch_ups_ns,
        ));
    }
    report.errors = errors.count;
    report.first_error = errors.first;
    report.client_cpu_s = sys::own_cpu_seconds()
        .zip(cpu_before)
        .map(|(now, before)| now - before);
    ensure_opened(report.opened, &target.url, report.first_error.as_deref())?;
    report.ok = report.opened == connections
        && report.missing == 0
        && report.out_of_order == 0
        && report.duplicates == 0
        && report.errors == 0
        && report.slow.as_ref().is_none_or(SlowListenerReport::passed)
        && report.resume.as_ref().is_none_or(ResumeReport::passed);
    Ok(report)
}

/// The figures of a fan-out run.
#[derive(Debug, Serialize)]
pub struct FanoutReport {
    pub mode: &'static str,
    /// The sender's server (and the listeners', without --listener-url).
    pub url: String,
    /// The listeners' servers, with --listener-url.
    pub listener_urls: Vec<String>,
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
    /// With --slow-listener: its figures, as `slow_*` fields beside these.
    #[serde(flatten)]
    pub slow: Option<SlowListenerReport>,
    /// With --resume: the comings and goings, as `resume_*` fields beside these.
    /// Latency then leaves out what a resumed connection caught up (sent while
    /// it was away): `resume_catch_up_*` times that.
    #[serde(flatten)]
    pub resume: Option<ResumeReport>,
    /// Problems, the slow listener's included.
    pub errors: u64,
    pub first_error: Option<String>,
    pub client_cpu_s: Option<f64>,
    /// --pid: the server's process id.
    pub pid: Option<u32>,
    /// With --pid: the server's CPU seconds (user + system) from the first
    /// counted send to the last delivery to the fast listeners (or, when some
    /// never got everything, to when wsload gave up on them).
    pub server_cpu_s: Option<f64>,
    pub ok: bool,
}

/// What the slow listener (`--slow-listener`) received. The fields carry a
/// `slow_` prefix because they sit beside the report's own in the JSON.
#[derive(Debug, Serialize)]
pub struct SlowListenerReport {
    /// Bytes per second it read at most.
    pub slow_rate: u64,
    /// Distinct counted messages received (of `messages`).
    pub slow_delivered: u64,
    pub slow_missing: u64,
    pub slow_out_of_order: u64,
    pub slow_duplicates: u64,
    /// Bytes it read after the handshake, frame headers included.
    pub slow_bytes: u64,
    /// Whether the server ended the connection (a close frame or a dropped
    /// TCP connection) before the listener was done.
    pub slow_closed_by_server: bool,
    /// The code of the server's close frame (1008: too slow).
    pub slow_close_code: Option<u16>,
    /// Seconds from the first counted send to the listener's last delivery.
    pub slow_last_delivery_s: Option<f64>,
    /// Its first problem (I/O or protocol error, the server's close).
    pub slow_error: Option<String>,
    /// With --resume: how many times it came back (each close it came back
    /// from is counted in the `resume_*` fields, not as a close here).
    pub slow_reconnects: Option<u64>,
}

impl SlowListenerReport {
    fn passed(&self) -> bool {
        self.slow_missing == 0
            && self.slow_out_of_order == 0
            && self.slow_duplicates == 0
            && !self.slow_closed_by_server
            && self.slow_error.is_none()
    }

    fn line(&self) -> String {
        let ending = match (self.slow_closed_by_server, self.slow_close_code) {
            (false, _) => "not closed".to_string(),
            (true, Some(code)) => format!("closed by the server (code {code})"),
            (true, None) => "closed by the server (no close frame)".to_string(),
        };
        let last = self
            .slow_last_delivery_s
            .map_or("no delivery".to_string(), |s| {
                format!("last delivery {s:.2} s after the first send")
            });
        let back = self
            .slow_reconnects
            .map_or(String::new(), |n| format!(", came back {n} time(s)"));
        format!(
            "{} of {} at {}: {} missing, {} out of order, {} duplicates, {ending}{back}; {last}",
            self.slow_delivered,
            self.slow_delivered + self.slow_missing,
            per_second(self.slow_rate),
            self.slow_missing,
            self.slow_out_of_order,
            self.slow_duplicates,
        )
    }
}

/// A byte rate for people: `2.00 MiB/s`, `500.0 KiB/s`, `300 B/s`.
fn per_second(rate: u64) -> String {
    const KIB: f64 = 1024.0;
    let r = rate as f64;
    if r >= KIB * KIB {
        format!("{:.2} MiB/s", r / KIB / KIB)
    } else if r >= KIB {
        format!("{:.1} KiB/s", r / KIB)
    } else {
        format!("{rate} B/s")
    }
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
        if !self.listener_urls.is_empty() {
            row("listeners on", self.listener_urls.join(", "));
        }
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
        if let Some(slow) = &self.slow {
            row("slow listener", slow.line());
        }
        if let Some(resume) = &self.resume {
            for (label, line) in resume.lines() {
                row(label, line);
            }
        }
        row("errors", self.errors);
        if let Some(first) = &self.first_error {
            row("first error", first);
        }
        if let Some(cpu) = self.server_cpu_s {
            let until = if self.missing == 0 {
                "the last delivery"
            } else {
                "giving up on the missing"
            };
            row(
                "server cpu",
                format!(
                    "{cpu:.3} s from the first send to {until} (pid {})",
                    self.pid.unwrap_or(0)
                ),
            );
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

    fn shared(listeners: usize, pid: Option<u32>) -> Shared {
        Shared {
            base: Instant::now(),
            threads: 1,
            listeners,
            messages: 1,
            rate: 0,
            size: 16,
            concurrency: 1,
            connect_deadline: Instant::now(),
            timeout: Duration::from_secs(5),
            drain: Duration::from_secs(2),
            sync_target: listeners,
            synced: AtomicUsize::new(0),
            send_done_ns: AtomicI64::new(-1),
            abort: AtomicBool::new(false),
            complete: AtomicUsize::new(0),
            server_cpu: pid.map(ServerCpu::new),
            resume: false,
            leave_after: None,
            sent: AtomicU64::new(0),
            sender_copies: AtomicU64::new(0),
        }
    }

    fn server_cpu_s(shared: &Shared) -> Option<f64> {
        shared.server_cpu.as_ref().and_then(ServerCpu::seconds)
    }

    /// Spins until this process's CPU time (as /proc counts it, in clock
    /// ticks) has moved on from `from`.
    #[cfg(target_os = "linux")]
    fn burn_past(from: f64) {
        let pid = std::process::id();
        let deadline = Instant::now() + Duration::from_secs(30);
        while sys::cpu_seconds(pid).unwrap() <= from {
            assert!(Instant::now() < deadline, "no CPU time counted in 30 s");
            std::hint::black_box((0..10_000u64).sum::<u64>());
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_server_cpu_is_counted_from_the_first_send_to_the_last_listener() {
        let shared = shared(2, Some(std::process::id()));
        // Nothing before the sending starts, even if wsload gives up.
        shared.giving_up().unwrap();
        assert_eq!(server_cpu_s(&shared), None);
        shared.sending_starts().unwrap();
        let start = *shared.server_cpu.as_ref().unwrap().start.get().unwrap();
        burn_past(start);
        shared.listener_complete().unwrap();
        assert!(!shared.all_complete());
        assert_eq!(server_cpu_s(&shared), None, "one listener of two is done");
        shared.listener_complete().unwrap();
        assert!(shared.all_complete());
        let cpu = server_cpu_s(&shared).unwrap();
        assert!(cpu > 0.0, "{cpu}");
        // What comes after the last delivery (the closing) is not counted.
        burn_past(start + cpu);
        shared.giving_up().unwrap();
        assert_eq!(server_cpu_s(&shared), Some(cpu));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn giving_up_ends_the_server_cpu_window() {
        let shared = shared(3, Some(std::process::id()));
        shared.sending_starts().unwrap();
        shared.listener_complete().unwrap();
        shared.giving_up().unwrap();
        assert!(server_cpu_s(&shared).unwrap() >= 0.0);
    }

    #[test]
    fn without_a_pid_nothing_is_read() {
        let shared = shared(1, None);
        shared.sending_starts().unwrap();
        shared.listener_complete().unwrap();
        assert!(shared.all_complete());
        assert_eq!(server_cpu_s(&shared), None);
    }

    #[test]
    fn a_server_that_is_gone_is_an_error() {
        // Above the largest pid Linux hands out (4,194,304).
        let shared = shared(1, Some(u32::MAX));
        assert!(shared.sending_starts().is_err());
    }
}
