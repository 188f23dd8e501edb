//! glibc's per-thread allocation cache: a cache per thread is the wrong trade for a server with
//! a thread per client, and the deployment turns it off.
//!
//! glibc's `malloc` keeps, in every thread, a small cache of the chunks that thread freed (the
//! *tcache*: up to 7 chunks of each size up to about 1 KiB), so that a busy thread's next
//! allocations skip the shared arena's lock. In a server whose threads are mostly idle clients,
//! the cache is memory held for nothing: what a connection's handshake freed stays cached in
//! its thread, and pins the pages it sits on, for as long as the thread lives, which is the
//! connection's life and, with threads reused (`threads.rs`), longer. docs/performance.md
//! measures it: about 2.5 KiB per idle connection over plain TCP and 8 KiB over TLS, for no
//! echo throughput that the bench can tell apart.
//!
//! glibc reads the cache's size once, before `main`, from the `GLIBC_TUNABLES` environment
//! variable, so only whoever starts the process can set it. The deployment files this
//! repository ships do (`deploy/wsecho.service`, `deploy/Containerfile`:
//! `GLIBC_TUNABLES=glibc.malloc.tcache_count=0`); the command itself runs exactly once, as it
//! was started, and only says at start what the cache costs when it is on.

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod glibc {
    /// The environment variable glibc reads its tunables from, `name=value` pairs separated
    /// by colons.
    const TUNABLES: &str = "GLIBC_TUNABLES";

    /// The tunable for the number of chunks each size's cache keeps per thread.
    const TCACHE_COUNT: &str = "glibc.malloc.tcache_count";

    /// What the process runs with, for the startup log: with the cache on, what it costs and
    /// how to turn it off.
    pub(crate) fn describe() -> String {
        let tunables = std::env::var_os(TUNABLES).unwrap_or_default();
        match tcache_count(&tunables.to_string_lossy()).as_deref() {
            Some("0") => "glibc's per-thread allocation cache: off".to_owned(),
            count => format!(
                "glibc's per-thread allocation cache: on ({}); it costs each idle connection \
                 about 2.5 KiB (8 KiB over TLS): start wsecho with \
                 {TUNABLES}={TCACHE_COUNT}=0 to turn it off, as deploy/wsecho.service and the \
                 container image do",
                match count {
                    Some(count) => format!("{count} chunks of each size, as {TUNABLES} sets"),
                    None => "glibc's default".to_owned(),
                }
            ),
        }
    }

    /// The cache's size, if `tunables` (`GLIBC_TUNABLES`'s value) sets it.
    pub(super) fn tcache_count(tunables: &str) -> Option<String> {
        tunables
            .split(':')
            .find_map(|pair| pair.strip_prefix(TCACHE_COUNT)?.strip_prefix('='))
            .map(str::to_owned)
    }
}

/// What the allocator's setting costs, for the startup log.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub(crate) fn describe() -> Option<String> {
    Some(glibc::describe())
}

/// Elsewhere there is no glibc cache to speak of.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) fn describe() -> Option<String> {
    None
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::glibc::tcache_count;

    #[test]
    fn the_cache_size_is_read_among_other_tunables() {
        assert_eq!(tcache_count(""), None);
        assert_eq!(
            tcache_count("glibc.malloc.arena_max=4:glibc.malloc.tcache_count=0").as_deref(),
            Some("0")
        );
        assert_eq!(
            tcache_count("glibc.malloc.tcache_count=7").as_deref(),
            Some("7")
        );
        assert_eq!(tcache_count("glibc.malloc.tcache_count_x=7"), None);
    }
}
