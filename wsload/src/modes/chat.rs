//! `wsload chat`: rooms of clients spread over the instances of a cluster, driven phase by
//! phase from standard input.
//!
//! Every client joins its room with `?resume` (wsecho `--broadcast --history N`, one
//! `--url` per instance; [`plan`] says who goes where), keeps its position (the room's epoch
//! and the offset of the last message it received), and whenever its connection ends (the
//! instance was killed, say) comes back on another instance with `?resume=EPOCH:OFFSET`, after
//! a random pause of up to `--jitter`, then fanout's backoff between failed attempts. Each
//! room has one sender among its members; its messages carry the room and a sequence number,
//! so every member knows exactly which it received: a bit each ([`plan::Seen`]).
//!
//! A script runs several wsload processes (one cannot hold 99,000 connections under a 20,000
//! descriptor limit) and steps them through the same phases, writing one command a line to
//! each one's standard input; each answers with one JSON line on standard output once the
//! phase is over:
//!
//! - `open`: every client connects, with at most `--concurrency` handshakes in flight, and
//!   waits for its resume header. Reports the clients opened, failed, and opened per second.
//! - `send first` / `send all`: one message in this process's first room, or in each of its
//!   rooms, at once. Reports delivered, missing, duplicates and the time from the first send
//!   until the last member has it.
//! - `chat SECONDS`: every room's sender sends one message a second (the rooms spread over the
//!   second) for SECONDS; meanwhile the script may kill an instance. The phase ends once every
//!   client is back and every message delivered (or nothing arrived for `--drain`, or at most
//!   [`PHASE_GRACE`] after the sending). Reports the latency of every delivery (send to read,
//!   one clock: a room's sender and listeners are in this process), apart for the clients that
//!   stayed connected, and for the clients that came back: how long until all were back, and
//!   the messages they missed, recovered from the room's history, and lost.
//! - `quit` (or the end of standard input): closes every connection and exits.
//!
//! Between commands the clients stay connected and come back if they are closed.

pub mod plan;

use crate::cli::{ChatArgs, Server};
use crate::conn::{Conn, MessageKind};
use crate::modes::Errors;
use crate::modes::fanout::resume::{Counts, Ending, Resumer, State};
use crate::modes::hold::reconnect::Failure;
use crate::rng::Rng;
use crate::stats::{self, Summary};
use crate::target::{self, Target};
use crate::worker::{CloseReason, Handler, Message, Worker};
use anyhow::{Context, Result, bail};
use plan::{Plan, Seen};
use serde::Serialize;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{BufRead, Write};
use std::ops::Range;
use std::sync::Arc;
use std::sync::mpsc::{self, TryRecvError};
use std::thread;
use std::time::{Duration, Instant};

/// How long the loop waits for events before it looks at sends and comebacks that are due:
/// the sends' timing error, small beside a cluster's delivery times.
const TICK: Duration = Duration::from_millis(2);

/// A chatting room's pace: one message a second, as the rehearsal asks.
const MESSAGE_EVERY: Duration = Duration::from_secs(1);

/// The longest a phase waits, once its sending is over, for every client to be back and every
/// message delivered: a lost instance's clients come back within seconds, and a phase that
/// cannot end (an instance that never answers) must still end.
const PHASE_GRACE: Duration = Duration::from_secs(60);

/// How long the open phase waits for the resume headers once every connection is open: each
/// newcomer's instance asks Redis for the room's history first.
const HEADER_WAIT: Duration = Duration::from_secs(30);

/// How long closing takes at most when the script says `quit`.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Where a client is, connection-wise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// Connected (or opening for the first time, in the open phase).
    Here,
    /// Its connection ended; it waits for its pause to end.
    Away,
    /// Trying to come back.
    Connecting,
}

