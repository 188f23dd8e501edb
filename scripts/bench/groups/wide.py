"""The wide row: 20,000 clients at once (BENCH_WIDE_CLIENTS), what each costs
the machine idle, how late 20,000 greetings due within one second come, and
how long one broadcast takes to reach the last of 20,000 listeners; with
--compare, Node ws beside wsecho on the same rows: its README's echo server
idle (its broadcast example would send every client's final probe to every
other client), its broadcast example for the broadcast, and no greeting
(neither sends one: not applicable).

A thread per client needs about four memory maps (MAPS_PER_CLIENT), and
Linux's default vm.max_map_count (65,530) leaves room for about 16,000: the
row raises it for wsecho's runs when it is lower, as root only, to the value
docs/deploying.md gives a deployment, and puts the old value back once they
are done, whatever happened. 20,000 sockets in the server and as many again
in wsload need an open-file limit above 20,000 in each. Short of either, the
row is not run and says why in one line.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..context import Bench
from ..report import DASH, Report, Target, check, fmt_int, fmt_kib, fmt_us
from ..servers import say
from .greeting import LATENESS

PEERS = ["node"]  # Node ws's column: its echo server idle ...
BROADCAST_PEERS = {"node": "nodebc"}  # ... and its broadcast example for the broadcast
HOLD = "10s"  # how long the connections stay idle (as the hold rows)
GREETING_DELAY = "2s"  # as the greeting row's
GREETING_HOLD = "5s"  # the greetings fall due 2 s after handshakes a second apart at most
DUE_WITHIN_S = 1  # the greetings' due times, all within this span
# Opening 20,000 connections, a thread each, takes seconds on a quiet 2-core
# machine and can take a minute on a busy one; wsload's default is 30 s.
CONNECT_TIMEOUT = "2m"
# The greeting run holds every upgrade request incomplete until the server
# has accepted all 20,000 connections (wsload hold --upgrade-together), so
# wsecho's time for a whole request (10 s by default) must cover the opening.
HANDSHAKE_TIMEOUT = "2m"
BROADCAST_TIMEOUT = "60s"  # wsload fanout's bound on the one broadcast
# wsecho pings a client it has not heard from for 20 s. Opening 20,000
# connections can take longer than that on a busy machine, and the pings'
# wake-ups would then land in the idle window (a connection keeps its stack
# pages and read buffer for a second after each, until it settles) and around
# the broadcast. Node ws's servers do not ping. So no pings in these runs, nor
# the idle timeout that relies on them (it would drop a client silent for 30 s).
NO_PINGS = ("--ping-interval", "off", "--idle-timeout", "off")

# What the row needs of the system.
MAX_MAP_COUNT = Path("/proc/sys/vm/max_map_count")
MAPS_PER_CLIENT = 4  # a connection thread's stack and its signal stack, each with a guard page
MAPS_MARGIN = 1000  # the process's own: its binary, libraries, heap arenas (about 50 at start), with room
DEPLOYED_MAX_MAP_COUNT = 262144  # what docs/deploying.md sets for a deployment
# Descriptors each process needs beside one per client: wsecho keeps 32 for
# itself (its listener, standard streams, log file), wsload a few (its epoll,
# standard streams), Node a few dozen.
FD_MARGIN = 100

DELIVERED = Target("all", lambda missing: missing == 0)


def clients(b: Bench) -> int:
    return b.opts.wide_clients


def title(b: Bench) -> str:
    return f"{fmt_int(clients(b))} clients"


def descriptors_suffice(b: Bench) -> bool:
    """Whether the open-file limit leaves room for every client in the server
    and in wsload (each process gets the limit); if not, the row's note says so."""
    wanted = clients(b) + FD_MARGIN
    if b.fd_limit == "unlimited" or int(b.fd_limit) >= wanted:
        return True
    if not b.wide_note:
        b.wide_note = (f"not run: {fmt_int(clients(b))} clients need {fmt_int(wanted)} open files in the server "
                       f"and again in wsload, and the limit is {fmt_int(int(b.fd_limit))} (raise the hard limit, "
                       "ulimit -Hn, as root; or set BENCH_WIDE_CLIENTS lower)")
        say(f"wide: {b.wide_note}")
    return False


