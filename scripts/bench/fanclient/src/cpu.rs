//! CPU time from /proc: the server's over the sending (--pid), and the
//! client's own, to tell a busy client from a slow server.

/// Clock ticks per second of /proc's counters: USER_HZ, 100 on every Linux
/// architecture the bench runs on (sysconf(_SC_CLK_TCK) would need libc).
const TICKS_PER_S: f64 = 100.0;

/// User + system CPU seconds of process PID ("self" for this one), or None
/// when /proc cannot tell (not Linux, the process gone).
pub fn seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name, in parentheses, may hold spaces: count from after it.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of proc(5)'s stat, the name field 2:
    // 11 and 12 counted from 0 after it.
    let ticks = |i: usize| fields.get(i)?.parse::<f64>().ok();
    Some((ticks(11)? + ticks(12)?) / TICKS_PER_S)
}
