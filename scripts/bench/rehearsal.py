"""scripts/bench.sh --rehearsal: 99,000 clients on a cluster of six wsecho
instances and one redis-server, all on this machine, through six phases.

The cluster: redis-server, and six `wsecho --broadcast --history 100 --redis`
instances, without pings (opening 99,000 connections outlasts the 20 s ping
interval, and the pings' wake-ups would land in the idle figures, as the wide
rows say) and without the cap on unfinished handshakes per address (every
client comes from 127.0.0.1, where a deployment's clients come from many).

The clients: `wsload chat` processes (wsload/README.md), 16,500 clients each,
as one process may hold 20,000 descriptors. Client G is in room G / 100 (990
rooms) and on instance G mod 6, so every room spans every instance and each
instance holds 16,500; each process holds whole rooms, whose one sender and
99 listeners it times with one clock. Every client joins with ?resume. The
driver steps the processes through the phases by writing one command to each
one's standard input, and reads one JSON line back from each:

  open      every client connects: connections/s, failures
  idle      RSS of the instances and Redis, and the kernel's memory, per
            client (grown since before the clients, medians of samples, as
            the hold and wide rows measure them); CPU time over 10 s idle
  send      one message in one room (its members are on every instance),
            then one in each of the 990 rooms: delivered, missing,
            duplicates, the time until the last listener has it
  chat      every room at 1 message/s for 60 s: latency p50 / p99 / worst
  lost      the same chat, and 10 s into it one instance is killed
            (SIGKILL): its 16,500 clients come back on the other five
            with ?resume=EPOCH:OFFSET; how long until all are back, the
            messages they missed, recovered and lost, and the latency the
            others saw meanwhile
  Redis     its memory, commands/s in each phase (INFO stats), and its
            largest client output buffer (CLIENT LIST omem, sampled every
            0.5 s)

Each phase also says where the CPU went (cores busy: the instances, wsload,
Redis, the rest of the machine, idle): the bottleneck it hit.

The machine's settings: sysctls.py raises what binds (on a default Linux
kernel.pid_max, vm.max_map_count, the local port range, which every client's
connect() from 127.0.0.1 searches, and loopback's packet queue) and puts every
one back at the end, on an error or Ctrl-C too. The run refuses, saying why, when it cannot be done:
not Linux, a setting short and not root, too little memory, an open-file
limit below what an instance holds once it has taken its share of a lost
one's clients.

BENCH_REHEARSAL_CLIENTS (a multiple of 100) makes it smaller, for a try-out.
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import probes
from .groups.cluster import healthz_says, redis_ping, wait_until
from .report import fmt_int, fmt_kib, fmt_us
from .servers import Fatal, Server, Servers, free_port, read_line, say
from .sysctls import Figure, Need, raised

INSTANCES = 6
ROOM_SIZE = 100
REDIS_TRIES = 3  # redis-server started on another port when the one chosen was taken meanwhile
HISTORY = 100  # each room's history: more than a client misses while it comes back at 1 message/s
CHAT_S = 60  # each chat phase (BENCH_REHEARSAL_CHAT_S for a try-out)
KILL_AFTER_S = 10  # into the second chat, one instance is killed
KILLED = 1  # which one (its clients are 1/6 of every room)
JITTER = "1s"  # a moved client's first pause, drawn between 0 and this
IDLE_S = 10  # the idle window, as the hold rows'
SETTLE_S = 3  # after opening, before the idle figures (BENCH_SETTLE's default)
CONNECT_TIMEOUT = "5m"  # opening 99,000 connections, a thread each, on 2 busy cores
# Each phase's answer, at most this long after its own length: wsload's phases bound
# themselves (60 s of grace after the sending), this catches a process that does not.
ANSWER_MARGIN_S = 180
NO_PINGS = ("--ping-interval", "off", "--idle-timeout", "off")
# The single instance's 20,000-client row (docs/performance.md, "20,000 clients": 19,900
# clients at commit 26afb1f, RSS + kernel per idle connection) and how close to it each
# client of the cluster must stay.
REFERENCE_KIB = 41.29
WITHIN = 0.10

# What the run needs of the machine, per client or in all (see `needs`).
MAPS_PER_CLIENT = 4  # a connection thread's stack and its signal stack, each with a guard page
MAPS_MARGIN = 1000  # the process's own maps: binary, libraries, heap arenas
DEPLOYED_MAX_MAP_COUNT = 262144  # docs/deploying.md's value
SERVICE_THREADS = 16  # an instance's threads made at start, followed apart in each phase
THREADS_PER_INSTANCE = 16  # accept, greeter, signals, Redis's two, the thread maker and its spares
TASK_MARGIN = 10_000  # the rest of the machine's threads may grow meanwhile (builds)
WSECHO_LISTEN_BACKLOG = 4096  # src/server.rs LISTEN_BACKLOG, which net.core.somaxconn caps
PORTS_PER_CLIENT = 2  # see the local port range's Need in check_machine
WIDE_PORT_RANGE = "1024 65535"  # every port above the privileged ones
FD_MARGIN = 100  # an instance's own descriptors beside its clients': listener, Redis, logs
# Memory the run may take at most, per client: the 20,000 row's 41 KiB (the thread's kernel
# stack and both ends of the socket included), wsload's state, Redis's share, with room.
MEMORY_PER_CLIENT_KIB = 64
MEMORY_MARGIN_KIB = 1 << 20


@dataclass
class Phase:
    """One phase's answers (one JSON object per wsload process), its CPU, its Redis."""

    name: str
    answers: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    cores: dict[str, float] = field(default_factory=dict)
    busiest: dict[str, float] = field(default_factory=dict)  # thread name -> cores, the busiest instance's
    commands_per_s: float = 0.0
    overflows: int = 0
    drops: int = 0  # packets loopback's queue dropped (/proc/net/softnet_stat)
    retransmits: int = 0  # TCP segments sent again (/proc/net/snmp)

    def total(self, key: str) -> float:
        return sum(a.get(key) or 0 for a in self.answers)

    def most(self, key: str) -> float:
        return max((a.get(key) or 0 for a in self.answers), default=0)

    def middle(self, key: str) -> float:
        values = sorted(a.get(key) or 0 for a in self.answers)
        return values[len(values) // 2] if values else 0


@dataclass
class Rehearsal:
    clients: int
    chat_s: int
    servers: Servers
    wsecho: Path
    wsload: Path
    work: Path
    out: Path
    redis_server: str
    needs: list[Need] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    redis_port: int = 0
    redis_proc: subprocess.Popen | None = None
    instances: list[Server] = field(default_factory=list)
    loads: list[subprocess.Popen] = field(default_factory=list)
    phases: dict[str, Phase] = field(default_factory=dict)
    memory: dict[str, float] = field(default_factory=dict)
    redis_figures: dict[str, str] = field(default_factory=dict)
    watch: probes.Watch | None = None
    service_threads: dict[tuple[int, int], str] = field(default_factory=dict)
    started_at: str = ""
    took_s: float = 0.0

    # ------------------------------------------------------------ plan --
    @property
    def per_instance(self) -> int:
        return math.ceil(self.clients / INSTANCES)

    @property
    def per_instance_after_loss(self) -> int:
        """An instance's clients once it has its share of a lost one's."""
        return self.per_instance + math.ceil(self.per_instance / (INSTANCES - 1))

    def processes(self, fd_limit: int) -> list[tuple[int, int]]:
        """(first client, clients) of each wsload process: whole rooms, as evenly as
        they go, at least one process per instance, none over the open-file limit."""
        rooms = self.clients // ROOM_SIZE
        count = max(INSTANCES, math.ceil(self.clients / max(fd_limit - FD_MARGIN, ROOM_SIZE)))
        count = min(count, rooms)
        out, first = [], 0
        for p in range(count):
            mine = (rooms // count + (p < rooms % count)) * ROOM_SIZE
            out.append((first, mine))
            first += mine
        return out

    # ------------------------------------------------------- the machine --
    def check_machine(self, fd_limit: int) -> None:
        """The limits the run cannot raise, and the settings it may (`needs`); Fatal,
        with why, when it cannot run."""
        if not Path("/proc/meminfo").exists():
            raise Fatal("not run: the rehearsal needs Linux (/proc)")
        wanted_fds = self.per_instance_after_loss + FD_MARGIN
        self.figures.append(Figure("open files (RLIMIT_NOFILE), per process", f"{fd_limit:,}",
                                   f"≥ {wanted_fds:,} (an instance's clients after a loss, and its own)",
                                   fd_limit < wanted_fds))
        available = probes.meminfo()["MemAvailable"]
        wanted_kib = self.clients * MEMORY_PER_CLIENT_KIB + MEMORY_MARGIN_KIB
        self.figures.append(Figure("memory available (MemAvailable)", f"{available / 1048576:.1f} GiB",
                                   f"≥ {wanted_kib / 1048576:.1f} GiB ({MEMORY_PER_CLIENT_KIB} KiB a client + 1 GiB)",
                                   available < wanted_kib))
        tasks_needed = probes.tasks() + self.clients + INSTANCES * THREADS_PER_INSTANCE + TASK_MARGIN
        if resource.getrlimit(resource.RLIMIT_NPROC)[0] != resource.RLIM_INFINITY and os.geteuid() != 0:
            nproc = resource.getrlimit(resource.RLIMIT_NPROC)[0]
            self.figures.append(Figure("processes per user (RLIMIT_NPROC)", f"{nproc:,}",
                                       f"≥ {tasks_needed:,}", nproc < tasks_needed))
        with open("/proc/sys/fs/file-max") as f:
            file_max = int(f.read())
        self.figures.append(Figure("fs.file-max", f"{file_max:,}", f"≥ {2 * self.clients + 10_000:,} (both ends)",
                                   file_max < 2 * self.clients + 10_000))
        short = [f for f in self.figures if f.binds]
        if short:
            raise Fatal("not run: " + "; ".join(f"{f.name} is {f.value}, and the rehearsal needs {f.needed}"
                                                  for f in short))
        self.needs = [
            Need("kernel.pid_max", tasks_needed, "a thread per client, and the machine's own",
                 raise_to=1 << math.ceil(math.log2(tasks_needed))),
            Need("kernel.threads-max", tasks_needed, "the same threads"),
            Need("vm.max_map_count", MAPS_PER_CLIENT * self.per_instance_after_loss + MAPS_MARGIN,
                 "4 maps a thread, in the fullest instance", raise_to=DEPLOYED_MAX_MAP_COUNT),
            Need("net.core.somaxconn", WSECHO_LISTEN_BACKLOG, "wsecho's listen backlog, which it caps"),
            # Every client connects from 127.0.0.1 to one of six ports: connect() looks for a
            # local port whose pair with that destination is free, even ports first, and
            # checks each one it passes. With fewer even ports than an instance's clients,
            # every reconnection to it scans them all: at 28,232 ports, the lost instance's
            # clients took wsload's loop minutes of kernel time (perf: connect() in
            # __inet_check_established), their handshakes timed out, and few came back.
            Need("net.ipv4.ip_local_port_range", PORTS_PER_CLIENT * self.per_instance_after_loss,
                 "ports, twice an instance's clients after a loss: connect() tries even ports first",
                 raise_to=WIDE_PORT_RANGE),
            # A killed instance's sockets all end at once, and its clients' FINs, then their
            # comebacks, go through loopback's queue of packets per core.
            Need("net.core.netdev_max_backlog", self.per_instance,
                 "packets waiting on loopback, a lost instance's clients at once",
                 raise_to=1 << math.ceil(math.log2(self.per_instance))),
        ]

    # ------------------------------------------------------------ cluster --
    def start_cluster(self) -> None:
        if not shutil.which(self.redis_server):
            raise Fatal(f"not run: no {self.redis_server} (scripts/install-redis.sh installs one)")
        # A port found free can be taken before redis-server binds it (the machine is shared):
        # a redis-server that exits at once is started again on another.
        for _ in range(REDIS_TRIES):
            self.redis_port = free_port()
            self.redis_proc = self.servers.spawn(
                [self.redis_server, "--bind", "127.0.0.1", "--port", self.redis_port, "--save", "", "--appendonly",
                 "no", "--dir", self.work, "--logfile", self.work / "redis.log", "--daemonize", "no"],
                stdin=subprocess.DEVNULL)
            if wait_until(lambda: redis_ping(self.redis_port) or self.redis_proc.poll() is not None) and \
                    self.redis_proc.poll() is None:
                break
            self.servers.stop_process(self.redis_proc)
        else:
            log = (self.work / "redis.log").read_text(errors="replace").strip().splitlines()
            raise Fatal(f"redis-server did not answer PING (on port {self.redis_port} last): "
                        f"{log[-1] if log else 'no log'}")
        flags = ["--broadcast", "--history", str(HISTORY), "--redis", f"redis://127.0.0.1:{self.redis_port}/0",
                 "--max-handshakes-per-ip", "off", *NO_PINGS]
        for _ in range(INSTANCES):
            self.instances.append(self.servers.start_wsecho(self.wsecho, "wsecho", flags))
        for instance in self.instances:
            if not wait_until(lambda instance=instance: healthz_says(instance.url, '"redis":"up"')):
                raise Fatal(f"wsecho at {instance.url} did not join Redis")
        # The threads each instance made at start (the lowest ids, before any connection's):
        # main and accept, the thread maker, the signal threads, Redis's publisher and
        # subscriber, the spare connection threads; each phase says how busy the busiest was.
        for instance in self.instances:
            self.service_threads.update(probes.first_threads(instance.pid, SERVICE_THREADS))
        say(f"rehearsal: redis-server on port {self.redis_port}, {INSTANCES} instances: "
            + " ".join(i.url for i in self.instances))

    def start_loads(self, fd_limit: int) -> None:
        urls = [arg for instance in self.instances for arg in ("--url", instance.url)]
        for p, (first, count) in enumerate(self.processes(fd_limit)):
            with open(self.out / f"rehearsal-wsload-{p}.err", "wb") as err:
                self.loads.append(self.servers.spawn(
                    [self.wsload, "chat", *urls, "--clients", count, "--first-client", first, "--room-size",
                     ROOM_SIZE, "--jitter", JITTER, "--connect-timeout", CONNECT_TIMEOUT],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err))

    def pids(self) -> dict[str, list[int]]:
        return {"wsecho": [i.pid for i in self.instances], "wsload": [p.pid for p in self.loads],
                "redis": [self.redis_proc.pid] if self.redis_proc else []}

    # ------------------------------------------------------------- phases --
    def ask(self, loads: list[subprocess.Popen], command: str) -> None:
        for load in loads:
            load.stdin.write(f"{command}\n".encode())
            load.stdin.flush()

    def answers(self, loads: list[subprocess.Popen], within_s: float) -> list[dict]:
        out = []
        deadline = time.monotonic() + within_s
        for p, load in enumerate(loads):
            line = read_line(load.stdout.fileno(), max(deadline - time.monotonic(), 1))
            if line is None:
                tail = (self.out / f"rehearsal-wsload-{self.loads.index(load)}.err").read_text(errors="replace")
                raise Fatal(f"wsload chat #{p} gave no answer within {within_s:.0f} s: {tail.strip()[-300:]}")
            out.append(json.loads(line))
        return out

    def phase(self, name: str, command: str, loads: list[subprocess.Popen] | None = None,
              length_s: float = 0, during=None) -> Phase:
        """Runs COMMAND on LOADS (all by default), DURING (if given) meanwhile, and keeps the
        answers, the time, the CPU and Redis's commands/s."""
        loads = loads or self.loads
        say(f"rehearsal: {name} ({command})")
        if self.watch:
            self.watch.phase = name
        phase = Phase(name)
        commands_before = int(probes.redis_info(self.redis_port, "stats")["total_commands_processed"])
        overflows_before = probes.listen_overflows()
        drops_before, retransmits_before = probes.backlog_drops(), probes.retransmits()
        cpu_before = probes.Cpu.take(self.pids(), names=self.service_threads)
        began = time.monotonic()
        self.ask(loads, command)
        cpu_last = during(cpu_before) if during else None
        phase.answers = self.answers(loads, length_s + ANSWER_MARGIN_S)
        phase.seconds = time.monotonic() - began
        cpu_after = probes.Cpu.take(self.pids(), cpu_last or cpu_before, names=self.service_threads)
        phase.cores = cpu_after.cores_since(cpu_before)
        phase.busiest = cpu_after.busiest_since(cpu_before)
        commands = int(probes.redis_info(self.redis_port, "stats")["total_commands_processed"]) - commands_before
        phase.commands_per_s = commands / max(phase.seconds, 1e-9)
        phase.overflows = probes.listen_overflows() - overflows_before
        phase.drops = probes.backlog_drops() - drops_before
        phase.retransmits = probes.retransmits() - retransmits_before
        self.phases[name] = phase
        (self.out / "raw").mkdir(parents=True, exist_ok=True)
        (self.out / "raw" / f"rehearsal-{name}.json").write_text(json.dumps(phase.__dict__, indent=1))
        return phase

    def idle(self, rss_before: float, kernel_before: float, redis_before: float) -> None:
        """The idle figures, once the clients are open and settled."""
        say(f"rehearsal: idle ({IDLE_S} s)")
        if self.watch:
            self.watch.phase = "idle"
        time.sleep(SETTLE_S)
        instances = [i.pid for i in self.instances]
        rss_after = probes.median_of(lambda: sum(probes.rss_kib(p) or 0 for p in instances))
        kernel_after = probes.median_of(probes.kernel_kib)
        redis_after = probes.median_of(lambda: probes.rss_kib(self.redis_proc.pid) or 0)
        opened = self.phases["open"].total("opened")
        per = max(opened, 1)
        self.memory = {
            "rss_per_client_kib": (rss_after - rss_before) / per,
            "kernel_per_client_kib": (kernel_after - kernel_before) / per,
            "redis_per_client_kib": (redis_after - redis_before) / per,
            "threads": sum(probes.threads(p) for p in instances),
        }
        self.memory["total_per_client_kib"] = self.memory["rss_per_client_kib"] + self.memory["kernel_per_client_kib"]
        before = probes.Cpu.take(self.pids(), names=self.service_threads)
        time.sleep(IDLE_S)
        after = probes.Cpu.take(self.pids(), names=self.service_threads)
        self.memory["idle_cpu_wsecho_s"] = after.groups["wsecho"] - before.groups["wsecho"]
        self.memory["idle_cpu_redis_s"] = after.groups["redis"] - before.groups["redis"]
        phase = Phase("idle", seconds=after.at - before.at, cores=after.cores_since(before),
                      busiest=after.busiest_since(before))
        self.phases["idle"] = phase

    def kill_one(self, cpu_before: probes.Cpu) -> probes.Cpu:
        """Ten seconds into the chat: SIGKILL one instance; returns the CPU figures taken
        just before (its own CPU time is gone with it)."""
        time.sleep(KILL_AFTER_S)
        last = probes.Cpu.take(self.pids(), cpu_before, names=self.service_threads)
        victim = self.instances[KILLED]
        say(f"rehearsal: SIGKILL to the instance at {victim.url} (pid {victim.pid})")
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait()
        return last

    def run(self, fd_limit: int) -> None:
        self.started_at = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        began = time.monotonic()
        self.start_cluster()
        self.watch = probes.Watch(self.redis_port)
        self.watch.start()
        instances = [i.pid for i in self.instances]
        rss_before = probes.median_of(lambda: sum(probes.rss_kib(p) or 0 for p in instances))
        kernel_before = probes.median_of(probes.kernel_kib)
        redis_before = probes.median_of(lambda: probes.rss_kib(self.redis_proc.pid) or 0)
        self.start_loads(fd_limit)
        self.phase("open", "open", length_s=600)
        self.idle(rss_before, kernel_before, redis_before)
        self.phase("send-one", "send first", loads=self.loads[:1])
        self.phase("send-each", "send all")
        self.phase("chat", f"chat {self.chat_s}", length_s=self.chat_s)
        self.phase("lost", f"chat {self.chat_s}", length_s=self.chat_s, during=self.kill_one)
        info = probes.redis_info(self.redis_port, "memory")
        clients = probes.redis_info(self.redis_port, "clients")
        self.redis_figures = {
            "used_memory": info.get("used_memory_human", "?"),
            "used_memory_peak": info.get("used_memory_peak_human", "?"),
            "rss": info.get("used_memory_rss_human", "?"),
            "keys": probes.redis(self.redis_port, "DBSIZE"),
            "recent_max_output_buffer": clients.get("client_recent_max_output_buffer", "?"),
        }
        self.watch.stop()
        self.ask(self.loads, "quit")
        for load in self.loads:
            try:
                load.wait(30)
            except subprocess.TimeoutExpired:
                say(f"wsload pid {load.pid} did not quit; stopping it")
            self.servers.stop_process(load)
        self.took_s = time.monotonic() - began

    # -------------------------------------------------------------- table --
    def tcp_mem_row(self) -> list[str]:
        """net.ipv4.tcp_mem, which the run does not raise: its first value, the page count at
        which the kernel starts to squeeze TCP buffers, against the peak the run reached."""
        if not self.watch:
            return []
        low = int(Path("/proc/sys/net/ipv4/tcp_mem").read_text().split()[0])
        verdict = "enough" if self.watch.tcp_pages < low else "**reached: TCP memory under pressure**"
        return [(f"| net.ipv4.tcp_mem (pressure threshold, pages) | {low:,} | above the run's peak, "
                f"{self.watch.tcp_pages:,} pages (/proc/net/sockstat, every 0.5 s) | {verdict} |")]

    def table(self, commit: str) -> str:
        rows: list[tuple[str, str, str, str]] = []
        n = self.clients

        def add(phase: str, figure: str, measured: str, target: str = "") -> None:
            rows.append((phase, figure, measured, target))

        def cores(p: Phase) -> str:
            if p.seconds < 1:
                return f"not measured: {p.seconds * 1000:.0f} ms is too short for /proc's 10 ms CPU ticks"
            c = p.cores
            text = (f"{c.get('machine', 0):.2f} of 2 busy: wsecho {c.get('wsecho', 0):.2f}, wsload "
                    f"{c.get('wsload', 0):.2f}, Redis {c.get('redis', 0):.2f}, interrupts "
                    f"{c.get('interrupts', 0):.2f}, rest of the machine {c.get('rest', 0):.2f}")
            busy = sorted(((v, k) for k, v in p.busiest.items() if v >= 0.01), reverse=True)[:3]
            if busy:
                text += "; busiest threads of one instance: " + ", ".join(f"{k} {v:.2f}" for v, k in busy)
            return text

        def redis_rate(p: Phase) -> str:
            return f"Redis {fmt_int(p.commands_per_s)} commands/s"

        o = self.phases.get("open")
        if o:
            add("open", "clients opened / failed", f"{fmt_int(o.total('opened'))} / {fmt_int(o.total('open_failed'))} "
                f"of {fmt_int(n)}", "all / 0")
            add("open", "connections/s (all processes, start to last open)",
                f"{fmt_int(o.total('opened') / max(o.most('seconds'), 1e-9))} ({o.most('seconds'):.1f} s)")
            add("open", "CPU, cores", cores(o), redis_rate(o))
            add("open", "listen-queue overflows / packets dropped on loopback / TCP retransmissions (machine-wide)",
                f"{fmt_int(o.overflows)} / {fmt_int(o.drops)} / {fmt_int(o.retransmits)}")
        m = self.memory
        if m:
            goal = REFERENCE_KIB * (1 + WITHIN)
            total = m["total_per_client_kib"]
            add("idle", "RSS + kernel per client (instances)",
                f"{fmt_kib(total)} (RSS {fmt_kib(m['rss_per_client_kib'])} + kernel "
                f"{fmt_kib(m['kernel_per_client_kib'])})",
                f"≤ {goal:.2f} KiB (20,000 row {REFERENCE_KIB} KiB + 10 %): " + ("met" if total <= goal else "**not met**"))
            add("idle", "Redis RSS per client", fmt_kib(m["redis_per_client_kib"]))
            add("idle", f"CPU over {IDLE_S} s idle", f"instances {m['idle_cpu_wsecho_s']:.2f} s, Redis "
                f"{m['idle_cpu_redis_s']:.2f} s; threads in the instances {fmt_int(m['threads'])}")
            add("idle", "CPU, cores", cores(self.phases["idle"]))
        for name, what in (("send-one", "one broadcast in one room (members on every instance)"),
                           ("send-each", "one message to each room")):
            p = self.phases.get(name)
            if not p:
                continue
            add(what, "delivered / missing / duplicates",
                f"{fmt_int(p.total('delivered'))} / {fmt_int(p.total('missing'))} / {fmt_int(p.total('duplicates'))} "
                f"(of {fmt_int(p.total('expected'))})", "all / 0 / 0")
            add(what, "time until the last listener has it", fmt_us(p.most("last_delivery_us")))
            add(what, "CPU, cores", cores(p), redis_rate(p))
        c = self.phases.get("chat")
        if c:
            add("steady chat", f"messages sent / delivered / missing / duplicates ({self.chat_s} s, 1/s a room)",
                f"{fmt_int(c.total('sent'))} / {fmt_int(c.total('delivered'))} / {fmt_int(c.total('missing'))} / "
                f"{fmt_int(c.total('duplicates'))}", "all / 0 / 0")
            add("steady chat", "latency p50 / p99 / worst",
                f"{fmt_us(c.middle('p50_us'))} / {fmt_us(c.most('p99_us'))} / {fmt_us(c.most('max_us'))}",
                "p50: the median process's; p99: the worst process's")
            add("steady chat", "CPU, cores", cores(c), redis_rate(c))
            add("steady chat", "packets dropped on loopback / TCP retransmissions (machine-wide)",
                f"{fmt_int(c.drops)} / {fmt_int(c.retransmits)}")
        lost = self.phases.get("lost")
        if lost:
            moved, back = lost.total("moved"), lost.total("back")
            add("instance lost", "clients moved / back", f"{fmt_int(moved)} / {fmt_int(back)}", "all back")
            all_back = [a.get("all_back_s") for a in lost.answers if a.get("moved")]
            took = "not all back" if any(v is None for v in all_back) else f"{max(all_back, default=0):.2f} s"
            add("instance lost", "time from the first close to the last client back", took)
            add("instance lost", "attempts refused / 503 / other",
                f"{fmt_int(lost.total('failed_refused'))} / {fmt_int(lost.total('failed_503'))} / "
                f"{fmt_int(lost.total('failed_other'))}")
            add("instance lost", "resumes recovered / not", f"{fmt_int(lost.total('headers_recovered'))} / "
                f"{fmt_int(lost.total('headers_not_recovered'))}")
            add("instance lost", "messages missed / recovered / lost",
                f"{fmt_int(lost.total('missed'))} / {fmt_int(lost.total('recovered'))} / "
                f"{fmt_int(lost.total('lost'))}", "lost 0: " + ("met" if lost.total("lost") == 0 and moved == back
                                                                else "**not met**"))
            add("instance lost", "sent into the lost instance, never delivered to anyone",
                fmt_int(lost.total("never_entered")))
            add("instance lost", "all deliveries: missing / duplicates",
                f"{fmt_int(lost.total('missing'))} / {fmt_int(lost.total('duplicates'))}")
            add("instance lost", "latency the other clients saw, p50 / p99 / worst",
                f"{fmt_us(lost.middle('stayed_p50_us'))} / {fmt_us(lost.most('stayed_p99_us'))} / "
                f"{fmt_us(lost.most('stayed_max_us'))}")
            add("instance lost", "CPU, cores", cores(lost), redis_rate(lost))
            add("instance lost", "listen-queue overflows / packets dropped on loopback / TCP retransmissions "
                "(machine-wide)", f"{fmt_int(lost.overflows)} / {fmt_int(lost.drops)} / {fmt_int(lost.retransmits)}")
        if self.redis_figures:
            r = self.redis_figures
            add("Redis", "memory used / peak / RSS; keys",
                f"{r['used_memory']} / {r['used_memory_peak']} / {r['rss']}; {r['keys']}")
            w = self.watch
            add("Redis", "largest client output buffer (CLIENT LIST omem, every 0.5 s)",
                f"{fmt_int(w.omem)} B, {w.omem_who or 'none'} in phase {w.omem_phase or '-'}; INFO clients' recent "
                f"max {r['recent_max_output_buffer']} B")
            add("kernel", "TCP buffer memory, peak (/proc/net/sockstat)",
                f"{fmt_int(w.tcp_pages)} pages in phase {w.tcp_phase or '-'}")
        lines = [
            f"## A {fmt_int(n)}-client rehearsal",
            "",
            f"- started: {self.started_at}; took {self.took_s / 60:.1f} min; commit: {commit}",
            (f"- {INSTANCES} wsecho instances (--broadcast --history {HISTORY} --redis, no pings, no per-address "
             f"handshake cap), one redis-server; {len(self.loads)} wsload chat processes; {n // ROOM_SIZE:,} rooms "
             f"of {ROOM_SIZE}, every room on every instance; load average at the end: "
             f"{' '.join(Path('/proc/loadavg').read_text().split()[:3])}"),
            "",
            "| phase | figure | measured | target / note |",
            "|---|---|---|---|",
            *[f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows],
            "",
            "Settings and limits:",
            "",
            "| setting | found | needed | done |",
            "|---|---|---|---|",
            *[f"| {a} | {b} | {c} | {d} |" for a, b, c, d in [*(f.row() for f in self.figures),
                                                             *(nd.row() for nd in self.needs)]],
            *self.tcp_mem_row(),
        ]
        return "\n".join(lines) + "\n"


def main(opts, root: Path, work: Path, servers: Servers, wsload: Path, wsecho: Path, fd_limit: str,
         commit: str) -> int:
    """The whole rehearsal: check, raise, run, put back, print the table."""
    limit = 1 << 30 if fd_limit == "unlimited" else int(fd_limit)
    out = root / "target" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    r = Rehearsal(opts.rehearsal_clients, opts.rehearsal_chat_s, servers, wsecho, wsload, work, out,
                  opts.redis_server)
    r.check_machine(limit)
    with raised(r.needs):
        try:
            r.run(limit)
        finally:
            if r.watch:
                r.watch.stop()
            servers.stop_all()
    text = r.table(commit)
    (out / "rehearsal.md").write_text(text)
    sys.stdout.write(text)
    sys.stdout.flush()
    return 0
