"""The reconnect-storm rows: a restart through which every client comes back.

The bench holds a listening socket on 127.0.0.1 itself, as systemd holds the one
of deploy/wsecho.socket (listen backlog 4,096, the unit's Backlog=), and starts
wsecho on it the way systemd does (socket activation: descriptor 3,
LISTEN_FDS=1, LISTEN_PID; servers.py). wsload opens the clients
(BENCH_STORM_CLIENTS, 10,000 by default) from 127.0.0.1, 127.0.0.2, ... in turn,
at most 50 from each address, under wsecho's cap of 64 unfinished handshakes per
address (--max-handshakes-per-ip, left at its default), and says when all are
open. The bench then sends wsecho SIGTERM: it closes every client with 1012
"service restart"; right after it exits, a second wsecho starts on the same
socket. Meanwhile each client comes back (wsload hold --reconnect): all at once,
or after a random pause of up to 1 s (--jitter 1s); an attempt that fails is
counted and tried again after a backoff. Connections that arrive while no wsecho
runs wait in the socket's queue; past the backlog the kernel drops their SYNs and
the clients send them again (1 s, then 3 s later), which is no refusal but time.

Each run reports: the clients back, the attempts refused, answered 503 or failed
otherwise (target: all back, none of those), the closes with 1012, the time from
the first close to the last client back, each client's time from its close to
its reopening (p50 / p99 / max), the restart itself as the bench saw it (SIGTERM
to exit, exit to the next wsecho ready), and the kernel's counters of the
listen queue over the restart (/proc/net/netstat, TcpExt: ListenOverflows,
ListenDrops; the machine's, so keep it otherwise quiet).

A thread per client: the row needs an open-file limit of the clients + 100 in
each process (wsecho, wsload), vm.max_map_count room for 4 maps a client, and
kernel.pid_max and kernel.threads-max room for a thread each; short of any, it is
not run and says why in one line (it raises nothing: 10,000 fits Linux's
defaults). The server is wsecho's default build, the Linux backend (the portable
one needs 4 descriptors a client).
"""

from __future__ import annotations

import itertools
import json
import math
import socket
import time
from pathlib import Path

from ..context import Bench
from ..report import DASH, Report, Target, check, fmt, fmt_int, fmt_us
from ..servers import Server, say

GROUP = "storm"  # its name in BENCH_ONLY
BACKLOG = 4096  # deploy/wsecho.socket's Backlog=, and wsecho's own LISTEN_BACKLOG
PER_ADDRESS = 50  # clients per source address: below wsecho's --max-handshakes-per-ip 64
MAX_ADDRESSES = 254  # 127.0.0.1 to 127.0.0.254
JITTERS = {"no-jitter": "0s", "jitter-1s": "1s"}
# Opening 10,000 connections takes seconds on a quiet 2-core machine, up to a minute on a
# busy one (wsload's default bound is 30 s); each attempt to come back gets as long.
CONNECT_TIMEOUT = "2m"
# How long wsload waits, once all are open, for the restart and for every client back.
HOLD = "2m"
# How long the bench waits for wsload's line that says all are open.
OPEN_TIMEOUT_S = 180
OPEN_LINE = "wsload: hold --reconnect:"
# The first wsecho waits for its clients' replies to 1012 (at most --close-timeout, 5 s, and
# as long again for what is left to send); past this it is killed, and the warning says so.
STOP_TIMEOUT_S = 30

NETSTAT = Path("/proc/net/netstat")
COUNTERS = ("ListenOverflows", "ListenDrops")
SOMAXCONN = Path("/proc/sys/net/core/somaxconn")
MAX_MAP_COUNT = Path("/proc/sys/vm/max_map_count")
PID_MAX = Path("/proc/sys/kernel/pid_max")
THREADS_MAX = Path("/proc/sys/kernel/threads-max")
MAPS_PER_CLIENT, MAPS_MARGIN = 4, 1000  # as groups/wide.py: a thread's two stacks with guard pages
THREADS_MARGIN = 1000  # the machine's other threads may start meanwhile
FD_MARGIN = 100

