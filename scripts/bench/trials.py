"""Interleaved trials: the arithmetic of judging a ratio from several of them.

One run per row cannot tell a regression from the weather: docs/performance.md
once showed the same commit at 0.52× and then 1.23× tokio-tungstenite on one
echo row, 23 minutes apart. So the rows of --compare (and those against a
baseline binary, WSECHO_BIN_BASELINE) run as TRIALS interleaved trials,
round after round (wsecho, peer A, peer B, wsecho, peer A, peer B, ...), and
a ratio is judged from the trials, not from one run:

  per-pair ratio  trial k of wsecho ÷ trial k of the other server, the two
                  run one after the other in the same round, so that they
                  share the machine's weather
  the ratio       the median of the per-pair ratios; shown with their
                  min–max
  the verdict     on the median, unless the spread is too wide to judge:

SPREAD_LIMIT (max/min of the per-pair ratios over 1.5×): the machine
changed under the run by more than any aim's margin (the aims stand 10 to
15 % from 1.0; the two published runs of one commit differ by 2.4×), so no
ratio of that run is a figure to judge by.

The min–max range straddling the aim: of 5 independent ratios, the smallest
lies below their distribution's median, and the largest above it, with
probability 1 − 2 × (1/2)^5 = 94 %; an aim inside that range is within the
noise of the run. (More trials make the range wider, and the probability
higher: 98 % with 7, 99.6 % with 9.)

Fewer than MIN_TRIALS pairs (a failed trial leaves its pair out, and
BENCH_TRIALS may be set lower without --compare): too few trials to judge.

Standard library only, no import of the rest of the package: the self-test
runs as `python3 -m scripts.bench.trials` from the repository (or
`scripts/bench.sh --self-test`).
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Mapping
from dataclasses import dataclass

MIN_TRIALS = 5  # BENCH_TRIALS' default, and its least with --compare
SPREAD_LIMIT = 1.5  # max/min of the per-pair ratios beyond which nothing is judged

# The verdicts other than met and missed (report.py shows met as yes, missed as **no**).
TOO_WIDE = "spread too wide to judge"
TOO_FEW = "too few trials to judge"


def median(values: list[float]) -> float:
    """The median (the mean of the middle two for an even count)."""
    return statistics.median(values)


def median_index(values: list[float]) -> int:
    """Where the median lies in VALUES once sorted: the lower middle for an
    even count, so that it is one of the trials (the run whose figures the
    table shows)."""
    return (len(values) - 1) // 2


@dataclass(frozen=True)
class Ratios:
    """The per-pair ratios of one row: trial k of wsecho ÷ trial k of another."""

    values: tuple[float, ...]
    trials: int = 0  # trials asked for (pairs missing when fewer values)

    @classmethod
    def of(cls, mine: Mapping[int, float], theirs: Mapping[int, float], trials: int = 0) -> Ratios:
        """Pairs trial k of MINE with trial k of THEIRS (k the round); a trial
        missing on either side, or a figure ≤ 0, leaves its pair out."""
        return cls(tuple(mine[k] / theirs[k] for k in sorted(mine)
                         if k in theirs and mine[k] > 0 and theirs[k] > 0), trials)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def median(self) -> float:
        return median(list(self.values))

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)

    @property
    def spread(self) -> float:
        """max / min of the ratios: 1.0 when they all agree."""
        return self.high / self.low

    def pairs(self) -> str:
        """5 pairs, or 3 of 5 pairs when trials left theirs out."""
        missing = f" of {self.trials}" if self.trials > self.n else ""
        return f"{self.n}{missing} pairs"

    def text(self) -> str:
        """median 0.93× (0.88–0.99×, 5 pairs)."""
        if not self.values:
            return "no trial pair"
        return f"median {self.median:.2f}× ({self.low:.2f}–{self.high:.2f}×, {self.pairs()})"

    def verdict(self, aim: float | None = None, better: str = "higher") -> tuple[str, str]:
        """(outcome, why): outcome "met", "missed", TOO_WIDE or TOO_FEW; met when
        the median ratio is at least AIM (BETTER "higher") or at most AIM
        ("lower"). Without an AIM only the spread is judged: "" when it is
        narrow enough."""
        if self.n < MIN_TRIALS:
            return TOO_FEW, f"{self.n} pairs, at least {MIN_TRIALS}"
        if self.spread > SPREAD_LIMIT:
            return TOO_WIDE, f"max/min {self.spread:.2f} > {SPREAD_LIMIT}"
        if aim is None:
            return "", ""
        if better == "higher":
            straddles = self.low < aim <= self.high
            ok = self.median >= aim
        else:
            straddles = self.low <= aim < self.high
            ok = self.median <= aim
        if straddles:
            return TOO_WIDE, f"{self.low:.2f}–{self.high:.2f}× straddles {aim:.3g}×"
        return ("met" if ok else "missed"), ""


# --------------------------------------------------------------- self-test --
def self_test() -> None:
    """Plain asserts on the arithmetic above."""
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0, 3.0, 2.0]) == 2.5
    assert median_index([1.0, 2.0, 3.0, 4.0]) == 1 and median_index([1.0, 2.0, 3.0]) == 1
    assert median_index([7.0]) == 0

    # Pairing by round: trial 3 missing on one side leaves its pair out; ≤ 0 too.
    r = Ratios.of({1: 10.0, 2: 12.0, 3: 9.0, 4: 11.0, 5: 0.0}, {1: 10.0, 2: 10.0, 4: 10.0, 5: 10.0}, trials=5)
    assert r.values == (1.0, 1.2, 1.1), r.values
    assert r.n == 3 and abs(r.median - 1.1) < 1e-9 and r.low == 1.0 and r.high == 1.2
    assert r.text() == "median 1.10× (1.00–1.20×, 3 of 5 pairs)", r.text()
    assert r.verdict(1.0)[0] == TOO_FEW

    # Five tight pairs, all above the aim: met; all below: missed; lower is better mirrored.
    tight = Ratios((1.02, 1.05, 1.04, 1.08, 1.06), 5)
    assert tight.median == 1.05 and abs(tight.spread - 1.08 / 1.02) < 1e-9
    assert tight.text() == "median 1.05× (1.02–1.08×, 5 pairs)", tight.text()
    assert tight.verdict(1.0) == ("met", "")
    assert tight.verdict(1.1) == ("missed", "")
    assert tight.verdict(1.1, "lower") == ("met", "")
    assert tight.verdict(1.0, "lower") == ("missed", "")
    assert tight.verdict() == ("", "")

    # The range straddling the aim: too wide, whatever the median says.
    near = Ratios((0.97, 1.01, 1.02, 1.03, 1.04), 5)
    outcome, why = near.verdict(1.0)
    assert outcome == TOO_WIDE and why == "0.97–1.04× straddles 1×", (outcome, why)
    assert near.verdict(1.0, "lower")[0] == TOO_WIDE
    assert near.verdict(1 / 0.95, "lower") == ("met", "")  # all within 5 % slower: no regression
    assert Ratios((1.0, 1.02, 1.04, 1.06, 1.08)).verdict(1 / 0.95, "lower") == (TOO_WIDE, "1.00–1.08× straddles 1.05×")
    # At the aim exactly: met either way (≥ for higher, ≤ for lower).
    assert Ratios((1.0, 1.1, 1.2, 1.1, 1.05)).verdict(1.0) == ("met", "")
    assert Ratios((0.9, 0.95, 1.0, 0.8, 0.85)).verdict(1.0, "lower") == ("met", "")

    # The published weather: 0.52× and 1.23× in one row's trials: max/min 2.37 > 1.5.
    weather = Ratios((0.52, 1.23, 0.61, 1.09, 0.9), 5)
    outcome, why = weather.verdict(0.85)
    assert outcome == TOO_WIDE and why == "max/min 2.37 > 1.5", (outcome, why)
    assert weather.verdict()[0] == TOO_WIDE
    # Just inside the limit, judged; just outside, not.
    assert Ratios((1.0, 1.2, 1.5, 1.3, 1.1)).verdict(0.9) == ("met", "")
    assert Ratios((1.0, 1.2, 1.51, 1.3, 1.1)).verdict(0.9)[0] == TOO_WIDE
    assert Ratios(()).text() == "no trial pair"
    print("bench.trials: self-test passed")


if __name__ == "__main__":
    if sys.argv[1:] not in ([], ["--self-test"]):
        sys.exit("usage: python3 -m scripts.bench.trials [--self-test]")
    self_test()
