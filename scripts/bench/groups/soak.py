"""The soak (--soak): BENCH_SOAK_SECONDS of echo, broadcast in rooms and
connection churn at once against one wsecho --broadcast, each load a thread
running wsload again and again:

  echo       turns of 10 s through SPECS (few and many connections, small and
             large messages), each connection alone in a room of its own, where
             its broadcast comes back to it like an echo (wsload echo --rooms)
  broadcast  fan-out in two rooms at once, /room-a and /room-b, each run 20
             listeners × 500 messages at 50/s: a message that crossed into the
             other room would fail that room's run
  churn      100 connections that open, exchange one message (hold's probe)
             and close, over and over (wsload hold --rooms)

The server's RSS, threads (/proc/PID/task) and descriptors (/proc/PID/fd)
are sampled every 5 s into target/bench/raw/soak-samples.txt. The pass: RSS
at the end (the last minute's peak) within 5 % of minute 2's, threads and
descriptors back to their counts before the loads once the loads have ended
and the server has settled, and no error, neither in a wsload run nor in the
server's log (at warn level).
With BENCH_SERVER (no rooms, no broadcast) the echo and churn loads run
without rooms and the broadcast load is left out. Runs whatever BENCH_ONLY
says.
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass, field

from ..context import Bench
from ..report import DASH, NO, Report, Target, check, fmt_int, met
from ..servers import say

# Echo turns of 10 s, the six a minute: every minute carries the same mix,
# so that one minute's figures compare with another's.
SPECS = [(1, 32), (64, 32), (16, 4096), (256, 32), (64, 16384), (512, 128)]
TURN_S = 10
TURN_SLACK_S = 1  # of each turn, for wsload to start, connect and close
BROADCAST_ROOMS = ["room-a", "room-b"]
LISTENERS, MESSAGES, RATE = 20, 500, 50  # a fan-out run: 10 s of sending
BROADCAST_RUN_S = MESSAGES / RATE + 5  # and connecting, the sync, the drain: to end before the soak does
CHURN_CONNECTIONS = 100
CHURN_HOLD = "200ms"  # between opening and the probe: short, but the connections overlap
CHURN_RUN_S = 5  # what a churn run takes at most on a busy machine, to end before the soak does
SAMPLE_EVERY_S = 5
# Once the loads have ended: how long the server may take to close the last
# connections (wsecho waits up to its close timeout, 5 s, for a client's
# close reply) and end their threads.
SETTLE_TIMEOUT_S = 30
SETTLE_POLL_S = 0.1
# RSS at the end within 5 % of minute 2: minute 1 still grows buffers and
# allocator arenas to their working size; any later growth is a leak.
BASELINE_MINUTE = 2
RSS_WITHIN = 0.05
FLAT = Target(f"within {RSS_WITHIN * 100:.0f} % of minute {BASELINE_MINUTE}",
              lambda end, start: abs(end - start) <= RSS_WITHIN * start)
ERRORS_SHOWN = 20  # in results.md; soak-errors.txt has them all


@dataclass
class Sample:
    """The server's figures at SECONDS after the loads started."""

    seconds: float
    rss_kib: int
    threads: int
    fds: int


@dataclass
class Soak:
    """What the soak measured: the server's figures before the loads, the
    samples meanwhile, the figures after, the runs of each load, the errors."""

    before: Sample | None = None
    samples: list[Sample] = field(default_factory=list)
    after: Sample | None = None
    settled_s: float | None = None  # how long after the loads the counts were back; None: never
    runs: dict[str, list[str]] = field(default_factory=dict)  # load -> run names
    errors: list[str] = field(default_factory=list)


