//! Connection threads, made before they are needed.
//!
//! Making a thread is most of what opening a connection costs the server (docs/performance.md:
//! the kernel's task copy, the stack's mapping and guard page, its first page faults). Made by
//! the accept loop, that cost would be paid in line, one connection after another. So a few
//! threads are made ahead and wait, parked, for a connection: accepting one hands it to a parked
//! thread (a rendezvous, no thread made), and a maker thread makes the next spare in the
//! background, on whichever core is free. With none parked, the accept loop makes one as
//! before.
//!
//! A thread still serves one client at a time. When its client has left, it parks again if
//! fewer than [`MAX_PARKED`] are parked, with the stack below its parking frame given back,
//! and ends otherwise: while clients come and go, the threads of those that left serve the
//! next ones, and no thread is made at all. Once clients stop coming, the threads parked
//! beyond [`SPARE_THREADS`] end after [`PARKED_IDLE`], and a quiet server is back to its
//! spares.
//!
//! Parked threads cost no CPU (they sleep in a channel's `recv`; those beyond the spares wake
//! once, to end) and the memory of as many idle connections without their sockets: two stack
//! pages and a kernel task each.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use log::debug;

use crate::sys;

/// Threads the maker keeps parked for the next connections. A burst of new connections is
/// served by these while the maker replaces them; a few cover what one accept loop hands out
/// while one thread is made, and cost about 40 KiB each (user and kernel stack, task).
pub(crate) const SPARE_THREADS: usize = 4;

/// Threads parked at most: a thread whose client left parks again below this, and ends
/// otherwise. More than [`SPARE_THREADS`], so that clients that come and go are served by the
/// threads of those that left rather than by threads made for them; few enough that what
/// waits after a wave stays under a megabyte.
pub(crate) const MAX_PARKED: usize = 16;

/// How long a thread parked beyond [`SPARE_THREADS`] waits for a client before it ends: long
/// enough to serve clients that reconnect in waves, short enough that a server whose clients
/// stopped coming is back to its spares within seconds.
pub(crate) const PARKED_IDLE: Duration = Duration::from_secs(10);

/// What a connection thread runs: one connection, from its first byte to its last, panics
/// caught inside.
pub(crate) type Job = Box<dyn FnOnce() + Send>;

/// The connection threads: those parked, and the maker of new ones.
#[derive(Debug)]
pub(crate) struct Threads {
    /// A rendezvous: a job is taken only by a thread parked in `recv` right now.
    hand: Sender<Job>,
    pool: Arc<Pool>,
    /// Tells the maker a spare was taken. Dropped with `Threads`: the maker then ends, and so
    /// do the parked threads, whose `recv` fails once `hand` is gone.
    refill: Sender<()>,
}

/// What every connection thread shares.
#[derive(Debug)]
struct Pool {
    jobs: Receiver<Job>,
    /// Threads parked, or being made to park.
    spares: AtomicUsize,
    stack_size: usize,
}

impl Threads {
    /// Starts the maker, which makes [`SPARE_THREADS`] spares at once. Connection threads get
    /// `stack_size` bytes of stack.
    pub(crate) fn start(stack_size: usize) -> io::Result<Threads> {
        let (hand, jobs) = crossbeam_channel::bounded(0);
        let (refill, wanted) = crossbeam_channel::unbounded();
        let pool = Arc::new(Pool {
            jobs,
            spares: AtomicUsize::new(0),
            stack_size,
        });
        let maker = Arc::clone(&pool);
        thread::Builder::new()
            .name("thread maker".into())
            .spawn(move || maker.make_spares(&wanted))?;
        let _ = refill.send(());
        Ok(Threads { hand, pool, refill })
    }

    /// Runs `job` on a parked thread, or on a new one if none is parked. On error (the system
    /// refused a thread), the job was not run and is dropped.
    pub(crate) fn run(&self, job: Job) -> io::Result<()> {
        match self.hand.try_send(job) {
            Ok(()) => {
                // Counted here, before the maker hears of it: counted by the thread that took
                // it, the maker could look first, find the spares full, and not make one.
                self.pool.spares.fetch_sub(1, Ordering::SeqCst);
                let _ = self.refill.send(());
                Ok(())
            }
            Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => {
                let pool = Arc::clone(&self.pool);
                pool.spawn(move |pool| {
                    job();
                    pool.serve_while_needed();
                })
            }
        }
    }

    /// Threads parked right now, or being made to park.
    #[cfg(test)]
    fn spares(&self) -> usize {
        self.pool.spares.load(Ordering::SeqCst)
    }
}

impl Pool {
    /// Starts a connection thread running `body`.
    fn spawn(self: Arc<Pool>, body: impl FnOnce(&Arc<Pool>) + Send + 'static) -> io::Result<()> {
        thread::Builder::new()
            .name("connection".into())
            .stack_size(self.stack_size)
            .spawn(move || body(&self))
            .map(drop)
    }

    /// The maker's loop: each time it is told, makes spares until [`SPARE_THREADS`] are
    /// parked or on their way. Ends when `Threads` is dropped.
    fn make_spares(self: &Arc<Pool>, wanted: &Receiver<()>) {
        while wanted.recv().is_ok() {
            while self.claim_place(SPARE_THREADS) {
                let made = Arc::clone(self).spawn(|pool| pool.park());
                if let Err(e) = made {
                    // The accept loop makes threads itself meanwhile, and says so if it too
                    // is refused one.
                    debug!("no spare connection thread for now: {e}");
                    self.spares.fetch_sub(1, Ordering::SeqCst);
                    break;
                }
            }
        }
    }

