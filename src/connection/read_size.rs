//! How much tungstenite reads at a time, and so how much read buffer a connection holds.
//!
//! tungstenite reads the socket in steps of its `read_buffer_size`, into a buffer at least that
//! big that it keeps for as long as the WebSocket lives. No one step suits every moment:
//!
//! - an idle connection is best with no read buffer at all: it is most connections' state;
//! - chat-like messages fit a [`SMALL`] step, one read each;
//! - a client sending bigger messages wants one read per message, not one per [`SMALL`] bytes,
//!   and a [`BIG`] step gives it that.
//!
//! tungstenite fixes the step when the WebSocket is made, so the connection makes it again
//! around the same socket when the step should change, which is safe only between two messages
//! with nothing read and unparsed (`boundary.rs`): [`ReadSize::Dormant`] from the start (unless
//! the handshake brought frames already) and once it settles (`settle.rs`), [`ReadSize::Small`]
//! at the first read after that, [`ReadSize::Big`] once a frame bigger than the small step came.
//! Each change is one allocation at the start or the end of a burst, none per message.

use tungstenite::protocol::WebSocketConfig;

/// The step for small messages: the frames of chat-like traffic fit in one read.
pub(crate) const SMALL: usize = 2 * 1024;

/// The step once the client sent a frame bigger than [`SMALL`]: a 4 KiB message takes one read
/// instead of three, and a TLS record's plaintext (at most 16 KiB) one instead of eight. Held
/// only while the connection is busy: it goes back when the connection settles.
pub(crate) const BIG: usize = 16 * 1024;

/// The read step a connection's WebSocket was made with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadSize {
    /// No read buffer: the connection has read nothing since it started or settled.
    /// tungstenite would read a frame header's worth (14 bytes) at a time, so the connection
    /// moves to [`ReadSize::Small`] before it reads, unless its close handshake has begun: a
    /// Close reply is read in those small steps rather than risk the protocol's state.
    Dormant,
    Small,
    Big,
}

impl ReadSize {
    /// The step in bytes.
    pub(crate) fn bytes(self) -> usize {
        match self {
            ReadSize::Dormant => 0,
            ReadSize::Small => SMALL,
            ReadSize::Big => BIG,
        }
    }

    /// `config` with this step.
    pub(crate) fn apply(self, config: WebSocketConfig) -> WebSocketConfig {
        config.read_buffer_size(self.bytes())
    }

    /// The step a connection wants once it has read frames up to `largest` bytes long, if it
    /// is not the one it has.
    pub(crate) fn after_reading(self, largest: u64) -> Option<ReadSize> {
        let wanted = if largest > SMALL as u64 {
            ReadSize::Big
        } else {
            ReadSize::Small
        };
        match self {
            ReadSize::Dormant => Some(wanted),
            ReadSize::Small if wanted == ReadSize::Big => Some(wanted),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dormant_connection_wakes_to_the_step_its_frames_need() {
        assert_eq!(ReadSize::Dormant.after_reading(0), Some(ReadSize::Small));
        assert_eq!(ReadSize::Dormant.after_reading(5000), Some(ReadSize::Big));
    }

    #[test]
    fn the_step_only_grows_until_the_connection_settles() {
        assert_eq!(ReadSize::Small.after_reading(SMALL as u64), None);
        assert_eq!(
            ReadSize::Small.after_reading(SMALL as u64 + 1),
            Some(ReadSize::Big)
        );
        assert_eq!(ReadSize::Big.after_reading(0), None);
        assert_eq!(ReadSize::Big.after_reading(1 << 20), None);
    }

    #[test]
    fn a_dormant_websocket_allocates_no_read_buffer() {
        let config = ReadSize::Dormant.apply(WebSocketConfig::default());
        assert_eq!(config.read_buffer_size, 0);
        assert_eq!(
            ReadSize::Big.apply(config).read_buffer_size,
            BIG,
            "the step is the only setting that changes"
        );
    }
}
