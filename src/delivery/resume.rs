//! Resuming by position: a room's numbering, where a client asks to continue, and the first
//! frame it gets.
//!
//! Every broadcast in a room gets an *offset*: consecutive integers, one per message, in the
//! room's one order, starting at 1. The offsets live in an *epoch*, a short random name that
//! changes whenever the room's numbering starts again (the room was forgotten, the server
//! restarted, a cluster's link to Redis went down or came back). A client that knows the epoch
//! and the last offset it received can then tell "nothing happened" from "I cannot know".
//!
//! The wire format, for any client (a browser, websocat, a shell script):
//!
//! - the client connects with the query parameter `resume`: `?resume` (or `?resume=`) as a
//!   newcomer, or `?resume=EPOCH:OFFSET` to continue after the message `OFFSET`;
//! - its first frame is one JSON text frame, `{"epoch":"…","offset":N,"recovered":true|false}`:
//!   `N` is the offset of the message just before the ones that follow, and `recovered` is
//!   true only when a position was given and what follows continues right after it;
//! - then every message it receives is one room message, in offset order, none missing and
//!   none twice, with no envelope: it counts the offsets itself.
//!
//! This module is the arithmetic; `hub.rs` keeps each room's numbering under the room's lock,
//! which is what makes "none missing, none twice" hold.

use std::fmt;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::frame;

/// The longest epoch, in characters: long enough for any scheme a cluster may use, short
/// enough to sit in every reconnect URL and every channel message.
pub(crate) const MAX_EPOCH: usize = 64;

/// Offsets stay below 2^53 so that JavaScript's numbers hold them exactly.
pub(crate) const MAX_OFFSET: u64 = (1 << 53) - 1;

/// A room's epoch: 1 to [`MAX_EPOCH`] characters of `[A-Za-z0-9_-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Epoch(Arc<str>);

impl Epoch {
    /// A new epoch, different from every other this process or another made: 64 random bits
    /// (std's per-process random keys, mixed with the time, the process id and a count), as
    /// 16 hex digits.
    pub(crate) fn fresh() -> Epoch {
        static MADE: AtomicU64 = AtomicU64::new(0);
        let mut hasher = RandomState::new().build_hasher();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos());
        hasher.write_u128(nanos);
        hasher.write_u32(std::process::id());
        hasher.write_u64(MADE.fetch_add(1, Ordering::Relaxed));
        Epoch(format!("{:016x}", hasher.finish()).into())
    }

    /// An epoch as a client or Redis wrote it, checked.
    pub(crate) fn parse(text: &str) -> Result<Epoch, String> {
        let valid = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
        if text.is_empty() || text.len() > MAX_EPOCH || !text.chars().all(valid) {
            return Err(format!(
                "the epoch must be 1 to {MAX_EPOCH} characters of A-Z, a-z, 0-9, _ and -"
            ));
        }
        Ok(Epoch(text.into()))
    }

    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a client asks to continue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Resume {
    /// `?resume`: a newcomer, who gets the room's history first, as any newcomer does.
    Newcomer,
    /// `?resume=EPOCH:OFFSET`: after the message `OFFSET` of `EPOCH`.
    After(Epoch, u64),
}

impl Resume {
    /// The value of the `resume` query parameter, percent-decoded.
    pub(crate) fn parse(value: &str) -> Result<Resume, String> {
        if value.is_empty() {
            return Ok(Resume::Newcomer);
        }
        let malformed = |why: String| {
            format!(
                "resume={value:?} is not a position: give EPOCH:OFFSET, as the first frame of \
                 a resumed connection names them, or nothing to join as a newcomer; {why}"
            )
        };
        let Some((epoch, offset)) = value.rsplit_once(':') else {
            return Err(malformed("there is no ':'".into()));
        };
        let epoch = Epoch::parse(epoch).map_err(malformed)?;
        if offset.is_empty() || !offset.bytes().all(|b| b.is_ascii_digit()) {
            return Err(malformed("the offset must be a decimal number".into()));
        }
        let offset = match offset.parse::<u64>() {
            Ok(offset) if offset <= MAX_OFFSET => offset,
            _ => {
                return Err(malformed(format!(
                    "the offset is over 2^53 - 1 ({MAX_OFFSET})"
                )));
            }
        };
        Ok(Resume::After(epoch, offset))
    }
}

/// Where a resume client starts in what a room has kept: the `kept` messages before and at
/// `newest`, in `epoch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Start {
    /// How many of the kept messages, oldest first, it does not get.
    pub(crate) skip: usize,
    /// The offset just before the first message it gets: the header's `offset`.
    pub(crate) offset: u64,
    /// Whether what follows continues right after the position it gave.
    pub(crate) recovered: bool,
    /// Its position is ahead of the newest message: in a cluster, this instance may not have
    /// heard of it yet.
    pub(crate) ahead: bool,
}

