//! The slow listener of `wsload fanout --slow-listener RATE`.
//!
//! One more listener that reads its socket at most RATE bytes per second,
//! like a client on a slow link. A server with broadcast flow control must
//! then slow the sender down to its pace and still deliver every message to
//! it, in order; a server without it buffers without bound, or drops the
//! listener (wsecho closes one that stays behind too long with 1008).
//!
//! It is a plain blocking socket read on a thread of its own (the calling
//! thread, while the workers run), not a connection of the event loops: a
//! throttled reader is a loop of read, then sleep, which an event loop
//! serving the fast listeners must not do. The handshake and the framing are
//! wsload's own, and every counted message goes through the same sequence
//! check as the fast listeners'.
//!
//! Reading is paced with a token bucket of one read's worth: a read of at
//! most `chunk` bytes is made only once `chunk` bytes of allowance have
//! accrued at RATE, so it never takes more than RATE bytes per second
//! (socket bytes, frame headers included), and never bursts after a pause.
//! Until it has seen the sync message it reads at full speed, so that even a
//! very slow listener registers within the sync timeout; what it reads then
//! is not counted.
//!
//! With `--resume` it connects with `?resume` like the other listeners, and
//! when the server lets it go (a server that does not pace its senders to a
//! slow reader closes it with 1008) or the connection breaks, it comes back
//! after a jittered pause with `?resume=EPOCH:OFFSET` and reads on at its
//! rate, catching up from the room's history (see `resume.rs`).
//!
//! Over `wss://` the socket is wrapped in rustls's blocking `StreamOwned`, and
//! the bytes paced and counted are the decrypted ones (frame headers
//! included); rustls reads at most one record (16 KiB) ahead of them, so the
//! socket is read at the same average rate.

use super::resume::{Counts, Ending, Resumer};
use super::{CLOSE_GRACE, Listener, Payload, Shared, classify};
use crate::frame::{self, Frame, Opcode};
use crate::handshake::{self, HandshakeError};
use crate::modes::Errors;
use crate::rng::Rng;
use crate::target::Target;
use anyhow::{Context, Result, bail};
use rustls::{ClientConnection, StreamOwned};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

/// Longest a blocking read or sleep lasts, so that the end of the run, its
/// timeout or an abort is noticed soon.
const TICK: Duration = Duration::from_millis(100);
/// Longest a write (a pong, a close frame) may block.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest single read.
const MAX_CHUNK: usize = 64 * 1024;

/// The slow listener's blocking socket: plain, or TLS over it.
enum SlowStream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl SlowStream {
    /// The TCP socket, for its timeouts.
    fn tcp(&self) -> &TcpStream {
        match self {
            SlowStream::Plain(tcp) => tcp,
            SlowStream::Tls(tls) => &tls.sock,
        }
    }
}

impl Read for SlowStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            SlowStream::Plain(tcp) => tcp.read(buf),
            SlowStream::Tls(tls) => tls.read(buf),
        }
    }
}

impl Write for SlowStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            SlowStream::Plain(tcp) => tcp.write(buf),
            SlowStream::Tls(tls) => tls.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            SlowStream::Plain(tcp) => tcp.flush(),
            SlowStream::Tls(tls) => tls.flush(),
        }
    }
}

/// The open connection of the slow listener, not yet reading.
pub struct SlowListener {
    stream: SlowStream,
    rng: Rng,
    /// Bytes per second.
    rate: u64,
    /// Received bytes not parsed yet: at first, whatever came behind the
    /// 101 response.
    rx: Vec<u8>,
    /// A message being reassembled from fragments: whether it is text, and
    /// its bytes so far.
    fragment: Option<(bool, Vec<u8>)>,
    stage: Stage,
    /// With `--resume`: where it is in its room, and the server to come back to.
    resume: Option<(Resumer, Target)>,
}

/// Where the slow listener is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Counting messages.
    Listening,
    /// Done counting (or out of time): reading what is left at full speed,
    /// which may hold a close frame of the server's.
    Draining,
    /// Our close frame is out; waiting for the server's answer.
    Closing,
}