/// One client.
#[derive(Debug)]
struct Member {
    /// Its room, as an index into [`Chat::rooms`].
    room: usize,
    /// The instance it is connected (or connecting) to.
    instance: usize,
    /// The instance whose connection ended last: comebacks go to the others.
    left: usize,
    resumer: Resumer,
    seen: Seen,
    place: Place,
    /// Attempts to come back that failed since the last close.
    tries: u32,
    /// Attempts to come back started, ever: tells the attempt under way from older ones.
    attempts: u32,
    /// Its connection ended during this phase.
    moved: bool,
    /// Opened at least once.
    opened: bool,
}

/// One room this process holds.
#[derive(Debug)]
struct Room {
    /// Its global number (its path is `/room-N`).
    global: usize,
    /// The local client that sends in it.
    sender: usize,
    members: Range<usize>,
    /// When each of its messages was sent, by sequence number.
    sent_at: Vec<Instant>,
    /// When its next message is due; `None`: it sends nothing more this phase.
    due: Option<Instant>,
    /// Its first message of this phase.
    phase_first: u32,
}

/// What one phase counted.
#[derive(Debug)]
struct Tally {
    started: Instant,
    first_send: Option<Instant>,
    last_delivery: Option<Instant>,
    /// Send to read, in nanoseconds, of every delivery but those the history gave back.
    latency_ns: Vec<i64>,
    /// The same, for the clients whose connection did not end during the phase.
    stayed_ns: Vec<i64>,
    deliveries: u64,
    duplicates: u64,
    /// Messages that name another room, or no room at all.
    foreign: u64,
    counts: Counts,
    refused: u64,
    busy: u64,
    failed_other: u64,
    failures: Errors,
    errors: Errors,
    first_close: Option<Instant>,
    last_back: Option<Instant>,
    /// First connections opened, and failed (the open phase).
    opened: u64,
    open_failed: u64,
    last_open: Option<Instant>,
}

impl Tally {
    fn new(now: Instant) -> Tally {
        Tally {
            started: now,
            first_send: None,
            last_delivery: None,
            latency_ns: Vec::new(),
            stayed_ns: Vec::new(),
            deliveries: 0,
            duplicates: 0,
            foreign: 0,
            counts: Counts::default(),
            refused: 0,
            busy: 0,
            failed_other: 0,
            failures: Errors::default(),
            errors: Errors::default(),
            first_close: None,
            last_back: None,
            opened: 0,
            open_failed: 0,
            last_open: None,
        }
    }
}

/// One phase's figures, one JSON line.
#[derive(Debug, Serialize)]
pub struct PhaseReport {
    pub phase: String,
    /// From the command to the end of the phase.
    pub seconds: f64,
    pub clients: usize,
    /// Clients connected at the end.
    pub connected: usize,
    pub opened: u64,
    pub open_failed: u64,
    /// First connections opened per second (the open phase): opened ÷ the time to the last.
    pub opened_per_s: f64,
    /// Messages sent, and those of them that reached no member (sent into a connection that
    /// ended before its instance passed it on).
    pub sent: u64,
    pub never_entered: u64,
    /// Deliveries expected (messages sent × the room's members), made, and missing at the end
    /// (of the messages that reached the room, those a member never received).
    pub expected: u64,
    pub delivered: u64,
    pub missing: u64,
    pub duplicates: u64,
    pub foreign: u64,
    /// From the first send to the last delivery.
    pub last_delivery_us: f64,
    #[serde(flatten)]
    pub latency: Summary,
    pub stayed_p50_us: f64,
    pub stayed_p99_us: f64,
    pub stayed_max_us: f64,
    /// Clients whose connection ended during the phase, and of them those back at the end.
    pub moved: u64,
    pub back: u64,
    pub reconnects: u64,
    /// From the first close to the last client back (when all are back).
    pub all_back_s: Option<f64>,
    pub failed_refused: u64,
    pub failed_503: u64,
    pub failed_other: u64,
    pub first_failure: Option<String>,
    pub closed_1012: u64,
    pub closed_1001: u64,
    pub closed_other: u64,
    pub dropped: u64,
    /// Resume headers that said recovered, and not.
    pub headers_recovered: u64,
    pub headers_not_recovered: u64,
    /// Messages the moved clients missed while away, those the history gave back, and those
    /// never received (missed = recovered + lost).
    pub missed: u64,
    pub recovered: u64,
    pub lost: u64,
    pub offset_errors: u64,
    pub errors: u64,
    pub first_error: Option<String>,
}

