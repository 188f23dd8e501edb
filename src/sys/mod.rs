//! Everything that asks the operating system for something std does not offer: the one
//! folder with `unsafe` code (the rest of the crate denies it), and the one place that knows
//! which system it runs on.
//!
//! It offers the rest of the server a small interface:
//!
//! - [`wait`]: sleep until a socket is ready, a [`Waker`] is woken, or a timeout passes;
//! - [`Waker::wake`]: end another thread's [`wait`] at once, from any thread;
//! - [`raise_open_file_limit`] and [`is_out_of_descriptors`]: how many sockets fit, and what
//!   running out looks like;
//! - [`physical_memory`]: what the default memory ceiling is a share of, and
//!   [`return_freed_memory`]: so that what the ceiling counts is what the process holds;
//! - [`trim_heap`] and [`release_stack_below_caller`]: what a quiet connection gives back;
//! - [`activation`]: listening sockets handed over by systemd, and telling it how the server
//!   is doing.
//!
//! # Why a waker at all
//!
//! A connection's thread must notice two things while it waits: bytes from its peer, and frames
//! that other threads (the greeting timer, broadcasts, shutdown) have queued for it. A blocking
//! `read()` can only notice the first, and tungstenite cannot split a blocking socket into a
//! reading half and a writing half (tungstenite issues 113 and 311). So the socket is made
//! non-blocking, the thread sleeps in one system call that watches the socket *and* a waker,
//! and other threads wake it. An idle connection is a thread asleep in the kernel: no CPU, no
//! tick, and it wakes the moment there is work.
//!
//! # Two backends, one contract
//!
//! - `ppoll.rs`, on Linux, Android, FreeBSD and OpenBSD: `ppoll(2)` on the socket, woken by a
//!   signal. One descriptor per connection, the socket itself.
//! - `portable.rs` everywhere else (macOS, Windows, ...), and on Linux with the cargo feature
//!   `portable-poll`: the `polling` crate (kqueue with `EVFILT_USER`, IOCP with a completion
//!   packet, epoll with an eventfd), one poller per connection.
//!
//! Both keep the same promises: a wake-up is never lost (one sent before the sleep ends it at
//! once), wake-ups are prompt (no polling tick), an idle thread costs no CPU, and only the
//! connection's own thread reads its socket. `.ci/run` runs the whole test suite with each
//! backend on Linux.

#![allow(unsafe_code)]

use std::io;
use std::time::Duration;

#[cfg(ppoll)]
#[path = "ppoll.rs"]
mod backend;

#[cfg(not(ppoll))]
#[path = "portable.rs"]
mod backend;

pub(crate) use backend::{BACKEND, FDS_PER_CONNECTION, Waker};

/// Readies waking before the server makes any thread (the Linux backend blocks its wake
/// signal here, for every thread made after to inherit): call first, on the thread that starts
/// the server.
pub(crate) fn prepare_wakers() -> io::Result<()> {
    backend::prepare()
}

pub(crate) mod activation;

/// A writer into a TCP socket that never raises `SIGPIPE`: a peer that reset the connection
/// makes a write fail with `EPIPE`, whatever the process does with the signal. A Rust binary
/// ignores `SIGPIPE`, but a program embedding the server may keep the signal's default, which
/// kills the process. Every byte the server writes to a client goes through this.
///
/// Linux, Android and the BSDs send with `MSG_NOSIGNAL`; Apple's systems have no such flag
/// and get `SO_NOSIGPIPE` on the socket ([`no_sigpipe`], when it is accepted); Windows has no
/// `SIGPIPE`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NoSigpipe<'a>(pub(crate) &'a std::net::TcpStream);

