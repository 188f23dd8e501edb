//! RFC 6455 frames (section 5.2): encoding the ones the server sends, and reading headers.
//!
//! tungstenite parses what clients send and answers pings and closes itself. The data frames
//! the server sends (echoes, broadcasts, greetings) are encoded here instead, into one buffer
//! that `budget.rs` turns into shared bytes: a broadcast to a thousand clients is encoded once
//! and the thousand queues hold a reference each, not a copy each.
//!
//! Two places read frame headers beside tungstenite, and both do it with [`Header`]: the
//! socket follows the client's frame boundaries to know when it stands between two messages
//! (`connection/boundary.rs`), and a cluster checks that what arrives on its Redis channel is
//! one frame a server could send (`cluster/wire.rs`).

/// RFC 6455 section 5.2 opcodes for the two kinds of data message; opcodes from
/// [`FIRST_CONTROL_OPCODE`] on are control frames (close, ping, pong).
pub(crate) const OPCODE_TEXT: u8 = 0x1;
pub(crate) const OPCODE_BINARY: u8 = 0x2;
const FIRST_CONTROL_OPCODE: u8 = 0x8;

/// The FIN bit of byte 0: this frame ends its message. The server fragments what it sends
/// only for the `fragment` test control.
const FIN: u8 = 0x80;
/// The three RSV bits of byte 0, for extensions; none is negotiated here.
const RSV: u8 = 0x70;
/// The opcode's four bits of byte 0.
const OPCODE: u8 = 0x0f;
/// The MASK bit of byte 1: clients mask, servers never do.
const MASK: u8 = 0x80;
/// The mask key's size, after the length, when the MASK bit is set.
const MASK_KEY: usize = 4;

/// The longest frame header: 2 bytes, 8 of extended length, 4 of mask key.
pub(crate) const MAX_HEADER: usize = 2 + 8 + MASK_KEY;

/// Payload lengths below this fit in the header's 7-bit field.
const SHORT_LENGTH_LIMIT: usize = 126;
/// The 7-bit field's value that announces a 16-bit length, and the one for a 64-bit length.
const LENGTH_16: u8 = 126;
const LENGTH_64: u8 = 127;

/// A text message as one complete, unmasked frame (servers never mask).
pub(crate) fn text(text: &str) -> Vec<u8> {
    encode(OPCODE_TEXT, text.as_bytes())
}

/// A binary message as one complete, unmasked frame.
pub(crate) fn binary(payload: &[u8]) -> Vec<u8> {
    encode(OPCODE_BINARY, payload)
}

fn encode(opcode: u8, payload: &[u8]) -> Vec<u8> {
    // No mask key: a server's header is at most 10 bytes.
    let mut frame = Vec::with_capacity(MAX_HEADER - MASK_KEY + payload.len());
    append(&mut frame, true, opcode, payload);
    frame
}

