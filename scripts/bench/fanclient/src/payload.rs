//! What the sender sends: a sequence number and the moment it was sent,
//! as wsload's fan-out messages carry them, written as 32 hex digits so that
//! a message passes unchanged through a server that sends it on as text.

/// The sequence number of the sync message (wsload's too).
pub const SYNC: u64 = u64::MAX;
/// 16 hex digits of sequence number, 16 of send time.
pub const HEADER: usize = 32;

/// One message of SIZE bytes: the header, then '.' up to the size.
pub fn encode(seq: u64, sent_ns: u64, size: usize) -> String {
    let mut text = format!("{seq:016x}{sent_ns:016x}");
    text.extend(std::iter::repeat_n('.', size - HEADER));
    text
}

/// A message's sequence number and send time (ns since the run's base), or
/// None for anything the sender did not send (a greeting, say).
pub fn decode(data: &[u8]) -> Option<(u64, u64)> {
    let hex = |range: std::ops::Range<usize>| {
        u64::from_str_radix(std::str::from_utf8(data.get(range)?).ok()?, 16).ok()
    };
    Some((hex(0..16)?, hex(16..32)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_round_trips() {
        let text = encode(7, 123_456_789, 40);
        assert_eq!(text.len(), 40);
        assert_eq!(decode(text.as_bytes()), Some((7, 123_456_789)));
        assert_eq!(decode(encode(SYNC, 0, 32).as_bytes()), Some((SYNC, 0)));
        assert_eq!(decode(b"Hello! It is 12:00."), None);
    }
}
