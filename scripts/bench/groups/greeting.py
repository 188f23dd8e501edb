"""The greeting row: 10,000 greetings due at once (wsecho only)."""

from __future__ import annotations

from ..context import Bench
from ..report import Report, Target, fmt_int

NAME = "main-greeting-10000"
GREETED = Target("10,000", lambda greeted: greeted == 10000)
LATENESS = Target("p99 < 50 ms", lambda p99_us: p99_us < 50000)


def measure(b: Bench) -> None:
    """All 10,000 handshakes as fast as possible, so their greetings fall due
    together: 1,000 at once from one address, which is what the per-address
    handshake cap (64 by default) exists to refuse, so it is off for this row."""
    if b.custom or not b.want("greeting"):
        return
    server = b.start_wsecho("--greeting-delay", "2s", "--max-handshakes-per-ip", "off")
    b.run(NAME, "hold", "--url", server.url, "--connections", 10000, "--hold", "5s",
          "--greeting-delay", "2s", "--concurrency", 1000)
    b.stop()


def rows(b: Bench, r: Report) -> None:
    if b.custom or not b.want("greeting"):
        return
    if not b.runs.has(NAME):
        r.missing("greeting, 10,000 at once", "wsecho", NAME, "p99 lateness < 50 ms")
        return
    title = "greeting, 10,000 at once (delay 2 s)"
    greeted, p99 = b.runs.get(NAME, "greetings"), b.runs.get(NAME, "p99_us")
    r.row(title, "wsecho", "greetings received",
          f"{fmt_int(greeted)} of {fmt_int(b.runs.get(NAME, 'opened'))} opened", GREETED.text, GREETED.met(greeted))
    r.row(title, "wsecho", "lateness p50 / p99 / p99.9 / max", r.latency(NAME), LATENESS.text, LATENESS.met(p99))
