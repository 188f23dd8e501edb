//! `wsload wait`: block until a server completes a WebSocket handshake.
//!
//! Scripts that start a server usually `sleep` and hope. This retries a real
//! handshake every few milliseconds instead, so a script continues the moment
//! the server is ready and fails clearly if it never becomes ready.

use crate::cli::WaitArgs;
use crate::conn::Conn;
use crate::target;
use crate::worker::{CloseReason, Handler, Message, Worker};
use anyhow::{Result, bail};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// Pause between attempts.
const RETRY_EVERY: Duration = Duration::from_millis(20);

#[derive(Default)]
struct Probe {
    opened: bool,
    last_error: Option<String>,
}

impl Handler for Probe {
    fn on_open(&mut self, _: usize, _: &mut Conn, _: Instant) {
        self.opened = true;
    }

    fn on_message(&mut self, _: usize, _: Message<'_>, _: &mut Conn, _: Instant) {}

    fn on_close(&mut self, _: usize, reason: &CloseReason) {
        // An attempt cut short by the deadline says less than the real error an earlier
        // attempt met (a certificate for another name, say): that one is kept.
        if matches!(reason, CloseReason::TimedOut) && self.last_error.is_some() {
            return;
        }
        self.last_error = Some(reason.to_string());
    }
}

/// Returns once a handshake succeeded; errors out after the timeout.
pub fn run(args: &WaitArgs) -> Result<()> {
    let target = Arc::new(target::from_args(&args.server)?);
    let deadline = Instant::now() + args.timeout;
    let mut probe = Probe::default();
    loop {
        let mut worker = Worker::new(target.clone())?;
        let attempt_deadline = deadline.min(Instant::now() + Duration::from_secs(2));
        worker.connect(1, 1, attempt_deadline, &mut probe)?;
        if probe.opened {
            worker.close_all(Duration::from_millis(500))?;
            return Ok(());
        }
        if Instant::now() + RETRY_EVERY >= deadline {
            bail!(
                "{} not ready after {:?}: {}",
                target.url,
                args.timeout,
                probe.last_error.as_deref().unwrap_or("no answer")
            );
        }
        thread::sleep(RETRY_EVERY);
    }
}