    /// Takes a place among the parked, if fewer than `limit` are taken.
    fn claim_place(&self, limit: usize) -> bool {
        self.spares
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok()
    }

    /// Gives a place among the parked back, if more than `keep` are taken.
    fn leave_place(&self, keep: usize) -> bool {
        self.spares
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n > keep).then(|| n - 1)
            })
            .is_ok()
    }

    /// After a job, parks for the next if there is room; otherwise the thread ends.
    fn serve_while_needed(self: &Arc<Pool>) {
        if self.claim_place(MAX_PARKED) {
            self.park();
        }
    }

    /// Waits for jobs and runs them, parking between them while there is room. The thread
    /// holds a place among the parked on entry, and gives it back if it ends for being idle.
    #[inline(never)]
    fn park(self: &Arc<Pool>) {
        loop {
            // What the last client touched below this frame goes back before the wait.
            sys::release_stack_below_caller();
            // Taken off the count by whoever hands a job over (Threads::run).
            let job = if self.spares.load(Ordering::SeqCst) > SPARE_THREADS {
                match self.jobs.recv_timeout(PARKED_IDLE) {
                    Ok(job) => job,
                    Err(RecvTimeoutError::Timeout) if self.leave_place(SPARE_THREADS) => return,
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            } else {
                let Ok(job) = self.jobs.recv() else {
                    return;
                };
                job
            };
            job();
            if !self.claim_place(MAX_PARKED) {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Instant;

    const PATIENCE: Duration = Duration::from_secs(30);

    fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while !done() {
            assert!(Instant::now() < deadline, "{what}");
            thread::yield_now();
        }
    }

    #[test]
    fn spares_are_made_at_start_and_made_again_once_taken() {
        let threads = Threads::start(256 * 1024).unwrap();
        wait_until("spares made at start", || threads.spares() == SPARE_THREADS);
        let (done, finished) = mpsc::channel();
        // Each job waits until told, so none of these threads can park again meanwhile.
        let (go, gate) = crossbeam_channel::unbounded::<()>();
        let jobs = SPARE_THREADS * 3;
        for n in 0..jobs {
            let done = done.clone();
            let gate = gate.clone();
            threads
                .run(Box::new(move || {
                    gate.recv().unwrap();
                    done.send(n).unwrap();
                }))
                .unwrap();
        }
        wait_until("spares made again", || threads.spares() == SPARE_THREADS);
        for _ in 0..jobs {
            go.send(()).unwrap();
        }
        let mut ran: Vec<usize> = (0..jobs)
            .map(|_| finished.recv_timeout(PATIENCE).unwrap())
            .collect();
        ran.sort_unstable();
        assert_eq!(ran, (0..jobs).collect::<Vec<_>>());
        // The threads of the jobs park again, up to the most that may wait.
        wait_until("the threads park again", || {
            threads.spares() == MAX_PARKED.min(SPARE_THREADS + jobs)
        });
    }

    #[test]
    fn threads_parked_beyond_the_spares_end_once_idle() {
        let threads = Threads::start(256 * 1024).unwrap();
        wait_until("spares made at start", || threads.spares() == SPARE_THREADS);
        let (go, gate) = crossbeam_channel::unbounded::<()>();
        for _ in 0..MAX_PARKED {
            let gate = gate.clone();
            threads.run(Box::new(move || gate.recv().unwrap())).unwrap();
        }
        for _ in 0..MAX_PARKED {
            go.send(()).unwrap();
        }
        wait_until("the pool fills", || threads.spares() == MAX_PARKED);
        let full = Instant::now();
        let deadline = full + PARKED_IDLE * 3;
        while threads.spares() > SPARE_THREADS {
            assert!(
                Instant::now() < deadline,
                "{} still parked",
                threads.spares()
            );
            thread::sleep(Duration::from_millis(50));
        }
        assert!(full.elapsed() >= PARKED_IDLE - Duration::from_secs(1));
        // The spares stay, and still serve.
        thread::sleep(Duration::from_millis(200));
        assert_eq!(threads.spares(), SPARE_THREADS);
        let (done, finished) = mpsc::channel();
        threads
            .run(Box::new(move || done.send(()).unwrap()))
            .unwrap();
        finished.recv_timeout(PATIENCE).unwrap();
    }

    #[test]
    fn a_thread_whose_client_left_serves_the_next() {
        let threads = Threads::start(256 * 1024).unwrap();
        wait_until("spares made at start", || threads.spares() == SPARE_THREADS);
        let (ids, seen) = mpsc::channel();
        let mut served_by = Vec::new();
        for _ in 0..MAX_PARKED * 2 {
            let ids = ids.clone();
            threads
                .run(Box::new(move || ids.send(thread::current().id()).unwrap()))
                .unwrap();
            served_by.push(seen.recv_timeout(PATIENCE).unwrap());
        }
        served_by.sort_by_key(|id| format!("{id:?}"));
        served_by.dedup();
        // One job at a time: threads that served park again and serve later ones, so far
        // fewer threads than jobs (the maker adds one per job taken until the pool is full).
        assert!(served_by.len() <= MAX_PARKED + 1, "{}", served_by.len());
    }
}
