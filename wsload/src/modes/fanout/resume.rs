//! `wsload fanout --resume`: listeners that resume by position and come back.
//!
//! A server that numbers its rooms' broadcasts (wsecho `--broadcast --history N`) lets a
//! client connect with `?resume` (a newcomer) or `?resume=EPOCH:OFFSET` (continue after the
//! message `OFFSET` of `EPOCH`). Its first frame is then one JSON text frame,
//! `{"epoch":"…","offset":N,"recovered":true|false}`, where `N` is the offset of the message
//! just before the ones that follow; after it, every data message is one room message, in
//! offset order, with no envelope: the client counts the offsets itself.
//!
//! With `--resume` every listener (not the sender) connects that way, keeps its room's epoch
//! and the offset of the last message it received, and when its connection ends (the server
//! let it go for falling behind with 1008, renumbered the room with 1012, shut down with 1001,
//! or the TCP connection broke) comes back after a jittered, exponentially growing pause with
//! `?resume=EPOCH:OFFSET`.
//!
//! Nothing is taken on trust. The sender numbers its messages, so a listener knows exactly
//! which it got: the fan-out's own missing, out-of-order and duplicate counts apply as
//! without `--resume`. On top of them, every counted message must sit at the same distance
//! from its sequence number in the room's numbering (offset − sequence number is the same for
//! all of them within an epoch: a message the server skipped or sent twice would shift it),
//! and a header that says `recovered` must name the very position asked for.
//!
//! This module is the bookkeeping, without sockets: the header, the request target, the
//! backoff, and one listener's [`Resumer`]; `fanout.rs` drives it from the event loop.

use crate::rng::Rng;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// The first pause before coming back, and the unit the pauses grow from. A server that let
/// a listener go (1008) or renumbered its room (1012) is up and wants it back soon, within a
/// few of a busy room's messages; drawn at random below it (full jitter), the listeners a 1012
/// closes all at once come back spread over it rather than in one burst of handshakes.
pub const BACKOFF_BASE: Duration = Duration::from_millis(50);

/// The longest pause: `--drain`'s default (2 s), so that a listener waiting on a server
/// that restarts (1001, then refused connections for a while) tries at least once a drain
/// time, and the pauses stay short beside any run's `--timeout`.
pub const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// The longest epoch a header may name (the server's own limit): it goes back into the URL.
const MAX_EPOCH: usize = 64;

/// Offsets stay below 2^53, as the server keeps them (JavaScript's numbers hold them).
const MAX_OFFSET: u64 = (1 << 53) - 1;

/// How long to wait before attempt `attempt` (0 for the first) to come back: "full jitter",
/// a uniform draw between zero and `BACKOFF_BASE × 2^attempt`, capped at `BACKOFF_MAX`.
pub fn backoff(attempt: u32, rng: &mut Rng) -> Duration {
    let cap = BACKOFF_BASE
        .saturating_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
        .min(BACKOFF_MAX);
    let nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rng.next_u64() % (nanos + 1))
}

/// A resumed connection's first frame.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Header {
    pub epoch: String,
    pub offset: u64,
    pub recovered: bool,
}

/// Parses and checks the header frame: JSON with `epoch` (1 to 64 characters of
/// `A-Za-z0-9_-`, as it must go back into a URL unescaped), `offset` (below 2^53) and
/// `recovered`; other fields are ignored.
pub fn parse_header(data: &[u8]) -> Result<Header, String> {
    let shown = || String::from_utf8_lossy(&data[..data.len().min(120)]).into_owned();
    let header: Header = serde_json::from_slice(data).map_err(|e| {
        format!(
            "the first frame is not a resume header ({e}): {:?}",
            shown()
        )
    })?;
    let valid = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if header.epoch.is_empty() || header.epoch.len() > MAX_EPOCH || !header.epoch.chars().all(valid)
    {
        return Err(format!(
            "the resume header's epoch is not 1 to {MAX_EPOCH} characters of A-Z, a-z, 0-9, _ \
             and -: {:?}",
            shown()
        ));
    }
    if header.offset > MAX_OFFSET {
        return Err(format!(
            "the resume header's offset is over 2^53 - 1: {:?}",
            shown()
        ));
    }
    Ok(header)
}