impl std::io::Write for NoSigpipe<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[std::io::IoSlice::new(buf)])
    }

    #[cfg(msg_nosignal)]
    fn write_vectored(&mut self, bufs: &[std::io::IoSlice<'_>]) -> io::Result<usize> {
        socket2::SockRef::from(self.0).send_vectored_with_flags(bufs, libc::MSG_NOSIGNAL)
    }

    #[cfg(not(msg_nosignal))]
    fn write_vectored(&mut self, bufs: &[std::io::IoSlice<'_>]) -> io::Result<usize> {
        (&*self.0).write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Marks an accepted socket so that writing to it after the peer reset it never raises
/// `SIGPIPE`, where the system offers that per socket (Apple's `SO_NOSIGPIPE`); elsewhere
/// [`NoSigpipe`] does it per write.
pub(crate) fn no_sigpipe(socket: &std::net::TcpStream) -> io::Result<()> {
    #[cfg(any(target_os = "macos", target_os = "ios"))]
    socket2::SockRef::from(socket).set_nosigpipe(true)?;
    let _ = socket;
    Ok(())
}

/// A socket [`wait`] can watch: anything that lends its descriptor (Unix) or its socket handle
/// (Windows), as std's `TcpStream` and `TcpListener` do.
#[cfg(unix)]
pub(crate) trait Source: std::os::fd::AsFd {}
#[cfg(unix)]
impl<T: std::os::fd::AsFd> Source for T {}

/// A socket [`wait`] can watch: anything that lends its descriptor (Unix) or its socket handle
/// (Windows), as std's `TcpStream` and `TcpListener` do.
#[cfg(windows)]
pub(crate) trait Source: std::os::windows::io::AsSocket {}
#[cfg(windows)]
impl<T: std::os::windows::io::AsSocket> Source for T {}

/// What [`wait`] watches the socket for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Interest {
    /// Wake when bytes arrive (or the peer hangs up).
    pub read: bool,
    /// Wake when the send buffer has room.
    pub write: bool,
}

/// What [`wait`] found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Ready {
    /// The socket has bytes to read, or its peer hung up or failed (a read will tell which).
    pub readable: bool,
    /// The socket has room in its send buffer.
    pub writable: bool,
    /// The peer hung up or the connection failed, in both directions: reported even when
    /// the socket is not watched for reading.
    pub hangup: bool,
    /// The waker was woken.
    pub woken: bool,
}

/// Sleeps until the socket (if any) is ready for `interest`, the waker is woken, or `timeout`
/// passes (`None` waits for ever). It may also return early with nothing ready, so callers
/// decide what to do from the clock, not from the return.
///
/// Only one thread waits on a given waker (its connection's); a waker serves one socket.
pub(crate) fn wait<S: Source>(
    socket: Option<&S>,
    interest: Interest,
    waker: &Waker,
    timeout: Option<Duration>,
) -> io::Result<Ready> {
    backend::wait(socket, interest, waker, timeout)
}

/// Raises the open-file soft limit as far as the hard limit allows, and returns the limit now
/// in force; `None` where there is no such limit (Windows: sockets are bounded by memory).
pub(crate) fn raise_open_file_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        unix::raise_open_file_limit()
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Whether an `accept` failed for lack of descriptors or kernel memory: a condition that
/// passes as other connections close, to retry with backoff rather than give up.
pub(crate) fn is_out_of_descriptors(error: &io::Error) -> bool {
    #[cfg(unix)]
    {
        matches!(
            error.raw_os_error(),
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
        )
    }
    #[cfg(windows)]
    {
        /// WSAEMFILE and WSAENOBUFS: too many sockets, no buffer space.
        const OUT_OF_SOCKETS: [i32; 2] = [10024, 10055];
        error
            .raw_os_error()
            .is_some_and(|code| OUT_OF_SOCKETS.contains(&code))
    }
}

/// Allocations at least this big get their own memory map from glibc's allocator, and go back
/// to the system when freed. glibc's default starts at 128 KiB but raises itself to the size of
/// any such block freed (up to 32 MiB), after which big message buffers come from its heaps,
/// where freed memory is kept for reuse by the thread's arena only: with a thread per
/// connection, memory freed by one connection then stays resident while another allocates
/// anew, and the process holds more than the memory ceiling counts. Fixed at 256 KiB, a freed
/// big message is returned at once, at the cost of an `mmap` and `munmap` per message over it.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 256 * 1024;

/// Tells the memory allocator to give big blocks back when they are freed (see
/// [`MMAP_THRESHOLD`]); elsewhere than with glibc, nothing to do.
pub(crate) fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets an allocator parameter; it fails (returns 0) only for an
        // unknown parameter, which leaves the default in place.
        let set = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) };
        debug_assert_eq!(set, 1, "mallopt(M_MMAP_THRESHOLD) refused");
    }
}