/// The whole process's clients, rooms and the phase under way.
struct Chat {
    plan: Plan,
    targets: Vec<Arc<Target>>,
    members: Vec<Member>,
    rooms: Vec<Room>,
    size: usize,
    jitter: Duration,
    connect_timeout: Duration,
    rng: Rng,
    /// When clients away are due back, soonest first: (when, client). Only a client still
    /// away when its entry comes up goes.
    due: BinaryHeap<Reverse<(Instant, usize)>>,
    /// When attempts under way are given up, soonest first: (when, client, its attempt).
    deadlines: BinaryHeap<Reverse<(Instant, usize, u32)>>,
    /// Clients waiting to come back, and those trying.
    away: usize,
    connecting: usize,
    tally: Tally,
}

impl Chat {
    fn room_path(&self, room: usize) -> String {
        let base = self.targets[0].path.trim_end_matches('/');
        format!("{base}/room-{}", self.rooms[room].global)
    }

    /// Starts a phase: new counts, and every room's first message of it.
    fn begin(&mut self, now: Instant) {
        self.tally = Tally::new(now);
        for room in &mut self.rooms {
            room.phase_first = room.sent_at.len() as u32;
            room.due = None;
        }
        for member in &mut self.members {
            member.moved = false;
        }
    }

    /// Sends every message due; `every`: the pace of a chat, `None` for one message each.
    fn send_due(
        &mut self,
        worker: &mut Worker,
        now: Instant,
        until: Instant,
        every: Option<Duration>,
    ) {
        for r in 0..self.rooms.len() {
            let Some(due) = self.rooms[r].due.filter(|&due| due <= now) else {
                continue;
            };
            let seq = self.rooms[r].sent_at.len() as u32;
            let data = plan::payload(self.rooms[r].global, seq, self.size);
            let sender = self.rooms[r].sender;
            let sent_at = Instant::now();
            // Its sender away: the message waits until it is back.
            if !worker.send(sender, MessageKind::Binary, &data, self) {
                continue;
            }
            self.tally.first_send.get_or_insert(sent_at);
            let room = &mut self.rooms[r];
            room.sent_at.push(sent_at);
            room.due = every.map(|every| due + every).filter(|&next| next < until);
        }
    }

    /// Brings back the clients due, and gives up the attempts that took too long.
    fn comebacks(&mut self, worker: &mut Worker, now: Instant) {
        while let Some(&Reverse((at, id, attempt))) = self.deadlines.peek() {
            if at > now {
                break;
            }
            self.deadlines.pop();
            let member = &self.members[id];
            if member.place == Place::Connecting && member.attempts == attempt {
                worker.abandon(id, self);
            }
        }
        while let Some(&Reverse((at, id))) = self.due.peek() {
            if at > now {
                break;
            }
            self.due.pop();
            if self.members[id].place != Place::Away {
                continue;
            }
            let room = self.members[id].room;
            let sent = self.rooms[room].sent_at.len() as u64;
            let path = self.room_path(room);
            let member = &mut self.members[id];
            member.place = Place::Connecting;
            member.attempts += 1;
            member.instance = self.plan.next_instance(id, member.left, member.tries);
            member.resumer.reconnecting(now, sent, sent);
            self.away -= 1;
            self.connecting += 1;
            let deadline = now + self.connect_timeout;
            self.deadlines
                .push(Reverse((deadline, id, member.attempts)));
            worker.set_target(id, Arc::clone(&self.targets[member.instance]));
            worker.set_path(id, member.resumer.path(&path));
            worker.reopen(id, self);
        }
    }