/// The request target `path` (which may have a query already) with the `resume` parameter:
/// `?resume` for a newcomer, `?resume=EPOCH:OFFSET` to continue after a position.
pub fn resume_path(path: &str, position: Option<(&str, u64)>) -> String {
    let joiner = if path.contains('?') { '&' } else { '?' };
    match position {
        None => format!("{path}{joiner}resume"),
        Some((epoch, offset)) => format!("{path}{joiner}resume={epoch}:{offset}"),
    }
}

/// True when the request target `path` already has a `resume` query parameter (which the
/// server refuses to see twice).
pub fn has_resume_param(path: &str) -> bool {
    path.split_once('?').is_some_and(|(_, query)| {
        query
            .split('&')
            .any(|pair| pair.split_once('=').map_or(pair, |(name, _)| name) == "resume")
    })
}

/// Why a listener's connection ended, as far as coming back is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// A close frame with this code (or none).
    Closed(Option<u16>),
    /// The TCP connection ended or failed without a close frame.
    Dropped,
    /// The connection never opened: the reconnect failed (refused, timed out, a refused
    /// handshake).
    NotOpened,
}

/// What a listener is doing, connection-wise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Open (or opening for the first time, as the run's connect phase does it).
    Connected,
    /// It closed its connection on purpose (`--leave-after`) and waits for the close to end.
    Leaving,
    /// Away on purpose: back once the sender has sent everything and the room has it all.
    AwayUntilSent,
    /// Away after its connection ended: back at this instant.
    AwayUntil(Instant),
    /// Connecting again.
    Reconnecting,
}

/// Counts over the listeners of one worker, summed into the report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Listeners that left on purpose (`--leave-after`).
    pub left: u64,
    /// Connections opened again (each gets a header).
    pub reconnects: u64,
    /// Attempts to come back that did not open (refused, timed out, refused handshake).
    pub failed_attempts: u64,
    /// Headers of reconnections that said recovered: true.
    pub recovered: u64,
    /// Headers of reconnections that said recovered: false.
    pub not_recovered: u64,
    /// Room messages a reconnection that did not recover skipped over (the header's offset
    /// past the position asked for, in the same epoch): never to be received.
    pub skipped: u64,
    /// Counted messages received on a resumed connection that the sender had sent before it
    /// opened: what the room's history gave back.
    pub caught_up: u64,
    /// Breaches of the contract: a first frame that is no header, a recovered header that
    /// does not name the position asked for, a counted message at the wrong offset.
    pub offset_errors: u64,
    /// Connections the server closed, by code.
    pub closed_1008: u64,
    pub closed_1012: u64,
    pub closed_1001: u64,
    pub closed_other: u64,
    /// Connections that ended without a close frame.
    pub dropped: u64,
}

impl Counts {
    pub fn merge(&mut self, o: &Counts) {
        self.left += o.left;
        self.reconnects += o.reconnects;
        self.failed_attempts += o.failed_attempts;
        self.recovered += o.recovered;
        self.not_recovered += o.not_recovered;
        self.skipped += o.skipped;
        self.caught_up += o.caught_up;
        self.offset_errors += o.offset_errors;
        self.closed_1008 += o.closed_1008;
        self.closed_1012 += o.closed_1012;
        self.closed_1001 += o.closed_1001;
        self.closed_other += o.closed_other;
        self.dropped += o.dropped;
    }
}

/// A reconnection that has something to catch up: the sender had sent `until` counted
/// messages when it started, and the listener had fewer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CatchUp {
    until: u64,
    started: Instant,
}

/// One listener's position in its room, and its comings and goings.
#[derive(Debug, Clone)]
pub struct Resumer {
    /// The room's epoch, once a header named it.
    epoch: Option<String>,
    /// The offset of the last room message received (or of the header's position).
    offset: u64,
    /// This connection's first frame, the header, has not arrived yet.
    awaiting_header: bool,
    /// The position this connection asked for; `None`: it joined as a newcomer.
    asked: Option<(String, u64)>,
    /// Offset − sequence number of the counted messages in this epoch.
    numbering: Option<i64>,
    pub state: State,
    /// Attempts to come back since the last header: the backoff's exponent.
    attempts: u32,
    /// Whether it left on purpose already (it does so once).
    left: bool,
    /// This connection is a reconnection.
    resumed: bool,
    /// Counted messages the sender had sent when this (resumed) connection opened.
    sent_at_open: u64,
    catch_up: Option<CatchUp>,
}

