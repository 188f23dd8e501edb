//! What travels on the Redis channel: one broadcast per Redis message, as the very WebSocket
//! frame every client of every instance receives.
//!
//! # The wire format
//!
//! Each message published on the channel is one complete, unmasked RFC 6455 data frame, as a
//! server sends it (section 5.2):
//!
//! - byte 0: `0x81` for a text message, `0x82` for a binary one (FIN set, RSV bits clear,
//!   opcode 1 or 2);
//! - byte 1: the mask bit clear, and the payload length in its shortest form: the length
//!   itself below 126; 126 and a 16-bit big-endian length up to 65,535; 127 and a 64-bit one
//!   above that;
//! - the payload, exactly as long as the header says, and nothing after it. A text payload is
//!   UTF-8.
//!
//! So `"hi"` is the five bytes `81 02 68 69`, and the binary bytes `01 02 03` are
//! `82 03 01 02 03`. Text and binary keep their kind and every byte; and since this is
//! already the frame a client receives, an instance only wraps the bytes it got from Redis in
//! its memory budget and queues them: a broadcast is encoded once in the whole cluster, by the
//! instance its sender is connected to.
//!
//! That is a broadcast to the lobby, the room whose name is empty. A broadcast to another room
//! has the room's name before the frame:
//!
//! - byte 0: `0x00` (never the first byte of a frame a server sends, whose FIN bit is set);
//! - bytes 1 and 2: the name's length in bytes, big-endian, 1 to 128 (`MAX_ROOM_NAME`);
//! - the name, UTF-8 with no control character (the URL path, percent-decoded, without its
//!   leading `/`);
//! - then the frame, as above.
//!
//! So `"hi"` to the room `chat` is `00 00 04 63 68 61 74 81 02 68 69`. Every room travels on
//! the one channel, so a cluster costs Redis one subscription per instance however many
//! rooms there are.
//!
//! With `--history`, one more kind of message travels on the channel: a *history mark*,
//! which an instance publishes, in one Redis script with reading a room's history, when a
//! client joins that room (see `cluster/mod.rs`):
//!
//! - byte 0: `0x01`;
//! - 8 bytes: the instance's id, and 8 bytes: the joining connection's id, big-endian;
//! - the room's name as above: its length in 2 bytes, then the name (empty for the lobby).
//!
//! Other instances pass over marks that are not theirs.
//!
//! With `--history`, every broadcast is also *numbered* (see `delivery/resume.rs`): the Redis
//! script that keeps it in its room's history gives it the room's next offset, in the room's
//! epoch, and publishes it as:
//!
//! - byte 0: `0x02`;
//! - 1 byte: the epoch's length, 1 to 64, then the epoch (`[A-Za-z0-9_-]`);
//! - 1 byte: the offset's length, 1 to 16, then the offset in decimal ASCII digits;
//! - then the broadcast as above (the room's name if it is not the lobby, and the frame).
//!
//! So `"hi"` to the lobby as offset 12 of epoch `e7` is `02 02 65 37 02 31 32 81 02 68 69`.
//! The history list in Redis keeps the same bytes, so a history read back carries its
//! numbering too.
//!
//! Anything else on the channel (another program publishing there, a payload over this
//! instance's `--max-message-size`) is refused by [`check`]: not delivered, logged, counted.

use std::fmt;

use crate::frame::{Header, OPCODE_BINARY, OPCODE_TEXT};
use crate::http::room::MAX_ROOM_NAME;

/// The first byte of a broadcast to a room other than the lobby.
const ROOM_MARK: u8 = 0x00;

/// The first byte of a history mark.
const HISTORY_MARK: u8 = 0x01;

/// The first byte of a numbered broadcast.
pub(crate) const NUMBERED: u8 = 0x02;

/// The most digits of an offset: 2^53 has 16.
const MAX_OFFSET_DIGITS: usize = 16;

/// What a message on the channel is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Message<'a> {
    Broadcast(Broadcast<'a>),
    /// A broadcast with its room's numbering: offset `offset` of the epoch `epoch`.
    Numbered {
        epoch: &'a str,
        offset: u64,
        broadcast: Broadcast<'a>,
    },
    /// Where, in the channel's order, instance `instance` read the history of `room` for its
    /// connection `joiner`.
    HistoryMark {
        instance: u64,
        joiner: u64,
        room: &'a str,
    },
}