/// Returns the memory the allocator holds free, in every arena, to the system: after a burst,
/// the buffers it freed stay resident in the arenas of the threads that used them, which no
/// other thread may use. glibc's `malloc_trim` gives back every whole free page; elsewhere the
/// allocator does what it does, and this does nothing. It locks each arena in turn while it
/// walks it, so callers keep it rare (`connection/settle.rs`).
pub(crate) fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only walks the allocator's own free lists, under its locks.
        unsafe { libc::malloc_trim(0) };
    }
}

/// Gives back the calling thread's stack pages below its caller's frame.
///
/// A thread keeps every stack page it ever touched. A connection sleeps about 7 KiB deep (two
/// pages), but a deep moment (a handshake, or a signal from the waker, whose frame the kernel
/// writes below the sleeping loop) touches a third; calling this from the loop gives such
/// pages back, and the next deep moment simply finds fresh zeroed pages. Linux only: there
/// `MADV_DONTNEED` frees anonymous pages at once, where other systems may take it as a hint.
/// Call it from a shallow frame: pages within [`STACK_MARGIN`] of the caller's stay.
#[inline(never)]
pub(crate) fn release_stack_below_caller() {
    #[cfg(target_os = "linux")]
    {
        let marker = 0u8;
        let here = std::hint::black_box(&marker) as *const u8 as usize;
        linux::release_stack_below(here.saturating_sub(STACK_MARGIN));
    }
}

/// What [`release_stack_below_caller`] keeps below its caller's frame: its own frame, the
/// `madvise` call's, and the 128-byte red zone the x86-64 ABI lets a leaf function use.
#[cfg(target_os = "linux")]
const STACK_MARGIN: usize = 512;

/// Memory maps a connection's thread takes in the process, against Linux's
/// `vm.max_map_count`: its stack and its signal stack (std's, for reporting stack overflows),
/// each with a guard page, as `/proc/PID/maps` shows. Measured: with the default count of
/// 65,530, thread creation failed at the 16,364th connection, four maps each.
#[cfg(any(target_os = "linux", test))]
pub(crate) const MAPS_PER_CONNECTION: u64 = 4;