/// What a counted message means to the resume bookkeeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counted {
    /// The sender had sent it before this resumed connection opened.
    pub caught_up: bool,
    /// It completed a catch-up that took this long, from the start of the reconnection.
    pub catch_up: Option<Duration>,
}

impl Default for Resumer {
    fn default() -> Self {
        Resumer::new()
    }
}

impl Resumer {
    /// A listener about to connect as a newcomer.
    pub fn new() -> Resumer {
        Resumer {
            epoch: None,
            offset: 0,
            awaiting_header: true,
            asked: None,
            numbering: None,
            state: State::Connected,
            attempts: 0,
            left: false,
            resumed: false,
            sent_at_open: 0,
            catch_up: None,
        }
    }

    /// The request target of its next connection: `base` with `?resume`, and its position
    /// once it has one.
    pub fn path(&self, base: &str) -> String {
        let position = self.epoch.as_deref().map(|epoch| (epoch, self.offset));
        resume_path(base, position)
    }

    /// True while its connection's first frame must be the header.
    pub fn awaiting_header(&self) -> bool {
        self.awaiting_header
    }

    /// True unless its connection is open (or opening for the first time).
    pub fn is_away(&self) -> bool {
        !matches!(self.state, State::Connected | State::Leaving)
    }

    /// Takes the header (the first frame of a connection). An error is a breach of the
    /// contract, already counted.
    pub fn on_header(&mut self, data: &[u8], counts: &mut Counts) -> Result<(), String> {
        self.awaiting_header = false;
        let header = match parse_header(data) {
            Ok(header) => header,
            Err(why) => {
                counts.offset_errors += 1;
                return Err(why);
            }
        };
        let mut breach = None;
        match &self.asked {
            Some((epoch, offset)) if header.recovered => {
                counts.recovered += 1;
                if header.epoch != *epoch || header.offset != *offset {
                    breach = Some(format!(
                        "asked to resume after {epoch}:{offset}, and the header says recovered \
                         at {}:{}",
                        header.epoch, header.offset
                    ));
                }
            }
            Some((epoch, offset)) => {
                counts.not_recovered += 1;
                if header.epoch == *epoch && header.offset > *offset {
                    counts.skipped += header.offset - offset;
                }
            }
            None if header.recovered => {
                breach =
                    Some("a newcomer's header says recovered, which only a position can be".into());
            }
            None => {}
        }
        if self.epoch.as_deref() != Some(header.epoch.as_str()) {
            // A new numbering: offsets and sequence numbers meet anew.
            self.numbering = None;
        }
        self.epoch = Some(header.epoch);
        self.offset = header.offset;
        self.attempts = 0;
        if breach.is_some() {
            counts.offset_errors += 1;
        }
        breach.map_or(Ok(()), Err)
    }

    /// Notes one room message after the header (any data message): its offset.
    pub fn next_offset(&mut self) -> u64 {
        self.offset += 1;
        self.offset
    }

    /// Notes counted message `seq`, received at the current offset, at `now`. An error says
    /// where the numbering broke (already counted).
    pub fn on_counted(
        &mut self,
        seq: u64,
        now: Instant,
        counts: &mut Counts,
    ) -> (Counted, Result<(), String>) {
        let mut out = Counted::default();
        if self.resumed && seq < self.sent_at_open {
            out.caught_up = true;
            counts.caught_up += 1;
        }
        if let Some(c) = self.catch_up
            && seq + 1 >= c.until
        {
            out.catch_up = Some(now.saturating_duration_since(c.started));
            self.catch_up = None;
        }
        let distance = self.offset as i64 - seq as i64;
        let result = match self.numbering {
            None => {
                self.numbering = Some(distance);
                Ok(())
            }
            Some(d) if d == distance => Ok(()),
            Some(d) => {
                counts.offset_errors += 1;
                // Report it once per shift, then follow the new numbering.
                self.numbering = Some(distance);
                Err(format!(
                    "message {seq} came at offset {}, where the messages before it put it at {}",
                    self.offset,
                    seq as i64 + d
                ))
            }
        };
        (out, result)
    }

    /// Whether to leave now, after `have` counted messages, with `--leave-after N`; leaving
    /// happens once.
    pub fn should_leave(&mut self, leave_after: Option<u64>, have: u64) -> bool {
        if self.left || self.state != State::Connected || leave_after.is_none_or(|n| have < n) {
            return false;
        }
        self.left = true;
        self.state = State::Leaving;
        true
    }

