//! A connection's byte stream: plain TCP, or TLS on top of it.
//!
//! The same stream serves both phases of a connection. While the request head is read it is
//! blocking, with a deadline ([`Transport::set_read_timeout`]) that covers the TLS handshake
//! too: a client that stops mid-handshake, or dribbles its ClientHello, is dropped when the
//! handshake timeout expires, like one that dribbles its request. After the WebSocket
//! handshake it is non-blocking, and the connection's loop drives it: reads answer "would
//! block", and [`Transport::write_vectored_frames`] takes what the socket (or rustls's buffer)
//! takes now.
//!
//! Three things about rustls that the loop must know, each answered here:
//!
//! - rustls decrypts whole records, so after a read it may hold plaintext that the socket no
//!   longer signals: [`Transport::buffered_input`] says so, and the loop does not sleep then.
//! - Handshake messages, alerts and key updates are written by rustls on its own:
//!   [`Transport::pending_output`] says bytes are waiting, and the loop waits for room.
//! - rustls takes plaintext only up to its buffer limit ([`TLS_SEND_BUFFER`]): frames beyond it
//!   stay in the connection's own queue, where the backlog and the memory budget count them.

use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::time::Duration;
#[cfg(feature = "tls")]
use std::time::Instant;

#[cfg(feature = "tls")]
use rustls::ServerConnection;

use crate::http::Conn;
use crate::sys::NoSigpipe;

/// Encrypted bytes rustls may hold for sending before it refuses more plaintext. 64 KiB keeps
/// a fast client's socket busy between two wake-ups (four full records); an idle connection
/// keeps none of it, as rustls frees its send queue once it is written.
#[cfg(feature = "tls")]
pub(super) const TLS_SEND_BUFFER: usize = 64 * 1024;

/// A connection's stream.
#[derive(Debug)]
pub(super) enum Transport {
    /// `ws://` and `http://`. Shared, so that broadcasters may write into it
    /// (`SendQueue::lend`).
    Plain(Arc<TcpStream>),
    /// `wss://` and `https://`.
    #[cfg(feature = "tls")]
    Tls(Box<TlsStream>),
}

/// TLS over a TCP socket, in either phase (see the module's docs).
#[cfg(feature = "tls")]
#[derive(Debug)]
pub(super) struct TlsStream {
    tls: ServerConnection,
    tcp: TcpStream,
    /// While blocking: when the current read, or write, must have finished.
    read_deadline: Option<Instant>,
    write_deadline: Option<Instant>,
}

impl Transport {
    /// TLS on an accepted socket; the handshake happens in the first reads.
    #[cfg(feature = "tls")]
    pub(super) fn tls(tcp: TcpStream, mut tls: ServerConnection) -> Transport {
        tls.set_buffer_limit(Some(TLS_SEND_BUFFER));
        Transport::Tls(Box::new(TlsStream {
            tls,
            tcp,
            read_deadline: None,
            write_deadline: None,
        }))
    }

    /// The TCP socket underneath.
    pub(super) fn tcp(&self) -> &TcpStream {
        match self {
            Transport::Plain(tcp) => tcp,
            #[cfg(feature = "tls")]
            Transport::Tls(tls) => &tls.tcp,
        }
    }

    /// The socket, to share with other threads: plain TCP only (TLS's state is this thread's).
    pub(super) fn shareable(&self) -> Option<Arc<TcpStream>> {
        match self {
            Transport::Plain(tcp) => Some(Arc::clone(tcp)),
            #[cfg(feature = "tls")]
            Transport::Tls(_) => None,
        }
    }

    /// The TLS version and the server name the client asked for (SNI), as the `whoami` test
    /// control shows them; `None` on plain TCP.
    pub(super) fn tls_info(&self) -> Option<crate::http::controls::TlsInfo> {
        match self {
            Transport::Plain(_) => None,
            #[cfg(feature = "tls")]
            Transport::Tls(tls) => Some(crate::http::controls::TlsInfo {
                version: match tls.tls.protocol_version() {
                    Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
                    Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
                    Some(other) => format!("{other:?}"),
                    None => "unknown".to_string(),
                },
                sni: tls.tls.server_name().map(str::to_string),
            }),
        }
    }

    /// Whether this is TLS.
    pub(super) fn is_tls(&self) -> bool {
        match self {
            Transport::Plain(_) => false,
            #[cfg(feature = "tls")]
            Transport::Tls(_) => true,
        }
    }

    /// Switches to the connection loop's phase: non-blocking, no deadlines, no Nagle (frames
    /// are whole messages, Nagle's algorithm would only delay them).
    #[cfg_attr(not(feature = "tls"), allow(unused_mut))]
    pub(super) fn into_nonblocking(mut self) -> io::Result<Transport> {
        #[cfg(feature = "tls")]
        if let Transport::Tls(tls) = &mut self {
            tls.read_deadline = None;
            tls.write_deadline = None;
        }
        let tcp = self.tcp();
        tcp.set_read_timeout(None)?;
        tcp.set_write_timeout(None)?;
        tcp.set_nonblocking(true)?;
        tcp.set_nodelay(true)?;
        Ok(self)
    }