/// Appends one unmasked frame to `out`.
fn append(out: &mut Vec<u8>, fin: bool, opcode: u8, payload: &[u8]) {
    let len = payload.len();
    out.push(if fin { FIN } else { 0 } | opcode);
    // The payload length takes 7 bits, or 7 + 16, or 7 + 64 (section 5.2).
    if len < SHORT_LENGTH_LIMIT {
        out.push(len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        out.push(LENGTH_16);
        out.extend_from_slice(&len.to_be_bytes());
    } else {
        out.push(LENGTH_64);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(payload);
}

/// The opcode of a continuation frame: the next fragment of a message (section 5.4).
const OPCODE_CONTINUATION: u8 = 0x0;

/// A whole data frame the server encoded (see [`text`], [`binary`]) as the same message in
/// fragments of at most `max_payload` bytes of payload each, back to back in one buffer: the
/// first with the message's opcode, the rest continuations, the last with FIN (section 5.4).
/// `None` when the frame is no longer than that already, or is not one whole data frame. For
/// the `fragment` test control (`connection/controlled.rs`).
pub(crate) fn fragment(frame: &[u8], max_payload: usize) -> Option<Vec<u8>> {
    let header = Header::parse(frame)?;
    let payload = frame.get(header.size..)?;
    if !header.fin
        || header.is_control()
        || header.masked
        || payload.len() as u64 != header.len
        || payload.len() <= max_payload
        || max_payload == 0
    {
        return None;
    }
    let pieces = payload.len().div_ceil(max_payload);
    let header_size = MAX_HEADER - MASK_KEY;
    let mut out = Vec::with_capacity(payload.len() + pieces * header_size.min(2 + max_payload));
    for (i, piece) in payload.chunks(max_payload).enumerate() {
        let opcode = if i == 0 {
            header.opcode
        } else {
            OPCODE_CONTINUATION
        };
        append(&mut out, i + 1 == pieces, opcode, piece);
    }
    Some(out)
}

/// A frame header, as section 5.2 lays it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    /// The FIN bit: the frame ends its message.
    pub(crate) fin: bool,
    /// The RSV bits, unshifted; 0 without extensions.
    pub(crate) rsv: u8,
    pub(crate) opcode: u8,
    /// Whether a mask key follows the length.
    pub(crate) masked: bool,
    /// The payload length.
    pub(crate) len: u64,
    /// The header's own size in bytes, mask key included.
    pub(crate) size: usize,
    /// Whether the length is in its shortest form, as the RFC requires (and a 64-bit length
    /// has its most significant bit clear).
    pub(crate) shortest: bool,
}

impl Header {
    /// The header's size in bytes, known from its first two bytes.
    pub(crate) fn size_from(first_two: [u8; 2]) -> usize {
        let extended = match first_two[1] & !MASK {
            LENGTH_16 => 2,
            LENGTH_64 => 8,
            _ => 0,
        };
        let mask = if first_two[1] & MASK != 0 {
            MASK_KEY
        } else {
            0
        };
        2 + extended + mask
    }

    /// Reads the header at the start of `bytes`; `None` while it is not all there.
    pub(crate) fn parse(bytes: &[u8]) -> Option<Header> {
        let [first, second, ..] = *bytes else {
            return None;
        };
        let size = Header::size_from([first, second]);
        let extended = bytes.get(2..size)?;
        let (len, shortest) = match second & !MASK {
            LENGTH_16 => {
                let len = u64::from(u16::from_be_bytes([extended[0], extended[1]]));
                (len, len >= SHORT_LENGTH_LIMIT as u64)
            }
            LENGTH_64 => {
                let len = u64::from_be_bytes(extended[..8].try_into().expect("8 bytes"));
                (len, len > u64::from(u16::MAX) && len >> 63 == 0)
            }
            short => (u64::from(short), true),
        };
        Some(Header {
            fin: first & FIN != 0,
            rsv: first & RSV,
            opcode: first & OPCODE,
            masked: second & MASK != 0,
            len,
            size,
            shortest,
        })
    }

    /// Whether this is a control frame (close, ping, pong): those may come between the
    /// fragments of a message and never end it.
    pub(crate) fn is_control(&self) -> bool {
        self.opcode >= FIRST_CONTROL_OPCODE
    }
}

/// Frames per vectored write (`writev`, `sendmsg`); more just take another call. The slices
/// live on the writing thread's stack, so this is kept small: 16 already makes a burst of small
/// frames cost a sixteenth of the system calls, and 64 would add a kilobyte to the deepest
/// stack an idle connection keeps resident.
pub(crate) const MAX_FRAMES_PER_WRITE: usize = 16;

/// Writes what `writer` takes now of `frames`, the first from its byte `skip` on, in one
/// vectored write of at most [`MAX_FRAMES_PER_WRITE`] frames. Returns the bytes written; the
/// caller counts which frames they finished. The one vectored write of the server: the
/// connection's queue (`send_queue.rs`) and a broadcaster writing into a lent socket
/// (`delivery/outbox/lending.rs`) both use it.
pub(crate) fn write_some<'f, W: std::io::Write>(
    writer: &mut W,
    frames: impl IntoIterator<Item = &'f [u8]>,
    skip: usize,
) -> std::io::Result<usize> {
    let mut slices = [std::io::IoSlice::new(&[]); MAX_FRAMES_PER_WRITE];
    let mut count = 0;
    for (slot, frame) in slices.iter_mut().zip(frames) {
        let from = if count == 0 { skip } else { 0 };
        *slot = std::io::IoSlice::new(&frame[from..]);
        count += 1;
    }
    writer.write_vectored(&slices[..count])
}

