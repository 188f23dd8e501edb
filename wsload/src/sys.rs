//! Operating-system odds and ends: the file-descriptor limit, wsload's own
//! CPU time, the server's memory, CPU and descriptor figures, and the
//! machine's kernel memory.
//!
//! What a server process uses is read from `/proc`, so it needs Linux; on
//! other systems those functions return an error that says so (only
//! `hold --pid` asks for them). The descriptor limit is raised with
//! `setrlimit` on every Unix, and left alone on Windows, which has no such
//! per-process limit on sockets.

use anyhow::Result;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit. Every connection is a
/// file descriptor, and the usual soft limit of 1024 would stop `hold` long
/// before 10,000 connections.
#[cfg(unix)]
pub fn raise_fd_limit() -> Result<()> {
    use anyhow::Context;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
    }
    let wanted = limit.rlim_max;
    // macOS refuses a soft limit above OPEN_MAX (10240, <sys/syslimits.h>);
    // its setrlimit(2) page says to ask for min(OPEN_MAX, rlim_max).
    #[cfg(target_vendor = "apple")]
    let wanted = wanted.min(10240);
    if limit.rlim_cur < wanted {
        limit.rlim_cur = wanted;
        // SAFETY: setrlimit only reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(std::io::Error::last_os_error()).context("setrlimit(RLIMIT_NOFILE)");
        }
    }
    Ok(())
}

/// Windows has no per-process limit like `RLIMIT_NOFILE` on sockets:
/// nothing to raise.
#[cfg(not(unix))]
pub fn raise_fd_limit() -> Result<()> {
    Ok(())
}

/// CPU seconds (user + system) this process has used so far; reported so
/// readers can see what the load generator itself cost. `None` where
/// `getrusage` does not exist (Windows).
#[cfg(unix)]
pub fn own_cpu_seconds() -> Option<f64> {
    // SAFETY: an all-zero rusage is a valid value for getrusage to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we pass.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return None;
    }
    let secs = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    Some(secs(usage.ru_utime) + secs(usage.ru_stime))
}

#[cfg(not(unix))]
pub fn own_cpu_seconds() -> Option<f64> {
    None
}

#[cfg(target_os = "linux")]
pub use linux::{cpu_seconds, kernel_memory, open_fds, rss_bytes};

#[cfg(not(target_os = "linux"))]
pub use elsewhere::{cpu_seconds, kernel_memory, open_fds, rss_bytes};

/// The parts of the machine's kernel memory that grow with connections and
/// threads, from `/proc/meminfo`, in KiB.
///
/// - `SUnreclaim`: the kernel's object caches that cannot be dropped under
///   memory pressure. Each TCP connection's socket (both ends when client and
///   server share the machine), its file, the epoll entries watching it, and
///   each thread's task structures live here.
/// - `KernelStack`: one kernel stack per thread (16 KiB on x86-64), so a
///   server with a thread per connection pays it once per connection.
/// - `PageTables`: the page tables mapping processes' memory; each thread's
///   stack, mapped apart from the others, needs page-table pages of its own.
///
/// `SReclaimable`, the rest of `Slab`, is read too but kept apart: a socket
/// puts about 1 KiB there (its inode and dentry, the same for every server),
/// but it is mostly the file-system caches, which whatever else runs on the
/// machine moves by megabytes at a time.
///
/// None of these is in any process's RSS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelMemory {
    pub slab_unreclaimable_kib: u64,
    pub slab_reclaimable_kib: u64,
    pub kernel_stack_kib: u64,
    pub page_tables_kib: u64,
}

impl KernelMemory {
    /// SUnreclaim + KernelStack + PageTables.
    pub fn total_kib(&self) -> u64 {
        self.slab_unreclaimable_kib + self.kernel_stack_kib + self.page_tables_kib
    }
}

/// The server's figures from `/proc`.
#[cfg(target_os = "linux")]
mod linux {
    use anyhow::{Context, Result, bail};
    use std::fs;

    /// Resident set size of process `pid` in bytes (`VmRSS` of
    /// `/proc/PID/status`).
    pub fn rss_bytes(pid: u32) -> Result<u64> {
        let path = format!("/proc/{pid}/status");
        let status = fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        super::parse_vm_rss(&status).with_context(|| format!("no VmRSS line in {path}"))
    }

    /// The machine's kernel memory figures (`/proc/meminfo`).
    pub fn kernel_memory() -> Result<super::KernelMemory> {
        let path = "/proc/meminfo";
        let text = fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?;
        super::parse_meminfo(&text)
            .with_context(|| format!("no SUnreclaim, KernelStack or PageTables line in {path}"))
    }

    /// CPU time (user + system, all threads) process `pid` has used, in
    /// seconds.
    pub fn cpu_seconds(pid: u32) -> Result<f64> {
        let path = format!("/proc/{pid}/stat");
        let stat = fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        let ticks =
            super::parse_stat_ticks(&stat).with_context(|| format!("cannot parse {path}"))?;
        Ok(ticks as f64 / clock_ticks_per_second()?)
    }

