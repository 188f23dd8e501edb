"""The soak rows (--soak): BENCH_SOAK_SECONDS of mixed echo traffic against
one server, its RSS sampled every 5 s into target/bench/raw/soak-rss.txt;
it must stay flat, and every turn must verify. Runs whatever BENCH_ONLY says."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from ..context import Bench
from ..report import NO, Report, Target, fmt_int, met
from ..servers import say

# Turns of 20 s: few and many connections, small and large messages.
SPECS = [(1, 32), (64, 32), (16, 4096), (256, 32), (64, 16384), (512, 128)]
TURN_S = 20
SAMPLE_EVERY_S = 5
FLAT = Target("flat: end ≤ first round + 5 % + 1 MiB", lambda end, start: end <= start * 1.05 + 1024)


@dataclass
class Soak:
    """The server's RSS (KiB) idle, once every kind of turn has run, at the end,
    and its largest sample; the turns run and failed."""

    idle_kib: int | None = None
    start_kib: int | None = None
    end_kib: int | None = None
    max_kib: int | None = None
    turns: int = 0
    failed: int = 0


def rss_kib(pid: int) -> int | None:
    """A process's resident memory (VmRSS) in KiB, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def sample(pid: int, proc, path, stop: threading.Event) -> None:
    """Writes PID's RSS to PATH every 5 s while it runs, until STOP."""
    with open(path, "w") as out:
        while proc.poll() is None and not stop.is_set():
            kib = rss_kib(pid)
            if kib is not None:
                print(kib, file=out, flush=True)
            stop.wait(SAMPLE_EVERY_S)


def measure(b: Bench) -> None:
    if not b.opts.soak:
        return
    seconds = b.opts.soak_seconds
    server = b.start_default()
    say(f"soak: {seconds} s of mixed echo traffic")
    samples = b.runs.raw / "soak-rss.txt"
    stop = threading.Event()
    sampler = threading.Thread(target=sample, args=(server.pid, server.proc, samples, stop), daemon=True)
    sampler.start()
    soak = b.soak = Soak(idle_kib=rss_kib(server.pid))
    end = b.elapsed_s() + seconds
    while b.elapsed_s() + TURN_S <= end:
        c, s = SPECS[soak.turns % len(SPECS)]
        name = f"soak-{soak.turns}"
        b.run(name, "echo", "--url", server.url, "--connections", c, "--size", s,
              "--duration", f"{TURN_S - 1}s", "--warmup", "0s")
        if not b.runs.ok(name):
            soak.failed += 1
        # The baseline is taken once every kind of turn has run (or after the
        # first turn in a soak too short for that): buffers and allocator
        # arenas have grown to their working size by then, and any further
        # growth is a leak.
        if soak.turns in (0, len(SPECS) - 1):
            soak.start_kib = rss_kib(server.pid)
        soak.turns += 1
    soak.end_kib = rss_kib(server.pid)
    stop.set()
    sampler.join()
    kib = [int(line) for line in samples.read_text().split()]
    soak.max_kib = max(kib) if kib else None
    b.stop()


def rows(b: Bench, r: Report) -> None:
    if not b.opts.soak:
        return
    soak: Soak = b.soak or Soak()
    title = f"soak, {b.opts.soak_seconds} s mixed echo"
    if soak.start_kib is not None and soak.end_kib is not None:
        r.row(title, b.main_label, "server RSS before → after first round → end (max)",
              f"{fmt_int(soak.idle_kib)} → {fmt_int(soak.start_kib)} → {fmt_int(soak.end_kib)} KiB "
              f"({fmt_int(soak.max_kib)})", FLAT.text, FLAT.met(soak.end_kib, soak.start_kib))
    else:
        r.row(title, b.main_label, "server RSS", "not measured", "flat", NO)
    r.row(title, b.main_label, "turns verified", f"{soak.turns - soak.failed} of {soak.turns}", "all",
          met(soak.failed == 0 and soak.turns > 0))
