//! WebSocket framing (RFC 6455 section 5), just the parts a client needs.
//!
//! A client *sends* masked frames and *receives* unmasked ones, so this module
//! has exactly one encoder (masked) and one decoder (unmasked). Doing it by
//! hand instead of through a full WebSocket library keeps the per-message cost
//! of the load generator tiny: it shares two CPU cores with the server it
//! measures, and every cycle it spends is a cycle the server does not get.

use std::fmt;

/// Largest message wsload accepts from a server. Anything bigger is treated as
/// a protocol error rather than an invitation to allocate without bound.
pub const MAX_PAYLOAD: usize = 64 * 1024 * 1024;

/// Frame opcodes (RFC 6455 section 5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl Opcode {
    fn from_bits(bits: u8) -> Option<Opcode> {
        Some(match bits {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            _ => return None,
        })
    }

    fn bits(self) -> u8 {
        match self {
            Opcode::Continuation => 0x0,
            Opcode::Text => 0x1,
            Opcode::Binary => 0x2,
            Opcode::Close => 0x8,
            Opcode::Ping => 0x9,
            Opcode::Pong => 0xA,
        }
    }

    /// Control frames (close, ping, pong) may not be fragmented and carry at
    /// most 125 bytes.
    pub fn is_control(self) -> bool {
        matches!(self, Opcode::Close | Opcode::Ping | Opcode::Pong)
    }
}

/// One decoded server frame, borrowing its payload from the input buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    pub fin: bool,
    pub opcode: Opcode,
    pub payload: &'a [u8],
    /// Bytes of input this frame occupied (header plus payload).
    pub len: usize,
}

/// Why a server frame was rejected. Any of these ends the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// RSV1-3 set, but wsload negotiates no extension that would define them.
    ReservedBits,
    /// RFC 6455 section 5.1: a server must not mask frames it sends.
    MaskedByServer,
    UnknownOpcode(u8),
    /// Control frame that is fragmented or longer than 125 bytes.
    BadControlFrame,
    TooLarge(u64),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::ReservedBits => write!(f, "frame has reserved bits set"),
            FrameError::MaskedByServer => write!(f, "server sent a masked frame"),
            FrameError::UnknownOpcode(op) => write!(f, "unknown opcode {op:#x}"),
            FrameError::BadControlFrame => {
                write!(f, "control frame is fragmented or longer than 125 bytes")
            }
            FrameError::TooLarge(n) => {
                write!(f, "frame of {n} bytes exceeds the {MAX_PAYLOAD}-byte limit")
            }
        }
    }
}

impl std::error::Error for FrameError {}

/// Appends one complete (FIN set) client frame carrying `payload`, masked
/// with `mask` as RFC 6455 section 5.3 requires of every client frame.
pub fn encode_masked(out: &mut Vec<u8>, opcode: Opcode, payload: &[u8], mask: [u8; 4]) {
    let len = payload.len();
    out.reserve(14 + len);
    out.push(0x80 | opcode.bits());
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], mask);
}

/// XORs `buf` with the repeating 4-byte `mask`, eight bytes at a time
/// (masking is the one per-byte cost of sending, so it is worth the speed).
pub fn apply_mask(buf: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let word = u64::from_ne_bytes(chunk.try_into().expect("chunk of 8")) ^ wide;
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    // Whole chunks are a multiple of 4 bytes long, so the tail restarts at mask[0].
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= mask[i % 4];
    }
}