    /// True once every client is connected (none away, none trying).
    fn all_here(&self) -> bool {
        self.away == 0 && self.connecting == 0
    }

    fn expected(&self) -> u64 {
        self.rooms
            .iter()
            .map(|r| (r.sent_at.len() as u64 - u64::from(r.phase_first)) * r.members.len() as u64)
            .sum()
    }

    /// The phase's figures.
    fn report(&self, phase: &str, now: Instant) -> PhaseReport {
        let t = &self.tally;
        let (mut sent, mut never_entered, mut missing, mut lost) = (0, 0, 0, 0);
        for room in &self.rooms {
            let (from, to) = (room.phase_first, room.sent_at.len() as u32);
            sent += u64::from(to - from);
            let mut all = Seen::default();
            for m in room.members.clone() {
                all.merge(&self.members[m].seen);
            }
            never_entered += u64::from(to - from) - all.count(from, to);
            for m in room.members.clone() {
                let member = &self.members[m];
                let gone = member.seen.missing_of(&all, from, to);
                missing += gone;
                if member.moved {
                    lost += gone;
                }
            }
        }
        let moved = self.members.iter().filter(|m| m.moved).count() as u64;
        let back = moved.saturating_sub((self.away + self.connecting) as u64);
        let mut latency = t.latency_ns.clone();
        let mut stayed = t.stayed_ns.clone();
        let stayed = stats::summarize_ns(&mut stayed);
        let opened_in = t.last_open.map(|at| (at - t.started).as_secs_f64());
        let all_back_s = match (t.first_close, t.last_back) {
            (Some(first), Some(last)) if self.all_here() && last >= first => {
                Some((last - first).as_secs_f64())
            }
            _ => None,
        };
        PhaseReport {
            phase: phase.to_string(),
            seconds: (now - t.started).as_secs_f64(),
            clients: self.members.len(),
            connected: self.members.len() - self.away - self.connecting,
            opened: t.opened,
            open_failed: t.open_failed,
            opened_per_s: opened_in.map_or(0.0, |s| t.opened as f64 / s.max(1e-9)),
            sent,
            never_entered,
            expected: self.expected(),
            delivered: t.deliveries,
            missing,
            duplicates: t.duplicates,
            foreign: t.foreign,
            last_delivery_us: match (t.first_send, t.last_delivery) {
                (Some(first), Some(last)) => {
                    last.saturating_duration_since(first).as_secs_f64() * 1e6
                }
                _ => 0.0,
            },
            latency: stats::summarize_ns(&mut latency),
            stayed_p50_us: stayed.p50_us,
            stayed_p99_us: stayed.p99_us,
            stayed_max_us: stayed.max_us,
            moved,
            back,
            reconnects: t.counts.reconnects,
            all_back_s,
            failed_refused: t.refused,
            failed_503: t.busy,
            failed_other: t.failed_other,
            first_failure: t.failures.first.clone(),
            closed_1012: t.counts.closed_1012,
            closed_1001: t.counts.closed_1001,
            closed_other: t.counts.closed_other + t.counts.closed_1008,
            dropped: t.counts.dropped,
            headers_recovered: t.counts.recovered,
            headers_not_recovered: t.counts.not_recovered,
            missed: t.counts.caught_up + lost,
            recovered: t.counts.caught_up,
            lost,
            offset_errors: t.counts.offset_errors,
            errors: t.errors.count,
            first_error: t.errors.first.clone(),
        }
    }
}

impl Handler for Chat {
    fn on_open(&mut self, id: usize, _: &mut Conn, now: Instant) {
        let room = self.members[id].room;
        let sent = self.rooms[room].sent_at.len() as u64;
        let member = &mut self.members[id];
        if member.place == Place::Connecting {
            member.resumer.reopened(sent, &mut self.tally.counts);
            member.tries = 0;
            self.connecting -= 1;
            self.tally.last_back = Some(now);
        } else {
            member.opened = true;
            self.tally.opened += 1;
            self.tally.last_open = Some(now);
        }
        member.place = Place::Here;
    }