impl Start {
    /// Where `resume` starts, in a room whose numbering is `epoch` and `newest`, keeping the
    /// last `kept` messages.
    ///
    /// - A newcomer gets everything kept.
    /// - A position in this epoch, no older than the message before the oldest kept, gets
    ///   what follows it: recovered.
    /// - A position from another epoch, or older than that, gets everything kept: not
    ///   recovered, never a silent gap.
    /// - A position ahead of the newest gets nothing kept, and continues live: not recovered.
    pub(crate) fn of(resume: &Resume, epoch: &Epoch, newest: u64, kept: usize) -> Start {
        let everything = Start {
            skip: 0,
            offset: newest.saturating_sub(kept as u64),
            recovered: false,
            ahead: false,
        };
        let Resume::After(asked, after) = resume else {
            return everything;
        };
        if asked != epoch {
            return everything;
        }
        if *after > newest {
            return Start {
                skip: kept,
                offset: newest,
                recovered: false,
                ahead: true,
            };
        }
        let missed = newest - after;
        if missed > kept as u64 {
            return everything;
        }
        Start {
            skip: kept - missed as usize,
            offset: *after,
            recovered: true,
            ahead: false,
        }
    }

    /// The first frame of a resumed connection.
    pub(crate) fn header(&self, epoch: &Epoch) -> Vec<u8> {
        // The epoch is [A-Za-z0-9_-] only: nothing in it needs escaping.
        frame::text(&format!(
            "{{\"epoch\":\"{epoch}\",\"offset\":{},\"recovered\":{}}}",
            self.offset, self.recovered
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch(text: &str) -> Epoch {
        Epoch::parse(text).unwrap()
    }

    #[test]
    fn positions_parse_and_bad_ones_say_what_is_wrong() {
        assert_eq!(Resume::parse("").unwrap(), Resume::Newcomer);
        assert_eq!(
            Resume::parse("a_B-9:17").unwrap(),
            Resume::After(epoch("a_B-9"), 17)
        );
        assert_eq!(Resume::parse("e:0").unwrap(), Resume::After(epoch("e"), 0));
        for (bad, why) in [
            ("17", "no ':'"),
            (":17", "the epoch"),
            ("e:", "decimal"),
            ("e:-1", "decimal"),
            ("e:+1", "decimal"),
            ("e:1x", "decimal"),
            ("e.x:1", "the epoch"),
            ("e:9007199254740992", "2^53"),
        ] {
            let error = Resume::parse(bad).unwrap_err();
            assert!(error.contains(why), "{bad}: {error}");
        }
        assert!(Resume::parse(&format!("{}:1", "x".repeat(65))).is_err());
        assert!(Resume::parse(&format!("{}:1", "x".repeat(64))).is_ok());
    }

    #[test]
    fn fresh_epochs_are_valid_and_differ() {
        let (a, b) = (Epoch::fresh(), Epoch::fresh());
        assert_ne!(a, b);
        assert_eq!(Epoch::parse(a.as_str()).unwrap(), a);
    }

    #[test]
    fn a_position_is_recovered_only_when_what_follows_continues_right_after_it() {
        let e = epoch("e");
        // Messages 8, 9 and 10 are kept.
        let at = |resume: Resume| Start::of(&resume, &e, 10, 3);
        let start = |skip, offset, recovered, ahead| Start {
            skip,
            offset,
            recovered,
            ahead,
        };
        assert_eq!(at(Resume::Newcomer), start(0, 7, false, false));
        assert_eq!(at(Resume::After(e.clone(), 10)), start(3, 10, true, false));
        assert_eq!(at(Resume::After(e.clone(), 8)), start(1, 8, true, false));
        assert_eq!(at(Resume::After(e.clone(), 7)), start(0, 7, true, false));
        assert_eq!(at(Resume::After(e.clone(), 6)), start(0, 7, false, false));
        assert_eq!(at(Resume::After(e.clone(), 11)), start(3, 10, false, true));
        assert_eq!(at(Resume::After(epoch("f"), 9)), start(0, 7, false, false));
        // An empty room says 0.
        assert_eq!(Start::of(&Resume::Newcomer, &e, 0, 0).offset, 0);
        assert_eq!(
            Start::of(&Resume::After(e.clone(), 0), &e, 0, 0),
            start(0, 0, true, false)
        );
    }

    #[test]
    fn the_header_is_one_json_text_frame() {
        let header = Start::of(&Resume::Newcomer, &epoch("ab"), 5, 2).header(&epoch("ab"));
        assert_eq!(header[0], 0x81);
        assert_eq!(
            &header[2..],
            br#"{"epoch":"ab","offset":3,"recovered":false}"#
        );
    }
}