@contextmanager
def enough_maps(b: Bench) -> Iterator[bool]:
    """Makes vm.max_map_count room enough for a thread per client while the
    block runs, raising it if it must (root only) and putting the old value
    back afterwards, also when the block fails or the run is interrupted.
    Yields whether there is room; if not, the row's note says why."""
    wanted = MAPS_PER_CLIENT * clients(b) + MAPS_MARGIN
    try:
        old = int(MAX_MAP_COUNT.read_text())
    except (OSError, ValueError):
        yield True  # no such setting (not Linux): nothing to raise
        return
    if old >= wanted:
        yield True
        return
    new = max(wanted, DEPLOYED_MAX_MAP_COUNT)
    if os.geteuid() != 0:
        b.wide_note = (f"not run: vm.max_map_count is {old}, below the {wanted} maps {fmt_int(clients(b))} "
                       f"threads need, and only root may raise it (sysctl -w vm.max_map_count={new}: "
                       "see docs/deploying.md)")
        say(f"wide: {b.wide_note}")
        yield False
        return
    try:
        MAX_MAP_COUNT.write_text(f"{new}\n")
    except OSError as error:
        b.wide_note = f"not run: could not raise vm.max_map_count from {old} to {new} ({error.strerror})"
        say(f"wide: {b.wide_note}")
        yield False
        return
    b.wide_note = f"vm.max_map_count raised from {old} to {new} for wsecho's runs, then put back"
    say(f"wide: vm.max_map_count raised from {old} to {new} for wsecho's runs")
    try:
        yield True
    finally:
        try:
            MAX_MAP_COUNT.write_text(f"{old}\n")
            say(f"wide: vm.max_map_count put back to {old}")
        except OSError as error:
            say(f"warning: could not put vm.max_map_count back to {old} ({error.strerror}): "
                f"sysctl -w vm.max_map_count={old}")


def hold_run(b: Bench, name: str) -> None:
    """Every client idle for the hold time: the server's RSS and the machine's
    kernel memory per connection."""
    b.run(name, "hold", "--url", b.server.url, "--connections", clients(b), "--hold", HOLD,
          "--pid", b.server.pid, "--connect-timeout", CONNECT_TIMEOUT)


def fanout_run(b: Bench, name: str) -> None:
    """Every client a listener, one more sends one message: the time from its
    send to its delivery to the last listener is the latency's max."""
    b.run(name, "fanout", "--url", b.server.url, "--listeners", clients(b), "--messages", 1,
          "--connect-timeout", CONNECT_TIMEOUT, "--timeout", BROADCAST_TIMEOUT)


def measure_peers(b: Bench) -> None:
    if not (b.opts.compare and b.want("wide")) or b.custom or not descriptors_suffice(b):
        return
    for peer in PEERS:
        if peer in b.peers.ready and b.start_peer(peer):
            hold_run(b, f"{peer}-wide-hold")
        b.stop()
        broadcaster = BROADCAST_PEERS[peer]
        if broadcaster in b.peers.ready and b.start_peer(broadcaster):
            fanout_run(b, f"{broadcaster}-wide-fanout")
        b.stop()


def measure(b: Bench) -> None:
    """wsecho's three runs, each on a fresh server without pings: idle with the
    greeting off (as the hold rows), the greetings, and one broadcast."""
    if b.custom or not b.want("wide") or not descriptors_suffice(b):
        return
    with enough_maps(b) as room:
        if not room:
            return
        b.start_wsecho(*NO_PINGS)
        hold_run(b, "main-wide-hold")
        b.stop()
        # Every TCP connection first, then all the upgrade requests at once, so
        # that the handshakes, and 2 s later the greetings, fall within a
        # second of each other: as many unfinished handshakes from one address
        # as there are clients, which the per-address cap exists to refuse.
        server = b.start_wsecho(*NO_PINGS, "--greeting-delay", GREETING_DELAY, "--max-handshakes-per-ip", "off",
                                "--handshake-timeout", HANDSHAKE_TIMEOUT)
        b.run("main-wide-greeting", "hold", "--url", server.url, "--connections", clients(b),
              "--hold", GREETING_HOLD, "--greeting-delay", GREETING_DELAY, "--pid", server.pid,
              "--upgrade-together", "--connect-timeout", CONNECT_TIMEOUT)
        b.stop()
        b.start_wsecho(*NO_PINGS, "--broadcast")
        fanout_run(b, "main-wide-fanout")
        b.stop()


# -------------------------------------------------------------------- rows --
def node_cell(b: Bench, name: str, key: str, formatter) -> str:
    """The Target cell beside a figure: Node ws's in the same run (from run
    NAME), or how to get it."""
    if not b.opts.compare:
        return f"{DASH} (Node ws: run --compare)"
    value = b.runs.get(name, key)
    if value is None:
        return f"{DASH} (Node ws: no result)"
    cell = f"{DASH} ({b.peers.label('node')}: {formatter(value)}"
    return cell + (")" if b.runs.ok(name) else f"; failed its checks: {b.runs.error(name)})")