#[cfg(test)]
mod tests {
    use super::*;
    use tungstenite::protocol::frame::Frame;
    use tungstenite::protocol::frame::coding::{Data, OpCode};

    /// Our encoding must be byte for byte what tungstenite itself would send.
    fn tungstenite_encoding(opcode: Data, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let frame = Frame::message(payload.to_vec(), OpCode::Data(opcode), true);
        frame.format(&mut out).unwrap();
        out
    }

    #[test]
    fn matches_tungstenite_at_every_length_boundary() {
        for len in [0, 1, 125, 126, 127, 65535, 65536, 70000] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            assert_eq!(
                binary(&payload)[..],
                tungstenite_encoding(Data::Binary, &payload)[..]
            );
        }
        let text_payload = "héllo ✓";
        assert_eq!(
            Header::parse(&text(text_payload)),
            Some(Header {
                fin: true,
                rsv: 0,
                opcode: OPCODE_TEXT,
                masked: false,
                len: text_payload.len() as u64,
                size: 2,
                shortest: true,
            })
        );
        assert_eq!(
            text(text_payload)[..],
            tungstenite_encoding(Data::Text, text_payload.as_bytes())[..]
        );
    }

    #[test]
    fn fragments_carry_the_message_in_order() {
        let message: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
        let whole = binary(&message);
        assert_eq!(fragment(&whole, 300), None);
        assert_eq!(fragment(&text("ping"), 1).unwrap(), {
            let mut expected = Vec::new();
            for (i, b) in b"ping".iter().enumerate() {
                let first = if i == 0 { OPCODE_TEXT } else { 0 };
                let fin = if i == 3 { FIN } else { 0 };
                expected.extend_from_slice(&[fin | first, 1, *b]);
            }
            expected
        });
        let fragmented = fragment(&whole, 128).unwrap();
        let mut rest = &fragmented[..];
        let mut got = Vec::new();
        let mut headers = Vec::new();
        while !rest.is_empty() {
            let header = Header::parse(rest).unwrap();
            let end = header.size + header.len as usize;
            got.extend_from_slice(&rest[header.size..end]);
            headers.push((header.fin, header.opcode, header.len));
            rest = &rest[end..];
        }
        assert_eq!(got, message);
        assert_eq!(
            headers,
            [(false, OPCODE_BINARY, 128), (false, 0, 128), (true, 0, 44)]
        );
    }

    #[test]
    fn headers_are_read_whole_or_not_at_all() {
        let frame = binary(&[7; 70_000]);
        for cut in 0..10 {
            assert_eq!(Header::parse(&frame[..cut]), None, "cut at {cut}");
        }
        let header = Header::parse(&frame).unwrap();
        assert_eq!(
            (header.len, header.size, header.shortest),
            (70_000, 10, true)
        );
        // A masked client frame of 5 bytes: the mask key counts in the header.
        let masked = [0x81, 0x85, 1, 2, 3, 4];
        assert_eq!(Header::size_from([0x81, 0x85]), 6);
        let header = Header::parse(&masked).unwrap();
        assert!(header.masked && header.fin && !header.is_control());
        // A length that would have fitted a shorter form.
        assert!(!Header::parse(&[0x82, 126, 0, 5]).unwrap().shortest);
        assert!(Header::parse(&[0x89, 0]).unwrap().is_control());
    }
}
