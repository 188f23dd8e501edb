//! Waiting on a socket and a [`Waker`] at once: the one place that calls `poll(2)`.
//!
//! A connection's thread must notice two things while it waits: bytes from its peer, and frames
//! that other threads (the greeting timer, broadcasts, shutdown) have queued for it. A blocking
//! `read()` can only notice the first, and tungstenite cannot split a blocking socket into a
//! reading half and a writing half (tungstenite issues 113 and 311). So the socket is made
//! non-blocking and the thread sleeps in `poll(2)` on two file descriptors: the socket, and an
//! `eventfd` that other threads write to when they queue something. An idle connection is a
//! thread asleep in the kernel: it costs no CPU, and it wakes the moment there is work.
//!
//! This is the only module with `unsafe` code; each block is a plain system call on descriptors
//! this module owns or borrows.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// Wakes a thread that waits in [`wait`]; any thread may call [`Waker::wake`].
///
/// On Linux this is one `eventfd`; elsewhere a non-blocking pipe.
#[derive(Debug)]
pub struct Waker {
    /// The end that `poll` watches.
    read: OwnedFd,
    /// The end that `wake` writes to (the same descriptor as `read` for an eventfd).
    #[cfg(not(target_os = "linux"))]
    write: OwnedFd,
}

impl Waker {
    /// Creates a waker that is not yet signalled.
    #[cfg(target_os = "linux")]
    pub fn new() -> io::Result<Waker> {
        // SAFETY: eventfd takes no pointers; a non-negative result is a new descriptor we own.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and nothing else owns it.
        Ok(Waker {
            read: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Creates a waker that is not yet signalled.
    #[cfg(not(target_os = "linux"))]
    pub fn new() -> io::Result<Waker> {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe writes.
        if unsafe { libc::pipe(fds.as_mut_ptr()) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just created and nothing else owns them.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        for fd in [&read, &write] {
            // SAFETY: fcntl on a descriptor we own.
            unsafe {
                libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK);
                libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC);
            }
        }
        Ok(Waker { read, write })
    }

    /// Makes the waiting thread's next (or current) [`wait`] return with `woken` set.
    ///
    /// Never blocks: if the waker is already signalled, the write fails with `EAGAIN` (pipe
    /// full or eventfd counter at its maximum) and the thread is going to wake up anyway.
    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to a descriptor we own.
        unsafe { libc::write(self.write_fd(), (&raw const one).cast(), 8) };
    }

    /// Clears the signal, so the next [`wait`] sleeps until the next [`Waker::wake`].
    ///
    /// Call it before looking at what was queued, never after: a `wake` that races with the
    /// look is then seen at the next wait instead of being lost.
    pub fn reset(&self) {
        let mut buf = [0u8; 64];
        // One read clears an eventfd; a pipe may hold several wake-ups, so read until empty.
        // SAFETY: reads into a live buffer of the given length from a descriptor we own.
        while unsafe { libc::read(self.read.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) }
            == buf.len() as isize
        {}
    }

    #[cfg(target_os = "linux")]
    fn write_fd(&self) -> i32 {
        self.read.as_raw_fd()
    }

    #[cfg(not(target_os = "linux"))]
    fn write_fd(&self) -> i32 {
        self.write.as_raw_fd()
    }
}

impl AsFd for Waker {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.read.as_fd()
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
    /// The waker was signalled.
    pub woken: bool,
}

/// Sleeps until the socket is ready for `interest`, the waker is signalled, or `timeout` passes
/// (`None` waits for ever). A timeout returns `Ready::default()`.
pub fn wait(
    socket: BorrowedFd<'_>,
    interest: Interest,
    waker: &Waker,
    timeout: Option<Duration>,
) -> io::Result<Ready> {
    let mut events = 0;
    if interest.read {
        events |= libc::POLLIN;
    }
    if interest.write {
        events |= libc::POLLOUT;
    }
    let mut fds = [
        libc::pollfd {
            fd: socket.as_raw_fd(),
            events,
            revents: 0,
        },
        libc::pollfd {
            fd: waker.as_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    let timeout_ms = match timeout {
        None => -1,
        // Round up: a deadline 300 µs away must not turn into a 0 ms busy poll.
        Some(t) => t.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32,
    };
    loop {
        // SAFETY: `fds` is a live array of two pollfd structs.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if n >= 0 {
            break;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
    let hangup = libc::POLLHUP | libc::POLLERR | libc::POLLNVAL;
    let socket = fds[0].revents;
    Ok(Ready {
        // A hang-up or error is reported as readable: the next read returns it.
        readable: socket & (libc::POLLIN | hangup) != 0,
        writable: socket & libc::POLLOUT != 0,
        woken: fds[1].revents & libc::POLLIN != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::sync::Arc;

    #[test]
    fn wake_from_another_thread_ends_the_wait() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let socket = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let waker = Arc::new(Waker::new().unwrap());
        let other = Arc::clone(&waker);
        let thread = std::thread::spawn(move || other.wake());
        let interest = Interest {
            read: true,
            write: false,
        };
        let ready = wait(socket.as_fd(), interest, &waker, None).unwrap();
        thread.join().unwrap();
        assert_eq!(
            ready,
            Ready {
                woken: true,
                ..Ready::default()
            }
        );

        waker.reset();
        let ready = wait(
            socket.as_fd(),
            interest,
            &waker,
            Some(Duration::from_millis(1)),
        )
        .unwrap();
        assert_eq!(ready, Ready::default(), "reset clears the signal");
    }

    #[test]
    fn socket_readiness_is_reported() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let waker = Waker::new().unwrap();
        let both = Interest {
            read: true,
            write: true,
        };
        let ready = wait(server.as_fd(), both, &waker, None).unwrap();
        assert!(ready.writable && !ready.readable);

        io::Write::write_all(&mut client, b"x").unwrap();
        let read_only = Interest {
            read: true,
            write: false,
        };
        let ready = wait(server.as_fd(), read_only, &waker, None).unwrap();
        assert!(ready.readable && !ready.woken);
    }
}