/// The history mark for `joiner` of instance `instance` in `room`.
pub(crate) fn history_mark(instance: u64, joiner: u64, room: &str) -> Vec<u8> {
    let len = u16::try_from(room.len()).expect("room names are at most 128 bytes");
    let mut out = Vec::with_capacity(19 + room.len());
    out.push(HISTORY_MARK);
    out.extend_from_slice(&instance.to_be_bytes());
    out.extend_from_slice(&joiner.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(room.as_bytes());
    out
}

/// Reads a message from the channel: a broadcast (checked as [`check`] does) or a history
/// mark.
pub(crate) fn read(message: &[u8], max_payload: usize) -> Result<Message<'_>, Malformed> {
    if let [NUMBERED, rest @ ..] = message {
        return read_numbered(rest, max_payload);
    }
    let [HISTORY_MARK, rest @ ..] = message else {
        return check(message, max_payload).map(Message::Broadcast);
    };
    let (Some((instance, rest)), true) = (rest.split_first_chunk::<8>(), rest.len() >= 18) else {
        return Err(Malformed::Truncated);
    };
    let (joiner, rest) = rest.split_first_chunk::<8>().ok_or(Malformed::Truncated)?;
    let (len, name) = rest.split_first_chunk::<2>().ok_or(Malformed::Truncated)?;
    if usize::from(u16::from_be_bytes(*len)) != name.len() || name.len() > MAX_ROOM_NAME {
        return Err(Malformed::Room);
    }
    let room = std::str::from_utf8(name).map_err(|_| Malformed::Room)?;
    Ok(Message::HistoryMark {
        instance: u64::from_be_bytes(*instance),
        joiner: u64::from_be_bytes(*joiner),
        room,
    })
}

/// A numbered broadcast, after its first byte.
fn read_numbered(message: &[u8], max_payload: usize) -> Result<Message<'_>, Malformed> {
    fn field(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
        let (&len, rest) = bytes.split_first()?;
        (rest.len() >= usize::from(len)).then(|| rest.split_at(usize::from(len)))
    }
    let (epoch, rest) = field(message).ok_or(Malformed::Numbering)?;
    let (offset, rest) = field(rest).ok_or(Malformed::Numbering)?;
    let epoch = std::str::from_utf8(epoch).map_err(|_| Malformed::Numbering)?;
    crate::delivery::resume::Epoch::parse(epoch).map_err(|_| Malformed::Numbering)?;
    if offset.is_empty()
        || offset.len() > MAX_OFFSET_DIGITS
        || !offset.iter().all(u8::is_ascii_digit)
    {
        return Err(Malformed::Numbering);
    }
    let offset = std::str::from_utf8(offset)
        .ok()
        .and_then(|digits| digits.parse().ok())
        .ok_or(Malformed::Numbering)?;
    let broadcast = check(rest, max_payload)?;
    Ok(Message::Numbered {
        epoch,
        offset,
        broadcast,
    })
}

/// A broadcast that passed [`check`]: its room, its frame, and its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Broadcast<'a> {
    pub(crate) room: &'a str,
    pub(crate) frame: &'a [u8],
    pub(crate) kind: Kind,
}

/// The message that carries `frame` to `room` (see the module's docs): the frame itself for
/// the lobby.
pub(crate) fn message<'a>(room: &str, frame: &'a [u8]) -> std::borrow::Cow<'a, [u8]> {
    if room.is_empty() {
        return std::borrow::Cow::Borrowed(frame);
    }
    let len = u16::try_from(room.len()).expect("room names are at most 128 bytes");
    let mut out = Vec::with_capacity(3 + room.len() + frame.len());
    out.push(ROOM_MARK);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(room.as_bytes());
    out.extend_from_slice(frame);
    std::borrow::Cow::Owned(out)
}

/// The kind of a broadcast that passed [`check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Text,
    Binary,
}

