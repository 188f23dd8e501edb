//! Waiting on a socket and a [`Waker`] at once: the one place that calls `ppoll(2)`.
//!
//! A connection's thread must notice two things while it waits: bytes from its peer, and frames
//! that other threads (the greeting timer, broadcasts, shutdown) have queued for it. A blocking
//! `read()` can only notice the first, and tungstenite cannot split a blocking socket into a
//! reading half and a writing half (tungstenite issues 113 and 311). So the socket is made
//! non-blocking and the thread sleeps in `ppoll(2)` on it, and another thread wakes it with a
//! signal. An idle connection is a thread asleep in the kernel: it costs no CPU, and it wakes
//! the moment there is work.
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
//! whole message.
//!
//! This is the only module with `unsafe` code; each block is a plain system call.

use std::cell::Cell;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Once};
use std::time::Duration;

/// The signal that wakes a waiting thread.
const WAKE_SIGNAL: libc::c_int = libc::SIGURG;

/// Wakes a thread that waits in [`wait`]; any thread may call [`Waker::wake`].
#[derive(Debug, Default)]
pub struct Waker {
    /// Level-triggered, like an eventfd: set by [`Waker::wake`], cleared by [`Waker::reset`].
    signalled: AtomicBool,
    /// The thread inside [`wait`] right now, if any. The signal is only ever sent to a thread
    /// registered here, under this lock, so never to one that has left or ended.
    waiter: Mutex<Option<libc::pthread_t>>,
}

impl Waker {
    pub fn new() -> Waker {
        Waker::default()
    }

    /// Makes the waiting thread's next (or current) [`wait`] return with `woken` set.
    pub fn wake(&self) {
        self.signalled.store(true, Ordering::SeqCst);
        let waiter = self
            .waiter
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(thread) = *waiter {
            // SAFETY: `thread` is registered, so it is alive and inside `wait`.
            unsafe { libc::pthread_kill(thread, WAKE_SIGNAL) };
        }
    }

    /// Clears the signal, so the next [`wait`] sleeps until the next [`Waker::wake`].
    ///
    /// Call it before looking at what was queued, never after: a `wake` that races with the
    /// look is then seen at the next wait instead of being lost.
    pub fn reset(&self) {
        self.signalled.store(false, Ordering::SeqCst);
    }

    fn register(&self, thread: Option<libc::pthread_t>) {
        *self
            .waiter
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = thread;
    }
}

/// What [`wait`] watches the socket for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interest {
    pub read: bool,
    pub write: bool,
}

/// What [`wait`] found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ready {
    /// The socket has bytes to read, or its peer hung up or failed (a read will tell which).
    pub readable: bool,
    /// The socket has room in its send buffer.
    pub writable: bool,
    /// The peer hung up or the connection failed, in both directions: reported even when
    /// the socket is not watched for reading.
    pub hangup: bool,
    /// The waker was signalled.
    pub woken: bool,
}

/// Sleeps until the socket (if any) is ready for `interest`, the waker is signalled, or
/// `timeout` passes (`None` waits for ever). It may also return early with nothing ready
/// (another signal interrupted it), so callers decide what to do from the clock, not from
/// the return.
pub fn wait(
    socket: Option<BorrowedFd<'_>>,
    interest: Interest,
    waker: &Waker,
    timeout: Option<Duration>,
) -> io::Result<Ready> {
    let unblocked = block_wake_signal_in_this_thread();
    // SAFETY: pthread_self has no preconditions.
    waker.register(Some(unsafe { libc::pthread_self() }));
    let ready = sleep(socket, interest, waker, timeout, &unblocked);
    waker.register(None);
    ready
}

fn sleep(
    socket: Option<BorrowedFd<'_>>,
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
    let fd = socket.map_or(-1, |s| s.as_raw_fd());
    let mut fds = [libc::pollfd {
        fd,
        events,
        revents: 0,
    }];
    let timeout = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs().min(i32::MAX as u64) as libc::time_t,
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
fn block_wake_signal_in_this_thread() -> libc::sigset_t {
    static HANDLER: Once = Once::new();
    HANDLER.call_once(|| {
        extern "C" fn interrupted(_: libc::c_int) {}
        // SAFETY: installs an async-signal-safe handler that does nothing. No SA_RESTART:
        // the point is that the interrupted ppoll returns.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = interrupted as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(WAKE_SIGNAL, &action, std::ptr::null_mut());
        }
    });
    UNBLOCKED.with(|cell| {
        if let Some(mask) = cell.get() {
            return mask;
        }
        // SAFETY: sigset operations on live, initialised sets.
        let mask = unsafe {
            let mut wake: libc::sigset_t = std::mem::zeroed();
            let mut previous: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut wake);
            libc::sigaddset(&mut wake, WAKE_SIGNAL);
            libc::pthread_sigmask(libc::SIG_BLOCK, &wake, &mut previous);
            libc::sigdelset(&mut previous, WAKE_SIGNAL);
            previous
        };
        cell.set(Some(mask));
        mask
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsFd;
    use std::sync::Arc;

    #[test]
    fn wake_from_another_thread_ends_the_wait() {
        let waker = Arc::new(Waker::new());
        let other = Arc::clone(&waker);
        let nothing = Interest {
            read: false,
            write: false,
        };
        // The wake may come before, during or after the sleep starts: none may be lost.
        let thread = std::thread::spawn(move || other.wake());
        let ready = loop {
            let ready = wait(None, nothing, &waker, None).unwrap();
            if ready.woken {
                break ready;
            }
        };
        thread.join().unwrap();
        assert_eq!(
            ready,
            Ready {
                woken: true,
                ..Ready::default()
            }
        );

        waker.reset();
        let ready = wait(None, nothing, &waker, Some(Duration::from_millis(1))).unwrap();
        assert_eq!(ready, Ready::default(), "reset clears the signal");
    }

    #[test]
    fn socket_readiness_is_reported() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let waker = Waker::new();
        let both = Interest {
            read: true,
            write: true,
        };
        let ready = wait(Some(server.as_fd()), both, &waker, None).unwrap();
        assert!(ready.writable && !ready.readable);

        io::Write::write_all(&mut client, b"x").unwrap();
        let read_only = Interest {
            read: true,
            write: false,
        };
        let ready = wait(Some(server.as_fd()), read_only, &waker, None).unwrap();
        assert!(ready.readable && !ready.woken);
    }
}
