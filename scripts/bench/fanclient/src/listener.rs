//! One listener: what it received, checked as wsload's fan-out listeners
//! check it (every sequence number once, in order) and timed on arrival.

use crate::payload::{self, SYNC};
use crate::run::Run;
use futures_util::StreamExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

/// What one listener saw; the run adds them up.
#[derive(Default)]
pub struct Tally {
    pub opened: bool,
    pub synced: bool,
    /// One flag per sequence number, to count distinct deliveries.
    seen: Vec<bool>,
    next: u64,
    pub distinct: u64,
    pub out_of_order: u64,
    pub duplicates: u64,
    /// Messages that are not the sender's (a greeting, say): counted, ignored.
    pub foreign: u64,
    /// Receive time − send time of each counted message, in ns.
    pub latencies_ns: Vec<u64>,
    pub error: Option<String>,
}

impl Tally {
    /// Notes one data message read at NOW_NS (ns since the run's base).
    fn take(&mut self, run: &Run, data: &[u8], now_ns: u64) {
        let Some((seq, sent_ns)) = payload::decode(data).filter(|_| data.len() == run.args.size)
        else {
            self.foreign += 1;
            return;
        };
        if seq == SYNC {
            if !self.synced {
                self.synced = true;
                run.synced.fetch_add(1, Ordering::AcqRel);
            }
            return;
        }
        if seq >= run.args.messages {
            self.error
                .get_or_insert(format!("unknown sequence number {seq}"));
            return;
        }
        self.latencies_ns.push(now_ns.saturating_sub(sent_ns));
        run.note_arrival(now_ns);
        self.out_of_order += u64::from(seq != self.next);
        self.next = seq + 1;
        if std::mem::replace(&mut self.seen[seq as usize], true) {
            self.duplicates += 1;
            return;
        }
        self.distinct += 1;
        if self.distinct == run.args.messages {
            run.listener_complete();
        }
    }
}

/// Connects, then reads until the run says stop; closes politely (the close
/// falls after the server's CPU time is read).
pub async fn listen(run: Arc<Run>, id: usize, mut stop: watch::Receiver<bool>) -> Tally {
    let mut tally = Tally {
        seen: vec![false; run.args.messages as usize],
        ..Tally::default()
    };
    let mut ws = match run.connect().await {
        Ok(ws) => ws,
        Err(why) => {
            tally.error = Some(format!("listener {id}: {why}"));
            return tally;
        }
    };
    tally.opened = true;
    // One wait for the stop, made once: a new one per message would lock the
    // channel's list of waiters, shared by every listener, twice a message.
    let stopping = stop.changed();
    tokio::pin!(stopping);
    loop {
        tokio::select! {
            msg = ws.next() => {
                // The arrival time is taken when the task reads the message: the
                // client's own scheduling delay is in it, as in any client.
                let now_ns = run.now_ns();
                match msg {
                    Some(Ok(Message::Binary(data))) => tally.take(&run, &data, now_ns),
                    Some(Ok(Message::Text(text))) => tally.take(&run, text.as_bytes(), now_ns),
                    Some(Ok(_)) => {} // pings (answered by tungstenite), pongs
                    Some(Err(e)) => {
                        tally.error.get_or_insert(format!("listener {id}: {e}"));
                        break;
                    }
                    None => {
                        tally.error.get_or_insert(format!("listener {id}: closed by the server"));
                        break;
                    }
                }
            }
            _ = &mut stopping => {
                let _ = tokio::time::timeout(crate::run::CLOSE_GRACE, ws.close(None)).await;
                break;
            }
        }
    }
    tally
}
