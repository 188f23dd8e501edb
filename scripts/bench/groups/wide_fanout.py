"""The wide fan-out row: one sender, 5,000 listeners (BENCH_WIDE_FANOUT_LISTENERS),
50 messages of 32 B at 10 a second, every message to every client (wsload
fanout against wsecho --broadcast): delivery latency p50 / p99 / max, and the
server's CPU time while the messages go out, from the first send to the last
delivery (wsload fanout --pid), not while the 5,000 connections open or
close. With --compare, the fan-out rows' peers on the same rows: websocat's
broadcast:mirror: and Node ws's broadcast example, as interleaved trials
(trials.py), each on a fresh server, the targets judged on the median of the
per-trial ratios; wsecho's figures are then its median trial's (by p99).
With --compare every server is measured by a second client too, fanclient
(scripts/bench/fanclient/, tokio-tungstenite), in the same rounds (run names
PREFIX-fanout-wide-fc), so that no figure of the row rests on wsload alone:
its rows and targets stand beside wsload's, and a row of the side-by-side
table says whether the two clients agree.

Not to be confused with the wide rows (groups/wide.py), 20,000 clients.
"""

from __future__ import annotations

from ..context import Bench
from ..report import DASH, Chart, Report, Target, fmt, fmt_int, fmt_us, judge_ratio
from ..runs import FANCLIENT
from ..servers import say, wsecho_args
from ..trials import Ratios, median
from .fanout import delivered_row
from .wide import FD_MARGIN, NO_PINGS

GROUP = "wide-fanout"  # its name in BENCH_ONLY
PEERS = ["websocat", "nodebc"]  # the fan-out rows' peers
TARGET_PEER = "websocat"
SUFFIX = "fanout-wide"  # run names PREFIX-fanout-wide (the wide rows have PREFIX-wide-fanout)
SUFFIX_FC = SUFFIX + FANCLIENT  # fanclient's runs
MESSAGES, RATE, SIZE = 50, 10, 32
# Opening 5,000 connections takes a second or two on a quiet machine and can
# take much longer on a busy one (wsload's default is 30 s).
CONNECT_TIMEOUT, CONNECT_TIMEOUT_S = "2m", 120
# The bound on the run once connected: the sync (10 s at most), 5 s of
# sending and the 2 s a listener waits for what is missing.
TIMEOUT, TIMEOUT_S = "60s", 60
# wsecho as in the fan-out rows (--broadcast, greeting off), without pings,
# as the wide rows: its pings to 5,000 clients, due 20 s after opening,
# would fall within the sending on a busy machine. Neither peer pings. All
# the listeners come from one address, as many handshakes at once as the
# per-address cap (64), which would answer one that lingers with a 503: the
# cap is off, as in the wide rows. Neither peer has such a cap.
FLAGS = ("--broadcast", *NO_PINGS, "--max-handshakes-per-ip", "off")

# The figures with a target: p99 and the server's CPU time, each no more than
# websocat's in the same run.
LATENCY = "latency p50 / p99 / max"
CPU = "server CPU, first send to last delivery"


def listeners(b: Bench) -> int:
    return b.opts.wide_fanout_listeners


def title(b: Bench) -> str:
    return f"wide fan-out {fmt_int(listeners(b))} × {MESSAGES} at {RATE}/s"


def fmt_s(v) -> str:
    """CPU seconds: 0.42 s (/proc counts clock ticks, hundredths on Linux)."""
    return fmt("%.2f s", v)


def shortfall(b: Bench) -> str:
    """Why the row cannot run with this open-file limit (each process gets it:
    the server, wsload), or ""."""
    wanted = listeners(b) + 1 + FD_MARGIN
    if b.fd_limit == "unlimited" or int(b.fd_limit) >= wanted:
        return ""
    return (f"not run: {fmt_int(listeners(b))} listeners need {fmt_int(wanted)} open files in the server and "
            f"again in the client, and the limit is {fmt_int(int(b.fd_limit))} (raise the hard limit, ulimit -Hn, "
            "as root; or set BENCH_WIDE_FANOUT_LISTENERS lower)")