/// The most threads this process may still start, and the system setting that bounds it
/// (Linux: `vm.max_map_count`, `kernel.threads-max`, `kernel.pid_max`); `None` where it
/// cannot be found out. A thread the system refuses would be a connection dropped without a
/// word, so the server admits no more connections than this.
pub(crate) fn thread_room() -> Option<(u64, &'static str, u64)> {
    #[cfg(target_os = "linux")]
    {
        linux::thread_room()
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// The most threads the system settings `(name, value)` leave room for, given the memory maps
/// the process has and the threads the machine runs: each setting bounds it, and the least
/// wins. Returns that room, and the setting.
#[cfg(any(target_os = "linux", test))]
pub(crate) fn least_room(
    max_map_count: Option<u64>,
    maps_now: u64,
    threads_max: Option<u64>,
    pid_max: Option<u64>,
    threads_now: u64,
) -> Option<(u64, &'static str, u64)> {
    let by_maps = max_map_count.map(|max| {
        (
            max.saturating_sub(maps_now) / MAPS_PER_CONNECTION,
            "vm.max_map_count",
            max,
        )
    });
    let by_threads =
        threads_max.map(|max| (max.saturating_sub(threads_now), "kernel.threads-max", max));
    let by_pids = pid_max.map(|max| (max.saturating_sub(threads_now), "kernel.pid_max", max));
    [by_maps, by_threads, by_pids]
        .into_iter()
        .flatten()
        .min_by_key(|(room, _, _)| *room)
}

/// The machine's memory in bytes, or the container's limit when it is smaller (Linux cgroup
/// v2); `None` where it cannot be found out.
pub(crate) fn physical_memory() -> Option<u64> {
    #[cfg(unix)]
    {
        unix::physical_memory()
    }
    #[cfg(not(unix))]
    {
        None
    }
}

#[cfg(unix)]
mod unix {
    /// Where Linux's cgroup v2 says how much memory this container may use.
    const CGROUP_MEMORY_MAX: &str = "/sys/fs/cgroup/memory.max";

    pub(super) fn raise_open_file_limit() -> Option<u64> {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into a live rlimit struct.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            // SAFETY: setrlimit reads a live rlimit struct. It may refuse (macOS refuses an
            // unlimited hard limit for files): the old limit then stays, which is still right.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
                limit = raised;
            }
        }
        #[allow(clippy::useless_conversion)] // rlim_t is u64 on most systems, not all
        u64::try_from(limit.rlim_cur).ok()
    }

    pub(super) fn physical_memory() -> Option<u64> {
        // SAFETY: sysconf only reads system configuration.
        let (pages, page_size) = unsafe {
            (
                libc::sysconf(libc::_SC_PHYS_PAGES),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        let machine = u64::try_from(pages)
            .ok()
            .zip(u64::try_from(page_size).ok())
            .map(|(pages, size)| pages.saturating_mul(size))
            .filter(|&total| total > 0)?;
        let container = std::fs::read_to_string(CGROUP_MEMORY_MAX)
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok());
        Some(container.map_or(machine, |limit| limit.min(machine)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::sync::Arc;

    const NOTHING: Interest = Interest {
        read: false,
        write: false,
    };

    /// Set for the child process of the SIGPIPE test.
    const SIGPIPE_CHILD: &str = "WSECHO_SIGPIPE_CHILD";

    /// A program that embeds the server with SIGPIPE at its default (a Rust binary ignores
    /// it; a C host or a test harness may not) is not killed when a client it writes to has
    /// reset: the write fails instead. Run in a child process, whose death would be the
    /// failure.
    #[cfg(unix)]
    #[test]
    fn writing_to_a_reset_client_raises_no_sigpipe() {
        if std::env::var_os(SIGPIPE_CHILD).is_some() {
            return write_to_a_reset_peer_with_sigpipe_at_its_default();
        }
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "sys::tests::writing_to_a_reset_client_raises_no_sigpipe",
                "--test-threads",
                "1",
            ])
            .env(SIGPIPE_CHILD, "1")
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "the child died: {status:?}");
    }

    #[cfg(unix)]
    fn write_to_a_reset_peer_with_sigpipe_at_its_default() {
        use std::io::Write;
        // SAFETY: restores the default action of one signal, in a process of its own.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server_side, _) = listener.accept().unwrap();
        socket2::SockRef::from(&peer)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(peer); // a reset
        let mut failed = 0;
        for _ in 0..100 {
            // Vectored, as the server writes: std's plain write sends with MSG_NOSIGNAL
            // itself, its writev cannot.
            let frames = [std::io::IoSlice::new(b"fr"), std::io::IoSlice::new(b"ame")];
            if NoSigpipe(&server_side).write_vectored(&frames).is_err() {
                failed += 1;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(failed > 0, "every write to a reset peer went through");
    }

    #[test]
    fn the_least_room_for_threads_wins_and_says_which_setting() {
        // The defaults of a Linux machine: maps run out first, at 16,3xx connections.
        let room = least_room(Some(65_530), 150, Some(192_000), Some(4_194_304), 400);
        assert_eq!(room, Some(((65_530 - 150) / 4, "vm.max_map_count", 65_530)));
        let room = least_room(Some(1 << 20), 150, Some(10_000), Some(32_768), 400);
        assert_eq!(room, Some((9_600, "kernel.threads-max", 10_000)));
        assert_eq!(least_room(None, 0, None, None, 0), None);
        #[cfg(target_os = "linux")]
        assert!(thread_room().is_some_and(|(room, _, _)| room > 0));
    }

    #[test]
    fn wake_from_another_thread_ends_the_wait() {
        let waker = Arc::new(Waker::new());
        let other = Arc::clone(&waker);
        // The wake may come before, during or after the sleep starts: none may be lost.
        let thread = std::thread::spawn(move || other.wake());
        let ready = loop {
            let ready = wait(None::<&TcpStream>, NOTHING, &waker, None).unwrap();
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
        let ready = wait(
            None::<&TcpStream>,
            NOTHING,
            &waker,
            Some(Duration::from_millis(1)),
        );
        assert_eq!(ready.unwrap(), Ready::default(), "reset clears the wake-up");
    }

    #[test]
    fn socket_readiness_is_reported() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        let waker = Waker::new();
        let both = Interest {
            read: true,
            write: true,
        };
        let ready = wait(Some(&server), both, &waker, None).unwrap();
        assert!(ready.writable && !ready.readable);

        io::Write::write_all(&mut client, b"x").unwrap();
        let read_only = Interest {
            read: true,
            write: false,
        };
        let ready = loop {
            let ready = wait(Some(&server), read_only, &waker, None).unwrap();
            if ready.readable {
                break ready;
            }
        };
        assert!(ready.readable && !ready.woken);
        waker.forget(&server);
    }

    #[test]
    fn the_open_file_limit_is_known_on_unix() {
        assert_eq!(raise_open_file_limit().is_some(), cfg!(unix));
        assert!(physical_memory().is_some() || !cfg!(unix));
    }
}

#[cfg(target_os = "linux")]
mod linux {
    /// See [`super::thread_room`]: reads the settings, this process's memory maps, and the
    /// threads the machine runs (the fourth field of `/proc/loadavg`, `running/total`).
    pub(super) fn thread_room() -> Option<(u64, &'static str, u64)> {
        let setting = |path: &str| {
            std::fs::read_to_string(path)
                .ok()
                .and_then(|text| text.trim().parse::<u64>().ok())
        };
        let maps_now = std::fs::read_to_string("/proc/self/maps")
            .map(|maps| maps.lines().count() as u64)
            .unwrap_or(0);
        let threads_now = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|text| {
                let entities = text.split_whitespace().nth(3)?;
                entities.split('/').nth(1)?.parse::<u64>().ok()
            })
            .unwrap_or(0);
        super::least_room(
            setting("/proc/sys/vm/max_map_count"),
            maps_now,
            setting("/proc/sys/kernel/threads-max"),
            setting("/proc/sys/kernel/pid_max"),
            threads_now,
        )
    }

    /// Frees this thread's stack pages from its lowest address up to `end` (rounded down to a
    /// page), all of them below every live frame (see `release_stack_below_caller`).
    pub(super) fn release_stack_below(end: usize) {
        let Some(low) = stack_low() else { return };
        // SAFETY: sysconf only reads system configuration.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let end = end & !(page - 1);
        if end <= low {
            return;
        }
        // SAFETY: [low, end) is part of this thread's own stack mapping and lies below every
        // frame still in use (the caller keeps STACK_MARGIN between its frame and `end`), so
        // nothing there is read again before it is written; MADV_DONTNEED frees the pages and
        // the next touch maps a zeroed one. Failure leaves the pages in place, which is safe.
        unsafe { libc::madvise(low as *mut libc::c_void, end - low, libc::MADV_DONTNEED) };
    }

    /// The lowest usable address of the calling thread's stack, above its guard page.
    fn stack_low() -> Option<usize> {
        let mut attr = std::mem::MaybeUninit::<libc::pthread_attr_t>::uninit();
        let mut addr: *mut libc::c_void = std::ptr::null_mut();
        let mut size: libc::size_t = 0;
        // SAFETY: pthread_getattr_np fills the attribute object for the calling thread (a
        // thread std spawned, so it has a known stack); it is read, then destroyed, only if
        // that succeeded.
        unsafe {
            if libc::pthread_getattr_np(libc::pthread_self(), attr.as_mut_ptr()) != 0 {
                return None;
            }
            let got = libc::pthread_attr_getstack(attr.as_ptr(), &mut addr, &mut size);
            libc::pthread_attr_destroy(attr.as_mut_ptr());
            (got == 0).then_some(addr as usize)
        }
    }
}
