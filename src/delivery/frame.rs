//! Encoding the frames the server sends, once.
//!
//! tungstenite parses what clients send and answers pings and closes itself. The data frames
//! the server sends (echoes, broadcasts, greetings) are encoded here instead, into one buffer
//! that `budget.rs` turns into shared bytes: a broadcast to a thousand clients is encoded once
//! and the thousand queues hold a reference each, not a copy each.

/// RFC 6455 section 5.2 opcodes for the two kinds of data message.
const OPCODE_TEXT: u8 = 0x1;
const OPCODE_BINARY: u8 = 0x2;

/// The FIN bit: this frame is a whole message. The server never fragments what it sends.
const FIN: u8 = 0x80;

/// The longest frame header: two bytes, then a 64-bit length (section 5.2; no mask key, as
/// servers never mask).
const MAX_HEADER: usize = 2 + 8;

/// Payload lengths below this fit in the header's 7-bit field.
const SHORT_LENGTH_LIMIT: usize = 126;
/// The 7-bit field's value that announces a 16-bit length, and the one for a 64-bit length.
const LENGTH_16: u8 = 126;
const LENGTH_64: u8 = 127;

/// A text message as one complete, unmasked frame (servers never mask).
pub fn text(text: &str) -> Vec<u8> {
    encode(OPCODE_TEXT, text.as_bytes())
}

/// A binary message as one complete, unmasked frame.
pub fn binary(payload: &[u8]) -> Vec<u8> {
    encode(OPCODE_BINARY, payload)
}

fn encode(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut frame = Vec::with_capacity(MAX_HEADER + len);
    frame.push(FIN | opcode);
    // The payload length takes 7 bits, or 7 + 16, or 7 + 64 (section 5.2).
    if len < SHORT_LENGTH_LIMIT {
        frame.push(len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        frame.push(LENGTH_16);
        frame.extend_from_slice(&len.to_be_bytes());
    } else {
        frame.push(LENGTH_64);
        frame.extend_from_slice(&(len as u64).to_be_bytes());
    }
    frame.extend_from_slice(payload);
    frame
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
            text(text_payload)[..],
            tungstenite_encoding(Data::Text, text_payload.as_bytes())[..]
        );
    }
}
