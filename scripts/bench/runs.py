"""wsload runs and their results.

Each run is named (main-echo-64x32, tt-hold-1000, cluster-fanout-500, ...):
the name's first part says whose server it measured (main: wsecho or
BENCH_SERVER, port: wsecho's portable backend, tls: wsecho over TLS, a peer's
name), the rest which row. wsload's JSON is kept in target/bench/raw/NAME.json
and its stderr in NAME.err; the tables are made from those files alone, so a
run whose JSON is missing simply leaves its cells empty ("no result: ...").

The fan-out rows of --compare are measured by a second client too,
fanclient (scripts/bench/fanclient/, tokio-tungstenite), whose runs are
named as wsload's with FANCLIENT's suffix (main-fanout-wide-fc, ...) and
report with wsload fanout's keys, so that everything below reads both.

A row run as interleaved trials (trials.py; --compare, WSECHO_BIN_BASELINE)
has its trials as NAME.t1, NAME.t2, ..., and NAME itself is a copy of the
median trial (`keep_median`), for the rows that show one run's figures.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

from .servers import Servers, say
from .trials import median_index

# Each wsload run bounds itself; this catches one that does not.
RUN_TIMEOUT_S = 1800
# The run-name suffix of fanclient's runs: NAME-fc beside wsload's NAME.
FANCLIENT = "-fc"


def flatten(report: dict) -> dict:
    """wsload's report as one level of keys: the latency summary's p50_us and
    friends sit beside the rest. wsload uses each key once, so nothing is lost;
    were one repeated, the later would win."""
    flat: dict = {}
    for key, value in report.items():
        if isinstance(value, dict):
            flat.update(flatten(value))
        else:
            flat[key] = value
    return flat


def last_line(path: Path) -> str:
    """The last line of a file (as tail -1 shows it), or ""."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return lines[-1] if lines else ""


