//! Where the client's byte stream stands: between two messages, or inside one.
//!
//! tungstenite keeps what it has read and not yet parsed in a buffer of its own, which grows to
//! hold the biggest frame it was sent and never shrinks. The only way to give that memory back
//! is to rebuild the WebSocket around the same socket (`settle.rs`), and that is only safe when
//! the buffer holds nothing: every byte read so far belongs to frames already parsed, and no
//! message is half assembled. tungstenite does not say so, so the reader follows the frame
//! headers (RFC 6455 section 5.2) of the bytes it hands over, which costs a few comparisons per
//! frame and tells exactly that.

use crate::frame::{Header, MAX_HEADER};

/// Follows frame boundaries in a stream of bytes.
#[derive(Debug, Default)]
pub(super) struct Boundary {
    /// The header being read, and how much of it arrived.
    header: [u8; MAX_HEADER],
    header_len: u8,
    /// Payload bytes of the current frame still to come.
    payload_left: u64,
    /// A data frame without FIN was seen: a fragmented message is being assembled.
    in_fragmented_message: bool,
    /// The longest frame payload seen since [`Boundary::forget_largest`].
    largest: u64,
}

impl Boundary {
    /// Follows `bytes`, the next bytes of the stream.
    pub(super) fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let skip = usize::try_from(self.payload_left)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                self.payload_left -= skip as u64;
                bytes = &bytes[skip..];
                continue;
            }
            // Two bytes say how long the header is; then take the rest of it.
            let have = usize::from(self.header_len);
            let need = if have < 2 {
                2
            } else {
                Header::size_from([self.header[0], self.header[1]])
            };
            let want = (need - have).min(bytes.len());
            self.header[have..have + want].copy_from_slice(&bytes[..want]);
            self.header_len += want as u8;
            bytes = &bytes[want..];
            if let Some(header) = Header::parse(&self.header[..usize::from(self.header_len)]) {
                self.end_header(header);
            }
        }
    }

    /// Whether every byte fed so far ends a whole message: nothing half read.
    pub(super) fn between_messages(&self) -> bool {
        self.header_len == 0 && self.payload_left == 0 && !self.in_fragmented_message
    }

    /// The longest frame payload seen since [`Boundary::forget_largest`].
    pub(super) fn largest(&self) -> u64 {
        self.largest
    }

    pub(super) fn forget_largest(&mut self) {
        self.largest = 0;
    }

    fn end_header(&mut self, header: Header) {
        // Control frames may come between a message's fragments and never end it; data
        // frames (continuation, text, binary) do when FIN is set.
        if !header.is_control() {
            self.in_fragmented_message = !header.fin;
        }
        self.payload_left = header.len;
        self.largest = self.largest.max(header.len);
        self.header_len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame, as RFC 6455 section 5.2 lays it out.
    fn frame(fin: bool, opcode: u8, len: usize) -> Vec<u8> {
        let mut out = vec![u8::from(fin) << 7 | opcode];
        match len {
            0..=125 => out.push(0x80 | len as u8),
            126..=0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&[1, 2, 3, 4]);
        out.extend(std::iter::repeat_n(7, len));
        out
    }

    /// Feeds `stream` in pieces of `piece` bytes and records, after each piece, whether the
    /// stream stood between messages.
    fn positions(stream: &[u8], piece: usize) -> Vec<bool> {
        let mut boundary = Boundary::default();
        stream
            .chunks(piece)
            .map(|chunk| {
                boundary.feed(chunk);
                boundary.between_messages()
            })
            .collect()
    }

    #[test]
    fn whole_messages_in_any_pieces_end_between_messages() {
        let stream = [
            frame(true, 1, 5),
            frame(true, 2, 300),
            frame(true, 2, 70_000),
        ]
        .concat();
        for piece in [1, 2, 3, 7, 14, 100, 4096, stream.len()] {
            assert_eq!(
                positions(&stream, piece).last(),
                Some(&true),
                "pieces of {piece}"
            );
        }
    }

    #[test]
    fn a_partial_header_or_payload_is_inside_a_message() {
        let one = frame(true, 2, 300);
        for cut in 1..one.len() {
            let mut boundary = Boundary::default();
            boundary.feed(&one[..cut]);
            assert!(!boundary.between_messages(), "cut at {cut}");
            boundary.feed(&one[cut..]);
            assert!(
                boundary.between_messages(),
                "completed after a cut at {cut}"
            );
        }
    }

    #[test]
    fn a_fragmented_message_ends_with_its_final_fragment_not_with_a_ping_inside_it() {
        let mut boundary = Boundary::default();
        boundary.feed(&frame(false, 1, 10));
        assert!(!boundary.between_messages());
        boundary.feed(&frame(true, 9, 4)); // a ping between fragments
        assert!(!boundary.between_messages());
        boundary.feed(&frame(true, 0, 10));
        assert!(boundary.between_messages());
    }

    #[test]
    fn the_largest_frame_is_remembered_until_forgotten() {
        let mut boundary = Boundary::default();
        boundary.feed(&[frame(true, 2, 70_000), frame(true, 1, 3)].concat());
        assert_eq!(boundary.largest(), 70_000);
        boundary.forget_largest();
        assert_eq!(boundary.largest(), 0);
    }
}
