"""Echo rows: a closed loop, one message in flight per connection
(wsload echo), for wsecho (or BENCH_SERVER), its portable backend, and the
peers of --compare.

With --compare or WSECHO_BIN_BASELINE, each row runs as interleaved trials
(trials.py): the servers start once, then round after round each runs the
row in turn, and the targets are judged on the median of the per-trial
ratios."""

from __future__ import annotations

from ..context import BASELINE, BASELINE_LABEL, ECHO_SPECS, PORTABLE_LABEL, WARMUP, Bench
from ..report import DASH, Chart, Report, check, fmt_bytes, fmt_int, fmt_us, judge_ratio, met
from ..trials import Ratios, median

# (connections, message size) of each row (BENCH_ECHO_ROWS can choose some).
SPECS = ECHO_SPECS
PORTABLE_SPECS = [(1, 32), (64, 32), (64, 4096)]
PEERS = ["tt", "tung", "node", "wsnode"]

# Targets (wsecho's, whichever backend): 1×32 B, tungstenite's own
# thread-per-connection example; 64×32 B and 64×4 KiB, the better of
# tokio-tungstenite's example and Node ws, in msgs/s and in p99.
TARGET_PEERS = {(1, 32): ["tung"], (64, 32): ["tt", "node"], (64, 4096): ["tt", "node"]}


def spec_name(spec: tuple[int, int]) -> str:
    """1x32: the spec's part of a run name."""
    return f"{spec[0]}x{spec[1]}"


def specs(b: Bench) -> list[tuple[int, int]]:
    """The rows to run: all, or those BENCH_ECHO_ROWS names."""
    return [spec for spec in SPECS if spec in b.opts.echo_specs]


def echo_run(b: Bench, name: str, url: str, spec: tuple[int, int]) -> None:
    c, s = spec
    b.run(name, "echo", "--url", url, "--connections", c, "--size", s,
          "--duration", f"{b.echo_seconds}s", "--warmup", WARMUP)


def measure_with(b: Bench, prefix: str, url: str, specs=SPECS) -> None:
    """The echo runs PREFIX-echo-CxS against URL."""
    for spec in specs:
        echo_run(b, f"{prefix}-echo-{spec_name(spec)}", url, spec)


def measure(b: Bench) -> None:
    """wsecho's rows; with --compare or a baseline, interleaved with the
    peers' (and the baseline's) as trials, each server started once."""
    if not b.want("echo"):
        return
    if not b.opts.interleaved:
        measure_with(b, "main", b.start_default().url, specs(b))
        b.stop()
        return
    by_suffix = {f"echo-{spec_name(spec)}": spec for spec in specs(b)}
    b.interleave(b.contenders(b.start_default, PEERS), list(by_suffix),
                 lambda name, suffix, server: echo_run(b, name, server.url, by_suffix[suffix]),
                 lambda suffix: ("msgs_per_s", True))


def measure_portable(b: Bench) -> None:
    if not (b.portable_bin and b.want("echo")):
        return
    server = b.start_wsecho(binary=b.portable_bin, label=PORTABLE_LABEL)
    measure_with(b, "port", server.url, [spec for spec in PORTABLE_SPECS if spec in b.opts.echo_specs])
    b.stop()


# -------------------------------------------------------------------- rows --
def best(b: Bench, key: str, higher: bool, names: list[str]):
    """The best figure KEY among the runs NAMES that have one (highest or
    lowest), with its run's name; (None, None) if none has."""
    found, who = None, None
    for name in names:
        v = b.runs.get(name, key)
        if v is None:
            continue
        if found is None or (v > found if higher else v < found):
            found, who = v, name
    return found, who


def rows(b: Bench, r: Report) -> None:
    """wsecho's echo rows, then its portable backend's."""
    if not b.want("echo"):
        return
    rows_of(b, r, "main", b.main_label)
    if b.portable_bin:
        rows_of(b, r, "port", PORTABLE_LABEL, PORTABLE_SPECS)