    /// File descriptors process `pid` has open (entries of `/proc/PID/fd`).
    pub fn open_fds(pid: u32) -> Result<u64> {
        let path = format!("/proc/{pid}/fd");
        let entries = fs::read_dir(&path).with_context(|| format!("cannot read {path}"))?;
        let mut count = 0;
        for entry in entries {
            entry.with_context(|| format!("cannot read {path}"))?;
            count += 1;
        }
        Ok(count)
    }

    fn clock_ticks_per_second() -> Result<f64> {
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if ticks <= 0 {
            bail!("sysconf(_SC_CLK_TCK) failed");
        }
        Ok(ticks as f64)
    }
}

/// Without `/proc` there is no portable way to look into another process.
#[cfg(not(target_os = "linux"))]
mod elsewhere {
    use anyhow::{Result, bail};

    pub fn rss_bytes(_pid: u32) -> Result<u64> {
        bail!("reading a process's memory needs Linux (/proc)")
    }

    pub fn cpu_seconds(_pid: u32) -> Result<f64> {
        bail!("reading a process's CPU time needs Linux (/proc)")
    }

    pub fn open_fds(_pid: u32) -> Result<u64> {
        bail!("counting a process's file descriptors needs Linux (/proc)")
    }

    pub fn kernel_memory() -> Result<super::KernelMemory> {
        bail!("reading the kernel's memory figures needs Linux (/proc/meminfo)")
    }
}

/// `VmRSS` of a `/proc/PID/status` text, in bytes.
#[cfg(any(target_os = "linux", test))]
fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// SUnreclaim, SReclaimable, KernelStack and PageTables of a `/proc/meminfo`
/// text (all four must be there).
#[cfg(any(target_os = "linux", test))]
fn parse_meminfo(text: &str) -> Option<KernelMemory> {
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.split(':').next() == Some(name))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    Some(KernelMemory {
        slab_unreclaimable_kib: field("SUnreclaim")?,
        slab_reclaimable_kib: field("SReclaimable")?,
        kernel_stack_kib: field("KernelStack")?,
        page_tables_kib: field("PageTables")?,
    })
}

/// utime + stime from a `/proc/PID/stat` line. The command name (field 2)
/// may contain spaces and parentheses, so fields are counted from the last
/// `)`: after it come state (field 3) ... utime (14) and stime (15).
#[cfg(any(target_os = "linux", test))]
fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_comm.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vm_rss() {
        let status = "Name:\tx\nVmPeak:\t  9 kB\nVmRSS:\t    1234 kB\nThreads: 1\n";
        assert_eq!(parse_vm_rss(status), Some(1234 * 1024));
        assert_eq!(parse_vm_rss("Name: x\n"), None);
    }

    #[test]
    fn parses_meminfo() {
        let text = "MemTotal:       24683520 kB\nSlab:             123456 kB\n\
                    SReclaimable:     60000 kB\nSUnreclaim:       63456 kB\n\
                    KernelStack:        9216 kB\nPageTables:         4321 kB\n\
                    SecPageTables:         0 kB\n";
        let k = parse_meminfo(text).unwrap();
        assert_eq!(
            (k.slab_unreclaimable_kib, k.slab_reclaimable_kib),
            (63456, 60000)
        );
        assert_eq!((k.kernel_stack_kib, k.page_tables_kib), (9216, 4321));
        assert_eq!(k.total_kib(), 63456 + 9216 + 4321);
        assert_eq!(parse_meminfo("SUnreclaim: 1 kB\nKernelStack: 2 kB\n"), None);
    }

    #[test]
    fn parses_stat_with_awkward_command_name() {
        let stat = "42 (a) b (c) S 1 42 42 0 -1 4194560 100 0 0 0 7 5 0 0 20 0 1 0 9 0 0";
        assert_eq!(parse_stat_ticks(stat), Some(12));
    }

    #[test]
    fn raises_the_limit_and_reads_own_cpu_time() {
        raise_fd_limit().unwrap();
        if cfg!(unix) {
            assert!(own_cpu_seconds().unwrap() >= 0.0);
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn reads_own_figures() {
        let pid = std::process::id();
        assert!(rss_bytes(pid).unwrap() > 0);
        assert!(cpu_seconds(pid).unwrap() >= 0.0);
        // Other tests open and close files meanwhile: only a lower bound holds.
        let _file = std::fs::File::open("/proc/self/status").unwrap();
        assert!(open_fds(pid).unwrap() >= 1);
        assert!(kernel_memory().unwrap().total_kib() > 0);
    }

    #[cfg(not(target_os = "linux"))]
    #[test]
    fn says_what_needs_linux() {
        let pid = std::process::id();
        let err = rss_bytes(pid).unwrap_err().to_string();
        assert_eq!(err, "reading a process's memory needs Linux (/proc)");
        assert!(cpu_seconds(pid).is_err() && open_fds(pid).is_err());
        assert!(kernel_memory().is_err());
    }
}
