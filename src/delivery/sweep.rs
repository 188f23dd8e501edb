//! A wide room's fan-out, spread over the cores.
//!
//! A broadcast is fanned out by the thread that received it, under its room's lock (`hub.rs`).
//! Pushing to an idle listener writes into its socket there and then (its socket is lent,
//! `outbox.rs`), and a write into a TCP socket costs some microseconds of kernel time. For a
//! room of thousands, one thread making those writes in turn keeps the other cores idle while
//! the last listener waits for the first 4,999. So a wide room's members are cut into
//! *shares*: the sweeping thread pushes one share itself, and short-lived helper threads push
//! the others, one core each. The sweep ends when every share is pushed.
//!
//! What stays true:
//! - **One order.** The whole sweep runs under the room's lock, so every listener has this
//!   broadcast before the next one starts, and an outbox takes a batch whole.
//! - **No one waits for a slow listener.** A push never blocks: it writes what the socket takes
//!   and queues the rest for the listener's own thread.
//! - **Nothing while idle.** The helpers live for one sweep; a room below [`SHARE`] × 2
//!   members never makes one.
//! - **No sweep lost to a thread limit.** A helper that cannot be made leaves its share to
//!   the sweeping thread.
//!
//! Invariant: the shares are borrowed from the room's members by the thread that holds the
//! room's lock, for the whole sweep; helpers touch only their share's outboxes, and only
//! through [`Outbox::push`], which any thread may call.

use std::num::NonZeroUsize;
use std::sync::{Arc, OnceLock};
use std::thread;

use crate::delivery::flow::Batch;
use crate::delivery::outbox::Outbox;

/// The fewest listeners worth a thread of their own. A push into an idle listener's socket
/// costs about 5 to 20 µs, so a share is a few milliseconds of writes, against the 20 to
/// 40 µs a thread costs to make and join: smaller rooms are swept by their sender alone.
const SHARE: usize = 512;

/// The most threads one sweep uses, however many cores there are: past this, the writes
/// contend for the kernel's socket locks more than they gain.
const MAX_SWEEPERS: usize = 8;

/// A helper's stack. A push needs a few KiB (a vectored write and its slices); the default
/// 2 MiB would be reserved for nothing.
const SWEEPER_STACK: usize = 64 * 1024;

/// Pushes `batch` to every outbox of `members`, over as many cores as their number is worth.
/// Returns how many took it.
pub(crate) fn push_to_all<'a>(
    members: impl ExactSizeIterator<Item = &'a Arc<Outbox>>,
    batch: &Batch<'_>,
) -> usize {
    let sweepers = sweepers_for(members.len());
    if sweepers == 1 {
        return push_share(members, batch);
    }
    let members: Vec<&Arc<Outbox>> = members.collect();
    let mut shares = members.chunks(members.len().div_ceil(sweepers));
    let own = shares.next().unwrap_or_default();
    thread::scope(|scope| {
        let helpers: Vec<_> = shares
            .map(|share| {
                let helper = thread::Builder::new()
                    .name("sweep".into())
                    .stack_size(SWEEPER_STACK)
                    .spawn_scoped(scope, move || push_share(share.iter().copied(), batch));
                (share, helper)
            })
            .collect();
        let mut reached = push_share(own.iter().copied(), batch);
        for (share, helper) in helpers {
            reached += match helper {
                Ok(helper) => helper
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                Err(_) => push_share(share.iter().copied(), batch),
            };
        }
        reached
    })
}

/// Pushes `batch` to each of `share` in turn; returns how many took it.
fn push_share<'a>(share: impl Iterator<Item = &'a Arc<Outbox>>, batch: &Batch<'_>) -> usize {
    share.filter(|outbox| outbox.push(batch).is_ok()).count()
}

/// How many threads sweep `members` listeners: one per [`SHARE`], at most one per core.
fn sweepers_for(members: usize) -> usize {
    (members / SHARE).clamp(1, cores())
}

/// The cores this process may use, counted once.
fn cores() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| {
        thread::available_parallelism()
            .map_or(1, NonZeroUsize::get)
            .min(MAX_SWEEPERS)
    })
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::delivery::outbox::{Delivery, lone_mailbox};

    #[test]
    fn every_member_of_a_wide_room_gets_every_broadcast_once_in_order() {
        let members = 3 * SHARE + 7;
        let (outboxes, mut inboxes): (Vec<_>, Vec<_>) =
            (0..members).map(|_| lone_mailbox(1 << 20)).unzip();
        // Three members left: their outboxes refuse, and are not counted.
        inboxes.truncate(members - 3);
        let broadcasts: Vec<Bytes> = (0..3u8).map(|n| Bytes::from(vec![n; 8])).collect();
        for frame in &broadcasts {
            let reached = push_to_all(outboxes.iter(), &Batch::queued(std::slice::from_ref(frame)));
            assert_eq!(reached, members - 3);
        }
        for inbox in &inboxes {
            let got: Vec<Bytes> = inbox
                .drain()
                .map(|delivery| match delivery {
                    Delivery::Frame(frame) => frame,
                    Delivery::Close(..) => panic!("no close was sent"),
                })
                .collect();
            assert_eq!(got, broadcasts);
        }
    }

    #[test]
    fn a_room_is_cut_into_shares_of_at_least_share_listeners_one_per_core() {
        assert_eq!(sweepers_for(0), 1);
        assert_eq!(sweepers_for(2 * SHARE - 1), 1);
        assert_eq!(sweepers_for(2 * SHARE), 2.min(cores()));
        assert_eq!(sweepers_for(1_000_000), cores());
        assert!(cores() <= MAX_SWEEPERS);
    }
}
