"""Starting and stopping processes: wsecho, BENCH_SERVER, the peers, redis-server,
and the wsload clients themselves.

Every process goes through `Servers.spawn`, which keeps it in a list, so that
`stop_all` can stop whatever is still running when the driver leaves, be it
normally, on an error or on Ctrl-C. Every server listens on 127.0.0.1 only:
wsecho is given `--host 127.0.0.1` (or a listening socket on 127.0.0.1 the
bench holds, handed over as systemd's socket activation does), the peers are
given 127.0.0.1 in their command lines (or, for tungstenite's example,
hard-code it).

wsecho runs as deployed: with GLIBC_TUNABLES=glibc.malloc.tcache_count=0, as
deploy/wsecho.service and the container image set it (glibc's per-thread
allocation cache off, which the memory rows measure), unless the environment
sets GLIBC_TUNABLES already.
"""

from __future__ import annotations

import os
import random
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

# How long a server gets to print its URL or answer a handshake, and to exit
# after SIGTERM before it is killed.
READY_TIMEOUT_S = 30
STOP_TIMEOUT_S = 10

# glibc's setting in deploy/wsecho.service (Environment=) and deploy/Containerfile (ENV).
DEPLOYED_TUNABLES = ("GLIBC_TUNABLES", "glibc.malloc.tcache_count=0")

# Socket activation as systemd does it, from a shell: the listening socket comes in as
# standard input, moves to descriptor 3, and the shell names its own pid (which exec keeps)
# before it becomes wsecho ("$0", with its arguments after it).
ACTIVATE = 'exec 3<&0 0</dev/null; LISTEN_FDS=1 LISTEN_PID=$$ exec "$0" "$@"'


def wsecho_args(flags: list[str]) -> list[str]:
    """wsecho's arguments as the bench starts it: on 127.0.0.1, a port of its
    choosing, its log and greeting off (unless FLAGS say otherwise), then FLAGS."""
    return ["--host", "127.0.0.1", "--port", "0", "--log-level", "off", "--greeting-delay", "off", *flags]


def say(text: str) -> None:
    """One line on stderr, as every message of the benchmark."""
    print(f"bench: {text}", file=sys.stderr, flush=True)


class Fatal(Exception):
    """An error that ends the run (the driver prints it as `bench: error: ...`)."""


@dataclass
class Server:
    """A running server: its process, the URL it serves and the label its rows carry."""

    proc: subprocess.Popen
    url: str
    label: str
    drain: threading.Thread | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.proc.pid


def exit_status(proc: subprocess.Popen) -> int:
    """The exit status as a shell reports it: 128 + N for a process killed by signal N."""
    code = proc.returncode
    return 128 - code if code < 0 else code