/// What the slow listener saw.
#[derive(Debug, Default)]
pub struct SlowOutcome {
    /// Distinct counted messages.
    pub delivered: u64,
    pub out_of_order: u64,
    pub duplicates: u64,
    /// Text messages (greetings), ignored.
    pub texts: u64,
    /// Bytes read after the handshake.
    pub bytes: u64,
    pub closed_by_server: bool,
    pub close_code: Option<u16>,
    /// Its last delivery of a counted message, in ns since the run's base.
    pub last_delivery_ns: Option<i64>,
    pub errors: Errors,
    /// With `--resume`: its comings and goings, and how long each catch-up took.
    pub resume: Counts,
    pub catch_ups_ns: Vec<i64>,
}

/// Whether to go on reading after some input.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    Read,
    /// The connection is over (closed by the server, or broken), as this says.
    Stop(Ending),
}

impl SlowListener {
    /// Connects to `target` and completes the WebSocket handshake, by
    /// `deadline`; with `resume`, as a newcomer that resumes by position.
    pub fn connect(
        target: &Target,
        rate: u64,
        deadline: Instant,
        resume: bool,
    ) -> Result<SlowListener> {
        let resumer = resume.then(Resumer::new);
        let path = match &resumer {
            Some(r) => r.path(&target.path),
            None => target.path.clone(),
        };
        let (stream, rng, rx) =
            Self::handshake(target, &path, deadline).context("slow listener")?;
        Ok(SlowListener {
            stream,
            rng,
            rate,
            rx,
            fragment: None,
            stage: Stage::Listening,
            resume: resumer.map(|r| (r, target.clone())),
        })
    }