    /// Its connection ended at `now`: it will come back, after a pause, or, when it left on
    /// purpose, once the sender has sent everything. Counts the ending.
    pub fn on_end(&mut self, ending: Ending, now: Instant, rng: &mut Rng, counts: &mut Counts) {
        self.catch_up = None;
        if self.state == State::Leaving {
            counts.left += 1;
            self.state = State::AwayUntilSent;
            return;
        }
        match ending {
            Ending::Closed(Some(1008)) => counts.closed_1008 += 1,
            Ending::Closed(Some(1012)) => counts.closed_1012 += 1,
            Ending::Closed(Some(1001)) => counts.closed_1001 += 1,
            Ending::Closed(_) => counts.closed_other += 1,
            Ending::Dropped => counts.dropped += 1,
            Ending::NotOpened => counts.failed_attempts += 1,
        }
        let pause = backoff(self.attempts, rng);
        self.attempts = self.attempts.saturating_add(1);
        self.state = State::AwayUntil(now + pause);
    }

    /// When it is due back: `Some(ZERO)` now, `Some(d)` in `d`, `None` when it is not away on
    /// a timer (connected, connecting, or waiting for the sender, which `sent_all` says).
    pub fn due_in(&self, now: Instant, sent_all: bool) -> Option<Duration> {
        match self.state {
            State::AwayUntil(at) => Some(at.saturating_duration_since(now)),
            State::AwayUntilSent if sent_all => Some(Duration::ZERO),
            _ => None,
        }
    }

    /// It starts connecting again at `now`, when the sender has sent `sent` counted messages
    /// and it had `had` of them in a row: what it asks for is its position now.
    pub fn reconnecting(&mut self, now: Instant, sent: u64, had: u64) {
        self.state = State::Reconnecting;
        self.awaiting_header = true;
        self.resumed = true;
        self.asked = self.epoch.clone().map(|epoch| (epoch, self.offset));
        self.catch_up = (sent > had).then_some(CatchUp {
            until: sent,
            started: now,
        });
    }

    /// Its new connection opened; the sender had sent `sent` counted messages by then.
    pub fn reopened(&mut self, sent: u64, counts: &mut Counts) {
        self.state = State::Connected;
        self.sent_at_open = sent;
        counts.reconnects += 1;
    }
}

/// The `resume_*` fields of the fan-out report (flattened beside its own).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ResumeReport {
    /// With --leave-after: after how many counted messages each listener left.
    pub resume_leave_after: Option<u64>,
    pub resume_left: u64,
    pub resume_reconnects: u64,
    pub resume_failed_attempts: u64,
    pub resume_recovered: u64,
    pub resume_not_recovered: u64,
    pub resume_caught_up: u64,
    pub resume_skipped: u64,
    /// Counted messages never received, for all the coming back: the report's `missing`, and
    /// the slow listener's.
    pub resume_lost: u64,
    pub resume_offset_errors: u64,
    pub resume_closed_1008: u64,
    pub resume_closed_1012: u64,
    pub resume_closed_1001: u64,
    pub resume_closed_other: u64,
    pub resume_dropped: u64,
    /// Reconnections that had something to catch up and got it all: how long from the start
    /// of the reconnection to the last message the sender had sent when it started.
    pub resume_catch_up_count: usize,
    pub resume_catch_up_p50_us: f64,
    pub resume_catch_up_max_us: f64,
}

impl ResumeReport {
    pub fn new(
        counts: &Counts,
        leave_after: Option<u64>,
        lost: u64,
        catch_ups_ns: &mut [i64],
    ) -> ResumeReport {
        let summary = crate::stats::summarize_ns(catch_ups_ns);
        ResumeReport {
            resume_leave_after: leave_after,
            resume_left: counts.left,
            resume_reconnects: counts.reconnects,
            resume_failed_attempts: counts.failed_attempts,
            resume_recovered: counts.recovered,
            resume_not_recovered: counts.not_recovered,
            resume_caught_up: counts.caught_up,
            resume_skipped: counts.skipped,
            resume_lost: lost,
            resume_offset_errors: counts.offset_errors,
            resume_closed_1008: counts.closed_1008,
            resume_closed_1012: counts.closed_1012,
            resume_closed_1001: counts.closed_1001,
            resume_closed_other: counts.closed_other,
            resume_dropped: counts.dropped,
            resume_catch_up_count: summary.count,
            resume_catch_up_p50_us: summary.p50_us,
            resume_catch_up_max_us: summary.max_us,
        }
    }

