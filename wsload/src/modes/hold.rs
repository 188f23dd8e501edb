//! `wsload hold`: many idle connections.
//!
//! Answers these questions about a server holding lots of quiet clients:
//! what each one costs in memory (the server's RSS growth / connections, and
//! the machine's kernel memory growth / connections), whether the server
//! burns CPU while nothing happens, and whether its per-connection greeting
//! timer fires on time when thousands are due at once. Optionally, what an
//! idle connection keeps after it did something: the same figures again a
//! settle time after every connection got its greeting, and after every
//! connection sent one message and read its echo (`--then-echo`). At the end
//! every connection must still echo, proving none was silently lost.
//!
//! The kernel figure is the growth of `SUnreclaim + KernelStack + PageTables`
//! in `/proc/meminfo` (see [`sys::KernelMemory`]: the unreclaimable part of
//! `Slab`), the median of several samples on each side to damp what the rest
//! of the machine does meanwhile. It is machine-wide: it includes wsload's
//! own end of every connection (a socket and an epoll entry, the same
//! whatever the server), and anything else that allocates kernel memory
//! during the run. The reclaimable part of `Slab` is reported apart.
//!
//! With `--reconnect` the hold is a server restart instead (`hold/reconnect.rs`): connections
//! the server closes come back, and the report says how many, how fast, and what was refused.

pub mod reconnect;

use super::{
    Errors, Report, ensure_opened, on_workers, room_workers, row, spread_sources, verdict,
};
use crate::cli::HoldArgs;
use crate::conn::{Conn, MessageKind};
use crate::rng::Rng;
use crate::stats::{self, Summary};
use crate::sys::{self, KernelMemory};
use crate::target::{self, Target};
use crate::worker::{CloseReason, Handler, Message, Worker};
use anyhow::{Result, bail};
use reconnect::{ReconnectReport, Storm};
use serde::Serialize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

/// How long after the last connection opened the idle CPU starts being counted: a server may
/// do one-time work for each new connection shortly after it opened (wsecho settles each one
/// after a second), which is not what idling costs.
const IDLE_CPU_FROM: Duration = Duration::from_secs(2);

/// How long the final echo check may take.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long to wait for the server to complete the closing handshakes.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// How long the `--then-echo` round trips may take, all together.
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(60);
/// After the idle window, how much longer than the greeting delay to wait
/// for greetings still missing.
const GREETING_GRACE: Duration = Duration::from_secs(10);
/// The settle time when `--then-echo` is given without `--settle`.
const DEFAULT_SETTLE: Duration = Duration::from_secs(3);
/// Samples taken before connecting and after each settle time, this far
/// apart; their median is the figure.
const SAMPLES: usize = 5;
const SAMPLE_EVERY: Duration = Duration::from_millis(200);
/// How often the server's descriptors are counted while waiting for it to accept every
/// connection (`--upgrade-together`): listing 20,000 of them takes a few milliseconds.
const ACCEPT_POLL: Duration = Duration::from_millis(20);
/// How long the server's descriptor count may stand still before the upgrades
/// go anyway: a server accepting connections adds some every few
/// milliseconds, and one that refused some will never have them all.
const ACCEPT_STALL: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Connecting and idling: only the server may talk.
    Quiet,
    /// Waiting until every connection has had its greeting.
    Greeting,
    /// Each connection sends its `--then-echo` message and reads the echo.
    Messaging,
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
    /// The `--then-echo` message of each connection.
    messages: Vec<Probe>,
    message_size: usize,
    messages_sent: usize,
    messages_settled: usize,
    messages_echoed: usize,
    opened: usize,
    /// Connections that received a text message.
    greeted: usize,
    texts: u64,
    /// Connections lost after opening (counted apart from connect failures).
    dropped: Errors,
    connect_failures: Errors,
    /// Binary messages nobody asked for, or wrong probe echoes.
    bad_messages: Errors,
    last_open: Option<Instant>,
    /// `--reconnect`: the connections' comings and goings.
    storm: Option<Storm>,
}

impl HoldHandler {
    fn new(thread: usize, threads: usize, count: usize, message_size: usize) -> Self {
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
            messages: vec![Probe::NotSent; count],
            message_size,
            messages_sent: 0,
            messages_settled: 0,
            messages_echoed: 0,
            opened: 0,
            greeted: 0,
            texts: 0,
            dropped: Errors::default(),
            connect_failures: Errors::default(),
            bad_messages: Errors::default(),
            last_open: None,
            storm: None,
        }
    }

    fn global_id(&self, id: usize) -> usize {
        self.thread + id * self.threads
    }

    /// True when every open connection's `--then-echo` message came back
    /// (or its connection was lost).
    fn messages_done(&self) -> bool {
        self.messages_settled == self.messages_sent
    }
}

/// The probe a connection sends to prove it still works.
fn probe(gid: usize) -> Vec<u8> {
    format!("wsload-probe-{gid:08}").into_bytes()
}