    /// A connection to `target` asking for `path`, its handshake done: the
    /// stream, its masking RNG, and whatever came behind the 101 response. A
    /// response the server refused carries a [`HandshakeError`].
    fn handshake(
        target: &Target,
        path: &str,
        deadline: Instant,
    ) -> Result<(SlowStream, Rng, Vec<u8>)> {
        let left = |what: &str| {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("{what} timed out");
            }
            Ok(left)
        };
        let tcp = TcpStream::connect_timeout(&target.addr, left("connecting")?)
            .with_context(|| format!("connect to {} failed", target.addr))?;
        tcp.set_nodelay(true)?;
        tcp.set_write_timeout(Some(WRITE_TIMEOUT))?;
        // With TLS, the first write does the TLS handshake, reading too.
        tcp.set_read_timeout(Some(left("the TLS handshake")?))?;
        let mut stream = match &target.tls {
            None => SlowStream::Plain(tcp),
            Some(tls) => {
                let session = tls.session().context("cannot start a TLS session")?;
                SlowStream::Tls(Box::new(StreamOwned::new(session, tcp)))
            }
        };
        let mut rng = Rng::from_entropy();
        let key = handshake::encode_key(rng.bytes16());
        let accept = handshake::accept_key(&key);
        let request = handshake::request(&target.host_header, path, &key);
        stream
            .write_all(request.as_bytes())
            .context("sending the upgrade request failed")?;
        let mut rx = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            stream
                .tcp()
                .set_read_timeout(Some(left("the handshake")?))?;
            match stream.read(&mut buf) {
                Ok(0) => bail!("the server closed the connection during the handshake"),
                Ok(n) => rx.extend_from_slice(&buf[..n]),
                Err(e) if is_transient(&e) => continue,
                Err(e) => return Err(e).context("reading the upgrade response failed"),
            }
            match handshake::check_response(&rx, &accept) {
                Ok(None) => {}
                Ok(Some(head_len)) => {
                    rx.drain(..head_len);
                    break;
                }
                Err(e) => return Err(anyhow::Error::new(e).context("handshake failed")),
            }
        }
        stream.tcp().set_read_timeout(Some(TICK))?;
        Ok((stream, rng, rx))
    }

    /// With `--resume`, after its connection ended (`ending`): waits its
    /// jittered pause and connects again asking for its position, over and
    /// over until it is back; true once it is. False without `--resume`, or
    /// when `deadline` or an abort comes first. Attempts that do not open are
    /// counted; a refused handshake is an error too.
    fn come_back(
        &mut self,
        ending: Ending,
        shared: &Shared,
        listener: &Listener,
        deadline: Instant,
        out: &mut SlowOutcome,
    ) -> bool {
        let Some((resumer, target)) = self.resume.as_mut() else {
            return false;
        };
        resumer.on_end(ending, Instant::now(), &mut self.rng, &mut out.resume);
        loop {
            let now = Instant::now();
            let Some(wait) = resumer.due_in(now, false) else {
                return false;
            };
            if now + wait >= deadline || shared.abort.load(Ordering::Acquire) {
                return false;
            }
            thread::sleep(wait);
            let now = Instant::now();
            resumer.reconnecting(now, shared.sent.load(Ordering::Acquire), listener.next);
            let path = resumer.path(&target.path);
            match Self::handshake(target, &path, deadline) {
                Ok((stream, _, rx)) => {
                    resumer.reopened(shared.sent.load(Ordering::Acquire), &mut out.resume);
                    self.stream = stream;
                    self.rx = rx;
                    self.fragment = None;
                    return true;
                }
                Err(e) => {
                    if e.chain().any(|cause| cause.is::<HandshakeError>()) {
                        out.errors
                            .record(format!("slow listener: coming back: {e:#}"));
                    }
                    resumer.on_end(
                        Ending::NotOpened,
                        Instant::now(),
                        &mut self.rng,
                        &mut out.resume,
                    );
                }
            }
        }
    }

    /// Reads at most `rate` bytes per second until it has every counted
    /// message, the server closes the connection, nothing more arrived for
    /// the drain time once everything was sent, the run is aborted, or
    /// `deadline`; then closes the connection politely, if it is still open.
    pub fn run(mut self, shared: &Shared, deadline: Instant) -> SlowOutcome {
        let mut out = SlowOutcome::default();
        let mut listener = Listener::new(shared.messages);
        let chunk = chunk_size(self.rate);
        let mut bucket = Bucket::new(self.rate, chunk, Instant::now());
        let mut buf = vec![0u8; MAX_CHUNK];
        let mut last_bytes = Instant::now();
        // Frames that came with the handshake response.
        let early = std::mem::take(&mut self.rx);
        let mut next = self.ingest(&early, shared, &mut listener, &mut out, last_bytes);
        loop {
            if let Next::Stop(ending) = next {
                // With --resume it comes back, and first takes what came with
                // the new handshake's response.
                if !self.come_back(ending, shared, &listener, deadline, &mut out) {
                    return out;
                }
                // The drain time counts from its return, not from its last read
                // before it left.
                last_bytes = Instant::now();
                next = self.ingest(&[], shared, &mut listener, &mut out, last_bytes);
                continue;
            }
            let now = Instant::now();
            if shared.abort.load(Ordering::Acquire)
                || listener.distinct == shared.messages
                || now >= deadline
            {
                break;
            }
            if shared.drained(shared.ns_since_base(last_bytes), now) {
                break;
            }
            let synced = listener.synced;
            let len = if synced {
                if let Some(wait) = bucket.wait(now) {
                    thread::sleep(wait.min(TICK).min(deadline - now));
                    continue;
                }
                chunk
            } else {
                buf.len()
            };
            match self.stream.read(&mut buf[..len]) {
                Ok(0) => {
                    if self.resume.is_none() {
                        out.closed_by_server = true;
                        out.errors
                            .record("slow listener: server dropped the TCP connection");
                    }
                    next = Next::Stop(Ending::Dropped);
                }
                Ok(n) => {
                    let now = Instant::now();
                    out.bytes += n as u64;
                    last_bytes = now;
                    if synced {
                        bucket.spend(n);
                    }
                    next = self.ingest(&buf[..n], shared, &mut listener, &mut out, now);
                    if !synced && listener.synced {
                        // From here on, at most `rate` bytes per second.
                        bucket = Bucket::new(self.rate, chunk, now);
                        bucket.spend(chunk);
                    }
                }
                Err(e) if is_transient(&e) => {}
                Err(e) => {
                    if self.resume.is_none() {
                        out.errors.record(format!("slow listener: I/O error: {e}"));
                    }
                    next = Next::Stop(Ending::Dropped);
                }
            }
        }
        self.close(shared, &mut listener, &mut out);
        out
    }

    /// Parses `data` after what is buffered, acting on every whole frame.
    fn ingest(
        &mut self,
        data: &[u8],
        shared: &Shared,
        listener: &mut Listener,
        out: &mut SlowOutcome,
        now: Instant,
    ) -> Next {
        // Moved out while frames are handled, which may write to the socket.
        let mut rx = std::mem::take(&mut self.rx);
        rx.extend_from_slice(data);
        let mut used = 0;
        let mut next = Next::Read;
        while next == Next::Read {
            match frame::decode(&rx[used..]) {
                Ok(None) => break,
                Ok(Some(frame)) => {
                    used += frame.len;
                    next = self.on_frame(frame, shared, listener, out, now);
                }
                Err(e) => {
                    out.errors
                        .record(format!("slow listener: protocol error: {e}"));
                    next = Next::Stop(Ending::Dropped);
                }
            }
        }
        rx.drain(..used);
        self.rx = rx;
        next
    }

    fn on_frame(
        &mut self,
        frame: Frame<'_>,
        shared: &Shared,
        listener: &mut Listener,
        out: &mut SlowOutcome,
        now: Instant,
    ) -> Next {
        match frame.opcode {
            // Once done counting, only the server's close frame matters.
            Opcode::Text | Opcode::Binary | Opcode::Continuation | Opcode::Ping
                if self.stage != Stage::Listening => {}
            Opcode::Text | Opcode::Binary => {
                let text = frame.opcode == Opcode::Text;
                if self.fragment.is_some() {
                    out.errors.record(
                        "slow listener: protocol error: new message started inside a fragmented one",
                    );
                    return Next::Stop(Ending::Dropped);
                }
                if frame.fin {
                    let resumer = self.resume.as_mut().map(|(r, _)| r);
                    deliver(text, frame.payload, shared, listener, resumer, out, now);
                } else {
                    self.fragment = Some((text, frame.payload.to_vec()));
                }
            }
            Opcode::Continuation => {
                let Some((_, data)) = self.fragment.as_mut() else {
                    out.errors.record(
                        "slow listener: protocol error: continuation frame without a message",
                    );
                    return Next::Stop(Ending::Dropped);
                };
                if data.len() + frame.payload.len() > frame::MAX_PAYLOAD {
                    out.errors.record(format!(
                        "slow listener: protocol error: fragmented message exceeds {} bytes",
                        frame::MAX_PAYLOAD
                    ));
                    return Next::Stop(Ending::Dropped);
                }
                data.extend_from_slice(frame.payload);
                if frame.fin {
                    let (text, data) = self.fragment.take().expect("checked above");
                    let resumer = self.resume.as_mut().map(|(r, _)| r);
                    deliver(text, &data, shared, listener, resumer, out, now);
                }
            }
            Opcode::Ping => {
                if let Err(e) = self.send(Opcode::Pong, frame.payload) {
                    out.errors
                        .record(format!("slow listener: cannot answer a ping: {e}"));
                    return Next::Stop(Ending::Dropped);
                }
            }
            Opcode::Pong => {}
            Opcode::Close => {
                let code = frame
                    .payload
                    .get(..2)
                    .map(|b| u16::from_be_bytes([b[0], b[1]]));
                // Once ours is out, a 1000 is its answer; anything else is a
                // close of the server's own (say, 1008) that crossed it.
                let answer = self.stage == Stage::Closing && code == Some(1000);
                // With --resume, a close while listening is a reason to come
                // back, counted there, not a failure.
                let comes_back = self.resume.is_some() && self.stage == Stage::Listening;
                if !answer && !comes_back {
                    out.closed_by_server = true;
                    out.close_code = code;
                    out.errors.record(format!(
                        "slow listener: server closed the connection{}",
                        code.map_or(String::new(), |c| format!(" (code {c})"))
                    ));
                }
                if self.stage != Stage::Closing {
                    // Answer it; the server drops the TCP connection next.
                    let _ = self.send(Opcode::Close, frame.payload.get(..2).unwrap_or(&[]));
                }
                return Next::Stop(Ending::Closed(code));
            }
        }
        Next::Read
    }

    /// Writes one masked frame.
    fn send(&mut self, opcode: Opcode, payload: &[u8]) -> io::Result<()> {
        let mut bytes = Vec::with_capacity(payload.len() + 14);
        frame::encode_masked(&mut bytes, opcode, payload, self.rng.mask());
        self.stream.write_all(&bytes)
    }

    /// Ends the connection politely. First reads, at full speed and no
    /// longer counting, what has already arrived: when the listener gave up
    /// at the timeout, a close frame of the server's (1008: too slow) may be
    /// waiting behind unread data, and must be read before anything is sent
    /// to a server that may have closed its socket (which would answer with
    /// a reset and discard it). Then sends a close frame and waits for the
    /// answer. Each step takes at most the grace time.
    fn close(mut self, shared: &Shared, listener: &mut Listener, out: &mut SlowOutcome) {
        self.stage = Stage::Draining;
        if matches!(self.read_out(shared, listener, out), Next::Stop(_)) {
            return;
        }
        self.stage = Stage::Closing;
        if self.send(Opcode::Close, &1000u16.to_be_bytes()).is_ok() {
            self.read_out(shared, listener, out);
        }
    }

    /// Reads and parses at full speed until the server closes, nothing comes
    /// for a tick (while draining), or the grace time is over.
    fn read_out(
        &mut self,
        shared: &Shared,
        listener: &mut Listener,
        out: &mut SlowOutcome,
    ) -> Next {
        let deadline = Instant::now() + CLOSE_GRACE;
        let mut buf = vec![0u8; MAX_CHUNK];
        while Instant::now() < deadline {
            match self.stream.read(&mut buf) {
                Ok(0) => return Next::Stop(Ending::Dropped),
                Ok(n) => {
                    out.bytes += n as u64;
                    let now = Instant::now();
                    let next = self.ingest(&buf[..n], shared, listener, out, now);
                    if next != Next::Read {
                        return next;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Nothing for a tick: all that had arrived is read.
                Err(e) if is_transient(&e) && self.stage == Stage::Draining => return Next::Read,
                Err(e) if is_transient(&e) => {}
                Err(_) => return Next::Stop(Ending::Dropped),
            }
        }
        Next::Read
    }
}

/// Checks a whole data message like a fast listener does; with `--resume`,
/// the first of each connection is the header, and each after it the room's
/// next offset.
fn deliver(
    text: bool,
    data: &[u8],
    shared: &Shared,
    listener: &mut Listener,
    resumer: Option<&mut Resumer>,
    out: &mut SlowOutcome,
    now: Instant,
) {
    let mut resumer = resumer;
    if let Some(r) = resumer.as_deref_mut() {
        if r.awaiting_header() {
            if let Err(why) = r.on_header(data, &mut out.resume) {
                out.errors.record(format!("slow listener: {why}"));
            }
            return;
        }
        r.next_offset();
    }
    if text {
        out.texts += 1; // greetings: ignored, but counted
        return;
    }
    match classify(data, shared) {
        Ok(Payload::Sync) => listener.sync(shared),
        Ok(Payload::Counted { seq, .. }) => {
            if let Some(r) = resumer {
                let (counted, numbered) = r.on_counted(seq, now, &mut out.resume);
                if let Err(why) = numbered {
                    out.errors.record(format!("slow listener: {why}"));
                }
                if let Some(took) = counted.catch_up {
                    out.catch_ups_ns.push(crate::stats::nanos(took));
                }
            }
            let now_ns = shared.ns_since_base(now);
            out.last_delivery_ns = Some(out.last_delivery_ns.map_or(now_ns, |t| t.max(now_ns)));
            let arrival = listener.record(seq);
            out.out_of_order += u64::from(!arrival.in_order);
            if arrival.new {
                out.delivered += 1;
            } else {
                out.duplicates += 1;
            }
        }
        Err(why) => out.errors.record(format!("slow listener: {why}")),
    }
}

/// A read timing out or being interrupted: try again.
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// Bytes per read at `rate`: about 1/64 s worth (32 KiB at 2 MiB/s), so the
/// reading is steady rather than a gulp a second.
fn chunk_size(rate: u64) -> usize {
    usize::try_from(rate / 64)
        .unwrap_or(MAX_CHUNK)
        .clamp(1, MAX_CHUNK)
}

/// Allowance to read: accrues at `rate` bytes per second up to one chunk.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    chunk: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// A full bucket at `now`.
    fn new(rate: u64, chunk: usize, now: Instant) -> Bucket {
        Bucket {
            rate: rate as f64,
            chunk: chunk as f64,
            tokens: chunk as f64,
            last: now,
        }
    }

    /// None when a whole chunk may be read now, else how long until it may.
    fn wait(&mut self, now: Instant) -> Option<Duration> {
        let accrued = now.saturating_duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + accrued).min(self.chunk);
        self.last = now;
        if self.tokens >= self.chunk {
            None
        } else {
            Some(Duration::from_secs_f64(
                (self.chunk - self.tokens) / self.rate,
            ))
        }
    }

    fn spend(&mut self, bytes: usize) {
        self.tokens -= bytes as f64;
    }
}