ALL_BACK = Target("all back; none refused, no 503, no other failure",
                  lambda n, back, refused, busy, failed: back == n and refused == busy == failed == 0)


def clients(b: Bench) -> int:
    return b.opts.storm_clients


def addresses(n: int) -> int:
    return min(MAX_ADDRESSES, math.ceil(n / PER_ADDRESS))


def title(b: Bench) -> str:
    n = clients(b)
    return (f"reconnect storm: {fmt_int(n)} clients from {addresses(n)} addresses (127.0.0.x), wsecho restarted "
            f"on a held socket (backlog {fmt_int(BACKLOG)})")


def name(kind: str) -> str:
    return f"main-storm-{kind}"


def restart_name(kind: str) -> str:
    return f"main-storm-{kind}-restart"


def read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def threads_now() -> int:
    """Threads on the machine now: the fourth field of /proc/loadavg, running/total."""
    try:
        return int(Path("/proc/loadavg").read_text().split()[3].split("/")[1])
    except (OSError, ValueError, IndexError):
        return 0


def short_of(b: Bench) -> str:
    """Why the system has no room for the clients, or ""."""
    n = clients(b)
    fds = n + FD_MARGIN
    if b.fd_limit != "unlimited" and int(b.fd_limit) < fds:
        return (f"{fmt_int(n)} clients need {fmt_int(fds)} open files in wsecho and again in wsload, and the limit "
                f"is {fmt_int(int(b.fd_limit))} (raise it, or set BENCH_STORM_CLIENTS lower)")
    maps, max_maps = MAPS_PER_CLIENT * n + MAPS_MARGIN, read_int(MAX_MAP_COUNT)
    if max_maps is not None and max_maps < maps:
        return (f"vm.max_map_count is {max_maps}, below the {maps} maps {fmt_int(n)} threads need "
                "(docs/deploying.md; or set BENCH_STORM_CLIENTS lower)")
    for path, setting in ((PID_MAX, "kernel.pid_max"), (THREADS_MAX, "kernel.threads-max")):
        limit = read_int(path)
        if limit is not None and limit - threads_now() < n + THREADS_MARGIN:
            return (f"{setting} is {limit} and the machine runs {threads_now()} threads: no room for "
                    f"{fmt_int(n)} more (docs/deploying.md; or set BENCH_STORM_CLIENTS lower)")
    return ""


def tcp_counters() -> dict[str, int]:
    """The kernel's TcpExt counters of /proc/net/netstat that concern the listen queue."""
    try:
        lines = NETSTAT.read_text().splitlines()
    except OSError:
        return {}
    for names, values in itertools.pairwise(lines):
        if names.startswith("TcpExt:") and values.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:]))
            return {c: int(table[c]) for c in COUNTERS if c in table}
    return {}


def wait_until_open(b: Bench, run: str, proc) -> str | None:
    """wsload's line that says every client is open, or None if it ended or took too long."""
    path = b.runs.err_path(run)
    deadline = time.monotonic() + OPEN_TIMEOUT_S
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            text = ""
        line = next((line for line in text.splitlines() if line.startswith(OPEN_LINE)), None)
        if line is not None:
            return line
        time.sleep(0.05)
    return None


