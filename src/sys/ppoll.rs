//! The Linux (and FreeBSD, OpenBSD) backend: `ppoll(2)` on the socket, woken by a signal.
//!
//! Why a signal and not an `eventfd` or a pipe: those cost a file descriptor per connection,
//! which halves how many connections fit under the open-file limit. A signal costs nothing
//! until it is sent. The classic race (the signal arrives just before the thread goes to sleep,
//! and is lost) is what `ppoll` exists to close: the signal stays blocked in the thread at all
//! times except inside `ppoll`, which unblocks it atomically with going to sleep. A wake-up sent
//! at any moment before is held pending by the kernel and ends the `ppoll` at once.
//!
//! The signal is `SIGURG`: ignored by default, so a stray one can never kill the process (Go's
//! runtime picks it for the same reason). Its handler does nothing; being interrupted is the
//! whole message. [`prepare`] installs that process-wide handler and blocks the signal in the
//! thread that starts the server, before it makes any thread: every thread made after inherits
//! the blocked signal, so a `SIGURG` sent to the whole process (by `kill`, or a stray one) can
//! only ever land in a thread asleep in `ppoll`, never interrupt another one's system call. A
//! program embedding wsecho should not use `SIGURG` for anything else, and should start the
//! server before it makes threads of its own (or block the signal in them).

use std::cell::Cell;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use super::{Interest, Ready, Source};

/// The signal that wakes a waiting thread.
const WAKE_SIGNAL: libc::c_int = libc::SIGURG;

/// Descriptors per connection: its socket. The waker is a signal.
pub(crate) const FDS_PER_CONNECTION: usize = 1;

/// How this backend is named in the log.
pub(crate) const BACKEND: &str = "ppoll with a signal waker";

/// A `ppoll` timeout longer than this is cut to it: `time_t` may be 32 bits, and the caller
/// recomputes its deadline on every return anyway.
const MAX_TIMEOUT_SECONDS: u64 = i32::MAX as u64;

/// Wakes a thread that waits in [`wait`](super::wait); any thread may call [`Waker::wake`].
#[derive(Debug, Default)]
pub(crate) struct Waker {
    /// Level-triggered, like an eventfd: set by [`Waker::wake`], cleared by [`Waker::reset`].
    signalled: AtomicBool,
    /// The thread inside [`wait`](super::wait) right now, if any. The signal is only ever sent to a thread
    /// registered here, under this lock, so never to one that has left or ended.
    waiter: Mutex<Option<libc::pthread_t>>,
}

impl Waker {
    /// A waker nobody has woken yet. Never fails here: a signal needs no resource.
    pub(crate) fn try_new() -> io::Result<Waker> {
        Ok(Waker::default())
    }

    /// A waker nobody has woken yet, for tests.
    #[cfg(test)]
    pub(crate) fn new() -> Waker {
        Waker::default()
    }

    /// Nothing to undo here: `ppoll` registers nothing. (The portable backend has to.)
    pub(crate) fn forget<S: Source>(&self, _socket: &S) {}

    /// Makes the waiting thread's next (or current) [`wait`](super::wait) return with `woken` set.
    pub(crate) fn wake(&self) {
        self.signalled.store(true, Ordering::SeqCst);
        let waiter = crate::sync::lock(&self.waiter);
        if let Some(thread) = *waiter {
            // SAFETY: `thread` is registered, so it is alive and inside `wait`.
            let sent = unsafe { libc::pthread_kill(thread, WAKE_SIGNAL) };
            // It can only fail for a thread that is gone or a bad signal, neither possible
            // here; and the flag set above is seen by the thread's next wait regardless.
            debug_assert_eq!(sent, 0, "pthread_kill failed");
        }
    }

    /// Clears the signal, so the next [`wait`](super::wait) sleeps until the next [`Waker::wake`].
    ///
    /// Call it before looking at what was queued, never after: a `wake` that races with the
    /// look is then seen at the next wait instead of being lost.
    pub(crate) fn reset(&self) {
        self.signalled.store(false, Ordering::SeqCst);
    }

    fn register(&self, thread: Option<libc::pthread_t>) {
        *crate::sync::lock(&self.waiter) = thread;
    }
}

/// Installs the wake signal's handler and blocks the signal in the calling thread, whose
/// threads made from now on inherit the block. See the module's docs.
pub(crate) fn prepare() -> io::Result<()> {
    block_wake_signal_in_this_thread().map(|_| ())
}