/// The `--then-echo` message of connection `gid`: `size` bytes, starting
/// with the connection's number so that no two are alike.
fn message(gid: usize, size: usize) -> Vec<u8> {
    let mut data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let tag = (gid as u64).to_le_bytes();
    let n = tag.len().min(size);
    data[..n].copy_from_slice(&tag[..n]);
    data
}

impl Handler for HoldHandler {
    fn on_open(&mut self, id: usize, _conn: &mut Conn, now: Instant) {
        if let Some(storm) = self.storm.as_mut()
            && storm.is_connecting(id)
        {
            storm.reopened(id, now);
            return;
        }
        self.opened_at[id] = Some(now);
        self.last_open = Some(now);
        self.opened += 1;
    }

    fn on_message(&mut self, id: usize, msg: Message<'_>, _conn: &mut Conn, now: Instant) {
        if msg.kind == MessageKind::Text {
            self.texts += 1;
            if self.greeted_at[id].is_none() {
                self.greeted_at[id] = Some(now);
                self.greeted += 1;
            }
            return;
        }
        let gid = self.global_id(id);
        if self.stage == Stage::Messaging && self.messages[id] == Probe::Sent {
            self.messages[id] = Probe::Echoed;
            self.messages_settled += 1;
            if msg.data == message(gid, self.message_size).as_slice() {
                self.messages_echoed += 1;
            } else {
                self.bad_messages.record(format!(
                    "connection {gid}: the echo of its {}-byte message differs from it",
                    self.message_size
                ));
            }
            return;
        }
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
        if let Some(storm) = self.storm.as_mut() {
            let now = Instant::now();
            match (storm.is_connecting(id), storm.active) {
                (true, true) => return storm.failed(id, gid, reason, now),
                // Given up at the end of the hold: it never came back, which the report says.
                (true, false) => return,
                (false, true) if !reason.before_open() => return storm.closed(id, reason, now),
                _ => {}
            }
        }
        if reason.before_open() {
            self.connect_failures
                .record(format!("connection {gid}: {reason}"));
            return;
        }
        self.dropped.record(format!("connection {gid}: {reason}"));
        if self.probes[id] == Probe::Sent {
            self.probes_settled += 1;
        }
        if self.messages[id] == Probe::Sent {
            self.messages[id] = Probe::NotSent;
            self.messages_settled += 1;
        }
    }

    fn is_done(&self) -> bool {
        match self.stage {
            Stage::Quiet => false,
            Stage::Greeting => self.greeted + self.dropped.count as usize >= self.opened,
            Stage::Messaging => self.messages_done(),
            Stage::Verifying => self.probes_settled == self.probes_sent,
        }
    }
}

/// Shared settings of the worker threads.
struct Plan {
    threads: usize,
    concurrency: usize,
    connect_deadline: Instant,
    hold: Duration,
    /// How long to wait for greetings still missing after the idle window,
    /// when figures are taken after the greeting.
    greeting_wait: Option<Duration>,
    /// The `--then-echo` message size.
    then_echo: Option<usize>,
    /// How long the main thread takes its figures after a phase: the settle
    /// time and the samples; the workers keep reading meanwhile.
    after_window: Duration,
    /// `--upgrade-together`: the workers send every upgrade request but its
    /// end, meet the main thread (which waits for the server to accept every
    /// connection), then complete them all.
    upgrade_together: bool,
    /// Connections whose upgrade request waits for its end, summed over the
    /// workers.
    waiting: AtomicUsize,
    /// `--reconnect`: the pause before coming back (`--jitter`), and each attempt's timeout.
    reconnect: Option<(Duration, Duration)>,
    /// Connections open after the connect phase, summed over the workers.
    opened: AtomicUsize,
}