    fn on_message(&mut self, id: usize, msg: Message<'_>, _: &mut Conn, now: Instant) {
        let tally = &mut self.tally;
        let member = &mut self.members[id];
        if member.resumer.awaiting_header() {
            if let Err(why) = member.resumer.on_header(msg.data, &mut tally.counts) {
                tally.errors.record(why);
            }
            return;
        }
        member.resumer.next_offset();
        let room = &self.rooms[member.room];
        let Some((global, seq)) = plan::stamp(msg.data)
            .filter(|&(global, seq)| global == room.global && (seq as usize) < room.sent_at.len())
        else {
            tally.foreign += 1;
            tally.errors.record(format!(
                "client {} of room {} got a message that is not one of its room's",
                self.plan.global(id),
                room.global
            ));
            return;
        };
        debug_assert_eq!(global, room.global);
        if !member.seen.insert(seq) {
            tally.duplicates += 1;
            return;
        }
        let (counted, numbered) = member
            .resumer
            .on_counted(u64::from(seq), now, &mut tally.counts);
        if let Err(why) = numbered {
            tally.errors.record(why);
        }
        tally.deliveries += 1;
        tally.last_delivery = Some(now);
        if !counted.caught_up {
            let ns = stats::nanos(now.saturating_duration_since(room.sent_at[seq as usize]));
            tally.latency_ns.push(ns);
            if !member.moved {
                tally.stayed_ns.push(ns);
            }
        }
    }

    fn on_close(&mut self, id: usize, reason: &CloseReason) {
        let now = Instant::now();
        let member = &mut self.members[id];
        let ending = match member.place {
            // An attempt to come back that did not open, whatever ended it.
            Place::Connecting => {
                match Failure::of(reason) {
                    Failure::Refused => self.tally.refused += 1,
                    Failure::Busy => self.tally.busy += 1,
                    Failure::Other => self.tally.failed_other += 1,
                }
                self.tally.failures.record(reason);
                member.tries += 1;
                self.connecting -= 1;
                Ending::NotOpened
            }
            Place::Here if !member.opened => {
                // A first connection that failed: counted, and not tried again.
                self.tally.open_failed += 1;
                self.tally
                    .errors
                    .record(format!("client {}: {reason}", self.plan.global(id)));
                return;
            }
            Place::Here => {
                member.left = member.instance;
                member.moved = true;
                self.tally.first_close.get_or_insert(now);
                match reason {
                    CloseReason::ClosedByServer(code) => Ending::Closed(*code),
                    _ => Ending::Dropped,
                }
            }
            // Nothing is open to close.
            Place::Away => return,
        };
        member
            .resumer
            .on_end(ending, now, &mut self.rng, &mut self.tally.counts);
        if ending != Ending::NotOpened && !self.jitter.is_zero() {
            // The first pause after a close: anywhere up to --jitter (full jitter), so that
            // the clients of a lost instance do not all come back in the same millisecond.
            let nanos = u64::try_from(self.jitter.as_nanos()).unwrap_or(u64::MAX);
            let pause = Duration::from_nanos(self.rng.next_u64() % (nanos + 1));
            member.resumer.state = State::AwayUntil(now + pause);
        }
        let at = match member.resumer.state {
            State::AwayUntil(at) => at,
            _ => now,
        };
        member.place = Place::Away;
        self.away += 1;
        self.due.push(Reverse((at, id)));
    }
}

/// A command from the script.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Command {
    Open,
    SendFirst,
    SendAll,
    Chat(Duration),
    Quit,
}