/// See [`super::wait`]. It may return early with nothing ready when another signal
/// interrupts it.
pub(super) fn wait<S: Source>(
    socket: Option<&S>,
    interest: Interest,
    waker: &Waker,
    timeout: Option<Duration>,
) -> io::Result<Ready> {
    let unblocked = block_wake_signal_in_this_thread()?;
    // SAFETY: pthread_self has no preconditions.
    waker.register(Some(unsafe { libc::pthread_self() }));
    let fd = socket.map(|s| s.as_fd().as_raw_fd());
    let ready = sleep(fd, interest, waker, timeout, &unblocked);
    waker.register(None);
    ready
}

fn sleep(
    socket: Option<libc::c_int>,
    interest: Interest,
    waker: &Waker,
    timeout: Option<Duration>,
    unblocked: &libc::sigset_t,
) -> io::Result<Ready> {
    if waker.signalled.load(Ordering::SeqCst) {
        return Ok(Ready {
            woken: true,
            ..Ready::default()
        });
    }
    let mut events = 0;
    if interest.read {
        events |= libc::POLLIN;
    }
    if interest.write {
        events |= libc::POLLOUT;
    }
    // A negative descriptor is ignored by ppoll: waiting on the waker alone.
    let fd = socket.unwrap_or(-1);
    let mut fds = [libc::pollfd {
        fd,
        events,
        revents: 0,
    }];
    let timeout = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs().min(MAX_TIMEOUT_SECONDS) as libc::time_t,
        tv_nsec: t.subsec_nanos() as libc::c_long,
    });
    let timeout_ptr = timeout
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `fds`, the timespec and the signal set are live for the call.
    let n = unsafe { libc::ppoll(fds.as_mut_ptr(), 1, timeout_ptr, unblocked) };
    if n < 0 {
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
    let hangup = libc::POLLHUP | libc::POLLERR | libc::POLLNVAL;
    let revents = if n > 0 { fds[0].revents } else { 0 };
    Ok(Ready {
        // A hang-up or error is reported as readable: the next read returns it.
        readable: revents & (libc::POLLIN | hangup) != 0,
        writable: revents & libc::POLLOUT != 0,
        hangup: revents & hangup != 0,
        woken: waker.signalled.load(Ordering::SeqCst),
    })
}

thread_local! {
    /// This thread's signal mask with the wake signal unblocked, for `ppoll`; set on the
    /// thread's first wait, when the signal gets blocked in it for good.
    static UNBLOCKED: Cell<Option<libc::sigset_t>> = const { Cell::new(None) };
}

/// Blocks the wake signal in the calling thread (once) and returns the mask `ppoll` should
/// sleep with. Installs the do-nothing handler the first time any thread gets here.
fn block_wake_signal_in_this_thread() -> io::Result<libc::sigset_t> {
    static HANDLER: OnceLock<Result<(), i32>> = OnceLock::new();
    let installed = HANDLER.get_or_init(|| {
        extern "C" fn interrupted(_: libc::c_int) {}
        // SAFETY: installs an async-signal-safe handler that does nothing. ppoll returns EINTR
        // when a handler runs, whatever SA_RESTART says (poll-like calls are never restarted),
        // which is the wake-up. SA_RESTART is for anything else the signal might interrupt:
        // a thread that did not block it (one an embedding program made before the server)
        // has its other system calls restarted rather than failed.
        let result = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = interrupted as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(WAKE_SIGNAL, &action, std::ptr::null_mut())
        };
        if result == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error().raw_os_error().unwrap_or(0))
        }
    });
    if let Err(code) = installed {
        return Err(io::Error::from_raw_os_error(*code));
    }
    UNBLOCKED.with(|cell| {
        if let Some(mask) = cell.get() {
            return Ok(mask);
        }
        // SAFETY: sigset operations on live, initialised sets.
        let (result, mask) = unsafe {
            let mut wake: libc::sigset_t = std::mem::zeroed();
            let mut previous: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut wake);
            libc::sigaddset(&mut wake, WAKE_SIGNAL);
            let result = libc::pthread_sigmask(libc::SIG_BLOCK, &wake, &mut previous);
            libc::sigdelset(&mut previous, WAKE_SIGNAL);
            (result, previous)
        };
        // pthread_sigmask returns the error number itself, not -1 and errno.
        if result != 0 {
            return Err(io::Error::from_raw_os_error(result));
        }
        cell.set(Some(mask));
        Ok(mask)
    })
}