    /// Lines for people.
    pub fn lines(&self) -> Vec<(&'static str, String)> {
        let mut lines = vec![
            (
                "resume",
                format!(
                    "{} reconnect(s): {} recovered, {} not recovered, {} attempt(s) that did \
                     not open{}",
                    self.resume_reconnects,
                    self.resume_recovered,
                    self.resume_not_recovered,
                    self.resume_failed_attempts,
                    self.resume_leave_after.map_or(String::new(), |n| format!(
                        "; {} left on purpose after {n}",
                        self.resume_left
                    )),
                ),
            ),
            (
                "closes",
                format!(
                    "1008 (too slow) {}, 1012 (renumbered) {}, 1001 (going away) {}, other {}, \
                     dropped {}",
                    self.resume_closed_1008,
                    self.resume_closed_1012,
                    self.resume_closed_1001,
                    self.resume_closed_other,
                    self.resume_dropped
                ),
            ),
            (
                "recovered",
                format!(
                    "{} message(s) caught up after coming back; {} lost (never received), {} \
                     skipped at a resume that did not recover; {} offset error(s)",
                    self.resume_caught_up,
                    self.resume_lost,
                    self.resume_skipped,
                    self.resume_offset_errors
                ),
            ),
        ];
        if self.resume_catch_up_count > 0 {
            lines.push((
                "catch-up",
                format!(
                    "p50 {}  max {}  ({} reconnection(s), from reconnecting to the last \
                     message sent before it)",
                    crate::stats::human_us(self.resume_catch_up_p50_us),
                    crate::stats::human_us(self.resume_catch_up_max_us),
                    self.resume_catch_up_count
                ),
            ));
        }
        lines
    }

