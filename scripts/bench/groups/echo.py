"""Echo rows: a closed loop, one message in flight per connection
(wsload echo), for wsecho (or BENCH_SERVER), its portable backend, and the
peers of --compare."""

from __future__ import annotations

from ..context import PORTABLE_LABEL, WARMUP, Bench
from ..report import DASH, Chart, Report, check, fmt_bytes, fmt_int, fmt_us, met

# (connections, message size) of each row.
SPECS = [(1, 32), (16, 32), (64, 32), (64, 4096)]
PORTABLE_SPECS = [(1, 32), (64, 32), (64, 4096)]
PEERS = ["tt", "tung", "node", "wsnode"]

# Targets (wsecho's, whichever backend): 1×32 B, tungstenite's own
# thread-per-connection example; 64×32 B and 64×4 KiB, the better of
# tokio-tungstenite's example and Node ws, in msgs/s and in p99.
TARGET_PEERS = {(1, 32): ["tung"], (64, 32): ["tt", "node"], (64, 4096): ["tt", "node"]}


def spec_name(spec: tuple[int, int]) -> str:
    """1x32: the spec's part of a run name."""
    return f"{spec[0]}x{spec[1]}"


def measure_with(b: Bench, prefix: str, url: str, specs=SPECS) -> None:
    """The echo runs PREFIX-echo-CxS against URL."""
    for c, s in specs:
        b.run(f"{prefix}-echo-{c}x{s}", "echo", "--url", url, "--connections", c, "--size", s,
              "--duration", f"{b.echo_seconds}s", "--warmup", WARMUP)


def measure_peers(b: Bench) -> None:
    if not (b.opts.compare and b.want("echo")):
        return
    for peer in PEERS:
        if peer not in b.peers.ready:
            continue
        if b.start_peer(peer):
            measure_with(b, peer, b.server.url)
        b.stop()


def measure(b: Bench) -> None:
    if not b.want("echo"):
        return
    measure_with(b, "main", b.start_default().url)
    b.stop()


def measure_portable(b: Bench) -> None:
    if not (b.portable_bin and b.want("echo")):
        return
    server = b.start_wsecho(binary=b.portable_bin, label=PORTABLE_LABEL)
    measure_with(b, "port", server.url, PORTABLE_SPECS)
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


def rows_of(b: Bench, r: Report, prefix: str, label: str, specs=SPECS) -> None:
    """For each spec: msgs/s, latency and the checks, each against its target."""
    peer_label = lambda name: b.peers.label(name.split("-")[0])
    for spec in specs:
        name = f"{prefix}-echo-{spec_name(spec)}"
        title = "echo 64×4 KiB" if spec == (64, 4096) else f"echo {spec[0]}×{spec[1]} B"
        if not b.runs.has(name):
            r.missing(title, label, name)
            continue
        msgs, p99 = b.runs.get(name, "msgs_per_s"), b.runs.get(name, "p99_us")
        peers = [f"{peer}-echo-{spec_name(spec)}" for peer in TARGET_PEERS.get(spec, [])]
        target, m = DASH, DASH
        if peers:
            best_msgs, who = best(b, "msgs_per_s", True, peers)
            if best_msgs is not None:
                target = f"≥ {peer_label(who)} ({fmt_int(best_msgs)})"
                m = check(lambda v, best: v >= best, msgs, best_msgs)
            else:
                target = "≥ the best peer (run --compare)"
        r.row(title, label, "msgs/s (MB/s)", r.throughput(name), target, m)
        target, m = DASH, DASH
        if peers:
            best_p99, who = best(b, "p99_us", False, peers)
            if best_p99 is not None:
                target = f"p99 ≤ {peer_label(who)} ({fmt_us(best_p99)})"
                m = check(lambda v, best: v <= best, p99, best_p99)
            else:
                target = "p99 ≤ the best peer (run --compare)"
        r.row(title, label, "latency p50 / p99 / p99.9 / max", r.latency(name), target, m)
        r.row(title, label, "echo checks", r.echo_checks(name), "all verified", met(b.runs.ok(name)))


def compare(b: Bench, r: Report) -> None:
    """The side-by-side echo table."""
    if not b.want("echo"):
        return
    heading = f"Echo: closed loop, one message in flight per connection, {b.echo_seconds} s"
    if not r.compare_table(heading, [(p, b.peers.label(p)) for p in PEERS if p in b.peers.ready]):
        return
    for c, s in SPECS:
        category = f"{c}×{fmt_bytes(s)}"
        suffix = f"echo-{c}x{s}"
        r.compare_row(f"echo {category}", "msgs/s", "higher", fmt_int, "msgs_per_s", suffix,
                      Chart("Echo throughput (msgs/s, higher is better)", category, "msgs/s"))
        r.compare_row(f"echo {category}", "latency p50", "lower", fmt_us, "p50_us", suffix)
        r.compare_row(f"echo {category}", "latency p99", "lower", fmt_us, "p99_us", suffix,
                      Chart("Echo latency p99 (µs, lower is better)", category, "µs"))
