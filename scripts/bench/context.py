"""What every group of rows shares: the options, the paths, the server being
measured, the wsload runs, the peers, and the notes that end up in results.md."""

from __future__ import annotations

import os
import re
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .peers import Peers
from .runs import Runs
from .servers import Fatal, Server, Servers, free_port, say
from .trials import MIN_TRIALS

# The groups of rows BENCH_ONLY can choose (in the order --help lists them).
GROUPS = ["echo", "hold", "greeting", "fanout", "wide-fanout", "burst", "never-reader", "resume", "storm", "cluster", "tls",
          "rooms", "wide"]

WARMUP = "1s"
# The reconnect storm's clients come from 127.0.0.1 to 127.0.0.254, at most 64 from each
# (wsecho's --max-handshakes-per-ip): groups/storm.py.
MAX_STORM_CLIENTS = 254 * 64
PORTABLE_LABEL = "wsecho (portable backend)"
TLS_LABEL = "wsecho over TLS"
# WSECHO_BIN_BASELINE's runs: BASELINE-echo-64x32.t1, ... (trials.py: the old binary beside the new).
BASELINE = "base"
BASELINE_LABEL = "wsecho (baseline)"
# The echo rows (connections, message size); BENCH_ECHO_ROWS can choose some.
ECHO_SPECS = [(1, 32), (16, 32), (64, 32), (64, 4096)]