def figures(pid: int, seconds: float) -> Sample | None:
    """PID's RSS (VmRSS, KiB), threads and open descriptors now; None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
        return Sample(seconds, rss, len(os.listdir(f"/proc/{pid}/task")), len(os.listdir(f"/proc/{pid}/fd")))
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def sample(pid: int, soak: Soak, started: float, path, stop: threading.Event) -> None:
    """Samples PID every 5 s into SOAK and PATH (seconds, RSS KiB, threads,
    descriptors), until STOP."""
    with open(path, "w") as out:
        print("# seconds rss_kib threads fds", file=out, flush=True)
        while not stop.is_set():
            s = figures(pid, time.monotonic() - started)
            if s is not None:
                soak.samples.append(s)
                print(f"{s.seconds:.1f} {s.rss_kib} {s.threads} {s.fds}", file=out, flush=True)
            stop.wait(SAMPLE_EVERY_S)


def echo_load(b: Bench, url: str, rooms: bool, started: float, end: float, names: list[str],
              halt: threading.Event) -> None:
    """Echo turns, turn k from k × 10 s after the start, until the end."""
    k = 0
    while started + (k + 1) * TURN_S <= end and not halt.is_set():
        time.sleep(max(0.0, started + k * TURN_S - time.monotonic()))
        c, s = SPECS[k % len(SPECS)]
        name = f"soak-echo-{k}"
        names.append(name)
        b.run(name, "echo", "--url", f"{url}/echo" if rooms else url, *(["--rooms", c] if rooms else []),
              "--connections", c, "--size", s, "--duration", f"{TURN_S - TURN_SLACK_S}s", "--warmup", "0s",
              quiet=True)
        k += 1


def broadcast_load(b: Bench, url: str, room: str, end: float, names: list[str], halt: threading.Event) -> None:
    """Fan-out runs in ROOM, one after another, until the end."""
    k = 0
    while time.monotonic() + BROADCAST_RUN_S <= end and not halt.is_set():
        name = f"soak-broadcast-{room}-{k}"
        names.append(name)
        b.run(name, "fanout", "--url", f"{url}/{room}", "--listeners", LISTENERS, "--messages", MESSAGES,
              "--rate", RATE, "--timeout", "30s", quiet=True)
        k += 1


def churn_load(b: Bench, url: str, rooms: bool, end: float, names: list[str], halt: threading.Event) -> None:
    """Churn runs, one after another, until the end: each connection in a room
    of its own, where its probe comes back to it like an echo."""
    k = 0
    while time.monotonic() + CHURN_RUN_S <= end and not halt.is_set():
        name = f"soak-churn-{k}"
        names.append(name)
        b.run(name, "hold", "--url", f"{url}/churn" if rooms else url,
              *(["--rooms", CHURN_CONNECTIONS] if rooms else []), "--connections", CHURN_CONNECTIONS,
              "--hold", CHURN_HOLD, quiet=True)
        k += 1


def settle(pid: int, before: Sample) -> tuple[Sample | None, float | None]:
    """Waits until the server has as many threads and descriptors as before
    the loads (or SETTLE_TIMEOUT_S); returns its figures then, and how long
    that took (None if they never came back)."""
    started = time.monotonic()
    while True:
        now = figures(pid, 0)
        waited = time.monotonic() - started
        if now is None:
            return None, None
        if now.threads == before.threads and now.fds == before.fds:
            return now, waited
        if waited >= SETTLE_TIMEOUT_S:
            return now, None
        time.sleep(SETTLE_POLL_S)


def measure(b: Bench) -> None:
    if not b.opts.soak:
        return
    seconds = b.opts.soak_seconds
    rooms = not b.custom
    if rooms:
        # The loads connect at the same time, each with up to 64 handshakes in
        # flight: more from one address than its default cap (64) lets in.
        server = b.start_wsecho("--broadcast", "--max-handshakes-per-ip", "off", "--log-level", "warn")
    else:
        server = b.start_default()
    mix = "echo, broadcast in rooms and churn" if rooms else "echo and churn"
    say(f"soak: {seconds} s of {mix} at once (wsload runs in target/bench/raw/soak-*)")
    soak = b.soak = Soak(before=figures(server.pid, 0))
    started = time.monotonic()
    end = started + seconds
    stop = threading.Event()
    sampler = threading.Thread(target=sample, args=(server.pid, soak, started, b.runs.raw / "soak-samples.txt", stop),
                               daemon=True)
    sampler.start()
    soak.runs = {"echo": [], "broadcast": [], "churn": []}
    # Set when the loads must not start another run: at the end, or when the
    # driver is interrupted (it then stops the runs under way itself).
    halt = threading.Event()
    loads = [(echo_load, (b, server.url, rooms, started, end, soak.runs["echo"], halt)),
             (churn_load, (b, server.url, rooms, end, soak.runs["churn"], halt))]
    if rooms:
        loads += [(broadcast_load, (b, server.url, room, end, soak.runs["broadcast"], halt))
                  for room in BROADCAST_ROOMS]
    threads = [threading.Thread(target=load, args=args, daemon=True) for load, args in loads]
    for t in threads:
        t.start()
    try:
        for t in threads:
            t.join()
    finally:
        halt.set()
        stop.set()
    sampler.join()
    if soak.before is not None:
        soak.after, soak.settled_s = settle(server.pid, soak.before)
    b.stop()
    for load, names in soak.runs.items():
        for name in names:
            if not b.runs.ok(name):
                soak.errors.append(f"{load}, {name}: {b.runs.error(name) or 'no result'}")
    if rooms:
        log = b.work / "server.err"
        lines = log.read_text(errors="replace").splitlines() if log.exists() else []
        soak.errors += [f"server log: {line}" for line in lines if "[WARN ]" in line or "[ERROR]" in line]
    (b.runs.raw / "soak-errors.txt").write_text("".join(f"{e}\n" for e in soak.errors))


# -------------------------------------------------------------------- rows --
def minutes(b: Bench, soak: Soak) -> list[tuple[int, Sample]]:
    """Each minute's peaks (RSS, threads, descriptors) over its samples; a run
    that overran the soak by a little counts in its last minute."""
    last = max(1, math.ceil(b.opts.soak_seconds / 60))
    peaks: dict[int, Sample] = {}
    for s in soak.samples:
        m = min(last, max(1, math.ceil(s.seconds / 60)))
        p = peaks.get(m)
        peaks[m] = Sample(s.seconds, s.rss_kib, s.threads, s.fds) if p is None else Sample(
            s.seconds, max(p.rss_kib, s.rss_kib), max(p.threads, s.threads), max(p.fds, s.fds))
    return sorted(peaks.items())


def rows(b: Bench, r: Report) -> None:
    if not b.opts.soak:
        return
    soak: Soak = b.soak or Soak()
    rooms = not b.custom
    test = f"soak, {b.opts.soak_seconds} s: {'echo, broadcast in rooms, churn' if rooms else 'echo, churn'} at once"
    label = b.main_label
    per_minute = minutes(b, soak)
    by_minute = dict(per_minute)
    if per_minute:
        start, (last, end) = by_minute.get(BASELINE_MINUTE), per_minute[-1]
        if start is not None:
            r.row(test, label, f"server RSS, peak of minute {BASELINE_MINUTE} → of minute {last} (the last)",
                  f"{fmt_int(start.rss_kib)} → {fmt_int(end.rss_kib)} KiB", FLAT.text,
                  FLAT.met(end.rss_kib, start.rss_kib))
        else:
            r.row(test, label, "server RSS", f"no minute {BASELINE_MINUTE}: the soak is shorter", FLAT.text, NO)
    else:
        r.row(test, label, "server RSS", "not measured", FLAT.text, NO)
    before, after = soak.before, soak.after
    settled = "never" if soak.settled_s is None else f"{soak.settled_s:.1f} s after the loads"
    for what, key in (("threads", "threads"), ("descriptors", "fds")):
        peak = max((getattr(s, key) for s in soak.samples), default=None)
        if before is None or after is None:
            r.row(test, label, f"server {what}", "not measured", "back to the start", NO)
            continue
        r.row(test, label, f"server {what}: before → peak → after the loads",
              f"{fmt_int(getattr(before, key))} → {fmt_int(peak)} → {fmt_int(getattr(after, key))} "
              f"(back: {settled})", "back to the start",
              check(lambda b_, a: a == b_, getattr(before, key), getattr(after, key)))
    runs = sum(len(names) for names in soak.runs.values())
    counts = " / ".join(f"{fmt_int(len(names))} {load}" for load, names in soak.runs.items()
                        if rooms or load != "broadcast")
    r.row(test, label, "errors (wsload runs, server log)",
          f"{fmt_int(len(soak.errors))} ({counts} runs)", "none", met(runs > 0 and not soak.errors))
    minutes_section(r, test, soak, per_minute)


def minutes_section(r: Report, test: str, soak: Soak, per_minute: list[tuple[int, Sample]]) -> None:
    """The soak's section below the table: the server per minute, and every error."""
    lines = ["", f"### {test}: the server per minute", "",
             (f"Peaks of the samples (every {SAMPLE_EVERY_S} s) in each minute; before: once started, "
              "before the loads; after: once the loads had ended and the counts were back (or the wait ran out)."),
             "", "| minute | RSS (KiB) | threads | descriptors |", "|---|---|---|---|"]

    def line(when: str, s: Sample | None) -> str:
        if s is None:
            return f"| {when} | {DASH} | {DASH} | {DASH} |"
        return f"| {when} | {fmt_int(s.rss_kib)} | {fmt_int(s.threads)} | {fmt_int(s.fds)} |"

    lines.append(line("before", soak.before))
    lines += [line(str(m), s) for m, s in per_minute]
    lines.append(line("after", soak.after))
    lines += ["", f"Errors: {'none' if not soak.errors else fmt_int(len(soak.errors))}."]
    if soak.errors:
        lines += [""] + [f"- {e}" for e in soak.errors[:ERRORS_SHOWN]]
        if len(soak.errors) > ERRORS_SHOWN:
            lines.append(f"- and {fmt_int(len(soak.errors) - ERRORS_SHOWN)} more: target/bench/raw/soak-errors.txt")
    r.sections += lines
