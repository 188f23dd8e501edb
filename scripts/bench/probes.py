"""What the rehearsal reads off the machine while it runs: processes' memory and
CPU time from /proc, the kernel's memory and socket counters, and Redis's own
figures over its protocol (INFO, CLIENT LIST), with the standard library only.

Kernel memory is the same figure as the hold and wide rows' (wsload hold
--pid, wsload/src/modes/hold.rs): SUnreclaim + KernelStack + PageTables from
/proc/meminfo, the median of several samples, so that the rehearsal's cost
per client compares with theirs.
"""

from __future__ import annotations

import os
import socket
import statistics
import threading
import time
from dataclasses import dataclass, field

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
SAMPLES = 5  # memory samples on each side, as wsload hold takes
SAMPLE_EVERY_S = 0.2


# ----------------------------------------------------------------- /proc --
def rss_kib(pid: int) -> int | None:
    """PID's resident memory (VmRSS), or None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def threads(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return 0


def cpu_s(pid: int, tid: int | None = None) -> float | None:
    """PID's CPU time so far, user + system (its threads' included), or thread TID's alone;
    None once it is gone."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    try:
        with open(path) as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    except (OSError, ValueError, IndexError):
        return None


def first_threads(pid: int, count: int) -> dict[tuple[int, int], str]:
    """PID's first COUNT threads (the lowest ids: those it made at start, before any
    connection's) by name: {(pid, tid): name}."""
    try:
        tids = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))[:count]
    except OSError:
        return {}
    names = {}
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as comm:
                names[(pid, tid)] = comm.read().strip()
        except OSError:
            continue
    return names


