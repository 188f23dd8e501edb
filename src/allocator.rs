//! glibc's per-thread allocation cache, turned off: a cache per thread is the wrong trade for a
//! server with a thread per client.
//!
//! glibc's `malloc` keeps, in every thread, a small cache of the chunks that thread freed (the
//! *tcache*: up to 7 chunks of each size up to about 1 KiB), so that a busy thread's next
//! allocations skip the shared arena's lock. In a server whose threads are mostly idle clients,
//! the cache is memory held for nothing: what a connection's handshake freed stays cached in
//! its thread, and pins the pages it sits on, for as long as the thread lives, which is the
//! connection's life and, with threads reused (`threads.rs`), longer. docs/performance.md
//! measures it: about 2 KiB per idle connection over plain TCP and 8 KiB over TLS, for no echo
//! throughput that the bench can tell apart.
//!
//! The cache's size can only be set before the process starts, in the `GLIBC_TUNABLES`
//! environment variable, which glibc reads before `main`. So on Linux with glibc the command
//! first replaces itself (`exec`: the same process, the same pid and name, before any thread
//! or file is opened) with itself run with `glibc.malloc.tcache_count=0` added to
//! `GLIBC_TUNABLES`. A deployment that sets the cache's size itself is left as it is: glibc's
//! default is `GLIBC_TUNABLES=glibc.malloc.tcache_count=7`.

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod glibc {
    use std::ffi::OsString;
    use std::os::unix::process::CommandExt;
    use std::process::Command;

    /// The environment variable glibc reads its tunables from, `name=value` pairs separated
    /// by colons.
    const TUNABLES: &str = "GLIBC_TUNABLES";

    /// The tunable for the number of chunks each size's cache keeps per thread.
    const TCACHE_COUNT: &str = "glibc.malloc.tcache_count";

    /// Set for the command run again, so that it never runs itself a second time: a program
    /// with file capabilities (`setcap cap_net_bind_service` to listen on port 80) runs in
    /// glibc's secure mode, which may drop `GLIBC_TUNABLES` from the environment it passes on.
    const RESTARTED: &str = "WSECHO_TCACHE_SET";

    /// What the warning says when the command could not run itself again.
    const CACHE_KEPT: &str = "could not run again with glibc's per-thread allocation cache \
        off, so each idle connection keeps 2 to 8 KiB more (set \
        GLIBC_TUNABLES=glibc.malloc.tcache_count=0 to turn it off)";

    /// Runs the command again with the cache turned off, unless it was already or the
    /// deployment chose its size. Returns only if it does not: then with a warning to print
    /// when the command could not be run again.
    pub(crate) fn turn_off_thread_cache() -> Option<String> {
        let tunables = std::env::var_os(TUNABLES).unwrap_or_default();
        if std::env::var_os(RESTARTED).is_some() || tcache_count(&tunables).is_some() {
            return None;
        }
        let mut with_cache_off = tunables;
        if !with_cache_off.is_empty() {
            with_cache_off.push(":");
        }
        with_cache_off.push(format!("{TCACHE_COUNT}=0"));
        let mut args = std::env::args_os();
        let name = args.next().unwrap_or_else(|| OsString::from("wsecho"));
        // The binary's own path, not /proc/self/exe: the kernel names the process after the
        // file it runs, and `ps`, `pkill wsecho` and the journal must still see `wsecho`.
        let binary = match std::env::current_exe() {
            Ok(binary) => binary,
            Err(e) => return Some(format!("warning: {e}; {CACHE_KEPT}")),
        };
        let error = Command::new(binary)
            .arg0(name)
            .args(args)
            .env(TUNABLES, with_cache_off)
            .env(RESTARTED, "1")
            .exec();
        Some(format!("warning: {error}; {CACHE_KEPT}"))
    }

    /// What the process runs with, for the log.
    pub(crate) fn describe() -> Option<String> {
        let tunables = std::env::var_os(TUNABLES).unwrap_or_default();
        match tcache_count(&tunables).as_deref() {
            Some("0") => "glibc's per-thread allocation cache: off".to_owned(),
            Some(count) => format!(
                "glibc's per-thread allocation cache: {count} chunks of each size, as \
                 {TUNABLES} sets (0 saves 2 to 8 KiB per idle connection)"
            ),
            None => "glibc's per-thread allocation cache: glibc's default".to_owned(),
        }
        .into()
    }

    /// The cache's size, if `tunables` (`GLIBC_TUNABLES`'s value) sets it.
    fn tcache_count(tunables: &OsString) -> Option<String> {
        tunables
            .to_string_lossy()
            .split(':')
            .find_map(|pair| pair.strip_prefix(TCACHE_COUNT)?.strip_prefix('='))
            .map(str::to_owned)
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub(crate) use glibc::{describe, turn_off_thread_cache};

/// Elsewhere there is no glibc cache to turn off.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) fn turn_off_thread_cache() -> Option<String> {
    None
}

/// Elsewhere there is nothing to say.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) fn describe() -> Option<String> {
    None
}