    pub fn passed(&self) -> bool {
        self.resume_offset_errors == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_parse_and_bad_ones_say_why() {
        assert_eq!(
            parse_header(br#"{"epoch":"a1b2-_Z","offset":17,"recovered":true}"#),
            Ok(Header {
                epoch: "a1b2-_Z".into(),
                offset: 17,
                recovered: true
            })
        );
        // Other fields, another order, white space: still a header.
        assert_eq!(
            parse_header(br#" { "recovered" : false, "offset": 0, "epoch": "e", "x": [1] } "#)
                .unwrap()
                .offset,
            0
        );
        for (bad, why) in [
            (&br#"hello from the server"#[..], "not a resume header"),
            (br#"{"epoch":"e","offset":1}"#, "recovered"),
            (br#"{"epoch":"e","offset":-1,"recovered":false}"#, "not a"),
            (br#"{"epoch":"e","offset":"1","recovered":false}"#, "not a"),
            (br#"{"epoch":"","offset":1,"recovered":false}"#, "epoch"),
            (br#"{"epoch":"a b","offset":1,"recovered":false}"#, "epoch"),
            (br#"{"epoch":"a&b","offset":1,"recovered":false}"#, "epoch"),
            (
                br#"{"epoch":"e","offset":9007199254740992,"recovered":false}"#,
                "2^53",
            ),
        ] {
            let error = parse_header(bad).unwrap_err();
            assert!(error.contains(why), "{bad:?}: {error}");
        }
        let long = format!(
            r#"{{"epoch":"{}","offset":1,"recovered":false}}"#,
            "x".repeat(65)
        );
        assert!(parse_header(long.as_bytes()).is_err());
    }

    #[test]
    fn paths_carry_the_position() {
        assert_eq!(resume_path("/", None), "/?resume");
        assert_eq!(resume_path("/room", Some(("ab", 12))), "/room?resume=ab:12");
        assert_eq!(resume_path("/r?t=1", Some(("ab", 0))), "/r?t=1&resume=ab:0");
        assert!(has_resume_param("/r?t=1&resume=ab:0"));
        assert!(has_resume_param("/?resume"));
        assert!(!has_resume_param("/resume?resumed=1"));
        assert!(!has_resume_param("/resume"));
    }

    #[test]
    fn the_backoff_is_full_jitter_under_a_growing_cap() {
        let mut rng = Rng::with_seed(7);
        for attempt in 0..40 {
            let cap = BACKOFF_BASE
                .saturating_mul(1 << attempt.min(31))
                .min(BACKOFF_MAX);
            let draws: Vec<Duration> = (0..200).map(|_| backoff(attempt, &mut rng)).collect();
            assert!(draws.iter().all(|d| *d <= cap), "attempt {attempt}");
            // Spread over the whole range, not bunched at the cap.
            assert!(draws.iter().any(|d| *d < cap / 4), "attempt {attempt}");
            assert!(draws.iter().any(|d| *d > cap * 3 / 4), "attempt {attempt}");
        }
        assert!(BACKOFF_BASE * 64 > BACKOFF_MAX, "the cap is reached");
    }

    const HEADER_E5: &[u8] = br#"{"epoch":"e","offset":5,"recovered":false}"#;

    /// A listener that joined as a newcomer at offset 5 and got sync messages at 6 and 7,
    /// then counted messages 0..n at offsets 8...
    fn listener_with(n: u64, counts: &mut Counts) -> Resumer {
        let mut r = Resumer::new();
        assert_eq!(r.path("/room"), "/room?resume");
        r.on_header(HEADER_E5, counts).unwrap();
        r.next_offset();
        r.next_offset();
        let now = Instant::now();
        for seq in 0..n {
            r.next_offset();
            let (counted, ok) = r.on_counted(seq, now, counts);
            assert_eq!((counted, ok), (Counted::default(), Ok(())));
        }
        r
    }

    #[test]
    fn a_recovered_resume_asks_for_its_position_and_continues_right_after_it() {
        let mut counts = Counts::default();
        let mut r = listener_with(3, &mut counts);
        // Messages 0, 1 and 2 came at offsets 8, 9 and 10.
        assert_eq!(r.path("/room"), "/room?resume=e:10");
        let t0 = Instant::now();
        let mut rng = Rng::with_seed(1);
        r.on_end(Ending::Closed(Some(1008)), t0, &mut rng, &mut counts);
        let due = r.due_in(t0, false).unwrap();
        assert!(due <= BACKOFF_BASE);
        assert!(r.is_away());
        // Back: the sender has sent 10 by now, the listener had 3.
        r.reconnecting(t0, 10, 3);
        assert_eq!(r.due_in(t0, true), None);
        r.reopened(12, &mut counts);
        assert!(r.awaiting_header());
        r.on_header(
            br#"{"epoch":"e","offset":10,"recovered":true}"#,
            &mut counts,
        )
        .unwrap();
        let mut finished = None;
        for seq in 3..13 {
            r.next_offset();
            let (counted, ok) = r.on_counted(seq, t0 + Duration::from_millis(seq), &mut counts);
            ok.unwrap();
            assert_eq!(counted.caught_up, seq < 12, "{seq}");
            if let Some(took) = counted.catch_up {
                finished = Some((seq, took));
            }
        }
        // The catch-up ends with message 9, the last sent when it started back.
        assert_eq!(finished, Some((9, Duration::from_millis(9))));
        assert_eq!(
            counts,
            Counts {
                reconnects: 1,
                recovered: 1,
                caught_up: 9,
                closed_1008: 1,
                ..Counts::default()
            }
        );
    }

    #[test]
    fn a_resume_that_did_not_recover_counts_what_it_skipped() {
        let mut counts = Counts::default();
        let mut r = listener_with(2, &mut counts);
        let now = Instant::now();
        r.on_end(Ending::Dropped, now, &mut Rng::with_seed(2), &mut counts);
        r.reconnecting(now, 100, 2);
        r.reopened(100, &mut counts);
        // At offset 9; the room kept only what follows 50.
        r.on_header(
            br#"{"epoch":"e","offset":50,"recovered":false}"#,
            &mut counts,
        )
        .unwrap();
        assert_eq!((counts.not_recovered, counts.skipped), (1, 41));
        // Messages 2 to 42 (offsets 10 to 50) are gone; the stream continues in the same
        // numbering, message 43 at offset 51.
        r.next_offset();
        r.on_counted(43, now, &mut counts).1.unwrap();
        assert_eq!(counts.offset_errors, 0);
    }

    #[test]
    fn a_new_epoch_is_a_new_numbering() {
        let mut counts = Counts::default();
        let mut r = listener_with(2, &mut counts);
        let now = Instant::now();
        r.on_end(
            Ending::Closed(Some(1012)),
            now,
            &mut Rng::with_seed(3),
            &mut counts,
        );
        r.reconnecting(now, 2, 2);
        assert_eq!(r.asked, Some(("e".to_string(), 9)));
        r.reopened(2, &mut counts);
        r.on_header(
            br#"{"epoch":"f","offset":0,"recovered":false}"#,
            &mut counts,
        )
        .unwrap();
        assert_eq!(counts.skipped, 0, "another epoch's offsets do not compare");
        r.next_offset();
        r.on_counted(2, now, &mut counts).1.unwrap();
        assert_eq!(r.path("/"), "/?resume=f:1");
        assert_eq!((counts.closed_1012, counts.offset_errors), (1, 0));
    }

    #[test]
    fn breaches_of_the_contract_are_counted() {
        // A message missing from the stream shifts the numbering.
        let mut counts = Counts::default();
        let mut r = listener_with(2, &mut counts);
        let now = Instant::now();
        r.next_offset();
        let (_, result) = r.on_counted(3, now, &mut counts);
        assert!(result.unwrap_err().contains("message 3 came at offset 10"));
        // A message twice, the other way.
        r.next_offset();
        assert!(r.on_counted(3, now, &mut counts).1.is_err());
        assert_eq!(counts.offset_errors, 2);

        // A recovered header at another position than asked.
        let mut counts = Counts::default();
        let mut r = listener_with(1, &mut counts);
        r.on_end(Ending::Dropped, now, &mut Rng::with_seed(4), &mut counts);
        r.reconnecting(now, 1, 1);
        r.reopened(1, &mut counts);
        let error = r
            .on_header(br#"{"epoch":"e","offset":7,"recovered":true}"#, &mut counts)
            .unwrap_err();
        assert!(error.contains("after e:8"), "{error}");
        // A newcomer told it recovered; a first frame that is no header.
        let mut fresh = Resumer::new();
        assert!(
            fresh
                .on_header(br#"{"epoch":"e","offset":7,"recovered":true}"#, &mut counts)
                .is_err()
        );
        assert!(Resumer::new().on_header(b"hello", &mut counts).is_err());
        assert_eq!(counts.offset_errors, 3);
    }

    #[test]
    fn leaving_on_purpose_waits_for_the_sender_then_catches_up() {
        let mut counts = Counts::default();
        let mut r = listener_with(1, &mut counts);
        assert!(!r.should_leave(None, 1));
        assert!(!r.should_leave(Some(2), 1));
        assert!(r.should_leave(Some(1), 1));
        assert!(!r.should_leave(Some(1), 2), "once");
        assert!(!r.is_away(), "still closing");
        let now = Instant::now();
        r.on_end(
            Ending::Closed(Some(1000)),
            now,
            &mut Rng::with_seed(6),
            &mut counts,
        );
        assert!(r.is_away());
        assert_eq!(r.due_in(now, false), None);
        assert_eq!(r.due_in(now, true), Some(Duration::ZERO));
        r.reconnecting(now, 10_001, 1);
        r.reopened(10_001, &mut counts);
        r.on_header(br#"{"epoch":"e","offset":8,"recovered":true}"#, &mut counts)
            .unwrap();
        let mut took = None;
        for seq in 1..10_001 {
            r.next_offset();
            let (counted, ok) = r.on_counted(seq, now, &mut counts);
            ok.unwrap();
            took = took.or(counted.catch_up.map(|_| seq));
        }
        assert_eq!(took, Some(10_000));
        assert_eq!(
            (counts.left, counts.recovered, counts.caught_up),
            (1, 1, 10_000)
        );
        assert_eq!(counts.closed_other, 0, "its own close is not the server's");
    }

    #[test]
    fn a_failed_attempt_backs_off_further() {
        let mut counts = Counts::default();
        let mut r = listener_with(0, &mut counts);
        let now = Instant::now();
        let mut rng = Rng::with_seed(5);
        let mut caps = Vec::new();
        r.on_end(Ending::Dropped, now, &mut rng, &mut counts);
        for _ in 0..8 {
            caps.push(r.attempts);
            r.reconnecting(now, 0, 0);
            r.on_end(Ending::NotOpened, now, &mut rng, &mut counts);
        }
        assert_eq!(caps, [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(counts.failed_attempts, 8);
        // A header resets the exponent.
        r.reconnecting(now, 0, 0);
        r.reopened(0, &mut counts);
        r.on_header(br#"{"epoch":"e","offset":7,"recovered":true}"#, &mut counts)
            .unwrap();
        assert_eq!(r.attempts, 0);
    }
}