/// Runs one worker thread through the phases, meeting the main thread at
/// `barrier`: with `--upgrade-together` when every request but its end is sent
/// and again once the server has accepted them, when all connections are open,
/// when the idle window is over,
/// and, for each phase after it (the greeting, the `--then-echo` message),
/// once when the phase is done and once when the main thread has taken its
/// figures. Every meeting happens even after an error, or the others would
/// wait forever.
fn run_worker(
    mut worker: Worker,
    plan: &Plan,
    thread: usize,
    count: usize,
    barrier: &Barrier,
) -> Result<HoldHandler> {
    let mut h = HoldHandler::new(thread, plan.threads, count, plan.then_echo.unwrap_or(0));
    if let Some((jitter, attempt_timeout)) = plan.reconnect {
        h.storm = Some(Storm::new(
            count,
            jitter,
            attempt_timeout,
            Rng::from_entropy(),
        ));
    }
    let per_thread = plan.concurrency.div_ceil(plan.threads);
    if plan.upgrade_together {
        worker.defer_upgrades();
    }
    let mut status = worker.connect(count, per_thread, plan.connect_deadline, &mut h);
    if plan.upgrade_together {
        plan.waiting.fetch_add(worker.waiting(), Ordering::AcqRel);
        barrier.wait();
        barrier.wait();
        if status.is_ok() {
            status = worker.upgrade_waiting(plan.connect_deadline, &mut h);
        }
    }
    plan.opened.fetch_add(h.opened, Ordering::AcqRel);
    barrier.wait();
    let idle_until = Instant::now() + plan.hold;
    if status.is_ok() {
        status = if h.storm.is_some() {
            ride_out(&mut worker, &mut h, idle_until)
        } else {
            worker.run_until(idle_until, &mut h)
        };
    }
    barrier.wait();
    if let Some(wait) = plan.greeting_wait {
        h.stage = Stage::Greeting;
        if status.is_ok() {
            status = worker.run_until(Instant::now() + wait, &mut h);
        }
        barrier.wait();
        h.stage = Stage::Quiet;
        if status.is_ok() {
            status = worker.run_until(Instant::now() + plan.after_window, &mut h);
        }
        barrier.wait();
    }
    if plan.then_echo.is_some() {
        h.stage = Stage::Messaging;
        if status.is_ok() {
            status = exchange_messages(&mut worker, &mut h, per_thread);
        }
        barrier.wait();
        h.stage = Stage::Quiet;
        if status.is_ok() {
            status = worker.run_until(Instant::now() + plan.after_window, &mut h);
        }
        barrier.wait();
    }
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

/// `--reconnect`'s hold: handles events, and brings back the connections the server closed,
/// until every connection came back or `until`. Attempts still under way then are given up:
/// those connections never came back.
fn ride_out(worker: &mut Worker, h: &mut HoldHandler, until: Instant) -> std::io::Result<()> {
    let opened = h.opened;
    fn storm(h: &mut HoldHandler) -> &mut Storm {
        h.storm.as_mut().expect("ride_out runs with --reconnect")
    }
    loop {
        let now = Instant::now();
        for id in storm(h).take_expired(now) {
            // Reported to the handler as timed out: a failed attempt, tried again.
            worker.abandon(id, h);
        }
        for id in storm(h).take_due(now) {
            // Reports a connect that fails at once to the handler, as a failed attempt.
            worker.reopen(id, h);
        }
        if storm(h).all_back(opened) || now >= until {
            break;
        }
        let wake = storm(h).next_event().map_or(until, |t| t.min(until));
        worker.poll_once(Some(wake.saturating_duration_since(now)), h)?;
    }
    storm(h).active = false;
    for id in storm(h).connecting() {
        worker.abandon(id, h);
    }
    Ok(())
}

/// Has every open connection send its `--then-echo` message and read the
/// echo, with at most `window` of them in flight at once.
fn exchange_messages(
    worker: &mut Worker,
    h: &mut HoldHandler,
    window: usize,
) -> std::io::Result<()> {
    let ids = worker.open_ids();
    let deadline = Instant::now() + MESSAGE_TIMEOUT;
    let mut next = 0;
    loop {
        while next < ids.len() && h.messages_sent - h.messages_settled < window {
            let id = ids[next];
            next += 1;
            let data = message(h.global_id(id), h.message_size);
            h.messages[id] = Probe::Sent;
            h.messages_sent += 1;
            // On failure the connection is gone, and on_close settled it.
            worker.send(id, MessageKind::Binary, &data, h);
        }
        if next == ids.len() && h.messages_done() {
            return Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            let missing = ids.len() - h.messages_settled;
            h.bad_messages.record(format!(
                "{missing} connection(s) had no echo of their {}-byte message within {MESSAGE_TIMEOUT:?}",
                h.message_size
            ));
            return Ok(());
        }
        worker.poll_once(Some(deadline - now), h)?;
    }
}

/// Medians of kernel memory samples, in KiB.
#[derive(Debug, Clone, Copy, Default)]
struct KernelFigures {
    total: f64,
    slab_unreclaimable: f64,
    slab_reclaimable: f64,
    kernel_stack: f64,
    page_tables: f64,
    /// Largest minus smallest total: how much the machine moved meanwhile.
    spread: f64,
    samples: usize,
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

impl KernelFigures {
    /// The medians of `samples`; `None` if there are none.
    fn of(samples: &[KernelMemory]) -> Option<KernelFigures> {
        if samples.is_empty() {
            return None;
        }
        let column = |f: fn(&KernelMemory) -> u64| -> f64 {
            median(&mut samples.iter().map(|s| f(s) as f64).collect::<Vec<_>>())
        };
        let totals = samples.iter().map(KernelMemory::total_kib);
        let spread = (totals.clone().max().unwrap_or(0) - totals.min().unwrap_or(0)) as f64;
        Some(KernelFigures {
            total: column(KernelMemory::total_kib),
            slab_unreclaimable: column(|s| s.slab_unreclaimable_kib),
            slab_reclaimable: column(|s| s.slab_reclaimable_kib),
            kernel_stack: column(|s| s.kernel_stack_kib),
            page_tables: column(|s| s.page_tables_kib),
            spread,
            samples: samples.len(),
        })
    }
}

/// Takes `count` kernel memory samples `every` apart (the first at once);
/// none where `/proc/meminfo` cannot be read.
fn kernel_samples(count: usize, every: Duration) -> Vec<KernelMemory> {
    let mut samples = Vec::with_capacity(count);
    for i in 0..count {
        if i > 0 {
            thread::sleep(every);
        }
        match sys::kernel_memory() {
            Ok(sample) => samples.push(sample),
            Err(_) => break,
        }
    }
    samples
}

/// The server's figures a settle time after a phase: the medians of
/// [`SAMPLES`] RSS and kernel samples.
struct AfterFigures {
    rss_kib: f64,
    kernel: Option<KernelFigures>,
}

fn after_figures(pid: u32) -> Result<AfterFigures> {
    let mut rss = Vec::with_capacity(SAMPLES);
    let mut kernel = Vec::with_capacity(SAMPLES);
    for i in 0..SAMPLES {
        if i > 0 {
            thread::sleep(SAMPLE_EVERY);
        }
        rss.push(sys::rss_bytes(pid)? as f64 / 1024.0);
        if let Ok(sample) = sys::kernel_memory() {
            kernel.push(sample);
        }
    }
    Ok(AfterFigures {
        rss_kib: median(&mut rss),
        kernel: KernelFigures::of(&kernel),
    })
}

/// Waits until process `pid` holds at least `wanted` descriptors; false if
/// its count stood still for [`ACCEPT_STALL`] first (a server that refused
/// some connections closed them), or `deadline` came.
fn wait_for_descriptors(pid: u32, wanted: u64, deadline: Instant) -> Result<bool> {
    let (mut last, mut since) = (sys::open_fds(pid)?, Instant::now());
    loop {
        if last >= wanted {
            return Ok(true);
        }
        let now = Instant::now();
        if now >= deadline || now - since >= ACCEPT_STALL {
            return Ok(false);
        }
        thread::sleep(ACCEPT_POLL);
        let count = sys::open_fds(pid)?;
        if count != last {
            (last, since) = (count, Instant::now());
        }
    }
}

/// What the main thread measures between the barriers.
struct Measured {
    /// `--upgrade-together`: whether the server accepted every connection
    /// before the upgrade requests went.
    accepted: Option<Result<bool>>,
    open_s: f64,
    fresh: Option<Result<ServerFigures>>,
    after_greeting: Option<Result<AfterFigures>>,
    after_message: Option<Result<AfterFigures>>,
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
    let settle = args
        .settle
        .or(args.then_echo.map(|_| DEFAULT_SETTLE))
        .unwrap_or_default();
    // Figures after the greeting: with a greeting, a server to measure, and
    // a settle time asked for.
    let after_greeting =
        args.greeting_delay.is_some() && args.pid.is_some() && args.settle.is_some();
    let plan = Plan {
        threads,
        concurrency: args.common.concurrency as usize,
        connect_deadline: Instant::now() + args.common.connect_timeout,
        hold: args.hold,
        greeting_wait: args
            .greeting_delay
            .filter(|_| after_greeting)
            .map(|delay| delay + GREETING_GRACE),
        then_echo: args.then_echo,
        after_window: settle + SAMPLE_EVERY * SAMPLES as u32,
        upgrade_together: args.upgrade_together,
        waiting: AtomicUsize::new(0),
        reconnect: args
            .reconnect
            .then(|| (args.jitter.unwrap_or_default(), args.common.connect_timeout)),
        opened: AtomicUsize::new(0),
    };
    let rss_before = args.pid.map(sys::rss_bytes).transpose()?;
    let fds_before = args.pid.map(sys::open_fds).transpose()?;
    // The machine's kernel memory before connecting (with --pid only, like
    // the server's other figures).
    let kernel_before = match args.pid {
        Some(_) => KernelFigures::of(&kernel_samples(SAMPLES, SAMPLE_EVERY / 2)),
        None => None,
    };
    let mut workers = room_workers(&target, args.rooms, threads)?;
    if let Some(count) = args.source_addresses {
        spread_sources(&mut workers, &target, count)?;
    }
    // The workers plus this thread, which takes the server's figures.
    let barrier = Barrier::new(threads + 1);
    let started = Instant::now();

    let run = |worker, t, count| run_worker(worker, &plan, t, count, &barrier);
    // A phase after the idle window: wait for the workers to finish it, let
    // the server settle, take its figures, let the workers go on.
    let after_phase = |pid: u32| {
        barrier.wait();
        thread::sleep(settle);
        let figures = after_figures(pid);
        barrier.wait();
        figures
    };
    let (results, measured): (Vec<Result<HoldHandler>>, _) =
        on_workers(workers, connections, run, || {
            // --upgrade-together: every request is sent but its end; the ends
            // go once the server holds a descriptor for each connection.
            let accepted = plan.upgrade_together.then(|| {
                barrier.wait();
                let pid = args.pid.expect("--upgrade-together requires --pid");
                let wanted = fds_before.unwrap_or(0) + plan.waiting.load(Ordering::Acquire) as u64;
                let accepted = wait_for_descriptors(pid, wanted, plan.connect_deadline);
                barrier.wait();
                accepted
            });
            barrier.wait();
            let open_s = started.elapsed().as_secs_f64();
            if args.reconnect {
                // For a script that restarts the server once every connection is open.
                eprintln!(
                    "wsload: hold --reconnect: {} of {connections} connections open; waiting up \
                     to {:?} for the server to close them and for them to come back",
                    plan.opened.load(Ordering::Acquire),
                    args.hold
                );
            }
            let fresh = args.pid.map(|pid| -> Result<ServerFigures> {
                let fds_after = sys::open_fds(pid)?;
                let opened_at = started + Duration::from_secs_f64(open_s);
                // A server may do some one-time work for a new connection after it
                // opened (wsecho gives back its handshake's stack a second later):
                // idle CPU is counted from IDLE_CPU_FROM after the last one opened.
                let cpu_from = opened_at + IDLE_CPU_FROM.min(args.hold / 2);
                // Kernel samples spread over the idle window.
                let every = (args.hold / 10).max(Duration::from_millis(50));
                let samples = (args.hold.as_secs_f64() / every.as_secs_f64()) as usize;
                let mut cpu_start = None;
                let mut taken = Vec::new();
                for _ in 0..samples.max(1) {
                    if cpu_start.is_none() && Instant::now() >= cpu_from {
                        cpu_start = Some(sys::cpu_seconds(pid)?);
                    }
                    taken.extend(kernel_samples(1, Duration::ZERO));
                    thread::sleep(every);
                }
                let kernel = KernelFigures::of(&taken);
                let idle_until = opened_at + args.hold;
                thread::sleep(idle_until.saturating_duration_since(Instant::now()));
                let cpu_start = match cpu_start {
                    Some(cpu) => cpu,
                    None => sys::cpu_seconds(pid)?,
                };
                Ok(ServerFigures {
                    // Taken at the end of the idle window: what an idle connection keeps.
                    rss_after: sys::rss_bytes(pid)?,
                    fds_after,
                    kernel,
                    cpu_start,
                    cpu_end: sys::cpu_seconds(pid)?,
                })
            });
            // With --reconnect the workers end the window when every connection is back.
            if args.pid.is_none() && !args.reconnect {
                thread::sleep(args.hold);
            }
            barrier.wait();
            let pid = args.pid.unwrap_or(0);
            let after_greeting = plan.greeting_wait.map(|_| after_phase(pid));
            let after_message = plan.then_echo.map(|_| after_phase(pid));
            Measured {
                accepted,
                open_s,
                fresh,
                after_greeting,
                after_message,
            }
        });

    let mut handlers = results.into_iter().collect::<Result<Vec<_>>>()?;
    let storms: Vec<Storm> = handlers.iter_mut().filter_map(|h| h.storm.take()).collect();
    let open_s = measured.open_s;
    let accepted = measured.accepted.transpose()?;
    let server = measured.fresh.transpose()?;
    let after_greeting = measured.after_greeting.transpose()?;
    let after_message = measured.after_message.transpose()?;
    let mut report = HoldReport {
        mode: "hold",
        url: target.url.clone(),
        connections: args.connections,
        opened: 0,
        threads,
        open_s,
        opened_within_s: None,
        upgrade_together: args.upgrade_together,
        accepted_before_upgrade: accepted,
        rooms: args.rooms,
        source_addresses: args.source_addresses,
        hold_s: args.hold.as_secs_f64(),
        pid: args.pid,
        rss_before_kib: rss_before.map(|b| b / 1024),
        rss_after_kib: None,
        rss_per_conn_kib: None,
        kernel_before_kib: kernel_before.map(|k| k.total),
        kernel_after_kib: None,
        kernel_samples: None,
        kernel_spread_kib: None,
        kernel_per_conn_kib: None,
        slab_unreclaimable_per_conn_kib: None,
        slab_reclaimable_per_conn_kib: None,
        kernel_stack_per_conn_kib: None,
        page_tables_per_conn_kib: None,
        total_per_conn_kib: None,
        fds_before,
        fds_after: None,
        fds_per_conn: None,
        idle_cpu_s: None,
        greeting_delay_s: args.greeting_delay.map(|d| d.as_secs_f64()),
        greetings: 0,
        lateness_us: None,
        settle_s: (after_greeting.is_some() || after_message.is_some())
            .then_some(settle.as_secs_f64()),
        after_greeting_rss_kib: None,
        after_greeting_rss_per_conn_kib: None,
        after_greeting_kernel_per_conn_kib: None,
        after_greeting_total_per_conn_kib: None,
        then_echo_bytes: args.then_echo,
        then_echoed: 0,
        after_message_rss_kib: None,
        after_message_rss_per_conn_kib: None,
        after_message_kernel_per_conn_kib: None,
        after_message_total_per_conn_kib: None,
        text_messages: 0,
        still_echo: 0,
        connect_failures: 0,
        dropped: 0,
        bad_messages: 0,
        reconnect: args
            .reconnect
            .then(|| ReconnectReport::new(&storms, args.jitter.unwrap_or_default())),
        first_error: None,
        ok: false,
    };
    let mut lateness_ns = Vec::new();
    let (mut failures, mut dropped, mut bad) =
        (Errors::default(), Errors::default(), Errors::default());
    let (mut first_open, mut last_open): (Option<Instant>, Option<Instant>) = (None, None);
    for h in handlers {
        for opened in h.opened_at.iter().flatten() {
            first_open = Some(first_open.map_or(*opened, |t| t.min(*opened)));
            last_open = Some(last_open.map_or(*opened, |t| t.max(*opened)));
        }
        report.opened += h.opened;
        report.greetings += h.greeted;
        report.text_messages += h.texts;
        report.still_echo += h.echoed;
        report.then_echoed += h.messages_echoed;
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
    report.opened_within_s = first_open
        .zip(last_open)
        .map(|(first, last)| (last - first).as_secs_f64());
    let opened = report.opened as f64;
    if let Some(server) = server {
        report.rss_after_kib = Some(server.rss_after / 1024);
        report.fds_after = Some(server.fds_after);
        if let (Some(before), true) = (rss_before, report.opened > 0) {
            let growth = server.rss_after as f64 - before as f64;
            report.rss_per_conn_kib = Some(growth / 1024.0 / opened);
        }
        if let (Some(before), Some(after), true) = (kernel_before, server.kernel, report.opened > 0)
        {
            let per = |f: fn(&KernelFigures) -> f64| Some((f(&after) - f(&before)) / opened);
            report.kernel_after_kib = Some(after.total);
            report.kernel_samples = Some(after.samples);
            report.kernel_spread_kib = Some(after.spread);
            report.kernel_per_conn_kib = per(|k| k.total);
            report.slab_unreclaimable_per_conn_kib = per(|k| k.slab_unreclaimable);
            report.slab_reclaimable_per_conn_kib = per(|k| k.slab_reclaimable);
            report.kernel_stack_per_conn_kib = per(|k| k.kernel_stack);
            report.page_tables_per_conn_kib = per(|k| k.page_tables);
            report.total_per_conn_kib = report
                .rss_per_conn_kib
                .zip(report.kernel_per_conn_kib)
                .map(|(rss, kernel)| rss + kernel);
        }
        if let (Some(before), true) = (fds_before, report.opened > 0) {
            let growth = server.fds_after as f64 - before as f64;
            report.fds_per_conn = Some(growth / report.opened as f64);
        }
        report.idle_cpu_s = Some(server.cpu_end - server.cpu_start);
    }
    // The figures after a phase, per connection, from the same starting point
    // as the fresh ones (before connecting).
    let per_conn = |after: &AfterFigures| -> (Option<f64>, Option<f64>, Option<f64>) {
        if report.opened == 0 {
            return (None, None, None);
        }
        let rss = rss_before.map(|before| (after.rss_kib - before as f64 / 1024.0) / opened);
        let kernel = kernel_before
            .zip(after.kernel)
            .map(|(before, after)| (after.total - before.total) / opened);
        (rss, kernel, rss.zip(kernel).map(|(r, k)| r + k))
    };
    if let Some(after) = &after_greeting {
        report.after_greeting_rss_kib = Some(after.rss_kib.round() as u64);
        (
            report.after_greeting_rss_per_conn_kib,
            report.after_greeting_kernel_per_conn_kib,
            report.after_greeting_total_per_conn_kib,
        ) = per_conn(after);
    }
    if let Some(after) = &after_message {
        report.after_message_rss_kib = Some(after.rss_kib.round() as u64);
        (
            report.after_message_rss_per_conn_kib,
            report.after_message_kernel_per_conn_kib,
            report.after_message_total_per_conn_kib,
        ) = per_conn(after);
    }
    if args.greeting_delay.is_some() {
        report.lateness_us = Some(stats::summarize_ns(&mut lateness_ns));
    }
    report.connect_failures = failures.count;
    report.dropped = dropped.count;
    report.bad_messages = bad.count;
    report.first_error = failures.first.or(dropped.first).or(bad.first).or_else(|| {
        report
            .reconnect
            .as_ref()
            .and_then(|r| r.reconnect_first_failure.clone())
    });
    ensure_opened(report.opened, &target.url, report.first_error.as_deref())?;
    report.ok = report.opened == connections
        && report.still_echo == connections
        && report.dropped == 0
        && report.bad_messages == 0
        && (args.greeting_delay.is_none() || report.greetings == connections)
        && (args.then_echo.is_none() || report.then_echoed == connections)
        && report
            .reconnect
            .as_ref()
            .is_none_or(|r| r.passed(args.connections));
    Ok(report)
}

/// The server's figures taken once every connection is open (`--pid`).
struct ServerFigures {
    rss_after: u64,
    fds_after: u64,
    /// The machine's kernel memory, sampled over the idle window.
    kernel: Option<KernelFigures>,
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
    /// Seconds from the first handshake completed to the last: with
    /// --greeting-delay, the span over which the greetings fall due.
    pub opened_within_s: Option<f64>,
    /// --upgrade-together: every upgrade request completed at once.
    pub upgrade_together: bool,
    /// With --upgrade-together: whether the server held a descriptor for
    /// every connection before the upgrade requests went (if not, they went
    /// once its count had stood still for 2 s, or at the connect timeout).
    pub accepted_before_upgrade: Option<bool>,
    /// --rooms: the connections were spread over this many rooms.
    pub rooms: Option<u64>,
    /// --source-addresses: the connections were spread over this many local addresses,
    /// 127.0.0.1 on.
    pub source_addresses: Option<u32>,
    pub hold_s: f64,
    pub pid: Option<u32>,
    pub rss_before_kib: Option<u64>,
    pub rss_after_kib: Option<u64>,
    /// (RSS after all opened - RSS before) / connections opened.
    pub rss_per_conn_kib: Option<f64>,
    /// The machine's SUnreclaim + KernelStack + PageTables (/proc/meminfo), KiB:
    /// the median of the samples before connecting, and of those taken over
    /// the idle window (with --pid).
    pub kernel_before_kib: Option<f64>,
    pub kernel_after_kib: Option<f64>,
    /// Samples over the idle window, and their largest minus smallest total.
    pub kernel_samples: Option<usize>,
    pub kernel_spread_kib: Option<f64>,
    /// (kernel after - before) / connections opened: both ends of every
    /// connection (wsload's own socket and epoll entry included, the same
    /// for every server), and the server's threads' kernel stacks and page
    /// tables.
    pub kernel_per_conn_kib: Option<f64>,
    /// The same for each part (medians of each, so they need not add up
    /// exactly), and for SReclaimable, which is not in the figure: about 1 KiB
    /// per socket, under the noise of the machine's file caches.
    pub slab_unreclaimable_per_conn_kib: Option<f64>,
    pub slab_reclaimable_per_conn_kib: Option<f64>,
    pub kernel_stack_per_conn_kib: Option<f64>,
    pub page_tables_per_conn_kib: Option<f64>,
    /// RSS + kernel per connection.
    pub total_per_conn_kib: Option<f64>,
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
    /// How long after the greetings, or the --then-echo messages, the
    /// figures below were taken (medians of samples over one more second).
    pub settle_s: Option<f64>,
    /// After every connection got its greeting, plus the settle time (with
    /// --greeting-delay, --pid and --settle): the server's RSS, and RSS,
    /// kernel and RSS + kernel per connection, from the same starting point
    /// as the fresh figures.
    pub after_greeting_rss_kib: Option<u64>,
    pub after_greeting_rss_per_conn_kib: Option<f64>,
    pub after_greeting_kernel_per_conn_kib: Option<f64>,
    pub after_greeting_total_per_conn_kib: Option<f64>,
    /// --then-echo: the message size, how many connections got it back intact,
    /// and the same figures after the settle time.
    pub then_echo_bytes: Option<usize>,
    pub then_echoed: usize,
    pub after_message_rss_kib: Option<u64>,
    pub after_message_rss_per_conn_kib: Option<f64>,
    pub after_message_kernel_per_conn_kib: Option<f64>,
    pub after_message_total_per_conn_kib: Option<f64>,
    pub text_messages: u64,
    /// Connections that echoed the final probe correctly.
    pub still_echo: usize,
    pub connect_failures: u64,
    /// Connections lost after they had opened.
    pub dropped: u64,
    pub bad_messages: u64,
    /// With --reconnect: the comings and goings, as `reconnect_*` fields beside these. The
    /// server's closes during the hold are counted there, not as dropped.
    #[serde(flatten)]
    pub reconnect: Option<ReconnectReport>,
    pub first_error: Option<String>,
    pub ok: bool,
}

impl Report for HoldReport {
    fn passed(&self) -> bool {
        self.ok
    }

    fn print_human(&self) {
        if self.reconnect.is_some() {
            println!(
                "hold {}: {} connections, brought back when the server closed them (for at \
                 most {:.1} s once all were open), {} thread(s)",
                self.url, self.connections, self.hold_s, self.threads
            );
        } else {
            println!(
                "hold {}: {} connections held idle for {:.1} s, {} thread(s)",
                self.url, self.connections, self.hold_s, self.threads
            );
        }
        let within = self.opened_within_s.map_or(String::new(), |s| {
            format!(", handshakes completed within {s:.2} s")
        });
        let together = if self.upgrade_together {
            " (upgrade requests completed together)"
        } else {
            ""
        };
        row(
            "opened",
            format!(
                "{} of {} in {:.2} s{within}{together}",
                self.opened, self.connections, self.open_s
            ),
        );
        if let Some(rooms) = self.rooms {
            row(
                "rooms",
                format!("{rooms}, connection i in room i mod {rooms}"),
            );
        }
        if let Some(count) = self.source_addresses {
            row(
                "sources",
                format!(
                    "{count} local address(es), {} to {}, in turn",
                    super::source_address(0),
                    super::source_address(count - 1)
                ),
            );
        }
        if let (Some(before), Some(after)) = (self.rss_before_kib, self.rss_after_kib) {
            let per = self.rss_per_conn_kib.unwrap_or(0.0);
            row(
                "server RSS",
                format!("{before} KiB -> {after} KiB, {per:.2} KiB per connection"),
            );
        }
        if let (Some(before), Some(after), Some(per)) = (
            self.kernel_before_kib,
            self.kernel_after_kib,
            self.kernel_per_conn_kib,
        ) {
            row(
                "kernel",
                format!(
                    "{before:.0} KiB -> {after:.0} KiB, {per:.2} KiB per connection \
                     (unreclaimable slab {:.2}, kernel stacks {:.2}, page tables {:.2}; \
                     median of {} samples, spread {:.0} KiB; reclaimable slab apart: {:.2})",
                    self.slab_unreclaimable_per_conn_kib.unwrap_or(0.0),
                    self.kernel_stack_per_conn_kib.unwrap_or(0.0),
                    self.page_tables_per_conn_kib.unwrap_or(0.0),
                    self.kernel_samples.unwrap_or(0),
                    self.kernel_spread_kib.unwrap_or(0.0),
                    self.slab_reclaimable_per_conn_kib.unwrap_or(0.0),
                ),
            );
            row(
                "",
                "(SUnreclaim + KernelStack + PageTables of /proc/meminfo, machine-wide: \
                 includes wsload's end of each connection)",
            );
        }
        if let Some(total) = self.total_per_conn_kib {
            row("RSS + kernel", format!("{total:.2} KiB per connection"));
        }
        let settle = self.settle_s.unwrap_or(0.0);
        let after = |rss: Option<f64>, kernel: Option<f64>, total: Option<f64>| {
            let kib = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.2} KiB"));
            format!(
                "RSS {}, kernel {}, RSS + kernel {} per connection, {settle:.1} s later",
                kib(rss),
                kib(kernel),
                kib(total)
            )
        };
        if self.after_greeting_rss_kib.is_some() {
            row(
                "greeting done",
                after(
                    self.after_greeting_rss_per_conn_kib,
                    self.after_greeting_kernel_per_conn_kib,
                    self.after_greeting_total_per_conn_kib,
                ),
            );
        }
        if let Some(bytes) = self.then_echo_bytes {
            row(
                "message echo",
                format!(
                    "{} of {} connections sent {bytes} bytes and got them back",
                    self.then_echoed, self.opened
                ),
            );
            if self.after_message_rss_kib.is_some() {
                row(
                    "after message",
                    after(
                        self.after_message_rss_per_conn_kib,
                        self.after_message_kernel_per_conn_kib,
                        self.after_message_total_per_conn_kib,
                    ),
                );
            }
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
                    "{cpu:.3} s, from {:.1} s after the last connection opened to the end of the \
                     {:.1} s hold (pid {})",
                    IDLE_CPU_FROM.as_secs_f64().min(self.hold_s / 2.0),
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
        if let Some(reconnect) = &self.reconnect {
            for (label, line) in reconnect.lines(self.connections) {
                row(label, line);
            }
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

    #[test]
    fn messages_are_distinct_and_sized() {
        assert_eq!(message(7, 65536).len(), 65536);
        assert_ne!(message(1, 64), message(2, 64));
        assert_eq!(message(3, 4).len(), 4);
    }

    #[test]
    fn medians() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&mut []), 0.0);
        let k = |slab| KernelMemory {
            slab_unreclaimable_kib: slab,
            slab_reclaimable_kib: 7,
            kernel_stack_kib: 16,
            page_tables_kib: 4,
        };
        let f = KernelFigures::of(&[k(100), k(900), k(110)]).unwrap();
        assert_eq!(
            (f.total, f.slab_unreclaimable, f.spread),
            (130.0, 110.0, 800.0)
        );
        assert_eq!((f.slab_reclaimable, f.samples), (7.0, 3));
        assert!(KernelFigures::of(&[]).is_none());
    }
}
