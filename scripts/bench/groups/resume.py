"""The resume rows: how long a client takes to resume after missing 10,000
messages, and fan-out throughput with plain listeners and with resuming ones.

Resume by position (wsecho --broadcast --history N, clients connecting with
?resume or ?resume=EPOCH:OFFSET; wsload fanout --resume):

- catch-up: wsecho --broadcast --history 10000; in a room of its own, one
  resuming listener gets the first message, then closes its connection
  (wsload fanout --resume --leave-after 1); the sender sends 10,000 more at
  full speed; once the sender has its own copy of each back (the room has them
  all), the listener comes back with ?resume=EPOCH:OFFSET. The row is the time
  from its reconnecting (the TCP connect) to the last of the 10,000 read, and
  checks that the header said recovered and nothing is missing. 5 runs, each
  in a fresh room of the same server.
- throughput: wsecho --broadcast --history 1000, a fresh server per run; the
  fan-out row's load (100 listeners × 1,000 messages of 32 B at full speed),
  once with plain listeners and once with the same number of resuming ones
  (wsload fanout --resume: a header first, the offsets counted), 3 rounds
  alternating: deliveries/s and latency of each, and resume ÷ plain.
"""

from __future__ import annotations

import statistics

from ..context import Bench
from ..report import DASH, NO, Report, Target, fmt, fmt_int, fmt_us
from .fanout import DELIVERED

GROUP = "resume"  # its name in BENCH_ONLY
MISSED = 10000
HISTORY = MISSED  # exactly what the listener misses: recovered only if none is forgotten
CATCH_UP_RUNS = 5
LISTENERS, MESSAGES, SIZE = 100, 1000, 32
ROUNDS = 3
KINDS = ("plain", "resume")
TIMEOUT = "60s"
RECOVERED = Target("recovered, nothing missing",
                   lambda recovered, missing, runs: recovered == runs and missing == 0)


def catch_up_name(n: int) -> str:
    return f"main-resume-catch-up-{n}"


def fanout_name(kind: str, n: int) -> str:
    return f"main-resume-fanout-{kind}-{n}"


def measure(b: Bench) -> None:
    if b.custom or not b.want(GROUP):
        return
    server = b.start_wsecho("--broadcast", "--history", str(HISTORY))
    for n in range(1, CATCH_UP_RUNS + 1):
        b.run(catch_up_name(n), "fanout", "--url", f"{server.url}/catch-up-{n}", "--listeners", 1,
              "--messages", MISSED + 1, "--size", SIZE, "--rate", 0, "--resume", "--leave-after", 1,
              "--timeout", TIMEOUT)
    b.stop()
    for n in range(1, ROUNDS + 1):
        for kind in KINDS:
            server = b.start_wsecho("--broadcast", "--history", str(MESSAGES))
            b.run(fanout_name(kind, n), "fanout", "--url", f"{server.url}/fanout", "--listeners", LISTENERS,
                  "--messages", MESSAGES, "--size", SIZE, "--rate", 0, *(["--resume"] if kind == "resume" else []),
                  "--timeout", TIMEOUT)
            b.stop()


def median_of(b: Bench, names: list[str], key: str) -> float | None:
    """The median of figure KEY over the runs NAMES that have it, or None."""
    values = [v for v in (b.runs.get(n, key) for n in names) if isinstance(v, (int, float))]
    return statistics.median(values) if values else None


def catch_up_rows(b: Bench, r: Report) -> None:
    test = f"resume after missing {fmt_int(MISSED)} messages (--history {fmt_int(HISTORY)})"
    names = [catch_up_name(n) for n in range(1, CATCH_UP_RUNS + 1) if b.runs.has(catch_up_name(n))]
    if not names:
        r.missing(test, "wsecho", catch_up_name(1), RECOVERED.text)
        return
    get = b.runs.get
    recovered = sum(get(n, "resume_recovered") or 0 for n in names)
    missing = sum(get(n, "missing") or 0 for n in names)
    caught_up = [get(n, "resume_caught_up") for n in names]
    failed = [n for n in names if not b.runs.ok(n)]
    detail = f" (failed its checks: {b.runs.error(failed[0])})" if failed else ""
    r.row(test, "wsecho", f"runs recovered / messages caught up each / missing, {len(names)} runs",
          f"{recovered} of {len(names)} / {' '.join(fmt_int(c) for c in caught_up)} / {fmt_int(missing)}{detail}",
          RECOVERED.text, RECOVERED.met(recovered, missing, len(names)) if not failed else NO)
    times = sorted(v for v in (get(n, "resume_catch_up_max_us") for n in names) if isinstance(v, (int, float)))
    cell = (f"{fmt_us(statistics.median(times))} / {fmt_us(times[-1])}" if times else "no catch-up timed")
    r.row(test, "wsecho", f"time from reconnecting to the {fmt_int(MISSED)}th message: p50 / max of the runs", cell)


def fanout_rows(b: Bench, r: Report) -> None:
    test = f"fan-out {LISTENERS} × {fmt_int(MESSAGES)} at full speed, plain and resuming listeners (--history " \
           f"{fmt_int(MESSAGES)})"
    medians = {}
    for kind in KINDS:
        names = [fanout_name(kind, n) for n in range(1, ROUNDS + 1) if b.runs.has(fanout_name(kind, n))]
        label = f"{kind} listeners"
        if not names:
            r.missing(test, "wsecho", fanout_name(kind, 1), "all delivered in order")
            continue
        total = {k: sum(b.runs.get(n, k) or 0 for n in names)
                 for k in ("delivered", "missing", "out_of_order", "duplicates")}
        failed = [n for n in names if not b.runs.ok(n)]
        detail = f" ({len(failed)} failed its checks: {b.runs.error(failed[0])})" if failed else ""
        r.row(test, "wsecho", f"{label}: delivered / missing / out of order, {len(names)} runs together",
              f"{fmt_int(total['delivered'])} / {fmt_int(total['missing'])} / {fmt_int(total['out_of_order'])}{detail}",
              DELIVERED.text,
              DELIVERED.met(total["missing"], total["out_of_order"], total["duplicates"]) if not failed else NO)
        dps = [b.runs.get(n, "deliveries_per_s") for n in names]
        medians[kind] = median_of(b, names, "deliveries_per_s")
        r.row(test, "wsecho", f"{label}: deliveries/s, each run", " / ".join(fmt_int(d) for d in dps))
        p50, p99 = median_of(b, names, "p50_us"), median_of(b, names, "p99_us")
        r.row(test, "wsecho", f"{label}: latency p50 / p99, medians of the runs", f"{fmt_us(p50)} / {fmt_us(p99)}")
        if kind == "resume":
            reconnects = sum(b.runs.get(n, "resume_reconnects") or 0 for n in names)
            r.row(test, "wsecho", f"{label}: reconnections (a listener let go comes back)", fmt_int(reconnects))
    plain, resume = medians.get("plain"), medians.get("resume")
    ratio = fmt("%.2f", resume / plain) + " ×" if plain and resume else DASH
    r.row(test, "wsecho", "resume ÷ plain, deliveries/s (medians)", ratio)


def rows(b: Bench, r: Report) -> None:
    if b.custom or not b.want(GROUP):
        return
    catch_up_rows(b, r)
    fanout_rows(b, r)