/// Why a message on the channel is not a broadcast.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Malformed {
    /// Shorter than a frame header.
    Truncated,
    /// Not `0x81` or `0x82`: a fragment, a control frame, RSV bits, or not a frame at all.
    FirstByte(u8),
    /// The mask bit is set.
    Masked,
    /// The length is not in its shortest form (RFC 6455 requires it).
    LongLength,
    /// The header's length and the bytes that follow it differ.
    Length { header: u64, actual: usize },
    /// The payload is over this instance's largest message.
    TooBig { len: usize, limit: usize },
    /// A text payload that is not UTF-8.
    NotUtf8,
    /// A room's name that is empty, too long, cut short, not UTF-8, or holds a control
    /// character.
    Room,
    /// A numbered broadcast whose epoch or offset is cut short or not one.
    Numbering,
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Malformed::Truncated => write!(f, "shorter than a frame header"),
            Malformed::FirstByte(b) => {
                write!(f, "first byte {b:#04x}, not 0x81 (text) or 0x82 (binary)")
            }
            Malformed::Masked => write!(f, "the mask bit is set"),
            Malformed::LongLength => write!(f, "the length is not in its shortest form"),
            Malformed::Length { header, actual } => {
                write!(f, "the header says {header} payload bytes, {actual} follow")
            }
            Malformed::TooBig { len, limit } => {
                write!(f, "{len} payload bytes, over --max-message-size ({limit})")
            }
            Malformed::NotUtf8 => write!(f, "a text payload that is not UTF-8"),
            Malformed::Room => write!(f, "a room name that is not one"),
            Malformed::Numbering => write!(f, "an epoch or offset that is not one"),
        }
    }
}

/// Checks that `message` is one broadcast in the wire format (see the module's docs) with a
/// payload of at most `max_payload` bytes, and says to which room.
pub(crate) fn check(message: &[u8], max_payload: usize) -> Result<Broadcast<'_>, Malformed> {
    let (room, frame) = match message {
        [ROOM_MARK, high, low, rest @ ..] => {
            let len = usize::from(u16::from_be_bytes([*high, *low]));
            if len == 0 || len > MAX_ROOM_NAME || rest.len() < len {
                return Err(Malformed::Room);
            }
            let (name, frame) = rest.split_at(len);
            let name = std::str::from_utf8(name).map_err(|_| Malformed::Room)?;
            if name.chars().any(char::is_control) {
                return Err(Malformed::Room);
            }
            (name, frame)
        }
        [ROOM_MARK, ..] => return Err(Malformed::Room),
        frame => ("", frame),
    };
    let kind = check_frame(frame, max_payload)?;
    Ok(Broadcast { room, frame, kind })
}

