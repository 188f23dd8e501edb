"""Cluster rows: fan-out 100 × 1,000 across two wsecho instances on one
redis-server (--redis), all on this machine.

The sender is on the first instance, the 100 listeners spread over both (50
each), so half of the deliveries cross from one instance to the other through
Redis, and all of them make the round trip through Redis (the sender's
instance fans out what its subscription receives, in Redis's order).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from functools import partial

from ..context import Bench
from ..report import NO, Report, awk_number, fmt_int, fmt_us
from ..servers import Fatal, free_port, say
from .fanout import RATES, delivered_row, measure_with

LABEL = "wsecho ×2, --redis"


def redis_ping(port: int) -> bool:
    """True when a Redis answers PING on 127.0.0.1:PORT."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.makefile("rb").readline().startswith(b"+PONG")
    except OSError:
        return False


def healthz_says(url: str, text: str) -> bool:
    """True when the /healthz of ws://HOST:PORT contains TEXT (read for 2 s at most)."""
    host, _, port = url.removeprefix("ws://").rstrip("/").rpartition(":")
    body, deadline = b"", time.monotonic() + 2
    try:
        with socket.create_connection((host, int(port)), timeout=2) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n")
            while text.encode() not in body and (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                chunk = sock.recv(4096)
                if not chunk:
                    break
                body += chunk
    except (OSError, ValueError):
        pass
    return text.encode() in body


def wait_until(test, tries: int = 100, pause_s: float = 0.1) -> bool:
    """TEST, retried every PAUSE_S up to TRIES times: a bounded wait."""
    for _ in range(tries):
        if test():
            return True
        time.sleep(pause_s)
    return test()


def measure(b: Bench) -> None:
    if b.custom or not b.want("cluster"):
        return
    redis = b.opts.redis_server
    if not shutil.which(redis) and subprocess.run([b.root / "scripts" / "install-redis.sh"], check=False).returncode:
        b.cluster_note = "not run: no redis-server (scripts/install-redis.sh could not install one)"
        say(f"cluster: {b.cluster_note}")
        return
    port = free_port()
    redis_proc = b.servers.spawn([redis, "--bind", "127.0.0.1", "--port", port, "--save", "", "--appendonly", "no",
                                "--dir", b.work, "--logfile", b.work / "redis.log", "--daemonize", "no"],
                                 stdin=subprocess.DEVNULL)
    if not wait_until(lambda: redis_ping(port)):
        raise Fatal(f"redis-server did not answer PING on port {port}")
    version = subprocess.run([redis, "--version"], capture_output=True, text=True, check=False).stdout.split(" ")
    say(f"cluster: redis-server {version[2] if len(version) > 2 else ''} on port {port}")
    instances = [b.servers.start_wsecho(b.wsecho, "wsecho", ["--broadcast", "--redis", f"redis://127.0.0.1:{port}/0"])
                 for _ in range(2)]
    # Each instance has subscribed once its /healthz says so (bounded wait).
    for instance in instances:
        if not wait_until(partial(healthz_says, instance.url, '"redis":"up"')):
            raise Fatal(f"wsecho at {instance.url} did not join Redis")
    spread = [arg for instance in instances for arg in ("--listener-url", instance.url)]
    measure_with(b, "cluster", instances[0].url, *spread)
    b.servers.stop_process(redis_proc)
    for instance in instances:
        b.servers.stop(instance, warn=False)


def rows(b: Bench, r: Report) -> None:
    if b.custom or not b.want("cluster"):
        return
    get = b.runs.get
    for rate in RATES:
        name, single = f"cluster-fanout-{rate}", f"main-fanout-{rate}"
        title = f"cluster: fan-out 100 × 1,000 at {'full speed' if rate == 'full' else '500/s'}, 2 instances + Redis"
        if not b.runs.has(name):
            if b.cluster_note:
                r.row(title, LABEL, "result", b.cluster_note, "all delivered in order", NO)
            else:
                r.missing(title, LABEL, name, "all delivered in order")
            continue
        delivered_row(b, r, name, title, LABEL)
        if rate == "full":
            r.row(title, LABEL, "deliveries/s", fmt_int(get(name, "deliveries_per_s")))
        r.row(title, LABEL, "latency p50 / p99 / p99.9 / max", r.latency(name))
        # What Redis adds: the same row on one instance alone (the fanout group).
        if b.runs.has(single):
            added = " / ".join(fmt_us(awk_number((get(name, k) or 0) - (get(single, k) or 0)))
                               for k in ("p50_us", "p99_us"))
            r.row(title, LABEL, "latency added over one instance, p50 / p99", added)
        else:
            r.row(title, LABEL, "latency added over one instance, p50 / p99",
                  "not measured: run the fanout group too (BENCH_ONLY=fanout,cluster)")