def machine_jiffies() -> tuple[int, int, int]:
    """The whole machine's CPU time, busy, in all, and in interrupts (hard and soft: over
    loopback, much of TCP's receiving runs there, counted to no process), in clock ticks
    (/proc/stat)."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # guest time is already in user
    return total - idle, total, values[5] + values[6]


def meminfo() -> dict[str, int]:
    with open("/proc/meminfo") as info:
        return {line.split(":")[0]: int(line.split()[1]) for line in info}


def kernel_kib() -> int:
    """SUnreclaim + KernelStack + PageTables: what RSS does not show."""
    m = meminfo()
    return m["SUnreclaim"] + m["KernelStack"] + m["PageTables"]


def tasks() -> int:
    """Threads on the machine now (/proc/loadavg's fourth field: running/all)."""
    with open("/proc/loadavg") as load:
        return int(load.read().split()[3].split("/")[1])


def tcp_mem_pages() -> int:
    """Pages the kernel has allotted to TCP buffers now (/proc/net/sockstat)."""
    with open("/proc/net/sockstat") as stat:
        for line in stat:
            if line.startswith("TCP:"):
                words = line.split()
                return int(words[words.index("mem") + 1])
    return 0


def listen_overflows() -> int:
    """The machine's ListenOverflows so far (/proc/net/netstat): connections a full accept
    queue turned away (their clients retry)."""
    with open("/proc/net/netstat") as stat:
        lines = stat.read().splitlines()
    for names, values in zip(lines[::2], lines[1::2]):
        if names.startswith("TcpExt:"):
            return int(dict(zip(names.split(), values.split()))["ListenOverflows"])
    return 0


def backlog_drops() -> int:
    """Packets dropped so far because a core's input queue was full (/proc/net/softnet_stat's
    second column, summed over the cores): over loopback, net.core.netdev_max_backlog."""
    with open("/proc/net/softnet_stat") as stat:
        return sum(int(line.split()[1], 16) for line in stat)


def retransmits() -> int:
    """TCP segments the machine sent again so far (/proc/net/snmp, Tcp: RetransSegs)."""
    with open("/proc/net/snmp") as stat:
        lines = [line.split() for line in stat if line.startswith("Tcp:")]
    return int(dict(zip(lines[0], lines[1]))["RetransSegs"])


def median_of(read, count: int = SAMPLES, every_s: float = SAMPLE_EVERY_S) -> float:
    """The median of COUNT readings of READ(), EVERY_S apart."""
    values = []
    for i in range(count):
        if i:
            time.sleep(every_s)
        values.append(read())
    return statistics.median(values)


# ------------------------------------------------------------------ CPU --
@dataclass
class Cpu:
    """CPU time taken at one moment: each group of processes' (their last known
    figure for a process gone since), and the machine's."""

    at: float
    groups: dict[str, float]
    busy: int
    total: int
    interrupts: int
    threads: dict[tuple[int, int], float] = field(default_factory=dict)
    names: dict[tuple[int, int], str] = field(default_factory=dict)

    @classmethod
    def take(cls, groups: dict[str, list[int]], last: Cpu | None = None,
             names: dict[tuple[int, int], str] | None = None) -> Cpu:
        """The groups' CPU time now, and that of the threads NAMES names (their last known
        figure, too, for those gone since LAST)."""
        seen = dict(last.groups) if last else {}
        figures = {}
        for name, pids in groups.items():
            values = [cpu_s(pid) for pid in pids]
            figures[name] = sum(v for v in values if v is not None)
            if any(v is None for v in values) and name in seen:
                figures[name] = max(figures[name], seen[name])
        threads = dict(last.threads) if last else {}
        for (pid, tid) in names or {}:
            value = cpu_s(pid, tid)
            if value is not None:
                threads[(pid, tid)] = value
        busy, total, interrupts = machine_jiffies()
        return cls(time.monotonic(), figures, busy, total, interrupts, threads, dict(names or {}))

    def cores_since(self, before: Cpu) -> dict[str, float]:
        """Cores busy on average from BEFORE to this: per group, in interrupts, the rest
        of the machine (whoever else, builds included), and idle."""
        wall = max(self.at - before.at, 1e-9)
        cores = os.cpu_count() or 1
        ticks = max(self.total - before.total, 1)
        out = {name: (self.groups[name] - before.groups.get(name, 0)) / wall for name in self.groups}
        out["interrupts"] = (self.interrupts - before.interrupts) / ticks * cores
        out["machine"] = (self.busy - before.busy) / ticks * cores
        out["rest"] = max(out["machine"] - sum(v for k, v in out.items() if k != "machine"), 0.0)
        out["idle"] = max(cores - out["machine"], 0.0)
        return out

    def busiest_since(self, before: Cpu) -> dict[str, float]:
        """For each name of the threads followed: the most cores one such thread took from
        BEFORE to this (the busiest instance's redis-subscriber, say)."""
        wall = max(self.at - before.at, 1e-9)
        out: dict[str, float] = {}
        for key, name in self.names.items():
            if key in before.threads and key in self.threads:
                share = (self.threads[key] - before.threads[key]) / wall
                out[name] = max(out.get(name, 0.0), share)
        return out


# ---------------------------------------------------------------- Redis --
def redis(port: int, *args: str, timeout_s: float = 5) -> str:
    """One Redis command's reply as text (a status, an integer or a bulk string)."""
    request = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(request.encode())
        reply = sock.makefile("rb")
        head = reply.readline().rstrip(b"\r\n")
        if head[:1] == b"$":
            length = int(head[1:])
            return "" if length < 0 else reply.read(length + 2)[:-2].decode(errors="replace")
        if head[:1] == b"-":
            raise OSError(f"redis: {head[1:].decode(errors='replace')}")
        return head[1:].decode(errors="replace")


def redis_info(port: int, section: str) -> dict[str, str]:
    """INFO SECTION as a dictionary."""
    text = redis(port, "INFO", section)
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line and not line.startswith("#"))


def largest_output_buffer(port: int) -> tuple[int, str]:
    """The largest output buffer of any Redis client now (CLIENT LIST omem, bytes),
    and which client (its name or address, and its last command)."""
    best, who = 0, ""
    for line in redis(port, "CLIENT", "LIST").splitlines():
        fields = dict(pair.split("=", 1) for pair in line.split() if "=" in pair)
        omem = int(fields.get("omem", 0))
        if omem > best:
            best, who = omem, f"{fields.get('name') or fields.get('addr', '?')} ({fields.get('cmd', '?')})"
    return best, who


@dataclass
class Watch:
    """Samples, every half second while the run goes on, the figures whose peak
    matters: Redis's largest client output buffer and the kernel's TCP memory.
    `phase` names the phase under way, for the peak's row."""

    redis_port: int
    phase: str = "start"
    omem: int = 0
    omem_who: str = ""
    omem_phase: str = ""
    tcp_pages: int = 0
    tcp_phase: str = ""
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            try:
                omem, who = largest_output_buffer(self.redis_port)
                if omem > self.omem:
                    self.omem, self.omem_who, self.omem_phase = omem, who, self.phase
            except (OSError, ValueError) as error:
                if len(self.errors) < 3:
                    self.errors.append(f"CLIENT LIST: {error}")
            pages = tcp_mem_pages()
            if pages > self.tcp_pages:
                self.tcp_pages, self.tcp_phase = pages, self.phase