@dataclass
class Options:
    """The command line and the environment variables, checked."""

    args: list[str]
    quick: bool = False
    soak: bool = False
    compare: bool = False
    portable: bool = False
    only: str = ""  # BENCH_ONLY as given
    soak_seconds: int = 600
    wide_clients: int = 20000  # BENCH_WIDE_CLIENTS: the clients of the wide row
    wide_fanout_listeners: int = 5000  # BENCH_WIDE_FANOUT_LISTENERS: the wide fan-out row's
    storm_clients: int = 10000  # BENCH_STORM_CLIENTS: the reconnect storm's clients
    threads: str = "1"
    settle: str = "3s"
    custom: str = ""  # BENCH_SERVER
    wsecho_bin: str = ""
    baseline_bin: str = ""  # WSECHO_BIN_BASELINE: the old wsecho, run interleaved with the new
    trials: int = MIN_TRIALS  # BENCH_TRIALS: interleaved trials of each compared row
    echo_seconds: int = 0  # BENCH_ECHO_SECONDS (0: 10 s, 3 s with --quick)
    echo_specs: list[tuple[int, int]] = field(default_factory=lambda: list(ECHO_SPECS))  # BENCH_ECHO_ROWS
    redis_server: str = "redis-server"
    rehearsal: bool = False  # --rehearsal: the 99,000-client cluster rehearsal alone (rehearsal.py)
    rehearsal_clients: int = 99000  # BENCH_REHEARSAL_CLIENTS
    rehearsal_chat_s: int = 60  # BENCH_REHEARSAL_CHAT_S: each chat phase's length

    @classmethod
    def parse(cls, args: list[str], env=os.environ) -> Options:
        """The options, or Fatal with the one line that says what is wrong."""
        opts = cls(list(args))
        for arg in args:
            if arg not in ("--quick", "--soak", "--compare", "--portable", "--rehearsal"):
                raise Fatal(f"unknown option {arg} (try --help)")
            setattr(opts, arg[2:], True)
        opts.only = env.get("BENCH_ONLY", "")
        for group in opts.only.replace(",", " ").split():
            if group not in GROUPS:
                raise Fatal(f"unknown group '{group}' in BENCH_ONLY (groups: {', '.join(GROUPS)})")
        try:
            opts.soak_seconds = int(env.get("BENCH_SOAK_SECONDS") or 600)
        except ValueError:
            raise Fatal(f"BENCH_SOAK_SECONDS={env['BENCH_SOAK_SECONDS']} is not a number of seconds")
        try:
            opts.wide_clients = int(env.get("BENCH_WIDE_CLIENTS") or 20000)
        except ValueError:
            raise Fatal(f"BENCH_WIDE_CLIENTS={env['BENCH_WIDE_CLIENTS']} is not a number of clients")
        if not 1 <= opts.wide_clients <= 100000:
            raise Fatal(f"BENCH_WIDE_CLIENTS={opts.wide_clients}: give 1 to 100,000 (wsload's most listeners)")
        try:
            opts.wide_fanout_listeners = int(env.get("BENCH_WIDE_FANOUT_LISTENERS") or 5000)
        except ValueError:
            raise Fatal(f"BENCH_WIDE_FANOUT_LISTENERS={env['BENCH_WIDE_FANOUT_LISTENERS']} is not a number of "
                        "listeners")
        if not 1 <= opts.wide_fanout_listeners <= 100000:
            raise Fatal(f"BENCH_WIDE_FANOUT_LISTENERS={opts.wide_fanout_listeners}: give 1 to 100,000 "
                        "(wsload's most listeners)")
        try:
            opts.storm_clients = int(env.get("BENCH_STORM_CLIENTS") or 10000)
        except ValueError:
            raise Fatal(f"BENCH_STORM_CLIENTS={env['BENCH_STORM_CLIENTS']} is not a number of clients")
        if not 1 <= opts.storm_clients <= MAX_STORM_CLIENTS:
            raise Fatal(f"BENCH_STORM_CLIENTS={opts.storm_clients}: give 1 to {MAX_STORM_CLIENTS:,} (64 unfinished "
                        "handshakes from each of 127.0.0.1 to 127.0.0.254, wsecho's cap per address)")
        opts.threads = env.get("BENCH_THREADS") or "1"
        opts.settle = env.get("BENCH_SETTLE") or "3s"
        opts.custom = env.get("BENCH_SERVER", "")
        opts.wsecho_bin = env.get("WSECHO_BIN", "")
        opts.baseline_bin = env.get("WSECHO_BIN_BASELINE", "")
        if opts.baseline_bin and opts.custom:
            raise Fatal("WSECHO_BIN_BASELINE compares two wsecho binaries: leave BENCH_SERVER unset")
        try:
            opts.trials = int(env.get("BENCH_TRIALS") or MIN_TRIALS)
        except ValueError:
            raise Fatal(f"BENCH_TRIALS={env['BENCH_TRIALS']} is not a number of trials")
        if opts.compare and opts.trials < MIN_TRIALS:
            raise Fatal(f"BENCH_TRIALS={opts.trials}: --compare needs at least {MIN_TRIALS} trials a row "
                        "(fewer only without --compare, for a quick look)")
        if not 1 <= opts.trials <= 99:
            raise Fatal(f"BENCH_TRIALS={opts.trials}: give 1 to 99")
        try:
            opts.echo_seconds = int(env.get("BENCH_ECHO_SECONDS") or 0)
        except ValueError:
            raise Fatal(f"BENCH_ECHO_SECONDS={env['BENCH_ECHO_SECONDS']} is not a number of seconds")
        if opts.echo_seconds < 0:
            raise Fatal(f"BENCH_ECHO_SECONDS={opts.echo_seconds}: give a number of seconds, 1 or more")
        if env.get("BENCH_ECHO_ROWS"):
            known = {f"{c}x{s}": (c, s) for c, s in ECHO_SPECS}
            wanted = env["BENCH_ECHO_ROWS"].replace(",", " ").split()
            for row in wanted:
                if row not in known:
                    raise Fatal(f"unknown echo row '{row}' in BENCH_ECHO_ROWS (rows: {', '.join(known)})")
            opts.echo_specs = [spec for name, spec in known.items() if name in wanted]
        opts.redis_server = env.get("REDIS_SERVER") or "redis-server"
        if opts.rehearsal and len(args) > 1:
            raise Fatal("--rehearsal runs alone: it takes the whole machine (leave out the other options)")
        try:
            opts.rehearsal_clients = int(env.get("BENCH_REHEARSAL_CLIENTS") or 99000)
            opts.rehearsal_chat_s = int(env.get("BENCH_REHEARSAL_CHAT_S") or 60)
        except ValueError:
            raise Fatal("BENCH_REHEARSAL_CLIENTS and BENCH_REHEARSAL_CHAT_S are whole numbers")
        if not (600 <= opts.rehearsal_clients <= 99000 and opts.rehearsal_clients % 600 == 0):
            raise Fatal(f"BENCH_REHEARSAL_CLIENTS={opts.rehearsal_clients}: give a multiple of 600 (six "
                        "instances, rooms of 100) up to 99,000")
        if not 15 <= opts.rehearsal_chat_s <= 600:
            raise Fatal(f"BENCH_REHEARSAL_CHAT_S={opts.rehearsal_chat_s}: give 15 to 600 seconds")
        return opts

    @property
    def interleaved(self) -> bool:
        """Whether the compared rows run as interleaved trials: with --compare,
        or against a baseline binary."""
        return self.compare or bool(self.baseline_bin)

    def budget_s(self) -> int:
        """The bound on the whole run (scripts/bench.sh runs it under timeout(1)).
        Each wsload run is bounded by itself; this catches anything else (a build
        that hangs, say)."""
        if self.rehearsal:
            # Its phases (two chats among them) and up to 10 minutes of opening on a busy machine.
            return 30 * 60 + 2 * self.rehearsal_chat_s
        # Trials multiply the compared rows: --compare's (30 min once) and the
        # baseline's echo and fan-out rows (5 min once).
        return (40 * 60 + self.compare * 30 * 60 * self.trials + bool(self.baseline_bin) * 5 * 60 * self.trials
                + self.portable * 15 * 60 + self.soak * (self.soak_seconds + 5 * 60))