def judged(b: Bench, name: str, peers: list[str], key: str, higher: bool, formatter, what: str) -> tuple[str, str]:
    """The Target and Met cells of run NAME's figure KEY against the best of the
    runs PEERS, from interleaved trials: the peer with the best median, and
    the median of the per-trial ratios against it (trials.py); ("", "") when
    the runs have no trials."""
    if not b.runs.trials(name) or not any(b.runs.trials(peer) for peer in peers):
        return "", ""
    best_value, best_figures, who = None, {}, ""
    for peer in peers:
        figures = b.runs.trial_figures(peer, key)
        if not figures:
            continue
        value = median(list(figures.values()))
        if best_value is None or (value > best_value if higher else value < best_value):
            best_value, best_figures, who = value, figures, peer
    if best_value is None:
        return f"{what} the best peer (no peer trial passed its checks)", DASH
    ratios = Ratios.of(b.runs.trial_figures(name, key), best_figures, len(b.runs.trials(name)))
    target = f"{what} {b.peers.label(who.split('-')[0])} (median of {len(best_figures)}: {formatter(best_value)})"
    return target, judge_ratio(ratios, 1.0, "higher" if higher else "lower")


def target_cells(b: Bench, name: str, peers: list[str], key: str, higher: bool, formatter,
                 what: str) -> tuple[str, str]:
    """The Target and Met cells of run NAME's figure KEY: at least (HIGHER) or at
    most the best of the runs PEERS; from interleaved trials as `judged`."""
    if not peers:
        return DASH, DASH
    target, m = judged(b, name, peers, key, higher, formatter, what)
    if target:
        return target, m
    theirs, who = best(b, key, higher, peers)
    if theirs is None:
        return f"{what} the best peer (run --compare)", DASH
    test = (lambda v, best: v >= best) if higher else (lambda v, best: v <= best)
    return (f"{what} {b.peers.label(who.split('-')[0])} ({formatter(theirs)})",
            check(test, b.runs.get(name, key), theirs))


def rows_of(b: Bench, r: Report, prefix: str, label: str, specs=SPECS) -> None:
    """For each spec: msgs/s, latency and the checks, each against its target;
    from interleaved trials, the figures of the median trial by msgs/s, and
    the targets judged on the trials (`judged`)."""
    for spec in [spec for spec in specs if spec in b.opts.echo_specs]:
        name = f"{prefix}-echo-{spec_name(spec)}"
        title = "echo 64×4 KiB" if spec == (64, 4096) else f"echo {spec[0]}×{spec[1]} B"
        if not b.runs.has(name):
            r.missing(title, label, name)
            continue
        peers = [f"{peer}-echo-{spec_name(spec)}" for peer in TARGET_PEERS.get(spec, [])]
        target, m = target_cells(b, name, peers, "msgs_per_s", True, fmt_int, "≥")
        r.row(title, label, "msgs/s (MB/s)", r.throughput(name), target, m)
        target, m = target_cells(b, name, peers, "p99_us", False, fmt_us, "p99 ≤")
        r.row(title, label, "latency p50 / p99 / p99.9 / max", r.latency(name), target, m)
        r.row(title, label, "echo checks", r.echo_checks(name), "all verified", met(b.runs.ok(name)))


def compare(b: Bench, r: Report) -> None:
    """The side-by-side echo table."""
    if not b.want("echo"):
        return
    heading = f"Echo: closed loop, one message in flight per connection, {b.echo_seconds} s"
    if not r.compare_table(heading, [(p, b.peers.label(p)) for p in PEERS if p in b.peers.ready]):
        return
    for c, s in specs(b):
        category = f"{c}×{fmt_bytes(s)}"
        suffix = f"echo-{c}x{s}"
        r.compare_row(f"echo {category}", "msgs/s", "higher", fmt_int, "msgs_per_s", suffix,
                      Chart("Echo throughput (msgs/s, higher is better)", category, "msgs/s"))
        r.compare_row(f"echo {category}", "latency p50", "lower", fmt_us, "p50_us", suffix)
        r.compare_row(f"echo {category}", "latency p99", "lower", fmt_us, "p99_us", suffix,
                      Chart("Echo latency p99 (µs, lower is better)", category, "µs"))


def baseline(b: Bench, r: Report) -> None:
    """The echo rows against WSECHO_BIN_BASELINE: new ÷ old."""
    if not (b.opts.baseline_bin and b.want("echo")):
        return
    r.baseline_table(f"Echo: closed loop, one message in flight per connection, {b.echo_seconds} s",
                     BASELINE_LABEL, b.opts.baseline_bin)
    for c, s in specs(b):
        test, suffix = f"echo {c}×{fmt_bytes(s)}", f"echo-{c}x{s}"
        r.baseline_row(test, "msgs/s", "higher", fmt_int, "msgs_per_s", suffix, BASELINE)
        r.baseline_row(test, "latency p50", "lower", fmt_us, "p50_us", suffix, BASELINE)
        r.baseline_row(test, "latency p99", "lower", fmt_us, "p99_us", suffix, BASELINE)
