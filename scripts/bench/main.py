"""The benchmark's driver: the run plan and the table plan.

scripts/bench.sh has built wsecho and wsload and runs this under its time
bound: `python3 -m bench [--quick] [--soak] [--compare] [--portable]` with
scripts/ on PYTHONPATH (and `python3 -m bench --budget ...` first, which
checks the options and prints that bound). The usage text is usage.txt.
`--rehearsal` hands the whole run to rehearsal.py instead: the 99,000-client
cluster rehearsal, alone.

Measuring and tabulating are apart: `measure` starts the servers and runs
wsload, leaving each run's JSON in target/bench/raw/; `tabulate` makes the
rows from those files. Each group of rows is a module in groups/ with a
`measure` and a `rows` function (and `measure_peers` and `compare` for the
groups --compare measures the peers in); adding a group means adding it to
GROUPS in context.py and its functions to the two plans below.

With --compare (or WSECHO_BIN_BASELINE) the compared rows run as interleaved
trials (trials.py, Bench.interleave): the echo and fan-out groups run the
peers' and the baseline's trials with wsecho's in `measure` (and have a
`baseline` table), the hold and wide fan-out groups the peers' with wsecho's
in `measure_peers`. The wide rows' peer runs once, as before.
"""

from __future__ import annotations

import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import rehearsal
from .context import (
    BASELINE_LABEL,
    PORTABLE_LABEL,
    TLS_LABEL,
    WARMUP,
    Bench,
    Options,
    check_binaries,
    report_fd_limit,
)
from .groups import (
    burst,
    cluster,
    echo,
    fanout,
    greeting,
    hold,
    never_reader,
    resume,
    rooms,
    soak,
    storm,
    tls,
    wide,
    wide_fanout,
)
from .peers import Peers
from .report import TSV_HEADER, Report, draw_chart, first_error, results_markdown
from .runs import Runs
from .servers import Fatal, Servers, say
from .trials import MIN_TRIALS, SPREAD_LIMIT, self_test

ROOT = Path(__file__).resolve().parents[2]

# The peers come first (wsecho's targets refer to their figures); the hold and
# wide fan-out groups' measure_peers run wsecho's compared rows too,
# interleaved with theirs, and echo.measure and fanout.measure the peers'.
MEASURE = [
    hold.measure_peers, wide_fanout.measure_peers, wide.measure_peers,  # --compare
    echo.measure, hold.measure, tls.measure, greeting.measure, fanout.measure, wide_fanout.measure,
    burst.measure, never_reader.measure, resume.measure, storm.measure, cluster.measure, rooms.measure, wide.measure,
    echo.measure_portable, hold.measure_portable,  # --portable
    soak.measure,  # --soak
]


def tabulate(b: Bench) -> Report:
    """The rows of results.md, in their order: each hold size's plain rows are
    followed by the same over TLS and the difference."""
    r = Report(b.runs, b.main_label)
    echo.rows(b, r)
    tls.echo_rows(b, r)
    for n in b.hold_sizes:
        hold.rows(b, r, n)
        tls.hold_rows(b, r, n)
    greeting.rows(b, r)
    fanout.rows(b, r)
    wide_fanout.rows(b, r)
    cluster.rows(b, r)
    rooms.rows(b, r)
    burst.rows(b, r)
    never_reader.rows(b, r)
    resume.rows(b, r)
    storm.rows(b, r)
    wide.rows(b, r)
    soak.rows(b, r)
    if b.opts.compare:
        echo.compare(b, r)
        hold.compare(b, r)
        fanout.compare(b, r)
        wide_fanout.compare(b, r)
        wide.compare(b, r)
    echo.baseline(b, r)
    fanout.baseline(b, r)
    return r


# ------------------------------------------------------------------- setup --
def build_portable(b: Bench) -> None:
    """The same source built with the portable-poll feature, in a target
    directory of its own so that it never replaces the default binary. A
    failed build skips its rows, not the whole run."""
    if not b.opts.portable:
        return
    if b.custom:
        b.portable_note = "not run: --portable measures wsecho, not BENCH_SERVER"
        say("--portable is ignored with BENCH_SERVER")
        return
    if not (b.want("echo") or b.want("hold")):
        return
    say("building wsecho with --features portable-poll (release, target/portable)")
    log = b.out / "portable-build.log"
    binary = b.root / "target" / "portable" / "release" / "wsecho"
    if cargo_release(b, log, binary, "-p", "wsecho", "--features", "portable-poll",
                     "--target-dir", b.root / "target" / "portable"):
        b.portable_bin = binary
        return
    why = first_error(log) or "no output"
    b.portable_note = f"not built, rows skipped: {why}"
    say(f"--portable: building wsecho with --features portable-poll failed ({why}); "
        "skipping the portable-backend rows (full log: target/bench/portable-build.log)")