fn parse_command(line: &str) -> Result<Command> {
    let words: Vec<&str> = line.split_whitespace().collect();
    Ok(match words.as_slice() {
        ["open"] => Command::Open,
        ["send", "first"] => Command::SendFirst,
        ["send", "all"] => Command::SendAll,
        ["chat", seconds] => {
            let seconds: u64 = seconds
                .parse()
                .ok()
                .filter(|s| (1..=3600).contains(s))
                .with_context(|| format!("chat {seconds}: give 1 to 3600 seconds"))?;
            Command::Chat(Duration::from_secs(seconds))
        }
        ["quit"] | [] => Command::Quit,
        _ => bail!("unknown command {line:?}: open, send first, send all, chat SECONDS or quit"),
    })
}

/// Runs the commands of standard input until `quit` or its end.
pub fn run(args: &ChatArgs) -> Result<()> {
    if args.common.threads != 1 {
        bail!("chat runs one event loop: leave --threads at 1 and run more processes instead");
    }
    let mut chat = setup(args)?;
    let mut worker = Worker::new(Arc::clone(&chat.targets[0]))?;
    for id in 0..chat.members.len() {
        let member = &chat.members[id];
        worker.set_target(id, Arc::clone(&chat.targets[member.instance]));
        worker.set_path(id, member.resumer.path(&chat.room_path(member.room)));
    }
    let (commands, lines) = mpsc::channel();
    thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if commands.send(line).is_err() {
                break;
            }
        }
    });
    loop {
        let line = match lines.try_recv() {
            Ok(line) => line,
            Err(TryRecvError::Empty) => {
                worker.poll_once(Some(TICK), &mut chat)?;
                chat.comebacks(&mut worker, Instant::now());
                continue;
            }
            Err(TryRecvError::Disconnected) => String::from("quit"),
        };
        let command = parse_command(&line)?;
        let report = match command {
            Command::Quit => break,
            Command::Open => open(&mut chat, &mut worker, args)?,
            Command::SendFirst | Command::SendAll => {
                let rooms = if command == Command::SendFirst {
                    1
                } else {
                    chat.rooms.len()
                };
                send(&mut chat, &mut worker, rooms, args.drain)?
            }
            Command::Chat(seconds) => talk(&mut chat, &mut worker, seconds, args.drain)?,
        };
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", serde_json::to_string(&report)?)?;
        out.flush()?;
    }
    worker.close_all(CLOSE_GRACE)?;
    Ok(())
}

/// The targets, members and rooms of the command line.
fn setup(args: &ChatArgs) -> Result<Chat> {
    let targets = args
        .urls
        .iter()
        .map(|url| {
            let server = Server {
                url: url.clone(),
                allow_remote: args.allow_remote,
                ca: args.ca.clone(),
                server_name: args.server_name.clone(),
            };
            target::from_args(&server).map(Arc::new)
        })
        .collect::<Result<Vec<_>>>()?;
    if let Some(url) = args.urls.iter().find(|url| url.contains('?')) {
        bail!("{url} has a query: chat adds its own (?resume)");
    }
    let plan = Plan {
        first_client: args.first_client as usize,
        clients: args.clients as usize,
        room_size: args.room_size as usize,
        instances: targets.len(),
    };
    let first_room = plan.room_of(0);
    let rooms: Vec<Room> = plan
        .rooms()
        .map(|global| {
            let first = (global * plan.room_size).max(plan.first_client) - plan.first_client;
            let end = ((global + 1) * plan.room_size).min(plan.first_client + plan.clients)
                - plan.first_client;
            Room {
                global,
                sender: plan.sender_of(global),
                members: first..end,
                sent_at: Vec::new(),
                due: None,
                phase_first: 0,
            }
        })
        .collect();
    let members = (0..plan.clients)
        .map(|id| Member {
            room: plan.room_of(id) - first_room,
            instance: plan.home(id),
            left: plan.home(id),
            resumer: Resumer::new(),
            seen: Seen::default(),
            place: Place::Here,
            tries: 0,
            attempts: 0,
            moved: false,
            opened: false,
        })
        .collect();
    Ok(Chat {
        plan,
        targets,
        members,
        rooms,
        size: args.size,
        jitter: args.jitter,
        connect_timeout: args.common.connect_timeout,
        rng: Rng::from_entropy(),
        due: BinaryHeap::new(),
        deadlines: BinaryHeap::new(),
        away: 0,
        connecting: 0,
        tally: Tally::new(Instant::now()),
    })
}

