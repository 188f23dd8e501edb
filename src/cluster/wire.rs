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
//! Anything else on the channel (another program publishing there, a payload over this
//! instance's `--max-message-size`) is refused by [`check`]: not delivered, logged, counted.

use std::fmt;

use crate::frame::{Header, OPCODE_BINARY, OPCODE_TEXT};

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
        }
    }
}

/// Checks that `message` is one broadcast in the wire format (see the module's docs) with a
/// payload of at most `max_payload` bytes, and says which kind.
pub(crate) fn check(message: &[u8], max_payload: usize) -> Result<Kind, Malformed> {
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
            assert_eq!(check(&frame::binary(&payload), 1 << 20), Ok(Kind::Binary));
            let text = "é".repeat(len / 2);
            assert_eq!(check(&frame::text(&text), 1 << 20), Ok(Kind::Text));
        }
        assert_eq!(check(&[0x81, 0x02, b'h', b'i'], 10), Ok(Kind::Text));
        assert_eq!(check(&[0x82, 0x03, 1, 2, 3], 10), Ok(Kind::Binary));
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
}