    /// Writes as much of `frames` as can go now; `WouldBlock` when nothing can.
    pub(super) fn write_vectored_frames(&mut self, frames: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Transport::Plain(tcp) => NoSigpipe(tcp).write_vectored(frames),
            #[cfg(feature = "tls")]
            Transport::Tls(tls) => tls.write_frames(frames),
        }
    }

    /// Whether decrypted bytes wait inside rustls, which the socket no longer signals.
    pub(super) fn buffered_input(&mut self) -> bool {
        match self {
            Transport::Plain(_) => false,
            #[cfg(feature = "tls")]
            Transport::Tls(tls) => tls
                .tls
                .process_new_packets()
                .is_ok_and(|state| state.plaintext_bytes_to_read() > 0),
        }
    }

    /// Whether TLS bytes (handshake, alerts, encrypted frames) wait to be written.
    pub(super) fn pending_output(&self) -> bool {
        match self {
            Transport::Plain(_) => false,
            #[cfg(feature = "tls")]
            Transport::Tls(tls) => tls.tls.wants_write(),
        }
    }

    /// Writes what TLS bytes the socket takes now.
    pub(super) fn flush_pending(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(_) => Ok(()),
            #[cfg(feature = "tls")]
            Transport::Tls(tls) => match tls.flush_tls() {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
                other => other,
            },
        }
    }

    /// Ends TLS cleanly (a close_notify alert, if the socket takes it), then the socket.
    ///
    /// With `reset`, for a client that stopped reading: no close_notify and no FIN, but
    /// SO_LINGER 0, so that closing the socket (when its last reference drops, which is now:
    /// the connection has taken its socket back from the broadcasters) sends a reset and the
    /// kernel frees the socket and the bytes it held at once. A FIN would wait behind those
    /// bytes, in FIN-WAIT-1, for a client that never opens its window again, until the
    /// kernel gives up on it (minutes).
    pub(super) fn close(&mut self, reset: bool) {
        if reset {
            // Failing leaves a normal close, which is all that can be done.
            let _ = socket2::SockRef::from(self.tcp()).set_linger(Some(Duration::ZERO));
            return;
        }
        #[cfg(feature = "tls")]
        if let Transport::Tls(tls) = self {
            tls.tls.send_close_notify();
            let _ = tls.flush_tls();
        }
        let _ = self.tcp().shutdown(Shutdown::Both);
    }
}

#[cfg(feature = "tls")]
impl TlsStream {
    /// Writes rustls's pending TLS bytes to the socket until it has none or the socket is full
    /// (`WouldBlock`, or a timeout while blocking).
    fn flush_tls(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            arm(&self.tcp, self.write_deadline, TcpStream::set_write_timeout)?;
            match self.tls.write_tls(&mut NoSigpipe(&self.tcp)) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Encrypts as much of `frames` as rustls's buffer takes, and sends what the socket takes.
    fn write_frames(&mut self, frames: &[IoSlice<'_>]) -> io::Result<usize> {
        // Encrypted bytes already waiting go first; new ones only when they are out, so rustls
        // never holds more than its buffer limit.
        self.flush_tls()?;
        let n = self.tls.writer().write_vectored(frames)?;
        if n == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        match self.flush_tls() {
            Ok(()) => Ok(n),
            // Taken by rustls; the rest goes when the socket has room (pending_output).
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(n),
            Err(e) => Err(e),
        }
    }
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(tcp) => (&**tcp).read(buf),
            #[cfg(feature = "tls")]
            Transport::Tls(tls) => tls.read(buf),
        }
    }
}

#[cfg(feature = "tls")]
impl Read for TlsStream {
    /// Plaintext rustls already holds, else one read of TLS bytes from the socket, decrypted.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.tls.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The peer closed TCP without close_notify: the end of the stream all the same.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            arm(&self.tcp, self.read_deadline, TcpStream::set_read_timeout)?;
            match self.tls.read_tls(&mut self.tcp) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let processed = self.tls.process_new_packets();
            // Handshake replies, or the alert that explains an error, go out now if they can.
            let flushed = self.flush_tls();
            if let Err(e) = processed {
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
            match flushed {
                Err(e) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
                _ => {}
            }
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored_frames(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.write_vectored_frames(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(tcp) => (&**tcp).flush(),
            #[cfg(feature = "tls")]
            Transport::Tls(tls) => tls.flush_tls(),
        }
    }
}

impl Conn for Transport {
    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Transport::Plain(tcp) => tcp.set_read_timeout(timeout),
            #[cfg(feature = "tls")]
            Transport::Tls(tls) => {
                tls.read_deadline = timeout.map(|t| Instant::now() + t);
                Ok(())
            }
        }
    }

    fn set_write_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Transport::Plain(tcp) => tcp.set_write_timeout(timeout),
            #[cfg(feature = "tls")]
            Transport::Tls(tls) => {
                tls.write_deadline = timeout.map(|t| Instant::now() + t);
                Ok(())
            }
        }
    }

    fn shutdown_write(&mut self) {
        #[cfg(feature = "tls")]
        if let Transport::Tls(tls) = self {
            tls.tls.send_close_notify();
            let _ = tls.flush_tls();
        }
        let _ = self.tcp().shutdown(Shutdown::Write);
    }
}

#[cfg(feature = "tls")]
/// Sets the socket's timeout to what is left before `deadline` (no deadline: none). A deadline
/// already passed is a timeout, before any system call: every socket operation of a TLS read
/// counts against the one deadline, however many there are.
fn arm(
    tcp: &TcpStream,
    deadline: Option<Instant>,
    set: fn(&TcpStream, Option<Duration>) -> io::Result<()>,
) -> io::Result<()> {
    let Some(deadline) = deadline else {
        return Ok(());
    };
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::ErrorKind::TimedOut.into());
    }
    set(tcp, Some(left))
}