/// `open`: every client connects and gets its header.
fn open(chat: &mut Chat, worker: &mut Worker, args: &ChatArgs) -> Result<PhaseReport> {
    let now = Instant::now();
    chat.begin(now);
    let count = chat.members.len();
    worker.connect(
        count,
        args.common.concurrency as usize,
        now + args.common.connect_timeout,
        chat,
    )?;
    let deadline = Instant::now() + HEADER_WAIT;
    while chat
        .members
        .iter()
        .any(|m| m.opened && m.resumer.awaiting_header())
        && Instant::now() < deadline
    {
        worker.poll_once(Some(TICK), chat)?;
    }
    Ok(chat.report("open", Instant::now()))
}

/// `send first` / `send all`: one message in each of the first `rooms` rooms, at once.
fn send(
    chat: &mut Chat,
    worker: &mut Worker,
    rooms: usize,
    drain: Duration,
) -> Result<PhaseReport> {
    let now = Instant::now();
    chat.begin(now);
    for room in chat.rooms.iter_mut().take(rooms) {
        room.due = Some(now);
    }
    finish(
        chat,
        worker,
        now,
        None,
        drain,
        if rooms == 1 { "send first" } else { "send all" },
    )
}

/// `chat SECONDS`: every room at one message a second, the rooms spread over the second.
fn talk(
    chat: &mut Chat,
    worker: &mut Worker,
    seconds: Duration,
    drain: Duration,
) -> Result<PhaseReport> {
    let now = Instant::now();
    chat.begin(now);
    let count = chat.rooms.len() as u32;
    for (i, room) in chat.rooms.iter_mut().enumerate() {
        room.due = Some(now + MESSAGE_EVERY * i as u32 / count.max(1));
    }
    finish(
        chat,
        worker,
        now + seconds,
        Some(MESSAGE_EVERY),
        drain,
        "chat",
    )
}

/// Runs the phase's sending until `until`, then until every client is back and every message
/// delivered (or nothing arrived for `drain`, or [`PHASE_GRACE`] later).
fn finish(
    chat: &mut Chat,
    worker: &mut Worker,
    until: Instant,
    every: Option<Duration>,
    drain: Duration,
    phase: &str,
) -> Result<PhaseReport> {
    let deadline = until.max(Instant::now()) + PHASE_GRACE;
    loop {
        let now = Instant::now();
        chat.send_due(worker, now, until, every);
        chat.comebacks(worker, now);
        let sending = chat.rooms.iter().any(|r| r.due.is_some());
        let quiet = chat
            .tally
            .last_delivery
            .or(chat.tally.first_send)
            .is_none_or(|at| now.saturating_duration_since(at) >= drain);
        let delivered = chat.tally.deliveries >= chat.expected();
        if now >= deadline || (!sending && chat.all_here() && (delivered || quiet)) {
            return Ok(chat.report(phase, now));
        }
        worker.poll_once(Some(TICK), chat)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_and_bad_ones_say_what_is_known() {
        assert_eq!(parse_command("open").unwrap(), Command::Open);
        assert_eq!(parse_command(" send  first ").unwrap(), Command::SendFirst);
        assert_eq!(parse_command("send all").unwrap(), Command::SendAll);
        assert_eq!(
            parse_command("chat 60").unwrap(),
            Command::Chat(Duration::from_secs(60))
        );
        assert_eq!(parse_command("").unwrap(), Command::Quit);
        assert!(parse_command("chat 0").is_err());
        assert!(parse_command("chat soon").is_err());
        let error = parse_command("shout").unwrap_err().to_string();
        assert!(error.contains("chat SECONDS"), "{error}");
    }
}
