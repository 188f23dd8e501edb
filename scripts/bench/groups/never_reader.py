"""The never-reader rows: a room with one member that never reads, under both
--slow-listener policies, and what its healthy members see meanwhile.

wsecho --broadcast --max-backlog 256KiB, once with --slow-listener close (the
default: a listener past the mark is let go with 1008 at once, and no sender
ever waits) and once with --slow-listener wait (senders are paced to the
slowest listener until it is closed with 1008 after --send-timeout, 10 s by
default). In each, one raw client joins the room, completes its handshake and
never reads again (its receive buffer set to 16 KiB before connecting, so the
kernel holds little for it); then wsload fanout runs in the same room: 10
healthy listeners and one sender of 2,000 messages of 4 KiB at 250 a second
(1 MB/s for 8 s: about twice what the stalled connection's kernel buffers and
the backlog hold together). The rows report the healthy listeners' delivery
latency, p50 / p99 / max, per policy; under close none may be delayed by more
than 250 ms. Afterwards the never-reading member reads what reached it, to say
how the server ended it: the 1008 close frame cannot reach a client whose
window stays shut, so the server resets it after its close timeout, and the
member sees the messages that fit its buffers, then the reset.
"""

from __future__ import annotations

import base64
import os
import socket
import time

from ..context import Bench
from ..report import NO, Report, Target, fmt_int, fmt_us
from .fanout import delivered_row

GROUP = "never-reader"  # its name in BENCH_ONLY
POLICIES = ("close", "wait")
# 1 MB/s for 8 s: 8 MB, about twice what the stalled connection's kernel
# buffers (the server's send buffer grows to 4 MiB, tcp_wmem's default most)
# and its backlog hold together, so the member crosses the mark within the run.
LISTENERS, MESSAGES, SIZE, RATE = 10, 2000, 4096, 250
MAX_BACKLOG_KIB = 256
ROOM = "never-reader"
# The never-reading member's receive buffer, set before it connects (Linux
# doubles it and turns autotuning off): the kernel then holds about 32 KiB for
# it, so its backlog in the server crosses the mark within a second or two.
RCVBUF = 16 * 1024
# Time for the member's handshake to land in the room before wsload joins it.
SETTLE_S = 0.5
# Reading what reached the member afterwards: at most this long, and this much.
READ_S, READ_BYTES = 10, 64 << 20
# The bound on the wsload run once connected: the sync, 8 s of sending, and
# under wait up to 10 s of --send-timeout on top.
TIMEOUT = "60s"
# Under wait the server holds every message back while it waits for the
# member, up to its --send-timeout (10 s): the listeners must not count them
# lost after wsload's default 2 s without an arrival. The same for both
# policies, so that the command lines differ in the policy alone.
DRAIN = "15s"
WORST_MS = 250
WORST = Target(f"max < {WORST_MS} ms", lambda max_us: max_us < WORST_MS * 1000)
# wsecho ends a member it let go with 1008, but a client that never reads never
# opens its window for that close frame: after the close timeout the server
# resets the connection instead. Any end counts as let go; still open does not.
LET_GO = Target("let go by the server", lambda ended: ended != "open")
# What each policy's member saw, for rows(): policy -> outcome or the error.
_members: dict[str, dict] = {}


def name(policy: str) -> str:
    return f"main-never-reader-{policy}"


def title(policy: str) -> str:
    return (f"never-reading member, --slow-listener {policy}: {LISTENERS} listeners, {RATE}/s × "
            f"{SIZE // 1024} KiB, --max-backlog {MAX_BACKLOG_KIB} KiB")


