"""Fan-out rows: 100 listeners × 1,000 messages of 32 B, every message to
every client (wsload fanout against wsecho --broadcast), at full speed and at
500 messages/s; the peers of --compare are websocat's and Node ws's
broadcast servers. With --compare the 500/s row is measured by a second
client too, fanclient (scripts/bench/fanclient/, tokio-tungstenite; run
names PREFIX-fanout-500-fc), in the same trials, so that its latency
figures do not rest on wsload alone.

With --compare or WSECHO_BIN_BASELINE, each row runs as interleaved trials
(trials.py), as the echo rows do, and the targets against websocat are
judged on the median of the per-trial ratios."""

from __future__ import annotations

from ..context import BASELINE, BASELINE_LABEL, Bench
from ..report import Chart, Report, Target, awk_number, check, fmt_int, fmt_us, judge_all, judge_ratio
from ..runs import FANCLIENT
from ..servers import wsecho_args
from ..trials import Ratios, median

PEERS = ["websocat", "nodebc"]
RATES = {"full": "0", "500": "500"}  # run name part: --rate
AT_500_FC = "fanout-500" + FANCLIENT  # fanclient's runs of the 500/s row

DELIVERED = Target("all, in order", lambda missing, ooo, dups: missing == 0 and ooo == 0 and dups == 0)
# Targets: at full speed at least 2 × websocat's broadcast; at 500/s a p50
# and a p99 no worse than websocat's, and a p99 under 1 ms.
VS_WEBSOCAT = 2
DELIVERIES_ALONE = Target("≥ 500,000 (and 2 × websocat: run --compare)", lambda dps: dps >= 500000)
P99_US = 1000
P99_ALONE = Target("p99 < 1 ms (and ≤ websocat: run --compare)", lambda p99: p99 < P99_US)


def title(rate: str) -> str:
    return f"fan-out 100 × 1,000 at {'full speed' if rate == 'full' else '500/s'}"


def fanout_run(b: Bench, name: str, url: str, rate: str, *extra) -> None:
    b.run(name, "fanout", "--url", url, *extra, "--listeners", 100, "--messages", 1000, "--rate", RATES[rate])


def measure_with(b: Bench, prefix: str, url: str, *extra) -> None:
    """The fan-out runs PREFIX-fanout-full and PREFIX-fanout-500."""
    for rate in RATES:
        fanout_run(b, f"{prefix}-fanout-{rate}", url, rate, *extra)


def measure(b: Bench) -> None:
    """wsecho's rows; with --compare or a baseline, interleaved with the
    peers' (and the baseline's) as trials, each server started once."""
    if b.custom or not b.want("fanout"):
        return
    if not b.opts.interleaved:
        measure_with(b, "main", b.start_wsecho("--broadcast").url)
        b.stop()
        return
    # The median trial: by deliveries/s at full speed, by p99 at 500/s.
    median_of = {"fanout-full": ("deliveries_per_s", True), "fanout-500": ("p99_us", False)}
    if b.runs.fanclient:
        median_of[AT_500_FC] = ("p99_us", False)

    def run(name: str, suffix: str, server) -> None:
        if suffix == AT_500_FC:
            b.runs.run_fanclient(name, "--url", server.url, "--listeners", 100, "--messages", 1000, "--size", 32,
                                 "--rate", RATES["500"])
        else:
            fanout_run(b, name, server.url, suffix.removeprefix("fanout-"))

    b.interleave(b.contenders(lambda: b.start_wsecho("--broadcast"), PEERS, "--broadcast"), list(median_of),
                 run, median_of.get)


def delivered_row(b: Bench, r: Report, name: str, test: str, label: str, client: str = "") -> None:
    """delivered / missing / out of order of a fan-out run (the cluster's too);
    CLIENT (", fanclient") names the client when it is not wsload."""
    get, text = b.runs.get, b.runs.text
    r.row(test, label, f"delivered / missing / out of order{client}",
          f"{fmt_int(get(name, 'delivered'))} / {text(name, 'missing')} / {text(name, 'out_of_order')}",
          DELIVERED.text, DELIVERED.met(get(name, "missing"), get(name, "out_of_order"), get(name, "duplicates")))