def build_fanclient(b: Bench) -> None:
    """fanclient, the fan-out rows' second client (--compare), from its own
    Cargo project into target/fanclient; a failed build leaves those rows to
    wsload alone, said in one line and in results.md."""
    if not (b.opts.compare and (b.want("fanout") or b.want("wide-fanout"))) or b.custom:
        return
    say("building fanclient, the fan-out rows' second client (release, target/fanclient)")
    log = b.out / "fanclient-build.log"
    binary = b.root / "target" / "fanclient" / "release" / "fanclient"
    if cargo_release(b, log, binary, "--locked", "--manifest-path",
                     b.root / "scripts" / "bench" / "fanclient" / "Cargo.toml",
                     "--target-dir", b.root / "target" / "fanclient"):
        b.runs.fanclient = binary
        return
    b.fanclient_note = f"not built, the fan-out rows are wsload's alone: {first_error(log)}"
    say(f"--compare: building fanclient failed ({first_error(log)}); the fan-out rows go on with wsload alone "
        "(target/bench/fanclient-build.log)")


def cargo_release(b: Bench, log: Path, binary: Path, *args) -> bool:
    """`cargo build --release ARGS` from the repository, its output in LOG;
    whether it built BINARY."""
    with open(log, "wb") as out:
        built = subprocess.run(["cargo", "build", "--release", *args],
                               cwd=b.root, stdout=out, stderr=out, check=False).returncode == 0
    return built and os.access(binary, os.X_OK)