/// Checks that `message` is one frame a server could send, with a payload of at most
/// `max_payload` bytes, and says which kind.
fn check_frame(message: &[u8], max_payload: usize) -> Result<Kind, Malformed> {
    let header = Header::parse(message).ok_or(Malformed::Truncated)?;
    let kind = match header {
        Header {
            fin: true,
            rsv: 0,
            opcode: OPCODE_TEXT,
            ..
        } => Kind::Text,
        Header {
            fin: true,
            rsv: 0,
            opcode: OPCODE_BINARY,
            ..
        } => Kind::Binary,
        _ => return Err(Malformed::FirstByte(message[0])),
    };
    if header.masked {
        return Err(Malformed::Masked);
    }
    if !header.shortest {
        return Err(Malformed::LongLength);
    }
    let payload = &message[header.size..];
    if u64::try_from(payload.len()) != Ok(header.len) {
        return Err(Malformed::Length {
            header: header.len,
            actual: payload.len(),
        });
    }
    if payload.len() > max_payload {
        return Err(Malformed::TooBig {
            len: payload.len(),
            limit: max_payload,
        });
    }
    if kind == Kind::Text && std::str::from_utf8(payload).is_err() {
        return Err(Malformed::NotUtf8);
    }
    Ok(kind)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame;

    #[test]
    fn every_frame_the_server_encodes_passes_at_every_length_boundary() {
        for len in [0, 1, 125, 126, 127, 65535, 65536, 70000] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            assert_eq!(
                check(&frame::binary(&payload), 1 << 20).map(|b| b.kind),
                Ok(Kind::Binary)
            );
            let text = "é".repeat(len / 2);
            assert_eq!(
                check(&frame::text(&text), 1 << 20).map(|b| b.kind),
                Ok(Kind::Text)
            );
        }
        assert_eq!(
            check(&[0x81, 0x02, b'h', b'i'], 10).map(|b| b.kind),
            Ok(Kind::Text)
        );
        assert_eq!(
            check(&[0x82, 0x03, 1, 2, 3], 10).map(|b| b.kind),
            Ok(Kind::Binary)
        );
    }

    #[test]
    fn anything_else_is_refused_with_the_reason() {
        assert_eq!(check(b"", 10), Err(Malformed::Truncated));
        assert_eq!(check(b"hello", 10), Err(Malformed::FirstByte(b'h')));
        assert_eq!(check(&[0x01, 0x00], 10), Err(Malformed::FirstByte(0x01)));
        assert_eq!(check(&[0x89, 0x00], 10), Err(Malformed::FirstByte(0x89)));
        assert_eq!(
            check(&[0x82, 0x81, 0, 0, 0, 0, 1], 10),
            Err(Malformed::Masked)
        );
        assert_eq!(
            check(&[0x82, 126, 0, 5, 1, 2, 3, 4, 5], 10),
            Err(Malformed::LongLength)
        );
        assert_eq!(
            check(&[0x82, 0x03, 1, 2], 10),
            Err(Malformed::Length {
                header: 3,
                actual: 2
            })
        );
        assert_eq!(
            check(&[0x82, 0x02, 1, 2, 3], 10),
            Err(Malformed::Length {
                header: 2,
                actual: 3
            })
        );
        assert_eq!(check(&[0x82, 126, 1], 10), Err(Malformed::Truncated));
        assert_eq!(
            check(&frame::binary(&[0; 11]), 10),
            Err(Malformed::TooBig { len: 11, limit: 10 })
        );
        assert_eq!(check(&[0x81, 0x01, 0xff], 10), Err(Malformed::NotUtf8));
    }

    #[test]
    fn a_room_travels_before_its_frame() {
        let frame = frame::text("hi");
        assert_eq!(
            &*message("", &frame),
            &frame[..],
            "the lobby: the frame alone"
        );
        let to_chat = message("chat", &frame);
        assert_eq!(
            &to_chat[..],
            [0, 0, 4, b'c', b'h', b'a', b't', 0x81, 2, b'h', b'i']
        );
        let broadcast = check(&to_chat, 10).unwrap();
        assert_eq!((broadcast.room, broadcast.frame), ("chat", &frame[..]));
        assert_eq!(check(&frame, 10).unwrap().room, "");
        assert_eq!(check(&[0, 0, 0, 0x81, 0], 10), Err(Malformed::Room));
        assert_eq!(check(&[0, 0, 9, b'a', 0x81, 0], 10), Err(Malformed::Room));
        assert_eq!(check(&[0, 0, 1, 0x0a, 0x81, 0], 10), Err(Malformed::Room));
        assert_eq!(check(&[0, 0, 1, b'a', 0x81], 10), Err(Malformed::Truncated));
        assert_eq!(check(&[0], 10), Err(Malformed::Room));
    }

    #[test]
    fn a_numbered_broadcast_reads_back_with_its_epoch_and_offset() {
        let lobby = [2, 2, b'e', b'7', 2, b'1', b'2', 0x81, 2, b'h', b'i'];
        assert_eq!(
            read(&lobby, 10),
            Ok(Message::Numbered {
                epoch: "e7",
                offset: 12,
                broadcast: Broadcast {
                    room: "",
                    frame: &[0x81, 2, b'h', b'i'],
                    kind: Kind::Text
                }
            })
        );
        let mut to_chat = vec![2, 1, b'e', 1, b'1'];
        to_chat.extend_from_slice(&message("chat", &frame::text("hi")));
        assert!(matches!(
            read(&to_chat, 10),
            Ok(Message::Numbered {
                offset: 1,
                broadcast: Broadcast { room: "chat", .. },
                ..
            })
        ));
        for bad in [
            &[2][..],
            &[2, 0, 1, b'1', 0x81, 0],
            &[2, 1, b'.', 1, b'1', 0x81, 0],
            &[2, 1, b'e', 0, 0x81, 0],
            &[2, 1, b'e', 1, b'x', 0x81, 0],
            &[2, 1, b'e', 9, b'1'],
        ] {
            assert_eq!(read(bad, 10), Err(Malformed::Numbering), "{bad:?}");
        }
    }

    #[test]
    fn a_history_mark_reads_back() {
        let mark = history_mark(7, 42, "chat");
        assert_eq!(
            read(&mark, 10),
            Ok(Message::HistoryMark {
                instance: 7,
                joiner: 42,
                room: "chat"
            })
        );
        assert_eq!(read(&mark[..mark.len() - 1], 10), Err(Malformed::Room));
        assert_eq!(read(&mark[..5], 10), Err(Malformed::Truncated));
        let lobby = history_mark(1, 2, "");
        assert!(matches!(
            read(&lobby, 10),
            Ok(Message::HistoryMark { room: "", .. })
        ));
        assert!(matches!(
            read(&frame::text("hi"), 10),
            Ok(Message::Broadcast(Broadcast { room: "", .. }))
        ));
    }
}
