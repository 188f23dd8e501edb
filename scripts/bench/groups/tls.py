"""TLS rows: wsecho's hold 1,000 and 10,000 idle and echo 64×32 B over
wss://, each printed beside its plain row with the difference, TLS − plain.

A certificate authority and a server certificate it issued (EC P-256, for
localhost and 127.0.0.1) are made afresh for every run with the openssl
command, in the run's temporary folder; wsload trusts only that authority.
"""

from __future__ import annotations

import re
import shutil
import subprocess

from ..context import TLS_LABEL, WARMUP, Bench
from ..report import DASH, Report, fmt, fmt_int, met
from ..servers import Fatal, Server
from . import hold

SIZES = [1000, 10000]
HEADER = ("wss:// with TLS 1.3 as rustls negotiates it, an EC P-256 certificate for localhost issued by a CA "
          "made for this run (openssl); wsload trusts only that CA and sends SNI localhost; no session resumption")


def make_files(b: Bench) -> None:
    """The authority and the certificate; sets b.tls_note when they cannot be made."""
    if b.custom:
        b.tls_note = "not run: the tls rows measure wsecho, not BENCH_SERVER"
        return
    if not shutil.which("openssl"):
        b.tls_note = "not run: the openssl command is not installed"
        return
    d, log = b.work / "tls", b.work / "openssl.log"
    d.mkdir(parents=True, exist_ok=True)
    (d / "server.ext").write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n")
    p256 = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
    with open(log, "wb") as out:
        def openssl(*args) -> bool:
            return subprocess.run(["openssl", *map(str, args)], stdout=out, stderr=out, check=False).returncode == 0

        serial = subprocess.run(["openssl", "rand", "-hex", "8"], capture_output=True, text=True,
                                check=False).stdout.strip()
        made = (
            openssl("req", "-x509", "-new", "-nodes", *p256, "-days", "2", "-subj", "/CN=wsecho bench CA",
                    "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                    "-keyout", d / "ca.key", "-out", d / "ca.pem")
            and openssl("req", "-new", "-nodes", *p256, "-subj", "/CN=localhost",
                        "-keyout", d / "server.key", "-out", d / "server.csr")
            and openssl("x509", "-req", "-in", d / "server.csr", "-CA", d / "ca.pem", "-CAkey", d / "ca.key",
                        "-set_serial", f"0x{serial}", "-days", "2", "-extfile", d / "server.ext",
                        "-out", d / "server.pem")
        )
    if made:
        # The certificate names localhost: wsload sends that as SNI, as a
        # browser opening wss://localhost:PORT would.
        b.tls_opts = ["--ca", str(d / "ca.pem"), "--server-name", "localhost"]
    else:
        lines = log.read_text(errors="replace").splitlines()
        why = next((line for line in lines if re.search("error", line, re.IGNORECASE)), lines[-1] if lines else "")
        b.tls_note = f"not run: openssl could not make the certificates ({why})"


def start(b: Bench) -> Server:
    """wsecho with default flags, serving wss:// with the run's certificate."""
    d = b.work / "tls"
    server = b.start_wsecho("--tls-cert", str(d / "server.pem"), "--tls-key", str(d / "server.key"), label=TLS_LABEL)
    if not server.url.startswith("wss://"):
        raise Fatal(f"wsecho with --tls-cert printed {server.url}, not a wss:// URL")
    return server


def measure(b: Bench) -> None:
    """The same hold rows over wss://: the same sizes, idle time and figures."""
    if not b.want("tls") or b.tls_note:
        return
    for n in SIZES:
        server = start(b)
        b.run(f"tls-hold-{n}", "hold", "--url", server.url, *b.tls_opts, "--connections", n,
              "--hold", hold.HOLD, "--pid", server.pid)
        b.stop()
    server = start(b)
    b.run("tls-echo-64x32", "echo", "--url", server.url, *b.tls_opts, "--connections", 64, "--size", 32,
          "--duration", f"{b.echo_seconds}s", "--warmup", WARMUP)
    b.stop()


# -------------------------------------------------------------------- rows --
def difference(b: Bench, tls: str, plain: str, key: str, spec: str) -> str:
    """TLS's figure minus the plain one, signed, or n/a when either is missing."""
    a, p = b.runs.get(tls, key), b.runs.get(plain, key)
    return fmt(spec, a - p) if a is not None and p is not None else "n/a"


def echo_rows(b: Bench, r: Report) -> None:
    """The echo row over TLS, beside the plain one."""
    if not b.want("tls"):
        return
    name, plain, title = "tls-echo-64x32", "main-echo-64x32", "echo 64×32 B over TLS"
    if not b.runs.has(name):
        if b.tls_note:
            r.row(title, TLS_LABEL, "result", b.tls_note)
        else:
            r.missing(title, TLS_LABEL, name, "all verified")
        return
    plain_msgs = plain_latency = f"{DASH} (plain: add the echo group)"
    if b.runs.has(plain):
        plain_msgs = f"{DASH} (plain: {fmt_int(b.runs.get(plain, 'msgs_per_s'))})"
        plain_latency = f"{DASH} (plain: {r.latency(plain)})"
    r.row(title, TLS_LABEL, "msgs/s (MB/s)", r.throughput(name), plain_msgs)
    r.row(title, TLS_LABEL, "latency p50 / p99 / p99.9 / max", r.latency(name), plain_latency)
    r.row(title, TLS_LABEL, "echo checks", r.echo_checks(name), "all verified", met(b.runs.ok(name)))
    if b.runs.has(plain):
        t, p = b.runs.get(name, "msgs_per_s") or 0, b.runs.get(plain, "msgs_per_s") or 0
        change = fmt("%+.0f", t - p) + " (" + fmt("%+.0f", 100 * (t - p) / p if p > 0 else 0) + " %)"
        r.row("echo 64×32 B: TLS − plain", "wsecho", "msgs/s / p99 latency",
              f"{change} / {difference(b, name, plain, 'p99_us', '%+.0f µs')}")


def hold_rows(b: Bench, r: Report, n: int) -> None:
    """The TLS hold rows of N connections, and the line TLS − plain under them."""
    if not b.want("tls") or n not in SIZES:
        return
    hold.table(b, r, n, TLS_LABEL, "tls")
    t, p = f"tls-hold-{n}", f"main-hold-{n}"
    if b.runs.has(t) and b.runs.has(p):
        r.row(f"hold {fmt_int(n)} idle: TLS − plain", "wsecho",
              "server RSS per connection / CPU over 10 s idle / descriptors per connection",
              f"{difference(b, t, p, 'rss_per_conn_kib', '%+.2f KiB')} / {difference(b, t, p, 'idle_cpu_s', '%+.3f s')}"
              f" / {difference(b, t, p, 'fds_per_conn', '%+.2f')}")