/// Decodes the server frame at the start of `buf`.
///
/// Returns `Ok(None)` when `buf` does not yet hold the whole frame: the caller
/// keeps the bytes and tries again after the next read.
pub fn decode(buf: &[u8]) -> Result<Option<Frame<'_>>, FrameError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x70 != 0 {
        return Err(FrameError::ReservedBits);
    }
    if b1 & 0x80 != 0 {
        return Err(FrameError::MaskedByServer);
    }
    let fin = b0 & 0x80 != 0;
    let opcode = Opcode::from_bits(b0 & 0x0F).ok_or(FrameError::UnknownOpcode(b0 & 0x0F))?;
    let (payload_len, header_len) = match b1 & 0x7F {
        126 => {
            let Some(bytes) = buf.get(2..4) else {
                return Ok(None);
            };
            (u64::from(u16::from_be_bytes([bytes[0], bytes[1]])), 4)
        }
        127 => {
            let Some(bytes) = buf.get(2..10) else {
                return Ok(None);
            };
            (u64::from_be_bytes(bytes.try_into().expect("8 bytes")), 10)
        }
        n => (u64::from(n), 2),
    };
    if opcode.is_control() && (!fin || payload_len > 125) {
        return Err(FrameError::BadControlFrame);
    }
    if payload_len > MAX_PAYLOAD as u64 {
        return Err(FrameError::TooLarge(payload_len));
    }
    let total = header_len + payload_len as usize;
    if buf.len() < total {
        return Ok(None);
    }
    Ok(Some(Frame {
        fin,
        opcode,
        payload: &buf[header_len..total],
        len: total,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Turns a masked client frame into the unmasked frame a server would
    /// send back, so the encoder can be checked with the decoder.
    fn unmask(frame: &[u8]) -> Vec<u8> {
        let mut out = frame.to_vec();
        out[1] &= 0x7F;
        let len_bytes = match frame[1] & 0x7F {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask_at = 2 + len_bytes;
        let mask: [u8; 4] = frame[mask_at..mask_at + 4].try_into().unwrap();
        out.drain(mask_at..mask_at + 4);
        apply_mask(&mut out[mask_at..], mask);
        out
    }

    #[test]
    fn rfc_masked_hello_example() {
        // RFC 6455 section 5.7: a single-frame masked text message "Hello".
        let mut out = Vec::new();
        encode_masked(&mut out, Opcode::Text, b"Hello", [0x37, 0xfa, 0x21, 0x3d]);
        assert_eq!(
            out,
            [
                0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58
            ]
        );
    }

    #[test]
    fn rfc_unmasked_hello_example() {
        let buf = [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0xAA];
        let frame = decode(&buf).unwrap().unwrap();
        assert!(frame.fin);
        assert_eq!(frame.opcode, Opcode::Text);
        assert_eq!(frame.payload, b"Hello");
        assert_eq!(frame.len, 7);
    }

    #[test]
    fn round_trip_all_length_encodings() {
        for len in [0, 1, 7, 8, 9, 125, 126, 127, 4096, 65535, 65536, 70000] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let mut out = Vec::new();
            encode_masked(&mut out, Opcode::Binary, &payload, [1, 2, 3, 4]);
            let server_frame = unmask(&out);
            let frame = decode(&server_frame).unwrap().unwrap();
            assert_eq!(frame.opcode, Opcode::Binary);
            assert_eq!(frame.payload, &payload[..], "len {len}");
            assert_eq!(frame.len, server_frame.len());
        }
    }

    #[test]
    fn incomplete_frames_ask_for_more() {
        let mut out = Vec::new();
        encode_masked(&mut out, Opcode::Binary, &[9; 300], [5, 6, 7, 8]);
        let server_frame = unmask(&out);
        for cut in 0..server_frame.len() {
            assert_eq!(decode(&server_frame[..cut]), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn rejects_what_a_server_must_not_send() {
        assert_eq!(
            decode(&[0x82, 0x81, 0, 0, 0, 0, 0]),
            Err(FrameError::MaskedByServer)
        );
        assert_eq!(decode(&[0xC2, 0x00]), Err(FrameError::ReservedBits));
        assert_eq!(decode(&[0x83, 0x00]), Err(FrameError::UnknownOpcode(3)));
        assert_eq!(decode(&[0x09, 0x00]), Err(FrameError::BadControlFrame));
        assert_eq!(
            decode(&[0x89, 126, 0, 200]),
            Err(FrameError::BadControlFrame)
        );
        let mut huge = vec![0x82, 127];
        huge.extend_from_slice(&(MAX_PAYLOAD as u64 + 1).to_be_bytes());
        assert!(matches!(decode(&huge), Err(FrameError::TooLarge(_))));
    }

    #[test]
    fn mask_is_its_own_inverse_for_odd_lengths() {
        let original: Vec<u8> = (0..37).collect();
        let mut buf = original.clone();
        apply_mask(&mut buf, [0xde, 0xad, 0xbe, 0xef]);
        assert_ne!(buf, original);
        for (i, (masked, plain)) in buf.iter().zip(&original).enumerate() {
            assert_eq!(masked ^ [0xde, 0xad, 0xbe, 0xef][i % 4], *plain);
        }
        apply_mask(&mut buf, [0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(buf, original);
    }
}