def listening_socket() -> socket.socket:
    """What systemd makes of deploy/wsecho.socket, on 127.0.0.1 and a free port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(BACKLOG)
    return sock


def storm(b: Bench, kind: str, jitter: str) -> None:
    """One restart: open every client on a first wsecho, stop it, start a second on the same
    socket, and let wsload time the clients coming back."""
    n, run = clients(b), name(kind)
    sock = listening_socket()
    try:
        first = b.servers.start_wsecho_on_socket(b.wsecho, "wsecho", [], sock)
        b.server = first
        proc = b.runs.start(run, "hold", "--url", first.url, "--connections", n, "--hold", HOLD,
                            "--reconnect", "--jitter", jitter, "--source-addresses", addresses(n),
                            "--connect-timeout", CONNECT_TIMEOUT)
        if wait_until_open(b, run, proc) is None:
            say(f"{run}: wsload did not say every client was open; no restart")
            b.servers.stop_process(proc)
            b.runs.finish(run, proc)
            b.stop()
            return
        before = tcp_counters()
        sigterm = time.monotonic()
        status = b.servers.stop(first, timeout_s=STOP_TIMEOUT_S)
        exited = time.monotonic()
        second: Server = b.servers.start_wsecho_on_socket(b.wsecho, "wsecho", [], sock)
        b.server = second
        ready = time.monotonic()
        b.runs.finish(run, proc)
        after = tcp_counters()
        b.stop()
    finally:
        sock.close()
    restart = {
        "stop_s": exited - sigterm,
        "start_s": ready - exited,
        "first_exit_status": status,
        "backlog": BACKLOG,
        "somaxconn": read_int(SOMAXCONN),
        **{c.lower(): after[c] - before[c] for c in COUNTERS if c in before and c in after},
    }
    (b.runs.raw / f"{restart_name(kind)}.json").write_text(json.dumps(restart) + "\n")


def measure(b: Bench) -> None:
    if b.custom or not b.want(GROUP):
        return
    b.storm_note = short_of(b)
    if b.storm_note:
        say(f"{GROUP}: not run: {b.storm_note}")
        return
    for kind, jitter in JITTERS.items():
        storm(b, kind, jitter)


# -------------------------------------------------------------------- rows --
def label(kind: str) -> str:
    return "no jitter" if JITTERS[kind] == "0s" else f"jitter up to {JITTERS[kind][:-1]} s"


def rows(b: Bench, r: Report) -> None:
    if b.custom or not b.want(GROUP):
        return
    test, n = title(b), clients(b)
    if b.storm_note:
        r.row(test, "wsecho", "result", f"not run: {b.storm_note}")
        return
    get = b.runs.get
    for kind in JITTERS:
        run, what = name(kind), label(kind)
        if not b.runs.has(run):
            r.missing(test, "wsecho", run, ALL_BACK.text)
            continue
        detail = "" if b.runs.ok(run) else f" (failed its checks: {b.runs.error(run)})"
        back, refused, busy, failed = (get(run, k) for k in
                                       ("reconnect_back", "reconnect_refused", "reconnect_busy", "reconnect_failed"))
        r.row(test, "wsecho", f"{what}: back / refused / 503 / other failures",
              f"{fmt_int(back)} of {fmt_int(get(run, 'opened'))} opened / {fmt_int(refused)} / {fmt_int(busy)} / "
              f"{fmt_int(failed)}{detail}",
              ALL_BACK.text, ALL_BACK.met(n, back, refused, busy, failed))
        closed = get(run, "reconnect_closed_1012")
        others = sum(get(run, k) or 0 for k in ("reconnect_closed_1001", "reconnect_closed_other",
                                                "reconnect_dropped"))
        r.row(test, "wsecho", f"{what}: closed with 1012 / otherwise", f"{fmt_int(closed)} / {fmt_int(others)}",
              f"{fmt_int(n)} / 0", check(lambda c, o: c == n and o == 0, closed, others))
        span = get(run, "reconnect_all_back_s")
        r.row(test, "wsecho", f"{what}: time from the first close to the last client back",
              DASH if span is None else fmt("%.2f s", span))
        r.row(test, "wsecho", f"{what}: each client's time from its close to its reopening, p50 / p99 / max",
              " / ".join(fmt_us(get(run, k)) for k in ("reconnect_p50_us", "reconnect_p99_us", "reconnect_max_us")))
        restart = restart_name(kind)
        if b.runs.has(restart):
            r.row(test, "wsecho", f"{what}: restart, SIGTERM to exit / exit to the next wsecho ready",
                  f"{fmt('%.2f s', get(restart, 'stop_s'))} / {fmt_us(1e6 * (get(restart, 'start_s') or 0))}")
            queue = [get(restart, c.lower()) for c in COUNTERS]
            r.row(test, "wsecho", f"{what}: listen queue overflows / SYNs dropped over the restart (TcpExt "
                  "ListenOverflows / ListenDrops, machine-wide)",
                  DASH if None in queue else " / ".join(fmt_int(v) for v in queue),
                  f"{DASH} (backlog {fmt_int(BACKLOG)}, net.core.somaxconn {get(restart, 'somaxconn')})")