class NeverReader:
    """A member of the room at PATH that completes its handshake (reading the
    101 response a byte at a time, so that nothing after it is taken) and then
    reads nothing until `outcome`."""

    def __init__(self, url: str, path: str):
        host, port = url.removeprefix("ws://").rsplit(":", 1)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        self.sock.settimeout(30)
        self.sock.connect((host, int(port)))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                           "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            byte = self.sock.recv(1)
            if not byte:
                raise OSError("the server closed the connection during the handshake")
            head += byte
        if not head.startswith(b"HTTP/1.1 101"):
            raise OSError(f"no upgrade: {head.splitlines()[0]!r}")

    def outcome(self) -> dict:
        """Reads what reached it (at most READ_S, READ_BYTES): the data messages
        before the end, the close frame's code if one came, and how the
        connection ended: "close" (a close frame), "reset", "eof" (no close
        frame) or "open" (still open, nothing more for a second)."""
        buf, messages, code, ended = b"", 0, None, "open"
        deadline = time.monotonic() + READ_S
        self.sock.settimeout(1)
        read = 0
        try:
            while time.monotonic() < deadline and read < READ_BYTES and code is None:
                try:
                    chunk = self.sock.recv(1 << 20)
                except TimeoutError:
                    break
                except ConnectionResetError:
                    ended = "reset"
                    break
                if not chunk:
                    ended = "eof"
                    break
                read += len(chunk)
                buf += chunk
                while (frame := next_frame(buf)) is not None:
                    opcode, payload, used = frame
                    buf = buf[used:]
                    if opcode in (1, 2):
                        messages += 1
                    elif opcode == 8:
                        code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 0
                        ended = "close"
                        break
        finally:
            self.sock.close()
        return {"messages": messages, "code": code, "ended": ended}


def next_frame(buf: bytes) -> tuple[int, bytes, int] | None:
    """The first whole server frame in BUF (unmasked): opcode, payload, bytes used."""
    if len(buf) < 2:
        return None
    length, at = buf[1] & 0x7F, 2
    if length == 126:
        if len(buf) < 4:
            return None
        length, at = int.from_bytes(buf[2:4], "big"), 4
    elif length == 127:
        if len(buf) < 10:
            return None
        length, at = int.from_bytes(buf[2:10], "big"), 10
    if len(buf) < at + length:
        return None
    return buf[0] & 0x0F, buf[at:at + length], at + length


def measure(b: Bench) -> None:
    if b.custom or not b.want(GROUP):
        return
    for policy in POLICIES:
        server = b.start_wsecho("--broadcast", "--slow-listener", policy,
                                 "--max-backlog", f"{MAX_BACKLOG_KIB}KiB")
        try:
            member = NeverReader(server.url, f"/{ROOM}")
        except OSError as error:
            _members[policy] = {"error": str(error)}
            b.stop()
            continue
        time.sleep(SETTLE_S)
        b.run(name(policy), "fanout", "--url", f"{server.url}/{ROOM}", "--listeners", LISTENERS,
              "--messages", MESSAGES, "--size", SIZE, "--rate", RATE, "--timeout", TIMEOUT, "--drain", DRAIN)
        try:
            _members[policy] = member.outcome()
        except OSError as error:
            _members[policy] = {"error": str(error)}
        b.stop()


def member_cell(outcome: dict) -> str:
    """How the server ended the never-reading member, for people."""
    if "error" in outcome:
        return f"no result: {outcome['error']}"
    got = f"{fmt_int(outcome['messages'])} messages reached it"
    if outcome["ended"] == "close":
        return f"closed with {outcome['code']}; {got} before the close frame"
    if outcome["ended"] == "reset":
        return f"reset by the server (no close frame seen); {got} before"
    if outcome["ended"] == "eof":
        return f"dropped without a close frame; {got}"
    return f"still open at the end; {got}"


def rows(b: Bench, r: Report) -> None:
    if b.custom or not b.want(GROUP):
        return
    get = b.runs.get
    for policy in POLICIES:
        test, run = title(policy), name(policy)
        if not b.runs.has(run):
            r.missing(test, "wsecho", run, "all delivered in order")
        else:
            delivered_row(b, r, run, test, "wsecho")
            latency = " / ".join(fmt_us(get(run, k)) for k in ("p50_us", "p99_us", "max_us"))
            figure = "healthy listeners' latency p50 / p99 / max"
            if policy == "close":
                r.row(test, "wsecho", figure, latency, WORST.text, WORST.met(get(run, "max_us")))
            else:
                r.row(test, "wsecho", figure, latency, "— (senders wait for the member until --send-timeout, 10 s, closes it)")
        outcome = _members.get(policy, {"error": "not run"})
        met = NO if "error" in outcome else LET_GO.met(outcome.get("ended"))
        r.row(test, "wsecho", "the never-reading member", member_cell(outcome), LET_GO.text, met)