def rows(b: Bench, r: Report) -> None:
    if b.custom or not b.want("wide"):
        return
    n, test = clients(b), title(b)
    if b.wide_note.startswith("not run"):
        r.row(test, "wsecho", "result", b.wide_note)
        return
    get, text = b.runs.get, b.runs.text
    name = "main-wide-hold"
    if b.runs.has(name):
        detail = "" if b.runs.ok(name) else f" ({b.runs.error(name)})"
        r.row(test, "wsecho", "idle, greeting off: opened / still echo",
              f"{text(name, 'opened')} / {text(name, 'still_echo')} of {n}{detail}", "all",
              check(lambda o, e: o == n and e == n, get(name, "opened"), get(name, "still_echo")))
        r.row(test, "wsecho", "RSS + kernel per idle connection",
              f"{fmt_kib(get(name, 'total_per_conn_kib'))} (RSS {fmt_kib(get(name, 'rss_per_conn_kib'))} + "
              f"kernel {fmt_kib(get(name, 'kernel_per_conn_kib'))})",
              node_cell(b, "node-wide-hold", "total_per_conn_kib", fmt_kib))
    else:
        r.missing(test, "wsecho", name, "all open and still echoing")
    name = "main-wide-greeting"
    if b.runs.has(name):
        greeted, within = get(name, "greetings"), get(name, "opened_within_s")
        span = "n/a" if within is None else f"{within:.2f} s"
        r.row(test, "wsecho", f"greetings received; the span of their due times (delay {GREETING_DELAY[:-1]} s)",
              f"{fmt_int(greeted)} of {fmt_int(get(name, 'opened'))} opened; {span}",
              f"{fmt_int(n)}; ≤ {DUE_WITHIN_S} s",
              check(lambda g, w: g == n and w <= DUE_WITHIN_S, greeted, within))
        r.row(test, "wsecho", "greeting lateness p50 / p99 / p99.9 / max", r.latency(name),
              f"{LATENESS.text} (Node ws: n/a, no greeting)", LATENESS.met(get(name, "p99_us")))
    else:
        r.missing(test, "wsecho", name, LATENESS.text)
    name = "main-wide-fanout"
    if b.runs.has(name):
        detail = "" if b.runs.ok(name) else f" ({b.runs.error(name)})"
        r.row(test, "wsecho", "one broadcast: delivered / missing",
              f"{fmt_int(get(name, 'delivered'))} / {text(name, 'missing')}{detail}", DELIVERED.text,
              DELIVERED.met(get(name, "missing")))
        r.row(test, "wsecho", "one broadcast: time until the last listener has it", fmt_us(get(name, "max_us")),
              node_cell(b, "nodebc-wide-fanout", "max_us", fmt_us))
    else:
        r.missing(test, "wsecho", name, "all delivered")


def compare(b: Bench, r: Report) -> None:
    """The side-by-side table: wsecho and Node ws on the same rows."""
    if b.custom or not b.want("wide") or b.wide_note.startswith("not run"):
        return
    heading = (f"{title(b)}: idle cost (kernel = SUnreclaim + KernelStack + PageTables, both ends), "
               "greetings due within 1 s, one broadcast to all")
    if not r.compare_table(heading, [(p, b.peers.label(p)) for p in PEERS if p in b.peers.ready]):
        return
    test = title(b)
    r.compare_row(test, "connections opened/s", "higher", fmt_int, "opened_per_s", "wide-hold")
    r.compare_row(test, "server RSS per idle connection", "lower", fmt_kib, "rss_per_conn_kib", "wide-hold")
    r.compare_row(test, "kernel per idle connection", "lower", fmt_kib, "kernel_per_conn_kib", "wide-hold")
    r.compare_row(test, "RSS + kernel per idle connection", "lower", fmt_kib, "total_per_conn_kib", "wide-hold")
    p99 = b.runs.get("main-wide-greeting", "p99_us")
    r.compare_alone(test, "greeting lateness p99", f"{DASH} (not run)" if p99 is None else fmt_us(p99),
                    "n/a: no greeting")
    r.compare_row(test, "time until the last listener has one broadcast", "lower", fmt_us, "max_us",
                  "wide-fanout", runs_of=BROADCAST_PEERS)