def vs_websocat(b: Bench, name: str, peer: str, key: str, aim: float, better: str, formatter) -> tuple[str, str]:
    """From interleaved trials: websocat's median figure KEY (as text) and the Met
    cell of wsecho's, the median of the per-trial ratios against AIM; ("", "")
    without trials."""
    theirs = b.runs.trial_figures(peer, key)
    if not (b.runs.trials(name) and theirs):
        return "", ""
    ratios = Ratios.of(b.runs.trial_figures(name, key), theirs, len(b.runs.trials(name)))
    return f"median of {len(theirs)}: {formatter(median(list(theirs.values())))}", judge_ratio(ratios, aim, better)


def rows(b: Bench, r: Report) -> None:
    if b.custom or not b.want("fanout"):
        return
    get = b.runs.get
    for rate in RATES:
        name, peer, test = f"main-fanout-{rate}", f"websocat-fanout-{rate}", title(rate)
        if not b.runs.has(name):
            r.missing(test, "wsecho", name, "all delivered in order")
            continue
        delivered_row(b, r, name, test, "wsecho")
        latency = "latency p50 / p99 / p99.9 / max"
        theirs, m = (vs_websocat(b, name, peer, "deliveries_per_s", VS_WEBSOCAT, "higher", fmt_int) if rate == "full"
                     else vs_websocat(b, name, peer, "p99_us", 1, "lower", fmt_us))
        if rate == "full" and theirs:
            r.row(test, "wsecho", "deliveries/s", fmt_int(get(name, "deliveries_per_s")),
                  f"≥ {VS_WEBSOCAT} × websocat ({theirs})", m)
            r.row(test, "wsecho", latency, r.latency(name))
        elif theirs:
            their50, m50 = vs_websocat(b, name, peer, "p50_us", 1, "lower", fmt_us)
            their99, m99 = theirs, m
            p99 = get(name, "p99_us")  # the median trial's (by p99)
            r.row(test, "wsecho", latency, r.latency(name),
                  f"p50 ≤ websocat ({their50}), p99 ≤ websocat ({their99}) and < 1 ms",
                  judge_all([f"p50 {m50}", f"p99 {m99}", f"< 1 ms: {check(lambda p99: p99 < P99_US, p99)}"]))
        elif rate == "full":
            dps, theirs = get(name, "deliveries_per_s"), get(peer, "deliveries_per_s")
            if theirs is not None:
                r.row(test, "wsecho", "deliveries/s", fmt_int(dps),
                      f"≥ {VS_WEBSOCAT} × websocat ({fmt_int(awk_number(VS_WEBSOCAT * theirs))})",
                      check(lambda d, theirs: d >= VS_WEBSOCAT * theirs, dps, theirs))
            else:
                r.row(test, "wsecho", "deliveries/s", fmt_int(dps), DELIVERIES_ALONE.text, DELIVERIES_ALONE.met(dps))
            r.row(test, "wsecho", latency, r.latency(name))
        else:
            p50, p99 = get(name, "p50_us"), get(name, "p99_us")
            their50, their99 = get(peer, "p50_us"), get(peer, "p99_us")
            if their99 is not None:
                r.row(test, "wsecho", latency, r.latency(name),
                      f"p50 ≤ websocat ({fmt_us(their50)}), p99 ≤ websocat ({fmt_us(their99)}) and < 1 ms",
                      check(lambda p50, p99, their50, their99: p50 <= their50 and p99 <= their99 and p99 < P99_US,
                            p50, p99, their50, their99))
            else:
                r.row(test, "wsecho", latency, r.latency(name), P99_ALONE.text, P99_ALONE.met(p99))
    fanclient_rows(b, r)


