"""The output: number formats, the table of rows, the side-by-side tables of
--compare with comparison.tsv, the chart, and results.md.

The formats are those the bash version printed with awk, to the character:
fmt_int (thousands commas, no decimals), fmt_us (µs, ms or s), fmt_kib,
fmt_bytes, and `awk_number` for a figure the bash version worked out with awk
(6 significant digits) before formatting it.

A row run as interleaved trials (trials.py) shows each server's median
figure, and compares by the median of the per-pair ratios (trial k ÷ trial
k, the same round), with their min–max; its target is judged on that
median, unless the spread is too wide to judge (`judge_ratio`).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from .runs import Runs, last_line
from .servers import say
from .trials import MIN_TRIALS, SPREAD_LIMIT, TOO_FEW, TOO_WIDE, Ratios, median

NO = "**no**"
DASH = "—"
# Against WSECHO_BIN_BASELINE: no regression while the median new ÷ old ratio is
# at least this (higher is better; at most its inverse when lower is): 5 %, the
# most a change to a hot path may cost unremarked.
NO_REGRESSION = 0.95


# ----------------------------------------------------------------- numbers --
def _value(v) -> float:
    """A figure as a number; a missing one counts as 0, as it did in awk."""
    if v is None or isinstance(v, bool):
        return 0.0
    return float(v)


def awk_number(v) -> float:
    """V as awk printed a worked-out figure (integers whole, the rest to 6
    significant digits), which the bash version then formatted."""
    v = _value(v)
    return v if v.is_integer() else float(f"{v:.6g}")


def awk_text(v) -> str:
    """V as awk printed it: 2500 or 4567.89 (the figures of comparison.tsv that
    are worked out, such as connections opened per second)."""
    v = _value(v)
    return str(int(v)) if v.is_integer() else f"{v:.6g}"


def fmt_int(v) -> str:
    """12,345: rounded to a whole number, with thousands commas."""
    return f"{_value(v):,.0f}"


def fmt_us(v) -> str:
    """A time in µs for people: 8.3 µs, 85 µs, 1.25 ms, 2.10 s."""
    v = _value(v)
    a = abs(v)
    if a >= 1_000_000:
        return f"{v / 1_000_000:.2f} s"
    if a >= 1000:
        return f"{v / 1000:.2f} ms"
    if a >= 10:
        return f"{v:.0f} µs"
    return f"{v:.1f} µs"


def fmt_kib(v) -> str:
    """12.34 KiB, or n/a for a figure the run did not have."""
    return "n/a" if v is None else f"{_value(v):.2f} KiB"


def fmt_bytes(v) -> str:
    """65536 -> 64 KiB, 32 -> 32 B."""
    v = int(_value(v))
    return f"{v // 1024} KiB" if v >= 1024 and v % 1024 == 0 else f"{v} B"


def fmt_g(v) -> str:
    """A short number: 3 for 3.0, 1.5 for 1.5 (printf's %g)."""
    return f"{_value(v):g}"


def fmt(spec: str, v) -> str:
    """printf-style: fmt("%.2f KiB", 1.234) -> "1.23 KiB"."""
    return spec % _value(v)


# ------------------------------------------------------------------ targets --
def met(ok: bool) -> str:
    """The Met cell: yes, or a bold no."""
    return "yes" if ok else NO


def check(test: Callable[..., bool], *figures) -> str:
    """The Met cell of TEST on FIGURES; a figure the run did not report fails."""
    if any(f is None or isinstance(f, bool) for f in figures):
        return NO
    try:
        return met(bool(test(*figures)))
    except ZeroDivisionError:
        return NO


def judge_ratio(ratios: Ratios, aim: float, better: str = "higher") -> str:
    """The Met cell of a target on the median of per-pair RATIOS: yes or a bold
    no, or that the spread is too wide (or the trials too few) to judge, with
    the median and the min–max: "yes (median 1.05×, 0.98–1.10×, 5 pairs)"."""
    if not ratios.n:
        return f"{TOO_FEW}: no trial pair with both figures"
    outcome, why = ratios.verdict(aim, better)
    detail = ratios.text().removeprefix("median ").replace(" (", ", ", 1).removesuffix(")")
    if outcome in ("met", "missed"):
        return f"{met(outcome == 'met')} (median {detail})"
    return f"{outcome}: {why} (median {detail})"


def judge_all(cells: list[str]) -> str:
    """Several judged parts of one target, as one Met cell: no if any missed,
    else too wide or too few to judge if any was, else yes; each part's cell after."""
    if any(NO in cell for cell in cells):
        head = NO
    elif any(TOO_WIDE in cell or TOO_FEW in cell for cell in cells):
        head = TOO_WIDE if any(TOO_WIDE in cell for cell in cells) else TOO_FEW
    else:
        head = "yes"
    return f"{head}: " + "; ".join(cells)


@dataclass(frozen=True)
class Target:
    """A fixed target: the text of the Target column and the test of the Met one."""

    text: str
    test: Callable[..., bool]

    def met(self, *figures) -> str:
        return check(self.test, *figures)


@dataclass(frozen=True)
class Chart:
    """Where a side-by-side row goes in the chart: its panel, its bar group, its unit."""

    panel: str
    category: str
    unit: str


# -------------------------------------------------------------------- table --
class Report:
    """The rows of results.md, and with --compare its side-by-side tables and
    the figures of comparison.tsv."""

    def __init__(self, runs: Runs, main_label: str):
        self.runs = runs
        self.main_label = main_label
        self.rows: list[str] = []
        self.side_by_side: list[str] = []  # lines of the side-by-side tables
        self.sections: list[str] = []  # lines of sections of their own below the table (the soak's)
        self.tsv: list[str] = []  # lines of comparison.tsv, header aside
        self.baseline: list[str] = []  # lines of the tables against WSECHO_BIN_BASELINE
        self._peers: list[tuple[str, str]] = []  # (run prefix, label) of the current table

    def row(self, test: str, server: str, figure: str, measured: str,
            target: str = DASH, met: str = DASH) -> None:
        """| Test | Server | Figure | Measured | Target | Met |"""
        self.rows.append(f"| {test} | {server} | {figure} | {measured} | {target} | {met} |")

    def missing(self, test: str, server: str, name: str, target: str = DASH) -> None:
        """The row of a run that left no result: what wsload said, not met."""
        self.row(test, server, "result", f"no result: {self.runs.error(name)}", target, NO)

    # ------------------------------------------------------------ cells --
    def latency(self, name: str) -> str:
        """p50 / p99 / p99.9 / max of run NAME."""
        get = self.runs.get
        return " / ".join(fmt_us(get(name, k)) for k in ("p50_us", "p99_us", "p999_us", "max_us"))

    def echo_checks(self, name: str) -> str:
        """The verification outcome of an echo run."""
        text = self.runs.text
        if self.runs.ok(name):
            return f"{text(name, 'opened')} conns, 0 mismatches, 0 errors"
        return (f"{text(name, 'opened')}/{text(name, 'connections')} conns, "
                f"{text(name, 'mismatches')} mismatches, {text(name, 'errors')} errors: "
                f"{self.runs.error(name)}")

    def throughput(self, name: str) -> str:
        """msgs/s (MB/s) of an echo run."""
        return f"{fmt_int(self.runs.get(name, 'msgs_per_s'))} ({fmt('%.1f', self.runs.get(name, 'mb_per_s'))})"

    # ------------------------------------------------------ side by side --
    def compare_table(self, heading: str, peers: Iterable[tuple[str, str]]) -> bool:
        """Starts a side-by-side table: a column for the server under test, one per
        peer (run prefix, label) that can run. False, and no table, without peers."""
        self._peers = list(peers)
        if not self._peers:
            return False
        labels = "".join(f" | {label}" for _, label in self._peers)
        rule = "|---" * len(self._peers)
        self.side_by_side += [
            "", f"### {heading}", "",
            f"| Test | Figure | {self.main_label}{labels} | {self.main_label} vs best peer |",
            f"|---|---|---{rule}|---|",
        ]
        return True

    def figure(self, name: str, key: str) -> tuple[float | None, str]:
        """Figure KEY of run NAME, and as comparison.tsv writes it; opened_per_s
        is worked out (opened / open_s)."""
        if key != "opened_per_s":
            return self.runs.get(name, key), self.runs.text(name, key)
        opened, open_s = self.runs.get(name, "opened"), self.runs.get(name, "open_s")
        if opened is None or open_s is None or open_s <= 0:
            return None, ""
        return awk_number(opened / open_s), awk_text(opened / open_s)

    def compare_row(self, test: str, what: str, better: str, formatter: Callable, key: str,
                    suffix: str, chart: Chart | None = None, runs_of: dict[str, str] | None = None) -> None:
        """A row of figure KEY of the runs main-SUFFIX and PEER-SUFFIX for each peer
        of the table, then wsecho's as a multiple of the best peer's: the higher
        or the lower, as BETTER says. A peer whose run failed its checks is
        marked and not taken as the best. With CHART the figures go to
        comparison.tsv too. No row when no peer has the figure. RUNS_OF maps a
        column's peer to another peer whose runs fill it in this row: another
        server of the same library, as Node ws's broadcast example is of its
        echo server's. Run as interleaved trials, the row is compare_trials'."""
        if self.runs.trials(f"main-{suffix}"):
            self.compare_trials(test, what, better, formatter, key, suffix, chart, runs_of)
            return
        cells, lines, best, best_label, any_figure = "", [], None, "", False
        for column, label in self._peers:
            peer = (runs_of or {}).get(column, column)
            value, text = self.figure(f"{peer}-{suffix}", key)
            if value is None:
                cells += f" | {DASH}"
                continue
            any_figure = True
            cell = formatter(value)
            if not self.runs.ok(f"{peer}-{suffix}"):
                cell += f" (failed its checks: {self.runs.error(f'{peer}-{suffix}')})"
            elif best is None or (value > best if better == "higher" else value < best):
                best, best_label = value, label
            cells += f" | {cell}"
            if chart:
                lines.append(self._tsv_line(chart, label, text, main=False))
        if not any_figure:
            return
        mine, text = self.figure(f"main-{suffix}", key)
        if mine is not None:
            cell = formatter(mine)
            if not self.runs.ok(f"main-{suffix}"):
                cell += " (failed its checks)"
            if chart:
                lines.insert(0, self._tsv_line(chart, self.main_label, text, main=True))
        else:
            cell = f"{DASH} (not run)"
        if mine is None:
            ratio = DASH
        elif best is None:
            ratio = f"{DASH} (no peer passed its checks)"
        elif best <= 0 or mine <= 0:
            ratio = f"n/a (best: {best_label}, {fmt_g(best)}; a figure ≤ 0 is noise)"
        else:
            ratio = f"{mine / best:.2f}× best ({best_label}); {better} is better"
        self.side_by_side.append(f"| {test} | {what} | {cell}{cells} | {ratio} |")
        self.tsv += lines

    def medians(self, name: str, key: str) -> tuple[dict[int, float], float | None, str]:
        """The trials of run NAME that passed their checks, {k: figure KEY}, their
        median and its text for comparison.tsv; (…, None, "") without any."""
        figures = self.runs.trial_figures(name, key, self.figure)
        if not figures:
            return figures, None, ""
        value = median(list(figures.values()))
        return figures, value, awk_text(value)

    def trial_cell(self, name: str, figures: dict[int, float], value: float | None, formatter: Callable) -> str:
        """A server's cell of a row run as trials: its median figure, and how many
        trials failed their checks or left no result."""
        trials = len(self.runs.trials(name))
        if value is None:
            return f"{DASH} (no trial passed its checks: {self.runs.error(name)})" if trials else DASH
        failed = trials - len(figures)
        return formatter(value) + (f" ({failed} of {trials} trials failed: {self.runs.error(name)})"
                                   if failed else "")

    def compare_trials(self, test: str, what: str, better: str, formatter: Callable, key: str,
                       suffix: str, chart: Chart | None = None, runs_of: dict[str, str] | None = None) -> None:
        """compare_row of a row run as interleaved trials: each server's median
        figure, the best peer the one with the best median, and wsecho's ratio to
        it the median of the per-pair ratios (trial k ÷ its trial k), with their
        min–max and, when it is too wide (trials.SPREAD_LIMIT), that it is."""
        cells, lines, best, best_label, best_figures, any_figure = "", [], None, "", {}, False
        for column, label in self._peers:
            name = f"{(runs_of or {}).get(column, column)}-{suffix}"
            figures, value, text = self.medians(name, key)
            if not self.runs.trials(name):
                cells += f" | {DASH}"
                continue
            any_figure = True
            cells += f" | {self.trial_cell(name, figures, value, formatter)}"
            if value is None:
                continue
            if best is None or (value > best if better == "higher" else value < best):
                best, best_label, best_figures = value, label, figures
            if chart:
                lines.append(self._tsv_line(chart, label, text, main=False))
        if not any_figure:
            return
        mine_figures, mine, text = self.medians(f"main-{suffix}", key)
        cell = self.trial_cell(f"main-{suffix}", mine_figures, mine, formatter)
        if mine is not None and chart:
            lines.insert(0, self._tsv_line(chart, self.main_label, text, main=True))
        if mine is None:
            ratio = DASH
        elif best is None:
            ratio = f"{DASH} (no peer passed its checks)"
        else:
            ratios = Ratios.of(mine_figures, best_figures, len(self.runs.trials(f"main-{suffix}")))
            outcome, why = ratios.verdict()
            if not ratios.n:
                ratio = f"n/a (best: {best_label}, {fmt_g(best)}; no trial pair with both figures > 0)"
            else:
                ratio = (f"{ratios.median:.2f}× best ({best_label}; median of {ratios.pairs()}, "
                         f"{ratios.low:.2f}–{ratios.high:.2f}×); {better} is better")
                if outcome:
                    ratio += f"; {outcome} ({why})"
        self.side_by_side.append(f"| {test} | {what} | {cell}{cells} | {ratio} |")
        self.tsv += lines

    def started_as_row(self, test: str, main_line: str, lines: dict[str, str]) -> None:
        """A row of a side-by-side table: each server's command line (LINES by
        peer), as the bench started it."""
        cells = "".join(f" | `{lines[column]}`" if column in lines else f" | {DASH}" for column, _ in self._peers)
        self.side_by_side.append(f"| {test} | started as | `{main_line}`{cells} | {DASH} |")

    def clients_row(self, test: str, what: str, key: str, suffix: str, other: str) -> None:
        """Whether two clients tell the same story on figure KEY: each server's
        OTHER ÷ SUFFIX (fanclient's run ÷ wsload's of the same trial), marked
        when its min–max leaves out 1 (the clients differ on that server by
        more than their spread), and, for each peer, wsecho's ratio to it by
        each client, median and min–max: the clients disagree on a peer when
        those two ranges do not overlap."""
        def ratios(mine: str, theirs: str) -> Ratios:
            return Ratios.of(self.runs.trial_figures(mine, key), self.runs.trial_figures(theirs, key),
                             len(self.runs.trials(mine)))

        def short(r: Ratios) -> str:
            return f"{r.median:.2f}× ({r.low:.2f}–{r.high:.2f}×)" if r.n else DASH

        def server_cell(prefix: str) -> str:
            r = ratios(f"{prefix}-{other}", f"{prefix}-{suffix}")
            return short(r) + (f"; {NO}: the clients differ" if r.n and not r.low <= 1 <= r.high else "")

        cells = [server_cell(prefix) for prefix in ["main", *(column for column, _ in self._peers)]]
        verdicts = []
        for column, label in self._peers:
            by_one = ratios(f"main-{suffix}", f"{column}-{suffix}")
            by_other = ratios(f"main-{other}", f"{column}-{other}")
            if not (by_one.n and by_other.n):
                continue
            agree = by_one.low <= by_other.high and by_other.low <= by_one.high
            verdicts.append(f"vs {label}: {short(by_one)} by wsload, {short(by_other)} by fanclient: "
                            + ("the clients agree" if agree else f"{NO}: the clients disagree"))
        self.side_by_side.append(f"| {test} | {what} | {' | '.join(cells)} | {'; '.join(verdicts) or DASH} |")

    def baseline_table(self, heading: str, baseline_label: str, path: str) -> None:
        """Starts a table of wsecho against WSECHO_BIN_BASELINE, new ÷ old."""
        if not self.baseline:
            self.baseline += [
                "", "## Against the baseline (WSECHO_BIN_BASELINE)", "",
                (f"{self.main_label} (new) and {baseline_label} ({path}) in interleaved trials "
                 "(new, old, new, old, ...): each figure the median of the trials that passed their checks, "
                 "new ÷ old the median of the per-trial ratios (trial k ÷ trial k) with their min–max. "
                 f"\"No regression\": the median within {round((1 - NO_REGRESSION) * 100)} % of the old "
                 "figure (NO_REGRESSION), judged unless the spread is too wide (see --help)."),
            ]
        self.baseline += ["", f"### {heading}", "",
                          f"| Test | Figure | {self.main_label} (new) | {baseline_label} | new ÷ old | Verdict |",
                          "|---|---|---|---|---|---|"]

    def baseline_row(self, test: str, what: str, better: str, formatter: Callable, key: str, suffix: str,
                     baseline: str) -> None:
        """A row of figure KEY of the trials main-SUFFIX.tK and BASELINE-SUFFIX.tK:
        each median, new ÷ old and the verdict, no regression when the median
        ratio is at least NO_REGRESSION (higher is better) or at most its
        inverse (lower is better)."""
        new_figures, new, _ = self.medians(f"main-{suffix}", key)
        old_figures, old, _ = self.medians(f"{baseline}-{suffix}", key)
        cells = (f"{self.trial_cell(f'main-{suffix}', new_figures, new, formatter)} | "
                 f"{self.trial_cell(f'{baseline}-{suffix}', old_figures, old, formatter)}")
        ratios = Ratios.of(new_figures, old_figures, len(self.runs.trials(f"main-{suffix}")))
        if not ratios.n:
            self.baseline.append(f"| {test} | {what} | {cells} | {DASH} | {NO}: no trial pair |")
            return
        aim = NO_REGRESSION if better == "higher" else 1 / NO_REGRESSION
        outcome, why = ratios.verdict(aim, better)
        verdict = {"met": "no regression", "missed": f"{NO}: regression"}.get(outcome, f"{outcome} ({why})")
        self.baseline.append(f"| {test} | {what} | {cells} | {ratios.text()}; {better} is better | {verdict} |")

    def compare_alone(self, test: str, what: str, cell: str, why: str) -> None:
        """A row of a side-by-side table that only the server under test has a
        figure for: each peer's cell says WHY not (a feature it lacks)."""
        cells = "".join(f" | {DASH} ({why})" for _ in self._peers)
        self.side_by_side.append(f"| {test} | {what} | {cell}{cells} | {DASH} |")

    @staticmethod
    def _tsv_line(chart: Chart, server: str, value: str, main: bool) -> str:
        return "\t".join([chart.panel, chart.category, server, value, chart.unit, "1" if main else "0"])


# ------------------------------------------------------------------- files --
SPREAD_LIMIT_TEXT = f"{SPREAD_LIMIT:g}×"
TSV_HEADER = "panel\tcategory\tserver\tvalue\tunit\tmain"


def first_error(log: Path) -> str:
    """The line of a build or install log that says what went wrong (else its last)."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    pattern = re.compile(r"^error|npm error|ERR!", re.IGNORECASE)
    return next((line for line in lines if pattern.search(line)), lines[-1] if lines else "")


def draw_chart(tsv: Path, svg: Path, cache: Path, chart_py: Path, title: str, log: Path) -> str:
    """Draws comparison.tsv with scripts/chart.py and matplotlib from a virtual
    environment in the cache (made once); returns the line results.md says about it."""
    venv = cache / "venv"
    python = venv / "bin" / "python"
    have = python.exists() and subprocess.run(
        [python, "-c", "import matplotlib"], stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, check=False).returncode == 0
    if not have:
        say(f"installing matplotlib into {venv} (once)")
        with open(log, "wb") as out:
            made = subprocess.run([sys.executable, "-m", "venv", venv],
                                  stdout=out, stderr=subprocess.STDOUT, check=False).returncode == 0
            made = made and subprocess.run(
                [venv / "bin" / "pip", "install", "--quiet", "--disable-pip-version-check",
                 "matplotlib>=3.8,<4"], stdout=out, stderr=subprocess.STDOUT, check=False).returncode == 0
        if not made:
            return f"no chart: could not install matplotlib ({first_error(log)}; target/bench/chart.log)"
    with open(log, "wb") as out:
        drawn = subprocess.run(
            [python, chart_py, tsv, svg, "--title", title], stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "MPLCONFIGDIR": str(cache / "mplconfig")}, check=False).returncode == 0
    if drawn:
        return "chart of these figures: target/bench/comparison.svg"
    return f"no chart: scripts/chart.py failed ({last_line(log)}; target/bench/chart.log)"


def results_markdown(header: list[str], report: Report, settle_text: str, trials: int = 0) -> str:
    """results.md: the header bullets, the table, the side-by-side tables, the
    tables against the baseline. TRIALS: the trials of each compared row."""
    lines = ["# wsecho benchmark", "", *header, "",
             "| Test | Server | Figure | Measured | Target | Met |",
             "|---|---|---|---|---|---|", *report.rows, *report.sections]
    if report.side_by_side:
        each = ("Each row: the same run's figures for every server, and wsecho's as a multiple of the best peer's."
                if not trials else
                (f"Rows run as {trials} interleaved trials (wsecho, each peer in turn, then again) show each "
                 "server's median figure over the trials that passed their checks, and wsecho's as a multiple of "
                 "the best peer's (the best median): the median of the per-trial ratios, wsecho's trial k ÷ that "
                 "peer's trial k of the same round, with their min–max. Wider than max/min "
                 f"{SPREAD_LIMIT_TEXT}, or fewer than {MIN_TRIALS} pairs, and the row says it cannot be judged. "
                 "Rows without trials are one run each."))
        lines += [
            "", "## Side by side (--compare)", "",
            each,
            ("Kernel memory is the machine's (SUnreclaim + KernelStack + PageTables, from /proc/meminfo): "
             "it counts wsload's end of every connection too, the same for every server."),
            ("\"After a 64 KiB message\": every connection sent one binary message of 64 KiB and read its "
             f"echo, and the figures were taken {settle_text} later (medians of 5 samples over 1 s)."),
            *report.side_by_side,
        ]
    lines += report.baseline
    lines += ["", ("Raw JSON of every run: target/bench/raw/ (trial k of run NAME: NAME.tK.json; NAME.json "
                   "is a copy of its median trial, named in NAME.median.txt).")]
    return "\n".join(lines) + "\n"