def port_in_use(port: int) -> bool:
    """True when something accepts a connection on 127.0.0.1:PORT."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


# Where free_port looks: from 20,000 up to the ephemeral range's start.
FIRST_FREE_PORT = 20000


def ephemeral_start() -> int:
    """The first of the ports the kernel gives clients' sockets
    (net.ipv4.ip_local_port_range; Linux's default 32768)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A port nobody listens on (checked by trying to connect), for a server
    that must be told its port: below the ephemeral range where that leaves
    room. In it, the thousands of client sockets of the run before, still
    closing, hold ports that nothing accepts on but no server can listen on
    either (websocat: "Address already in use")."""
    end = ephemeral_start()
    span = end - FIRST_FREE_PORT if end - FIRST_FREE_PORT >= 1000 else 20000
    for _ in range(200):
        port = FIRST_FREE_PORT + random.randrange(span)
        if not port_in_use(port):
            return port
    raise Fatal("no free port found")


def read_line(fd: int, timeout_s: float) -> str | None:
    """The first line written to FD within TIMEOUT_S, or None (timeout, or the
    writer closed it first)."""
    buf = b""
    deadline = time.monotonic() + timeout_s
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return None
        chunk = os.read(fd, 4096)
        if not chunk:
            return None
        buf += chunk
    return buf.split(b"\n", 1)[0].decode(errors="replace")


def _drain(fd: int) -> None:
    """Reads FD to its end, so that a server can never block on a full stdout pipe."""
    try:
        while os.read(fd, 65536):
            pass
    except OSError:  # closed under it: the server is gone anyway
        pass


def server_log_tail(path: Path, lines: int | None = None) -> None:
    """Shows a server's stderr (its last LINES) on ours, to say why it did not come up."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return
    for line in text[-lines:] if lines else text:
        print(f"  server: {line}", file=sys.stderr)


class Servers:
    """The processes of one benchmark run, and how to start and stop its servers."""

    def __init__(self, work: Path, wsload: Path):
        self.work = work
        self.wsload = wsload
        self.live: list[subprocess.Popen] = []
        # "wsecho exited with status N on SIGTERM." lines, for results.md.
        self.warnings: list[str] = []

    # ------------------------------------------------------------ processes --
    def spawn(self, argv: list[str], **popen_args) -> subprocess.Popen:
        """Starts ARGV and remembers it until it is stopped."""
        proc = subprocess.Popen([str(a) for a in argv], **popen_args)
        self.live.append(proc)
        return proc

    def stop_process(self, proc: subprocess.Popen | None, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, up to TIMEOUT_S (10 s) to exit, then SIGKILL; returns its exit status."""
        if proc is None:
            return 0
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                say(f"pid {proc.pid} ignored SIGTERM for {timeout_s:g} s; killing it")
                proc.kill()
                proc.wait()
            except ProcessLookupError:
                proc.wait()
        if proc in self.live:
            self.live.remove(proc)
        return exit_status(proc)

    def forget(self, proc: subprocess.Popen) -> None:
        """Drops a process that ended by itself (a wsload run) from the list."""
        if proc in self.live:
            self.live.remove(proc)

    def stop_all(self) -> None:
        """Stops everything still running, newest first."""
        for proc in reversed(list(self.live)):
            try:
                self.stop_process(proc)
            except Exception as error:  # noqa: BLE001  (whatever one raised, keep stopping the others)
                say(f"could not stop pid {proc.pid}: {error}")

    # -------------------------------------------------------------- servers --
    def start_wsecho(self, binary: Path, label: str, flags: list[str]) -> Server:
        """Starts wsecho on a port of its choosing, on 127.0.0.1, its log off and
        its greeting off unless FLAGS say otherwise; ready once it printed its URL."""
        return self._start_wsecho([binary], label, flags, subprocess.DEVNULL)

    def start_wsecho_on_socket(self, binary: Path, label: str, flags: list[str], sock: socket.socket) -> Server:
        """start_wsecho, serving on the listening socket SOCK, which the bench keeps open (as
        systemd keeps a socket unit's): handed over as descriptor 3 with LISTEN_FDS=1 and
        LISTEN_PID, so wsecho ignores --host and --port, and closes its clients with 1012 when
        it stops."""
        return self._start_wsecho(["sh", "-c", ACTIVATE, binary], label, flags, sock.fileno())

    def _start_wsecho(self, command: list, label: str, flags: list[str], stdin) -> Server:
        env = dict(os.environ)
        env.setdefault(*DEPLOYED_TUNABLES)
        with open(self.work / "server.err", "wb") as err:
            proc = self.spawn(
                [*command, *wsecho_args(flags)],
                stdout=subprocess.PIPE, stderr=err, stdin=stdin, env=env,
            )
        fd = proc.stdout.fileno()
        # The server prints exactly one line, its URL, once it is listening.
        line = read_line(fd, READY_TIMEOUT_S)
        if line is None:
            server_log_tail(self.work / "server.err")
            raise Fatal(f"wsecho {' '.join(flags)} did not print its URL within 30 s")
        # Keep draining stdout so the server can never block on a full pipe.
        drain = threading.Thread(target=_drain, args=(fd,), daemon=True)
        drain.start()
        if not line.startswith(("ws://", "wss://")):
            raise Fatal(f"wsecho printed '{line}' instead of its URL")
        return Server(proc, line, label, drain)

    def start_command(self, label: str, port: int, argv: list[str]) -> Server | None:
        """Starts a server that listens on a known PORT; ready once a WebSocket
        handshake there succeeds (wsload wait). None, said in one line, if it did
        not come up."""
        url = f"ws://127.0.0.1:{port}"
        with open(self.work / "server.err", "wb") as err:
            proc = self.spawn(argv, stdout=subprocess.DEVNULL, stderr=err,
                              stdin=subprocess.DEVNULL)
        server = Server(proc, url, label)
        wait = self.spawn([self.wsload, "wait", "--url", url, "--timeout", "30s"],
                          stdin=subprocess.DEVNULL)
        wait.wait()
        self.forget(wait)
        if wait.returncode != 0:
            server_log_tail(self.work / "server.err", 5)
            say(f"{label} did not come up on port {port}")
            self.stop(server)
            return None
        return server

    def stop(self, server: Server | None, warn: bool = True, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """Stops SERVER (SIGTERM, then SIGKILL after TIMEOUT_S); a wsecho that does not
        exit cleanly on SIGTERM is a warning in results.md (unless not WARN). Returns its
        exit status."""
        if server is None:
            return 0
        status = self.stop_process(server.proc, timeout_s)
        if server.drain is not None:
            server.drain.join(STOP_TIMEOUT_S)
        if server.proc.stdout is not None:
            server.proc.stdout.close()
        if warn and server.label.startswith("wsecho") and status != 0:
            say(f"warning: {server.label} exited with status {status} on SIGTERM")
            self.warnings.append(f"{server.label} exited with status {status} on SIGTERM. ")
        return status
