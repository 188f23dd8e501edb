//! The portable backend: the `polling` crate, one poller per connection.
//!
//! Used on macOS, Windows and every system without `ppoll`, and on Linux with the cargo
//! feature `portable-poll` (so that this path is tested on every change). `polling` wraps each
//! system's own readiness API and its own way to wake a waiting thread: kqueue with an
//! `EVFILT_USER` event on macOS and the BSDs, an I/O completion port with a posted packet on
//! Windows, epoll with an eventfd on Linux. [`Waker::wake`] is that notification; the flag
//! beside it is what makes a wake-up sent before the wait (or between two waits) end the next
//! wait at once: it is checked before sleeping, and `notify` is itself kept pending by the
//! poller until the next wait.
//!
//! The socket is registered once, in oneshot mode, and re-armed before every wait with the
//! interest of the moment; it is deregistered by [`Waker::forget`] before it is closed (on
//! Windows a closed but registered socket would leave stale state behind).

use std::io;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use polling::{Event, Events, Poller};

use super::{Interest, Ready, Source};

/// Descriptors per connection: its socket and its poller (on Linux the poller is an epoll
/// instance, an eventfd for wake-ups and a timerfd for precise timeouts; elsewhere one kqueue
/// or completion port).
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) const FDS_PER_CONNECTION: usize = 4;
/// Descriptors per connection: its socket and its poller (on Linux the poller is an epoll
/// instance, an eventfd for wake-ups and a timerfd for precise timeouts; elsewhere one kqueue
/// or completion port).
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(crate) const FDS_PER_CONNECTION: usize = 2;

/// How this backend is named in the log.
pub(crate) const BACKEND: &str = "the portable poller (polling crate)";

/// The key the one socket is registered under.
const SOCKET_KEY: usize = 0;

/// Room for the events of one wait: the socket's, and one spare.
const EVENTS_PER_WAIT: NonZeroUsize = NonZeroUsize::new(2).unwrap();

/// Wakes a thread that waits in [`wait`](super::wait); any thread may call [`Waker::wake`].
pub(crate) struct Waker {
    poller: Poller,
    /// Set by [`Waker::wake`], cleared by [`Waker::reset`]: the wake-up as state, so that one
    /// sent while nobody waits is seen by the next wait.
    woken: AtomicBool,
    /// Used by the waiting thread only; a lock to be shareable, never contended.
    state: Mutex<State>,
}

struct State {
    events: Events,
    /// The socket registered with the poller, if any.
    registered: Option<Registered>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct Registered {
    #[cfg(unix)]
    socket: std::os::fd::RawFd,
    #[cfg(windows)]
    socket: std::os::windows::io::RawSocket,
}

impl std::fmt::Debug for Waker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waker")
            .field("woken", &self.woken.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Waker {
    /// A waker nobody has woken yet, with its own poller; fails when the system refuses a
    /// poller (out of descriptors, usually).
    pub(crate) fn try_new() -> io::Result<Waker> {
        Ok(Waker {
            poller: Poller::new()?,
            woken: AtomicBool::new(false),
            state: Mutex::new(State {
                events: Events::with_capacity(EVENTS_PER_WAIT),
                registered: None,
            }),
        })
    }

    /// Like [`Waker::try_new`], for tests: panics when the system refuses a poller.
    #[cfg(test)]
    pub(crate) fn new() -> Waker {
        Waker::try_new().expect("the system refused a poller")
    }

    /// Makes the waiting thread's next (or current) wait return with `woken` set.
    pub(crate) fn wake(&self) {
        self.woken.store(true, Ordering::SeqCst);
        // Fails only if the poller itself is broken; the flag is still seen by the next wait.
        let _ = self.poller.notify();
    }

    /// Clears the wake-up, so the next wait sleeps until the next [`Waker::wake`].
    ///
    /// Call it before looking at what was queued, never after: a `wake` that races with the
    /// look is then seen at the next wait instead of being lost.
    pub(crate) fn reset(&self) {
        self.woken.store(false, Ordering::SeqCst);
    }

    /// Deregisters `socket` before it is closed.
    pub(crate) fn forget<S: Source>(&self, socket: &S) {
        let mut state = self.state();
        if state.registered.take().is_some() {
            // Fails only if the socket was never registered, which `registered` rules out.
            let _ = self.poller.delete(borrow(socket));
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        crate::sync::lock(&self.state)
    }
}

/// See [`super::wait`].
/// Nothing to prepare: wake-ups are the poller's own, no signal is involved.
pub(crate) fn prepare() -> io::Result<()> {
    Ok(())
}

pub(super) fn wait<S: Source>(
    socket: Option<&S>,
    interest: Interest,
    waker: &Waker,
    timeout: Option<Duration>,
) -> io::Result<Ready> {
    let mut state = waker.state();
    if waker.woken.load(Ordering::SeqCst) {
        return Ok(Ready {
            woken: true,
            ..Ready::default()
        });
    }
    if let Some(socket) = socket {
        let event = Event::new(SOCKET_KEY, interest.read, interest.write);
        let this = registered(socket);
        match state.registered {
            // Oneshot: each wait re-arms the socket with the interest of the moment.
            Some(known) if known == this => waker.poller.modify(borrow(socket), event)?,
            Some(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a waker serves one socket",
                ));
            }
            None => {
                // SAFETY: `polling` requires the socket to be deleted from the poller before it
                // is closed; its owner calls `Waker::forget` first (connection/client.rs,
                // server/accept.rs).
                unsafe { waker.poller.add(raw(socket), event)? };
                state.registered = Some(this);
            }
        }
    }
    let State { events, .. } = &mut *state;
    events.clear();
    waker.poller.wait(events, timeout)?;
    let mut ready = Ready::default();
    for event in events.iter().filter(|e| e.key == SOCKET_KEY) {
        ready.readable |= event.readable;
        ready.writable |= event.writable;
        // What was not asked for can only be the peer hanging up or an error.
        ready.hangup |= (event.readable && !interest.read) || (event.writable && !interest.write);
    }
    ready.woken = waker.woken.load(Ordering::SeqCst);
    Ok(ready)
}

#[cfg(unix)]
fn borrow<S: Source>(socket: &S) -> std::os::fd::BorrowedFd<'_> {
    socket.as_fd()
}

#[cfg(unix)]
fn raw<S: Source>(socket: &S) -> std::os::fd::RawFd {
    use std::os::fd::AsRawFd;
    socket.as_fd().as_raw_fd()
}

#[cfg(unix)]
fn registered<S: Source>(socket: &S) -> Registered {
    Registered {
        socket: raw(socket),
    }
}

#[cfg(windows)]
fn borrow<S: Source>(socket: &S) -> std::os::windows::io::BorrowedSocket<'_> {
    socket.as_socket()
}

#[cfg(windows)]
fn raw<S: Source>(socket: &S) -> std::os::windows::io::RawSocket {
    use std::os::windows::io::AsRawSocket;
    socket.as_socket().as_raw_socket()
}

#[cfg(windows)]
fn registered<S: Source>(socket: &S) -> Registered {
    Registered {
        socket: raw(socket),
    }
}