#[cfg(test)]
mod tests {
    use super::super::SYNC;
    use super::*;
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize};

    fn shared(messages: u64, size: usize) -> Shared {
        Shared {
            base: Instant::now(),
            threads: 1,
            listeners: 0,
            messages,
            rate: 0,
            size,
            concurrency: 1,
            connect_deadline: Instant::now(),
            timeout: Duration::from_secs(5),
            drain: Duration::from_secs(2),
            sync_target: 1,
            synced: AtomicUsize::new(0),
            send_done_ns: AtomicI64::new(-1),
            abort: AtomicBool::new(false),
            complete: AtomicUsize::new(0),
            server_cpu: None,
            resume: false,
            leave_after: None,
            sent: AtomicU64::new(0),
            sender_copies: AtomicU64::new(0),
        }
    }

    /// An unmasked server frame.
    fn server_frame(wire: &mut Vec<u8>, first_byte: u8, payload: &[u8]) {
        assert!(payload.len() < 126);
        wire.extend_from_slice(&[first_byte, payload.len() as u8]);
        wire.extend_from_slice(payload);
    }

    fn message(seq: u64) -> Vec<u8> {
        let mut data = seq.to_le_bytes().to_vec();
        data.extend_from_slice(&[0; 8]);
        data
    }

    #[test]
    fn checks_order_answers_pings_and_reports_the_close_code() {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = TcpStream::connect(server.local_addr().unwrap()).unwrap();
        let (mut peer, _) = server.accept().unwrap();
        stream.set_read_timeout(Some(TICK)).unwrap();
        let slow = SlowListener {
            stream: SlowStream::Plain(stream),
            rng: Rng::with_seed(1),
            rate: 1 << 20,
            rx: Vec::new(),
            fragment: None,
            stage: Stage::Listening,
            resume: None,
        };
        // Five messages are counted; 4 never comes, so only the close ends it.
        let shared = shared(5, 16);
        let mut wire = Vec::new();
        server_frame(&mut wire, 0x81, b"hello"); // a greeting
        server_frame(&mut wire, 0x82, &message(SYNC));
        for seq in [0, 2, 1] {
            server_frame(&mut wire, 0x82, &message(seq));
        }
        server_frame(&mut wire, 0x89, b"p"); // ping
        let three = message(3);
        server_frame(&mut wire, 0x02, &three[..5]); // fragmented
        server_frame(&mut wire, 0x80, &three[5..]);
        server_frame(&mut wire, 0x82, &message(3)); // again
        server_frame(&mut wire, 0x88, &1008u16.to_be_bytes());
        peer.write_all(&wire).unwrap();

        let out = slow.run(&shared, Instant::now() + Duration::from_secs(5));
        assert_eq!(shared.synced.load(Ordering::Acquire), 1);
        assert_eq!((out.delivered, out.duplicates, out.texts), (4, 1, 1));
        // 2 after 0, 1 after 2, 3 after 1, 3 after 3.
        assert_eq!(out.out_of_order, 4);
        assert!(out.closed_by_server);
        assert_eq!(out.close_code, Some(1008));
        assert_eq!(out.bytes, wire.len() as u64);
        assert_eq!(
            out.errors.first.as_deref(),
            Some("slow listener: server closed the connection (code 1008)")
        );
        // It answered the ping, then the close, with masked frames.
        let mut reply = [0u8; 2 + 4 + 1 + 2 + 4 + 2];
        peer.read_exact(&mut reply).unwrap();
        assert_eq!(reply[..2], [0x8A, 0x81]);
        assert_eq!(reply[7..9], [0x88, 0x82]);
    }

    #[test]
    fn with_resume_it_reads_the_header_counts_offsets_and_tries_to_come_back() {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        let stream = TcpStream::connect(addr).unwrap();
        let (mut peer, _) = server.accept().unwrap();
        stream.set_read_timeout(Some(TICK)).unwrap();
        let target = crate::target::resolve(&format!("ws://{addr}/room"), false).unwrap();
        let slow = SlowListener {
            stream: SlowStream::Plain(stream),
            rng: Rng::with_seed(3),
            rate: 1 << 20,
            rx: Vec::new(),
            fragment: None,
            stage: Stage::Listening,
            resume: Some((Resumer::new(), target)),
        };
        let shared = shared(5, 16);
        let mut wire = Vec::new();
        server_frame(
            &mut wire,
            0x81,
            br#"{"epoch":"e1","offset":40,"recovered":false}"#,
        );
        server_frame(&mut wire, 0x82, &message(SYNC)); // offset 41
        server_frame(&mut wire, 0x82, &message(0)); // 42
        server_frame(&mut wire, 0x82, &message(1)); // 43
        server_frame(&mut wire, 0x82, &message(3)); // 44: a gap in the room's numbering
        server_frame(&mut wire, 0x88, &1008u16.to_be_bytes());
        peer.write_all(&wire).unwrap();
        // It comes back to the same address, whose second connection never answers: the
        // attempt fails at the deadline.
        let started = Instant::now();
        let out = slow.run(&shared, started + Duration::from_millis(600));
        assert!(started.elapsed() < Duration::from_secs(3));
        assert_eq!(
            (out.delivered, out.texts),
            (3, 0),
            "the header is no message"
        );
        assert_eq!(out.resume.closed_1008, 1);
        assert_eq!(out.resume.offset_errors, 1);
        assert!(out.resume.failed_attempts >= 1, "{:?}", out.resume);
        // Let go and coming back is no failure by itself; the gap is.
        assert_eq!((out.closed_by_server, out.close_code), (false, None));
        assert_eq!(
            out.errors.first.as_deref(),
            Some(
                "slow listener: message 3 came at offset 44, where the messages before it put it at 45"
            )
        );
        // It asked for its position: after offset 44 of epoch e1.
        let (mut again, _) = server.accept().unwrap();
        let mut request = vec![0u8; 4096];
        let n = again.read(&mut request).unwrap();
        let request = String::from_utf8_lossy(&request[..n]);
        assert!(
            request.starts_with("GET /room?resume=e1:44 HTTP/1.1\r\n"),
            "{request}"
        );
    }

    #[test]
    fn a_close_found_after_the_timeout_is_reported_but_nothing_counted() {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = TcpStream::connect(server.local_addr().unwrap()).unwrap();
        let (mut peer, _) = server.accept().unwrap();
        stream.set_read_timeout(Some(TICK)).unwrap();
        let slow = SlowListener {
            stream: SlowStream::Plain(stream),
            rng: Rng::with_seed(2),
            rate: 10,
            rx: Vec::new(),
            fragment: None,
            stage: Stage::Listening,
            resume: None,
        };
        let shared = shared(5, 16);
        let mut wire = Vec::new();
        server_frame(&mut wire, 0x82, &message(SYNC));
        server_frame(&mut wire, 0x82, &message(0));
        server_frame(&mut wire, 0x88, &1008u16.to_be_bytes());
        peer.write_all(&wire).unwrap();
        // Out of time at once: it closes, and finds the server's 1008.
        let out = slow.run(&shared, Instant::now());
        assert_eq!((out.delivered, out.out_of_order), (0, 0));
        assert!(out.closed_by_server);
        assert_eq!(out.close_code, Some(1008));
        // It answered the server's close frame (and sent no other).
        let mut reply = Vec::new();
        peer.read_to_end(&mut reply).unwrap();
        assert_eq!(reply.len(), 2 + 4 + 2);
        assert_eq!(reply[..2], [0x88, 0x82]);
    }

    #[test]
    fn chunks_are_a_64th_of_a_second() {
        assert_eq!(chunk_size(2 << 20), 32 * 1024);
        assert_eq!(chunk_size(10), 1);
        assert_eq!(chunk_size(1 << 30), MAX_CHUNK);
    }

    #[test]
    fn the_bucket_keeps_the_rate() {
        // 1000 B/s in chunks of 100 B: a chunk every 100 ms, never two at once.
        let start = Instant::now();
        let mut bucket = Bucket::new(1000, 100, start);
        assert_eq!(bucket.wait(start), None);
        bucket.spend(100);
        let wait = bucket.wait(start).unwrap();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9, "{wait:?}");
        assert!(bucket.wait(start + Duration::from_millis(50)).is_some());
        assert_eq!(bucket.wait(start + Duration::from_millis(100)), None);
        // A long pause saves up one chunk, not ten.
        bucket.spend(100);
        assert_eq!(bucket.wait(start + Duration::from_secs(2)), None);
        bucket.spend(100);
        assert!(bucket.wait(start + Duration::from_secs(2)).is_some());
        // A short read spends only what it took.
        let mut bucket = Bucket::new(1000, 100, start);
        bucket.spend(40);
        let wait = bucket.wait(start).unwrap();
        assert!((wait.as_secs_f64() - 0.04).abs() < 1e-9, "{wait:?}");
    }
}