def raise_fd_limit() -> str:
    """Raises the open-file limit as far as it goes; returns it as ulimit shows it.

    wsecho needs one descriptor per client (its socket), so 10,000 clients need
    a little over 10,000, and wsload as many again in its own process. Raising
    the hard limit needs root (and a container that lets root do it); take
    whatever we can get."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 1048576), 1048576))
    except (ValueError, OSError):
        pass
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        pass
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return "unlimited" if soft == resource.RLIM_INFINITY else str(soft)


@dataclass
class Bench:
    """One benchmark run."""

    opts: Options
    root: Path
    work: Path  # the run's temporary folder, removed on exit
    servers: Servers
    runs: Runs
    peers: Peers
    wsecho: Path
    main_label: str = "wsecho"  # or "custom (NAME)" with BENCH_SERVER
    server: Server | None = None  # the one running now
    fd_limit: str = ""
    portable_bin: Path | None = None
    portable_note: str = ""
    tls_note: str = ""
    tls_opts: list[str] = field(default_factory=list)  # wsload's --ca and --server-name
    cluster_note: str = ""
    wide_note: str = ""  # the wide row's vm.max_map_count, or why it did not run (groups/wide.py)
    storm_note: str = ""  # why the storm rows did not run (groups/storm.py)
    fanclient_note: str = ""  # why the fan-out rows have no second client (main.build_fanclient)
    soak: Any = None  # the soak's figures (groups/soak.py)
    chart_note: str = ""
    start_load: str = ""  # the load average when the measuring began
    started_at: str = ""  # and the time, for people
    started: float = field(default_factory=time.monotonic)  # for "took" and the soak's length

    @property
    def out(self) -> Path:
        return self.root / "target" / "bench"

    @property
    def custom(self) -> str:
        return self.opts.custom

    @property
    def echo_seconds(self) -> int:
        return self.opts.echo_seconds or (3 if self.opts.quick else 10)

    @property
    def settle_text(self) -> str:
        """The settle time for people: 3s -> 3 s."""
        m = re.fullmatch(r"([0-9.]+)s", self.opts.settle)
        return f"{m.group(1)} s" if m else self.opts.settle

    @property
    def cmp_hold_sizes(self) -> list[int]:
        """The peers' hold rows; wsecho's of these sizes get the "after" figures too."""
        return [1000] if self.opts.quick else [1000, 5000]

    @property
    def hold_sizes(self) -> list[int]:
        """wsecho's hold rows (5,000 too when compared with the peers)."""
        return [1000, 5000, 10000] if self.opts.compare and not self.opts.quick else [1000, 10000]

    def elapsed_s(self) -> int:
        """Whole seconds since the measuring began."""
        return int(time.monotonic() - self.started)

    def want(self, group: str) -> bool:
        """True if BENCH_ONLY is unset or names GROUP."""
        return not self.opts.only or group in self.opts.only.split(",")

    def run(self, name: str, *args, quiet: bool = False) -> None:
        self.runs.run(name, *args, quiet=quiet)

    # ------------------------------------------------------------ servers --
    def start_wsecho(self, *flags: str, binary: Path | None = None, label: str = "wsecho") -> Server:
        """wsecho (or BINARY) with default flags plus FLAGS; it becomes `server`."""
        self.server = self.servers.start_wsecho(binary or self.wsecho, label, list(flags))
        return self.server

    def start_default(self) -> Server:
        """wsecho with default flags, or BENCH_SERVER when given."""
        if self.custom:
            self.server = self.start_custom()
        else:
            self.start_wsecho()
        self.main_label = self.server.label
        return self.server

    def start_custom(self) -> Server:
        """BENCH_SERVER with {addr} replaced by 127.0.0.1:PORT."""
        port = free_port()
        words = [w.replace("{addr}", f"127.0.0.1:{port}") for w in self.custom.split()]
        server = self.servers.start_command(f"custom ({os.path.basename(words[0])})", port, words)
        if server is None:
            raise Fatal("BENCH_SERVER did not come up")
        return server

    def start_peer(self, name: str) -> Server | None:
        self.server = self.peers.start(self.servers, name)
        return self.server

    def stop(self) -> None:
        """Stops the server started last."""
        self.servers.stop(self.server)
        self.server = None

    # ------------------------------------------------------------- trials --
    def contenders(self, start_main: Callable[[], Server], peers: list[str], *flags: str,
                   baseline: bool = True) -> list[tuple[str, Callable[[], Server | None]]]:
        """The servers of an interleaved comparison (run-name prefix, how to start
        it), in their order within a round: wsecho (START_MAIN), the baseline
        binary with FLAGS (WSECHO_BIN_BASELINE; unless not BASELINE, for the
        groups without a baseline table), then each ready peer of PEERS
        (--compare)."""
        out: list[tuple[str, Callable[[], Server | None]]] = [("main", start_main)]
        if self.opts.baseline_bin and baseline:
            out.append((BASELINE, lambda: self.start_wsecho(*flags, binary=Path(self.opts.baseline_bin),
                                                            label=BASELINE_LABEL)))
        if self.opts.compare:
            out += [(peer, lambda peer=peer: self.start_peer(peer)) for peer in peers if peer in self.peers.ready]
        return out

    def interleave(self, contenders: list[tuple[str, Callable[[], Server | None]]], suffixes: list[str],
                   run: Callable[[str, str, Server], None], median_of: Callable[[str], tuple[str, bool]],
                   fresh: bool = False, by_round: bool = False) -> None:
        """Each row (run-name SUFFIX) as `opts.trials` interleaved trials: round k
        runs trial k of every contender in turn, as RUN(NAME.tK, SUFFIX, server),
        so that the trials compared pair by pair (trials.py) ran within a
        round of each other. The servers are started once, before the rounds,
        and serve every row (as one server serves all its rows without
        trials); the contenders' idle servers wait meanwhile. With FRESH,
        each trial has a server of its own instead, started for it and
        stopped after it (the rows that measure a server's memory). BY_ROUND
        (with FRESH) runs every row's trial k in round k, rather than each
        row's trials in turn: for rows that are one measurement by two
        clients, which are then compared trial by trial too. Then each
        contender's PREFIX-SUFFIX becomes a copy of its median trial by the
        figure MEDIAN_OF(SUFFIX) names (key, higher is better), for the rows
        that show one run's figures."""
        if fresh:
            ran = set()
            rounds = range(1, self.opts.trials + 1)
            order = ([(suffix, k) for k in rounds for suffix in suffixes] if by_round
                     else [(suffix, k) for suffix in suffixes for k in rounds])
            for suffix, k in order:
                for prefix, start in contenders:
                    server = start()
                    if server is not None:
                        run(f"{prefix}-{suffix}.t{k}", suffix, server)
                        ran.add(prefix)
                    self.stop()
            started_prefixes = [prefix for prefix, _ in contenders if prefix in ran]
        else:
            started_prefixes = [prefix for prefix, _ in self._interleave_started(contenders, suffixes, run)]
        for suffix in suffixes:
            key, higher = median_of(suffix)
            for prefix in started_prefixes:
                self.runs.keep_median(f"{prefix}-{suffix}", key, higher)

    def _interleave_started(self, contenders: list[tuple[str, Callable[[], Server | None]]], suffixes: list[str],
                            run: Callable[[str, str, Server], None]) -> list[tuple[str, Server]]:
        """`interleave` with the servers started once, before the rounds; returns them (stopped)."""
        started: list[tuple[str, Server]] = []
        try:
            for prefix, start in contenders:
                server = start()
                if server is not None:
                    started.append((prefix, server))
                self.server = None  # each is stopped below, not by stop()
            for suffix in suffixes:
                for k in range(1, self.opts.trials + 1):
                    for prefix, server in started:
                        run(f"{prefix}-{suffix}.t{k}", suffix, server)
        finally:
            for _, server in reversed(started):
                self.servers.stop(server)
        return started


def check_binaries(bench_root: Path, opts: Options) -> tuple[Path, Path]:
    """wsload and wsecho as scripts/bench.sh built them (or WSECHO_BIN)."""
    target = bench_root / os.environ.get("CARGO_TARGET_DIR", "target")
    wsload = target / "release" / "wsload"
    wsecho = Path(opts.wsecho_bin) if opts.wsecho_bin else target / "release" / "wsecho"
    if not os.access(wsload, os.X_OK):
        raise Fatal(f"{wsload} was not built")
    if opts.baseline_bin and not os.access(opts.baseline_bin, os.X_OK):
        raise Fatal(f"WSECHO_BIN_BASELINE={opts.baseline_bin} is not an executable wsecho")
    if not opts.custom and not os.access(wsecho, os.X_OK):
        raise Fatal(f"{wsecho} not found (set WSECHO_BIN or BENCH_SERVER)")
    return wsload, wsecho


def report_fd_limit() -> str:
    limit = raise_fd_limit()
    say(f"open-file limit for the servers and wsload: {limit}")
    if limit != "unlimited" and int(limit) < 10100:
        say("warning: below the ~10,100 descriptors wsecho needs for 10,000 clients; the 10,000 rows may fall short")
    return limit
