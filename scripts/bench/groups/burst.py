"""The burst row: a broadcast burst that one listener reads slowly.

800 messages of 64 KiB (50 MiB) at full speed to 10 listeners and one more
that reads only 2 MiB/s: with the flow control of --slow-listener wait
(--max-backlog 4 MiB, --send-timeout 10 s) the sender must be slowed to that
pace, and the slow reader, which never stops reading, must get every message
and never be closed. About 25 s; wsload gives up after 60 s. (The server's
default, --slow-listener close, lets such a reader go with 1008 instead, to be
resumed: the never-reader and resume rows measure that policy.)
"""

from __future__ import annotations

from ..context import Bench
from ..report import Report, Target, awk_number, awk_text, fmt, fmt_int
from .fanout import DELIVERED

NAME = "main-burst"
LISTENERS, MESSAGES, SIZE, RATE = 10, 800, 65536, 2097152

SLOW_READER = Target("all, in order, not closed",
                     lambda missing, ooo, dups, closed: missing == 0 and ooo == 0 and dups == 0 and not closed)


def measure(b: Bench) -> None:
    if b.custom or not b.want("burst"):
        return
    server = b.start_wsecho("--broadcast", "--slow-listener", "wait")
    b.run(NAME, "fanout", "--url", server.url, "--listeners", LISTENERS, "--messages", MESSAGES,
          "--size", SIZE, "--rate", 0, "--slow-listener", RATE, "--timeout", "60s")
    b.stop()


def rows(b: Bench, r: Report) -> None:
    if b.custom or not b.want("burst"):
        return
    title = (f"broadcast burst, {MESSAGES} × {SIZE // 1024} KiB at full speed to {LISTENERS} + 1 slow reader "
             f"({awk_text(RATE / 1048576)} MiB/s)")
    if not b.runs.has(NAME):
        r.missing(title, "wsecho", NAME, "all delivered in order, no close")
        return
    get, text = b.runs.get, b.runs.text
    # Closed unless the report says plainly that it was not.
    closed = text(NAME, "slow_closed_by_server") != "false"
    closed_cell = "no"
    if closed:
        code = get(NAME, "slow_close_code")
        closed_cell = f"yes ({text(NAME, 'slow_close_code')})" if code is not None else "yes"
    detail = "" if b.runs.ok(NAME) else f" ({b.runs.error(NAME)})"
    r.row(title, "wsecho", "slow reader: delivered / missing / out of order / closed",
          f"{fmt_int(get(NAME, 'slow_delivered'))} / {text(NAME, 'slow_missing')} / "
          f"{text(NAME, 'slow_out_of_order')} / {closed_cell}{detail}",
          SLOW_READER.text, SLOW_READER.met(get(NAME, "slow_missing"), get(NAME, "slow_out_of_order"),
                                            get(NAME, "slow_duplicates"), int(closed)))
    took = get(NAME, "slow_last_delivery_s")
    # Reading every frame (payload + 10 bytes of header) at the rate.
    ideal = awk_number(MESSAGES * (SIZE + 10) / RATE)
    r.row(title, "wsecho", "time for the burst (slow reader's last delivery)",
          fmt("%.2f s", took) if took is not None else "no delivery",
          f"— (reading it all at the rate: {fmt('%.1f s', ideal)})")
    r.row(title, "wsecho", "fast listeners: delivered / missing / out of order",
          f"{fmt_int(get(NAME, 'delivered'))} / {text(NAME, 'missing')} / {text(NAME, 'out_of_order')}",
          DELIVERED.text, DELIVERED.met(get(NAME, "missing"), get(NAME, "out_of_order"), get(NAME, "duplicates")))