def measure_with(b: Bench, prefix: str, name: str = "") -> None:
    """The run PREFIX-fanout-wide (or NAME) against the server just started."""
    b.run(name or f"{prefix}-{SUFFIX}", "fanout", "--url", b.server.url, "--listeners", listeners(b),
          "--messages", MESSAGES, "--rate", RATE, "--size", SIZE, "--pid", b.server.pid,
          "--connect-timeout", CONNECT_TIMEOUT, "--timeout", TIMEOUT)


def measure_fanclient(b: Bench, name: str) -> None:
    """fanclient's run NAME against the server just started: the same row."""
    b.runs.run_fanclient(name, "--url", b.server.url, "--listeners", listeners(b), "--messages", MESSAGES,
                         "--rate", RATE, "--size", SIZE, "--pid", b.server.pid,
                         "--connect-timeout", CONNECT_TIMEOUT_S, "--timeout", TIMEOUT_S)


def measure_peers(b: Bench) -> None:
    """wsecho's run and the peers', interleaved as trials (--compare), each on a
    fresh server; each round has fanclient's runs too, when it was built."""
    if not (b.opts.compare and b.want(GROUP)) or b.custom or shortfall(b):
        return
    suffixes = [SUFFIX, SUFFIX_FC] if b.runs.fanclient else [SUFFIX]
    b.interleave(b.contenders(lambda: b.start_wsecho(*FLAGS), PEERS, baseline=False), suffixes,
                 lambda name, suffix, server: (measure_fanclient(b, name) if suffix == SUFFIX_FC
                                               else measure_with(b, "", name)),
                 lambda suffix: ("p99_us", False), fresh=True, by_round=True)


def measure(b: Bench) -> None:
    if b.custom or not b.want(GROUP):
        return
    if shortfall(b):
        say(f"{GROUP}: {shortfall(b)}")
        return
    if b.opts.compare:
        return  # run as trials beside the peers' (measure_peers)
    b.start_wsecho(*FLAGS)
    measure_with(b, "main")
    b.stop()


# -------------------------------------------------------------------- rows --
def vs_target_peer(b: Bench, what: str, key: str, formatter, suffix: str = SUFFIX) -> Target | str | tuple[str, str]:
    """The target "WHAT ≤ websocat's" on figure KEY, with websocat's figure in
    the same run (of row SUFFIX: wsload's, or fanclient's); from interleaved
    trials, its Target and Met cells judged on the median of the per-trial
    ratios; without a figure (no --compare, no result, a run that failed its
    checks), only the Target column's text: nothing to test against."""
    name = f"{TARGET_PEER}-{suffix}"
    theirs = b.runs.get(name, key)
    if not b.opts.compare:
        return f"{what} ≤ websocat (run --compare)"
    if theirs is None:
        return f"{what} ≤ websocat (no result: {b.runs.error(name)})"
    label = b.peers.label(TARGET_PEER)
    theirs_trials = b.runs.trial_figures(name, key)
    if theirs_trials:
        mine_trials = b.runs.trial_figures(f"main-{suffix}", key)
        ratios = Ratios.of(mine_trials, theirs_trials, len(b.runs.trials(f"main-{suffix}")))
        return (f"{what} ≤ {label} (median of {len(theirs_trials)}: {formatter(median(list(theirs_trials.values())))})",
                judge_ratio(ratios, 1.0, "lower"))
    if not b.runs.ok(name):
        return f"{what} ≤ {label} ({formatter(theirs)}, but its run failed its checks: {b.runs.error(name)})"
    return Target(f"{what} ≤ {label} ({formatter(theirs)})", lambda mine: mine <= theirs)


