//! How many connections this machine can hold, and how much memory they may use: derived
//! from the system's limits (open files, threads, physical memory) unless the configuration
//! says, and logged once with how to raise them.
//!
//! A connection needs a thread and a descriptor or two; past the lower of the two limits the
//! server answers 503 rather than let the system drop connections. Only [`Server::bind`]
//! calls this, once, on the thread that binds, before any connection thread exists; it raises
//! the process's open-file limit, which nothing else changes.
//!
//! [`Server::bind`]: super::Server::bind

use log::{info, warn};

use crate::config::{self, Config};
use crate::logging::approx_size;
use crate::sys;
use crate::threads::MAX_PARKED;

/// Descriptors kept for everything else: standard streams, the listener, the log file,
/// the signal handler's pipe, and room for a few more.
const RESERVED_FDS: usize = 32;

/// Where the system has no open-file limit (Windows), the default connection cap: a thread
/// each, so a number a desktop machine's memory holds (about 20 KiB each when idle).
const UNLIMITED_CAPACITY: usize = 10_000;

/// An open-file limit above this is taken as this: a system's "unlimited" hard limit can be
/// 2^63, and no machine runs that many threads.
const MAX_DESCRIPTORS: usize = 1 << 24;

/// The connection limit: `--max-connections`, or as many as the open-file and thread limits
/// leave room for. Those limits are raised and logged with `--max-connections` too: the
/// connections it allows need their descriptors and threads all the same.
pub(super) fn connection_limit(config: &Config) -> usize {
    let fits = connection_capacity().min(thread_capacity());
    match config.max_connections {
        Some(n) if n > fits => {
            warn!(
                "--max-connections {n} is more than the open-file and thread limits allow \
                 ({fits}); past that, new clients wait or get 503 until others leave"
            );
            n
        }
        Some(n) => n,
        None => fits,
    }
}

/// Threads kept for everything but connections: the main thread, the greeting timer, the
/// signal thread, the cluster's two, the connection threads' maker and its spares
/// (`threads.rs`), and room for a few more.
const RESERVED_THREADS: u64 = 16 + MAX_PARKED as u64;

/// How many connections the system's thread settings leave room for (a thread each): past it,
/// new clients get 503, never a dropped TCP connection. Logged beside the descriptor cap.
fn thread_capacity() -> usize {
    let Some((room, setting, value)) = sys::thread_room() else {
        return usize::MAX;
    };
    let capacity = usize::try_from(room.saturating_sub(RESERVED_THREADS))
        .unwrap_or(usize::MAX)
        .max(1);
    info!(
        "thread limit: room for {capacity} connections ({setting} {value}; raise it for more, \
         see docs/deploying.md)"
    );
    capacity
}

/// Raises the open-file limit, and derives how many connections fit under it.
fn connection_capacity() -> usize {
    let Some(fds) = sys::raise_open_file_limit() else {
        info!("no open-file limit here: room for {UNLIMITED_CAPACITY} connections");
        return UNLIMITED_CAPACITY;
    };
    let fds = usize::try_from(fds)
        .unwrap_or(usize::MAX)
        .min(MAX_DESCRIPTORS);
    let capacity = fds.saturating_sub(RESERVED_FDS) / sys::FDS_PER_CONNECTION;
    info!(
        "open-file limit {fds}: room for {capacity} connections ({} descriptor{} each, waiting \
         with {})",
        sys::FDS_PER_CONNECTION,
        if sys::FDS_PER_CONNECTION == 1 {
            ""
        } else {
            "s"
        },
        sys::BACKEND
    );
    capacity.max(1)
}

/// The memory ceiling: the configured one, or a share of the machine's memory.
pub(super) fn memory_ceiling(config: &Config) -> usize {
    if let Some(limit) = config.max_memory {
        info!("memory ceiling {} (--max-memory)", approx_size(limit));
        return limit;
    }
    let (limit, from) = match sys::physical_memory() {
        Some(total) => (
            usize::try_from(total / config::MEMORY_FRACTION).unwrap_or(usize::MAX),
            format!(
                "1/{} of this machine's {}",
                config::MEMORY_FRACTION,
                approx_size(usize::try_from(total).unwrap_or(usize::MAX))
            ),
        ),
        None => (
            config::FALLBACK_MAX_MEMORY,
            "the machine's memory is unknown".to_string(),
        ),
    };
    // Room for at least one largest message and its echo, whatever the machine.
    let limit = limit.max(2 * config.max_message_size);
    info!(
        "memory ceiling {} ({from}); set it with --max-memory",
        approx_size(limit)
    );
    limit
}
