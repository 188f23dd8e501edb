//! One fan-out run, with wsload fanout's semantics: every connection open,
//! then a sync message repeated until every listener has seen one (so a
//! message lost at the start is the server's fault, not a race in the
//! benchmark), then the counted messages at the rate asked for, each
//! stamped with the moment it was sent on this process's monotonic clock.

use crate::args::Args;
use crate::listener;
use crate::payload::{self, SYNC};
use crate::{cpu, report::Report};
use futures_util::{SinkExt, StreamExt};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How often the sender repeats the sync message while waiting (wsload's).
const SYNC_EVERY: Duration = Duration::from_millis(50);
/// How long every listener gets to see a sync message (wsload's).
const SYNC_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a close handshake may take once the run is over.
pub const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// How often the run looks whether it is over.
const TICK: Duration = Duration::from_millis(10);
/// Each connection's read buffer: 4 KiB, as tungstenite's docs advise for "a
/// lot of connections" (WebSocketConfig::read_buffer_size). Its default, 128
/// KiB, is zero-filled before every read: with 5,000 listeners that memset
/// alone takes over half the client's CPU, and the client, not the server,
/// then sets the latency (docs/performance.md, "Two clients").
const READ_BUFFER: usize = 4 * 1024;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The settings and what the tasks share.
pub struct Run {
    pub args: Args,
    /// Timestamps in messages are nanoseconds since this instant.
    base: Instant,
    handshakes: Semaphore,
    connect_deadline: Instant,
    /// Connections whose handshake ended, well or not, and those opened.
    tried: AtomicUsize,
    opened: AtomicUsize,
    pub synced: AtomicUsize,
    /// Listeners with every counted message.
    complete: AtomicUsize,
    /// When a counted message last arrived, and when the sender was done, in
    /// ns since `base` (0: not yet).
    last_arrival_ns: AtomicU64,
    send_done_ns: AtomicU64,
    /// The server's CPU seconds at the first counted send and at the end of
    /// the sending (the last listener complete, or the run giving up).
    cpu_start: OnceLock<f64>,
    cpu_end: OnceLock<f64>,
}

impl Run {
    pub fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    /// A connection with Nagle's algorithm off, as wsload's: a 32-byte message
    /// must not wait for the ACK of the one before it.
    pub async fn connect(&self) -> Result<Ws, String> {
        let connected = async {
            let _turn = self.handshakes.acquire().await.map_err(|e| e.to_string())?;
            let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER);
            tokio_tungstenite::connect_async_with_config(self.args.url.as_str(), Some(config), true)
                .await
                .map_err(|e| e.to_string())
        };
        let outcome = tokio::time::timeout_at(self.connect_deadline.into(), connected)
            .await
            .map_err(|_| "not open before --connect-timeout".to_string());
        // Counted as opened before as tried: once every connection is tried,
        // the count of those opened is final.
        if matches!(outcome, Ok(Ok(_))) {
            self.opened.fetch_add(1, Ordering::AcqRel);
        }
        self.tried.fetch_add(1, Ordering::AcqRel);
        Ok(outcome??.0)
    }

    pub fn note_arrival(&self, now_ns: u64) {
        self.last_arrival_ns.fetch_max(now_ns, Ordering::AcqRel);
    }

    /// Counts a listener that has every message; the last one ends the
    /// server's CPU time.
    pub fn listener_complete(&self) {
        if self.complete.fetch_add(1, Ordering::AcqRel) + 1 == self.args.listeners {
            self.read_server_cpu(&self.cpu_end);
        }
    }

    fn read_server_cpu(&self, at: &OnceLock<f64>) {
        if let Some(pid) = self.args.pid
            && let Some(s) = cpu::seconds(&pid.to_string())
        {
            let _ = at.set(s);
        }
    }

    /// True once every listener has everything, or nothing arrived for the
    /// drain time after the last send (what is missing then is lost).
    fn over(&self) -> bool {
        if self.complete.load(Ordering::Acquire) == self.args.listeners {
            return true;
        }
        let done = self.send_done_ns.load(Ordering::Acquire);
        let quiet_since = done.max(self.last_arrival_ns.load(Ordering::Acquire));
        done > 0 && self.now_ns() > quiet_since + self.args.drain.as_nanos() as u64
    }
}