def fanclient_rows(b: Bench, r: Report) -> None:
    """The 500/s row as fanclient measured it, its targets on fanclient's trials."""
    name, peer, test = f"main-{AT_500_FC}", f"websocat-{AT_500_FC}", title("500")
    if not b.runs.has(name):
        return
    delivered_row(b, r, name, test, "wsecho", ", fanclient")
    their50, m50 = vs_websocat(b, name, peer, "p50_us", 1, "lower", fmt_us)
    their99, m99 = vs_websocat(b, name, peer, "p99_us", 1, "lower", fmt_us)
    p99 = b.runs.get(name, "p99_us")
    if not their99:
        r.row(test, "wsecho", "latency p50 / p99 / p99.9 / max, fanclient", r.latency(name), P99_ALONE.text,
              P99_ALONE.met(p99))
        return
    r.row(test, "wsecho", "latency p50 / p99 / p99.9 / max, fanclient", r.latency(name),
          f"p50 ≤ websocat ({their50}), p99 ≤ websocat ({their99}) and < 1 ms, all by fanclient",
          judge_all([f"p50 {m50}", f"p99 {m99}", f"< 1 ms: {check(lambda p99: p99 < P99_US, p99)}"]))


def compare(b: Bench, r: Report) -> None:
    """The side-by-side fan-out table."""
    heading = "Fan-out: 100 listeners × 1,000 messages of 32 B, every message to every client"
    if b.custom or not b.want("fanout"):
        return
    if not r.compare_table(heading, [(p, b.peers.label(p)) for p in PEERS if p in b.peers.ready]):
        return
    at_500 = "Fan-out delivery latency at 500 msgs/s (µs, lower is better)"
    r.started_as_row("fan-out", " ".join(["wsecho", *wsecho_args(["--broadcast"])]),
                     {p: b.peers.command_line(p) for p in PEERS if p in b.peers.ready})
    for percentile in ("p50", "p99"):
        r.compare_row("fan-out at 500/s", f"latency {percentile}", "lower", fmt_us, f"{percentile}_us", "fanout-500",
                      Chart(at_500, percentile, "µs"))
    if b.runs.trials(f"main-{AT_500_FC}"):
        for percentile in ("p50", "p99"):
            r.compare_row("fan-out at 500/s", f"latency {percentile}, fanclient", "lower", fmt_us,
                          f"{percentile}_us", AT_500_FC)
        r.clients_row("fan-out at 500/s", "p99, fanclient ÷ wsload", "p99_us", "fanout-500", AT_500_FC)
    r.compare_row("fan-out at full speed", "deliveries/s", "higher", fmt_int, "deliveries_per_s", "fanout-full",
                  Chart("Fan-out deliveries/s at full speed (higher is better)", "deliveries/s", "deliveries/s"))
    r.compare_row("fan-out at full speed", "latency p99", "lower", fmt_us, "p99_us", "fanout-full")


def baseline(b: Bench, r: Report) -> None:
    """The fan-out rows against WSECHO_BIN_BASELINE: new ÷ old."""
    if b.custom or not (b.opts.baseline_bin and b.want("fanout")):
        return
    r.baseline_table("Fan-out: 100 listeners × 1,000 messages of 32 B, every message to every client",
                     BASELINE_LABEL, b.opts.baseline_bin)
    r.baseline_row("fan-out at full speed", "deliveries/s", "higher", fmt_int, "deliveries_per_s", "fanout-full",
                   BASELINE)
    r.baseline_row("fan-out at full speed", "latency p99", "lower", fmt_us, "p99_us", "fanout-full", BASELINE)
    for percentile in ("p50", "p99"):
        r.baseline_row("fan-out at 500/s", f"latency {percentile}", "lower", fmt_us, f"{percentile}_us",
                       "fanout-500", BASELINE)