class Runs:
    """Runs wsload and reads back what each run reported."""

    def __init__(self, raw: Path, wsload: Path | None = None, threads: str = "1",
                 servers: Servers | None = None):
        self.raw = raw
        self.wsload = wsload
        self.fanclient: Path | None = None  # built for --compare's fan-out rows (main.build_fanclient)
        self.threads = threads
        self.servers = servers
        self._cache: dict[str, dict | None] = {}

    def run(self, name: str, *args, quiet: bool = False) -> None:
        """Runs `wsload ARGS --threads N --json`, keeps its JSON as raw/NAME.json and
        says in one line when there is no result or a check failed; unless QUIET
        (runs repeated many times, such as the soak's), first the command line too."""
        self.finish(name, self.start(name, *args, quiet=quiet))

    def err_path(self, name: str) -> Path:
        """Where run NAME's stderr goes."""
        return self.raw / f"{name}.err"

    def run_fanclient(self, name: str, *args) -> None:
        """Runs `fanclient ARGS` as `run` runs wsload: its one line of JSON kept as
        raw/NAME.json (it takes no --threads: its runtime has a thread per core)."""
        self.finish(name, self.start(name, *args, client=[self.fanclient]))

    def start(self, name: str, *args, quiet: bool = False, client: list | None = None) -> subprocess.Popen:
        """Starts run NAME as `run` does, without waiting for it: for a row that acts on
        the server while wsload runs (the storm's restart). `finish` waits for it.
        CLIENT: another client's command instead of wsload's (fanclient)."""
        args = [str(a) for a in args]
        argv = [*client, *args] if client else [self.wsload, *args, "--threads", self.threads, "--json"]
        if not quiet:
            say(f"{name}: {Path(argv[0]).name} {' '.join(args)}")
        self._cache.pop(name, None)
        with open(self.raw / f"{name}.json", "wb") as out, open(self.err_path(name), "wb") as err:
            return self.servers.spawn(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL)

    def finish(self, name: str, proc: subprocess.Popen) -> None:
        """Waits for run NAME (started with `start`) and reports it as `run` does."""
        json_path, err_path = self.raw / f"{name}.json", self.err_path(name)
        try:
            status = proc.wait(RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.servers.stop_process(proc)
            status = 124  # as timeout(1) reports it
        self.servers.forget(proc)
        if json_path.stat().st_size == 0:
            say(f"{name}: no result (exit {status}): {last_line(err_path)}")
            json_path.unlink()
        elif status != 0:
            say(f"{name}: verification FAILED (details in {json_path})")

    # ------------------------------------------------------------- results --
    def has(self, name: str) -> bool:
        """Whether run NAME left a result."""
        return (self.raw / f"{name}.json").is_file()

    def report(self, name: str) -> dict | None:
        """Run NAME's report, flattened, or None without a result."""
        if name not in self._cache:
            path = self.raw / f"{name}.json"
            try:
                self._cache[name] = flatten(json.loads(path.read_text()))
            except FileNotFoundError:
                self._cache[name] = None
            except (ValueError, AttributeError):
                self._cache[name] = {}  # there, but not a report: every figure missing
        return self._cache[name]

    def trials(self, name: str) -> dict[int, str]:
        """The trials of run NAME that were run, {k: NAME.tK}, whether or not they left
        a result (each leaves its stderr); {} for a run without trials."""
        found = {}
        for err in self.raw.glob(f"{name}.t*.err"):
            m = re.fullmatch(re.escape(name) + r"\.t([0-9]+)\.err", err.name)
            if m:
                found[int(m.group(1))] = f"{name}.t{m.group(1)}"
        return dict(sorted(found.items()))

    def trial_figures(self, name: str, key: str, figure=None) -> dict[int, float]:
        """Figure KEY of each trial of run NAME that passed its checks, {k: value};
        FIGURE(trial, key) -> (value, text) works it out instead when given."""
        out = {}
        for k, trial in self.trials(name).items():
            value = figure(trial, key)[0] if figure else self.get(trial, key)
            if self.ok(trial) and isinstance(value, (int, float)) and not isinstance(value, bool):
                out[k] = float(value)
        return out

    def keep_median(self, name: str, key: str, higher: bool = True) -> None:
        """Makes run NAME a copy of its median trial by figure KEY (the lower middle
        of an even count, counted from the worst), among the trials that passed
        their checks, else among those with a result; without a result in any,
        NAME has the last trial's stderr (what went wrong)."""
        trials = list(self.trials(name).values())
        if not trials:
            return
        figures = [(self.get(t, key), t) for t in trials if self.has(t)]
        figures = [(v, t) for v, t in figures if isinstance(v, (int, float)) and not isinstance(v, bool)]
        passed = [(v, t) for v, t in figures if self.ok(t)]
        pool = sorted(passed or figures, reverse=not higher)
        chosen = pool[median_index([v for v, _ in pool])][1] if pool else trials[-1]
        self._cache.pop(name, None)
        (self.raw / f"{name}.json").unlink(missing_ok=True)
        if self.has(chosen):
            shutil.copyfile(self.raw / f"{chosen}.json", self.raw / f"{name}.json")
        shutil.copyfile(self.err_path(chosen), self.err_path(name))
        (self.raw / f"{name}.median.txt").write_text(f"{chosen}\n")

    def get(self, name: str, key: str):
        """Figure KEY of run NAME; None when the run, the key or its value is missing."""
        report = self.report(name)
        return None if report is None else report.get(key)

    def text(self, name: str, key: str) -> str:
        """Figure KEY of run NAME as the JSON wrote it (1000, true, null), "" when absent:
        for counts shown as they are."""
        report = self.report(name)
        if report is None or key not in report:
            return ""
        return json.dumps(report[key], ensure_ascii=False)

    def ok(self, name: str) -> bool:
        """Whether run NAME passed all of wsload's checks."""
        return self.get(name, "ok") is True

    def error(self, name: str) -> str:
        """What went wrong in run NAME: its first_error, else the last line wsload
        printed on stderr."""
        text = self.get(name, "first_error")
        if isinstance(text, str) and text:
            return text
        return last_line(self.raw / f"{name}.err")