/// Runs the test and reports it.
pub async fn run(args: Args) -> Report {
    let client_cpu_before = cpu::seconds("self");
    let run = Arc::new(Run {
        handshakes: Semaphore::new(args.concurrency),
        connect_deadline: Instant::now() + args.connect_timeout,
        args,
        base: Instant::now(),
        tried: AtomicUsize::new(0),
        opened: AtomicUsize::new(0),
        synced: AtomicUsize::new(0),
        complete: AtomicUsize::new(0),
        last_arrival_ns: AtomicU64::new(0),
        send_done_ns: AtomicU64::new(0),
        cpu_start: OnceLock::new(),
        cpu_end: OnceLock::new(),
    });
    let (stop, stopped) = watch::channel(false);
    let listeners: Vec<_> = (0..run.args.listeners)
        .map(|id| tokio::spawn(listener::listen(run.clone(), id, stopped.clone())))
        .collect();
    let mut report = Report::new(&run.args);
    // The sender last, once the listeners' handshakes are under way.
    let sender = run.connect().await;
    while run.tried.load(Ordering::Acquire) < run.args.listeners + 1 {
        tokio::time::sleep(TICK).await;
    }
    match sender {
        Ok(ws) => send(&run, ws, &stopped, &mut report).await,
        Err(why) => report.error(format!("sender: {why}")),
    }
    let _ = stop.send(true);
    for listener in listeners {
        match listener.await {
            Ok(tally) => report.add(tally),
            Err(e) => report.error(format!("a listener's task failed: {e}")),
        }
    }
    report.opened = run.opened.load(Ordering::Acquire);
    report.finish(
        run.cpu_end
            .get()
            .zip(run.cpu_start.get())
            .map(|(end, start)| end - start),
        cpu::seconds("self")
            .zip(client_cpu_before)
            .map(|(now, before)| now - before),
    );
    report
}

/// The sender's part: sync, then the counted messages at the rate, then
/// waiting until the run is over. Its own copies (a broadcast goes to the
/// sender too) are read and counted by a task of their own.
async fn send(run: &Arc<Run>, ws: Ws, stopped: &watch::Receiver<bool>, report: &mut Report) {
    let opened = run.opened.load(Ordering::Acquire);
    if opened < run.args.listeners + 1 {
        // Each listener's error says why; nothing to measure.
        report.error(format!(
            "only {opened} of {} connections opened",
            run.args.listeners + 1
        ));
        return;
    }
    let (mut sink, mut copies) = ws.split();
    let mut stop = stopped.clone();
    let echoes = tokio::spawn(async move {
        let mut n = 0u64;
        loop {
            tokio::select! {
                msg = copies.next() => match msg {
                    // Its copies of the counted messages, as wsload counts them.
                    Some(Ok(m)) => {
                        n += u64::from(payload::decode(&m.into_data()).is_some_and(|(seq, _)| seq != SYNC))
                    }
                    _ => break,
                },
                _ = stop.changed() => break,
            }
        }
        n
    });
    let message = |seq: u64| {
        let text = payload::encode(seq, run.now_ns(), run.args.size);
        if run.args.text {
            Message::text(text)
        } else {
            Message::binary(text.into_bytes())
        }
    };
    let sync_deadline = Instant::now() + SYNC_TIMEOUT;
    while run.synced.load(Ordering::Acquire) < run.args.listeners {
        if Instant::now() >= sync_deadline || sink.send(message(SYNC)).await.is_err() {
            let synced = run.synced.load(Ordering::Acquire);
            report.error(format!(
                "only {synced} of {} listeners received the sync message within {SYNC_TIMEOUT:?}",
                run.args.listeners
            ));
            return;
        }
        report.syncs += 1;
        tokio::time::sleep(SYNC_EVERY).await;
    }
    run.read_server_cpu(&run.cpu_start);
    let start = Instant::now();
    for seq in 0..run.args.messages {
        let due = start + Duration::from_secs_f64(seq as f64 / run.args.rate as f64);
        tokio::time::sleep_until(due.into()).await;
        // Stamped as it is handed to the socket: message() reads the clock.
        if let Err(e) = sink.send(message(seq)).await {
            report.error(format!("sender: {e}"));
            break;
        }
    }
    report.sent_in(start.elapsed());
    run.send_done_ns.store(run.now_ns(), Ordering::Release);
    let deadline = start + run.args.timeout;
    while !run.over() && Instant::now() < deadline {
        tokio::time::sleep(TICK).await;
    }
    // Giving up on what is missing ends the server's CPU time too.
    run.read_server_cpu(&run.cpu_end);
    // The server answers the close, which ends the copies' task.
    let _ = tokio::time::timeout(CLOSE_GRACE, sink.close()).await;
    if let Ok(Ok(n)) = tokio::time::timeout(CLOSE_GRACE, echoes).await {
        report.sender_echoes = n;
    }
}