def cache_dir() -> Path:
    """Where --compare builds and installs the peers, and the chart's Python."""
    if os.environ.get("BENCH_CACHE"):
        return Path(os.environ["BENCH_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.environ.get("HOME", ""), ".cache")
    return Path(xdg) / "wsecho-bench"


# ------------------------------------------------------------------ output --
def cores() -> int:
    return len(os.sched_getaffinity(0))


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.rstrip("\n").rsplit(": ", 1)[-1]
    except OSError:
        pass
    return ""


def commit(root: Path) -> str:
    """The commit measured, and whether the tree had changes."""
    head = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          check=False)
    if head.returncode:
        return "none yet"
    dirty = subprocess.run(["git", "-C", root, "diff", "--quiet", "HEAD"], capture_output=True, check=False).returncode
    return head.stdout.strip() + (" (with uncommitted changes)" if dirty else "")


def header(b: Bench) -> list[str]:
    """The bullets above the table: when, where, what, and what was left out."""
    took = b.elapsed_s()
    lines = [
        f"- started: {b.started_at}; took {took // 60} min {took % 60} s; options: {' '.join(b.opts.args) or 'none'}",
        f"- machine: {cores()} cores, {cpu_model()}, Linux {platform.release()}; load average at start: {b.start_load}",
        f"- commit: {commit(b.root)}",
        (f"- client: wsload, {b.opts.threads} thread(s), on the same machine; echo rows {b.echo_seconds} s after "
         f"{WARMUP} warm-up; open-file limit {b.fd_limit}"),
    ]
    if b.runs.fanclient:
        lines.append("- second client of the fan-out rows (--compare): fanclient (scripts/bench/fanclient/, "
                     "tokio-tungstenite on tokio's multi-threaded runtime, a thread per core), each server "
                     "measured by both, the same rows and trials; its rows say \"fanclient\"")
    elif b.fanclient_note:
        lines.append(f"- second client of the fan-out rows (fanclient): {b.fanclient_note}")
    if b.custom:
        lines.append(f"- server: BENCH_SERVER='{b.custom}' "
                     "(rows needing wsecho's --broadcast / --greeting-delay skipped)")
    if b.opts.only:
        lines.append(f"- only these groups of rows: {b.opts.only} (BENCH_ONLY)")
    if b.opts.echo_specs != echo.SPECS:
        lines.append(f"- only these echo rows: {', '.join(echo.spec_name(s) for s in b.opts.echo_specs)} "
                     "(BENCH_ECHO_ROWS)")
    if b.opts.interleaved:
        against = " and ".join(([] if not b.opts.compare else ["the peers of --compare"])
                               + ([] if not b.opts.baseline_bin
                                  else [f"{BASELINE_LABEL} ({b.opts.baseline_bin}, WSECHO_BIN_BASELINE)"]))
        groups = "the echo and fan-out rows" + (
            " (and with --compare the hold rows of the peers' sizes and the wide fan-out row, each trial on a "
            "fresh server)" if b.opts.compare else "")
        lines.append(
            f"- trials: {groups} ran as {b.opts.trials} interleaved trials (BENCH_TRIALS), wsecho and {against} "
            "in turn in each round; wsecho's figures in the table below are its median trial's (echo: by msgs/s; "
            "fan-out: by deliveries/s at full speed, by p99 at 500/s; hold: by RSS; wide fan-out: by p99), and "
            "its targets against another server are judged on the median of the per-trial ratios (trial k ÷ "
            f"trial k), said too wide to judge when max/min of those ratios is over {SPREAD_LIMIT:g}× or their "
            f"min–max straddles the aim, and too few to judge with fewer than {MIN_TRIALS} pairs"
            + ("; the wide rows are one run each" if b.opts.compare else ""))
    if b.opts.portable:
        if b.portable_bin:
            lines.append(f"- {PORTABLE_LABEL}: wsecho built with --features portable-poll (target/portable)")
        else:
            lines.append(f"- {PORTABLE_LABEL}: {b.portable_note or 'no rows selected'}")
    if b.want("tls"):
        lines.append(f"- {TLS_LABEL}: {b.tls_note or tls.HEADER}")
    if b.want("wide") and b.wide_note and not b.custom:
        lines.append(f"- {wide.title(b)}: {b.wide_note}")
    if b.opts.compare:
        lines.append("- compared with (--compare):")
        listed = []
        for name in echo.PEERS + hold.PEERS + fanout.PEERS + wide_fanout.PEERS + wide.PEERS:
            peer = b.peers.ready.get(name)
            if peer is None or name in listed or not any(b.runs.raw.glob(f"{name}-*.json")):
                continue  # not ready, listed already, or no rows in this run
            listed.append(name)
            lines.append(f"  - {peer.label}: {peer.about}")
        lines += [f"  - not run: {note}" for note in b.peers.notes]
        lines.append(f"  - {b.chart_note}")
    if b.servers.warnings:
        lines.append(f"- warnings: {''.join(b.servers.warnings)}")
    lines.append("- latency is per message, measured by the client: send → complete echo (or delivery) read")
    return lines


def finish(b: Bench) -> None:
    """The tables, comparison.tsv and the chart, results.md printed."""
    out = b.out
    r = tabulate(b)
    tsv, svg = out / "comparison.tsv", out / "comparison.svg"
    tsv.unlink(missing_ok=True)
    svg.unlink(missing_ok=True)
    if b.opts.compare:
        tsv.write_text("".join(line + "\n" for line in [TSV_HEADER, *r.tsv]))
        if r.tsv:
            b.chart_note = draw_chart(
                tsv, svg, b.peers.cache, b.root / "scripts" / "chart.py",
                f"wsecho and its peers, {b.started_at}, {cores()} cores, client and servers on one machine",
                out / "chart.log")
        else:
            b.chart_note = "no chart: no peer ran"
        say(b.chart_note)
    text = results_markdown(header(b), r, b.settle_text, b.opts.trials if b.opts.interleaved else 0)
    (out / "results.md").write_text(text)
    sys.stdout.write(text)
    sys.stdout.flush()
    if "**no**" in text:
        say("some targets were not met (marked **no**)")


# -------------------------------------------------------------------- main --
class Terminated(BaseException):
    """SIGTERM (the time bound of scripts/bench.sh, or someone's kill)."""


def on_sigterm(signum, frame):
    raise Terminated()


def parse(args: list[str]) -> Options:
    try:
        return Options.parse(args)
    except Fatal as error:
        say(str(error))
        sys.exit(2)


def main(args: list[str]) -> int:
    if args[:1] == ["--self-test"]:
        self_test()
        return 0
    if args[:1] == ["--budget"]:
        print(parse(args[1:]).budget_s())
        return 0
    opts = parse(args)
    out = ROOT / "target" / "bench"
    raw = out / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for old in [*raw.glob("*.json"), *raw.glob("*.err"), *raw.glob("*.txt")]:
        old.unlink()
    work = Path(tempfile.mkdtemp(prefix="wsecho-bench."))
    servers = None
    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        wsload, wsecho = check_binaries(ROOT, opts)
        servers = Servers(work, wsload)
        if opts.rehearsal:
            return rehearsal.main(opts, ROOT, work, servers, wsload, wsecho, report_fd_limit(), commit(ROOT))
        b = Bench(opts, ROOT, work, servers, Runs(raw, wsload, opts.threads, servers),
                  Peers(cache_dir(), out), wsecho)
        build_portable(b)
        build_fanclient(b)
        b.fd_limit = report_fd_limit()
        if b.want("tls"):
            tls.make_files(b)
            if b.tls_note:
                say(f"tls rows: {b.tls_note}")
        b.start_load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
        b.started_at = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        b.started = time.monotonic()
        if opts.compare:
            b.peers.prepare(rust=b.want("echo") or b.want("hold"),
                            node=(b.want("echo") or b.want("hold") or b.want("fanout") or b.want("wide-fanout")
                                  or b.want("wide")),
                            websocat=b.want("fanout") or b.want("wide-fanout"))
        for step in MEASURE:
            step(b)
        finish(b)
        return 0
    except Fatal as error:
        say(f"error: {error}")
        return 1
    except KeyboardInterrupt:
        return 130
    except Terminated:
        return 143
    finally:
        # Stop everything started, whatever happened; a second Ctrl-C must not
        # cut this short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if servers is not None:
            servers.stop_all()
        shutil.rmtree(work, ignore_errors=True)
