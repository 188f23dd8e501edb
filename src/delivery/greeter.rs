//! The greeting timer: one thread that sends every connection its delayed greeting.
//!
//! A sleeping thread per connection would cost a stack per pending greeting and a wake-up per
//! connection. Instead each new connection sends its due time here over a channel, and this
//! thread sleeps in `recv_deadline` until whichever comes first: the earliest due greeting or a
//! new connection. Due greetings are encoded once per batch and handed to their connections'
//! outboxes like any other frame, so the greeting never races a connection's own writes.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::sync::{Arc, Weak};
use std::thread;
use std::time::Instant;

use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::config::Greeting;
use crate::delivery::budget::Budget;
use crate::delivery::flow::Batch;
use crate::delivery::outbox::Outbox;
use crate::frame;
use crate::metrics::Metrics;

/// Where connections schedule their greeting. Dropping every clone stops the thread.
#[derive(Debug, Clone)]
pub(crate) struct Greeter {
    sender: Sender<Due>,
    delay: std::time::Duration,
}

/// One scheduled greeting. The outbox is held weakly: a client that has gone by the due time
/// is simply skipped, and its memory is not kept alive by the timer.
#[derive(Debug)]
struct Due {
    at: Instant,
    outbox: Weak<Outbox>,
}

impl Greeter {
    /// Starts the timer thread.
    pub(crate) fn start(
        greeting: Greeting,
        budget: Arc<Budget>,
        metrics: Arc<Metrics>,
    ) -> io::Result<Greeter> {
        let (sender, receiver) = crossbeam_channel::unbounded();
        let delay = greeting.delay;
        thread::Builder::new()
            .name("greeter".into())
            .spawn(move || run(&greeting.template, &receiver, &budget, &metrics))?;
        Ok(Greeter { sender, delay })
    }

    /// Schedules the greeting for a connection whose handshake has just completed.
    pub(crate) fn schedule(&self, outbox: &Arc<Outbox>) {
        let due = Due {
            at: Instant::now() + self.delay,
            outbox: Arc::downgrade(outbox),
        };
        // Fails only if the timer thread is gone, which happens only at shutdown.
        let _ = self.sender.send(due);
    }
}

/// The greeting text for now: the template with `{time}` replaced by the local date-time.
pub(crate) fn render(template: &str) -> String {
    let now = chrono::Local::now().format("%Y-%m-%d %H:%M:%S %:z");
    template.replace("{time}", &now.to_string())
}

fn run(template: &str, receiver: &Receiver<Due>, budget: &Arc<Budget>, metrics: &Metrics) {
    // A min-heap on the due time. With one delay for all, due times arrive nearly in order, but
    // two connections finishing their handshakes at once may send theirs in either order.
    let mut pending: BinaryHeap<Reverse<ByTime>> = BinaryHeap::new();
    loop {
        let next = match pending.peek() {
            Some(Reverse(ByTime(due))) => receiver.recv_deadline(due.at),
            None => receiver.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match next {
            Ok(due) => pending.push(Reverse(ByTime(due))),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let now = Instant::now();
        let mut greeting: Option<Bytes> = None;
        while let Some(Reverse(ByTime(due))) = pending.peek() {
            if due.at > now {
                break;
            }
            let Some(Reverse(ByTime(due))) = pending.pop() else {
                break;
            };
            if let Some(outbox) = due.outbox.upgrade() {
                let frame =
                    greeting.get_or_insert_with(|| budget.hold(frame::text(&render(template))));
                // Refused only if the client has gone or is closing: then it gets none.
                if outbox
                    .push(&Batch::may_go_straight_in(std::slice::from_ref(frame)))
                    .is_ok()
                {
                    metrics.greeting();
                    metrics.sent(1, frame.len() as u64);
                }
            }
        }
    }
}

/// Orders [`Due`] entries by due time only.
#[derive(Debug)]
struct ByTime(Due);

impl PartialEq for ByTime {
    fn eq(&self, other: &Self) -> bool {
        self.0.at == other.0.at
    }
}
impl Eq for ByTime {}
impl PartialOrd for ByTime {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for ByTime {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.at.cmp(&other.0.at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::outbox::Delivery;
    use crate::delivery::outbox::lone_mailbox;
    use std::time::Duration;

    #[test]
    fn render_puts_the_time_before_the_text() {
        let text = render("{time} hello client !!!");
        let (time, rest) = text.split_at(text.len() - " hello client !!!".len());
        assert_eq!(rest, " hello client !!!");
        assert!(
            chrono::DateTime::parse_from_str(time, "%Y-%m-%d %H:%M:%S %:z").is_ok(),
            "{time}"
        );
    }

    #[test]
    fn each_live_connection_gets_one_greeting_and_a_gone_one_none() {
        let greeting = Greeting {
            delay: Duration::from_millis(20),
            template: "hi".into(),
        };
        let metrics = Arc::new(Metrics::default());
        let greeter = Greeter::start(
            greeting,
            Arc::new(Budget::new(1 << 20)),
            Arc::clone(&metrics),
        )
        .unwrap();
        let (live, live_inbox) = lone_mailbox(1 << 20);
        let (gone, gone_inbox) = lone_mailbox(1 << 20);
        greeter.schedule(&live);
        greeter.schedule(&gone);
        let gone_weak = Arc::downgrade(&gone);
        drop(gone);
        drop(gone_inbox);
        // The timer holds a scheduled outbox weakly: a client that left is freed at once, and
        // there is nothing left to greet.
        assert!(gone_weak.upgrade().is_none());

        // Wait on the waker alone, as a connection's thread would between messages.
        let nothing = crate::sys::Interest {
            read: false,
            write: false,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !crate::sys::wait(
            None::<&std::net::TcpStream>,
            nothing,
            live_inbox.waker(),
            Some(Duration::from_secs(1)),
        )
        .unwrap()
        .woken
        {
            assert!(
                std::time::Instant::now() < deadline,
                "no greeting within 10 s"
            );
        }
        let got: Vec<_> = live_inbox.drain().collect();
        assert!(matches!(&got[..], [Delivery::Frame(f)] if f[..] == frame::text("hi")[..]));
    }
}
