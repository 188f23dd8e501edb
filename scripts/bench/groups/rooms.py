"""Rooms (wsecho --broadcast names the room by the URL path): fan-out inside one
room while 1,000 other rooms are busy, and how long a newcomer takes to join a
room with --history 100 (wsecho only)."""

from __future__ import annotations

import base64
import os
import socket
import statistics
import threading
import time

from ..context import Bench
from ..report import Report, Target, fmt_int, fmt_us

FANOUT = "main-rooms-fanout-500"
BUSY = "main-rooms-busy"
BUSY_ROOMS = 1000
HISTORY = 100
NEWCOMERS = 50
# The fan-out row's targets: the same as the fan-out rows' alone (rooms never
# wait for each other, so 1,000 busy rooms must not move it much).
DELIVERED = Target("all, in order", lambda missing, ooo, dups: missing == 0 and ooo == 0 and dups == 0)
JOIN_P99_MS = 50
JOIN = Target(f"p99 < {JOIN_P99_MS} ms", lambda p99_ms: p99_ms < JOIN_P99_MS)
# What the newcomer row measured, for rows(): (p50, p99, max) in ms, or why not.
_joins: dict[str, object] = {}


def measure(b: Bench) -> None:
    if b.custom or not b.want("rooms"):
        return
    server = b.start_wsecho("--broadcast", "--max-handshakes-per-ip", "off")
    # 1,000 rooms of one client each, every client sending as fast as it hears
    # back (alone in its room, its broadcast is its echo), for as long as the
    # fan-out runs (1,000 messages at 500/s: 2 s, plus connecting).
    busy = threading.Thread(target=b.run, args=(
        BUSY, "echo", "--url", f"{server.url}/busy", "--rooms", BUSY_ROOMS,
        "--connections", BUSY_ROOMS, "--size", 32, "--duration", "8s", "--warmup", "2s"))
    busy.start()
    time.sleep(3)  # the busy rooms are open and past their warm-up
    b.run(FANOUT, "fanout", "--url", f"{server.url}/the-room", "--listeners", 100,
          "--messages", 1000, "--rate", 500)
    busy.join()
    b.stop()

    server = b.start_wsecho("--broadcast", "--history", str(HISTORY))
    try:
        _joins["figures"] = newcomer_join_ms(server.url, HISTORY, NEWCOMERS)
    except OSError as error:
        _joins["error"] = str(error)
    b.stop()


def newcomer_join_ms(url: str, history: int, newcomers: int) -> tuple[float, float, float]:
    """Fills a room with HISTORY messages, then times NEWCOMERS joins one after
    another: from the TCP connect to the last history message read. Returns
    p50, p99 and max in milliseconds."""
    host, port = url.removeprefix("ws://").rsplit(":", 1)
    addr = (host, int(port))
    sender = upgrade(addr, "/history")
    for n in range(history):
        sender.sendall(client_frame(f"history message {n:04}".encode()))
    read_frames(sender, history)  # its own copies: all are in the history now
    times = []
    for _ in range(newcomers):
        started = time.perf_counter()
        newcomer = upgrade(addr, "/history")
        read_frames(newcomer, history)
        times.append((time.perf_counter() - started) * 1000)
        newcomer.close()
    sender.close()
    times.sort()
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    return statistics.median(times), p99, times[-1]


def upgrade(addr: tuple[str, int], path: str) -> socket.socket:
    """A WebSocket connection to PATH, its handshake done (the 101 read)."""
    sock = socket.create_connection(addr, timeout=30)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {addr[0]}:{addr[1]}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        if not chunk:
            raise OSError("the server closed the connection during the handshake")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise OSError(f"no upgrade: {head.splitlines()[0]!r}")
    return sock


def client_frame(payload: bytes) -> bytes:
    """One masked text frame (payloads under 126 bytes)."""
    mask = os.urandom(4)
    masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
    return bytes([0x81, 0x80 | len(payload)]) + mask + masked


def read_frames(sock: socket.socket, count: int) -> None:
    """Reads COUNT server frames (short ones: the history's)."""
    buffer = b""
    for _ in range(count):
        while len(buffer) < 2 or len(buffer) < 2 + (buffer[1] & 0x7F):
            chunk = sock.recv(65536)
            if not chunk:
                raise OSError("the server closed the connection")
            buffer += chunk
        buffer = buffer[2 + (buffer[1] & 0x7F):]


def rows(b: Bench, r: Report) -> None:
    if b.custom or not b.want("rooms"):
        return
    title = f"fan-out 100 × 1,000 at 500/s in one room, {fmt_int(BUSY_ROOMS)} other rooms busy"
    if b.runs.has(FANOUT):
        get, text = b.runs.get, b.runs.text
        r.row(title, "wsecho", "delivered / missing / out of order",
              f"{fmt_int(get(FANOUT, 'delivered'))} / {text(FANOUT, 'missing')} / {text(FANOUT, 'out_of_order')}",
              DELIVERED.text,
              DELIVERED.met(get(FANOUT, "missing"), get(FANOUT, "out_of_order"), get(FANOUT, "duplicates")))
        r.row(title, "wsecho", "latency p50 / p99 / p99.9 / max", r.latency(FANOUT),
              "beside the fan-out row alone at 500/s")
    else:
        r.missing(title, "wsecho", FANOUT)
    if b.runs.has(BUSY):
        r.row(title, "wsecho", f"the {fmt_int(BUSY_ROOMS)} busy rooms meanwhile: msgs/s, p99",
              f"{fmt_int(b.runs.get(BUSY, 'msgs_per_s'))}, {fmt_us(b.runs.get(BUSY, 'p99_us'))}")
    title = f"newcomer joins a room with --history {HISTORY}"
    if "figures" in _joins:
        p50, p99, worst = _joins["figures"]
        r.row(title, "wsecho", f"time to its last history message, {NEWCOMERS} newcomers: p50 / p99 / max",
              f"{p50:.2f} ms / {p99:.2f} ms / {worst:.2f} ms", JOIN.text, JOIN.met(p99))
    else:
        r.row(title, "wsecho", "result", f"no result: {_joins.get('error', 'not run')}", JOIN.text, "**no**")