def target_row(r: Report, test: str, figure: str, measured: str, target: Target | str | tuple[str, str],
               value) -> None:
    if isinstance(target, tuple):
        r.row(test, "wsecho", figure, measured, *target)
    elif isinstance(target, Target):
        r.row(test, "wsecho", figure, measured, target.text, target.met(value))
    else:
        r.row(test, "wsecho", figure, measured, target)


def rows(b: Bench, r: Report) -> None:
    if b.custom or not b.want(GROUP):
        return
    test, name = title(b), f"main-{SUFFIX}"
    if shortfall(b):
        r.row(test, "wsecho", "result", shortfall(b))
        return
    if not b.runs.has(name):
        r.missing(test, "wsecho", name, "all delivered in order")
        return
    figure_rows(b, r, test, name, SUFFIX, "")
    if b.runs.has(f"main-{SUFFIX_FC}"):
        figure_rows(b, r, test, f"main-{SUFFIX_FC}", SUFFIX_FC, ", fanclient")


def figure_rows(b: Bench, r: Report, test: str, name: str, suffix: str, client: str) -> None:
    """Run NAME's rows: delivered, latency and CPU, the targets on row SUFFIX's
    trials; CLIENT says whose figures they are, when not wsload's."""
    get = b.runs.get
    delivered_row(b, r, name, test, "wsecho", client)
    latency = " / ".join(fmt_us(get(name, k)) for k in ("p50_us", "p99_us", "max_us"))
    target_row(r, test, LATENCY + client, latency, vs_target_peer(b, "p99", "p99_us", fmt_us, suffix),
               get(name, "p99_us"))
    cpu = get(name, "server_cpu_s")
    target_row(r, test, CPU + client, DASH if cpu is None else fmt_s(cpu),
               vs_target_peer(b, "CPU", "server_cpu_s", fmt_s, suffix), cpu)


def compare(b: Bench, r: Report) -> None:
    """The side-by-side table: wsecho, websocat and Node ws on the same rows."""
    if b.custom or not b.want(GROUP) or shortfall(b):
        return
    heading = (f"Wide fan-out: {fmt_int(listeners(b))} listeners × {MESSAGES} messages of {SIZE} B at {RATE}/s, "
               "every message to every client; server CPU from the first send to the last delivery")
    if not r.compare_table(heading, [(p, b.peers.label(p)) for p in PEERS if p in b.peers.ready]):
        return
    test, wide = title(b), f"Wide fan-out to {fmt_int(listeners(b))}"
    r.started_as_row(test, " ".join(["wsecho", *wsecho_args(list(FLAGS))]),
                     {p: b.peers.command_line(p) for p in PEERS if p in b.peers.ready})
    for percentile in ("p50", "p99", "max"):
        chart = Chart(f"{wide}: delivery latency (µs, lower is better)", percentile, "µs")
        r.compare_row(test, f"latency {percentile}", "lower", fmt_us, f"{percentile}_us", SUFFIX,
                      chart if percentile != "max" else None)  # the chart as the fan-out rows': p50, p99
    r.compare_row(test, CPU, "lower", fmt_s, "server_cpu_s", SUFFIX,
                  Chart(f"{wide}: server CPU while sending (s, lower is better)", "server CPU", "s"))
    if not b.runs.trials(f"main-{SUFFIX_FC}"):
        return
    for percentile in ("p50", "p99", "max"):
        r.compare_row(test, f"latency {percentile}, fanclient", "lower", fmt_us, f"{percentile}_us", SUFFIX_FC)
    r.compare_row(test, f"{CPU}, fanclient", "lower", fmt_s, "server_cpu_s", SUFFIX_FC)
    r.clients_row(test, "p99, fanclient ÷ wsload", "p99_us", SUFFIX, SUFFIX_FC)
    r.clients_row(test, "server CPU, fanclient ÷ wsload", "server_cpu_s", SUFFIX, SUFFIX_FC)
