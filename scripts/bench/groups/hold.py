"""Hold rows: many idle connections (wsload hold), what each costs the
server and the machine, fresh and a settle time after it did something (a
64 KiB message, or wsecho's greeting). wsecho's own hold rows have the
greeting off (--greeting-delay off, as every wsecho start here).

With --compare, the sizes the peers run too are interleaved trials
(trials.py), each on a fresh server: wsecho, each peer, then again; the
opened/s target is judged on the median of the per-trial ratios, and
wsecho's other figures are its median trial's (by RSS per connection)."""

from __future__ import annotations

from functools import partial

from ..context import PORTABLE_LABEL, Bench
from ..report import (
    DASH,
    NO,
    Chart,
    Report,
    Target,
    awk_number,
    check,
    fmt,
    fmt_bytes,
    fmt_g,
    fmt_int,
    fmt_kib,
    judge_ratio,
)
from ..trials import Ratios, median

PEERS = ["tt", "tung", "node"]
HOLD = "10s"  # how long the connections stay idle
AFTER_MESSAGE = 65536  # the message of the "after" figures (--then-echo)

# wsecho's targets for its plain rows.
RSS = Target("≤ 10 KiB", lambda rss: rss <= 10)
IDLE_CPU = Target("< 0.05 s", lambda cpu: cpu < 0.05)
TOTAL = Target("≤ 28 KiB", lambda total: total <= 28)
AFTER_SLACK_KIB = 2  # RSS after a message or the greeting: at most fresh + this
OPEN_RATE_VS_TT = 1.2  # connections opened/s: at least this × tokio-tungstenite's

CPU_FIGURE = "server CPU while idle (from 2 s after the last opened to the end of the 10 s hold)"
KERNEL_FIGURE = "kernel memory per idle connection (SUnreclaim + KernelStack + PageTables, both ends; see --help)"


def hold_run(b: Bench, name: str, n: int, *extra) -> None:
    """A hold row, then the figures after a 64 KiB message."""
    b.run(name, "hold", "--url", b.server.url, "--connections", n, "--hold", HOLD, "--pid", b.server.pid,
          "--then-echo", AFTER_MESSAGE, "--settle", b.opts.settle, *extra)


def measure_peers(b: Bench) -> None:
    """The peers' rows, interleaved with wsecho's as trials (--compare): each
    trial on a fresh server."""
    if not (b.opts.compare and b.want("hold")):
        return
    b.interleave(b.contenders(b.start_default, PEERS, baseline=False), [f"hold-{n}" for n in b.cmp_hold_sizes],
                 lambda name, suffix, server: hold_run(b, name, int(suffix.removeprefix("hold-"))),
                 lambda suffix: ("rss_per_conn_kib", False), fresh=True)


def measure(b: Bench) -> None:
    if not b.want("hold"):
        return
    # Greeting off: the fresh figures, and with 1,000 (and 5,000 with
    # --compare) the figures after a 64 KiB message; with --compare those
    # ran as trials beside the peers' (measure_peers).
    for n in b.hold_sizes:
        if b.opts.compare and n in b.cmp_hold_sizes:
            continue
        server = b.start_default()
        if n in b.cmp_hold_sizes:
            hold_run(b, f"main-hold-{n}", n)
        else:
            b.run(f"main-hold-{n}", "hold", "--url", server.url, "--connections", n, "--hold", HOLD,
                  "--pid", server.pid)
        b.stop()
    if not b.custom:
        # The greeting on, 1 s after each handshake: the figures once every
        # connection has had it, plus the settle time.
        server = b.start_wsecho("--greeting-delay", "1s")
        b.run("main-hold-greeting-1000", "hold", "--url", server.url, "--connections", 1000, "--hold", "2s",
              "--pid", server.pid, "--greeting-delay", "1s", "--settle", b.opts.settle)
        b.stop()


def measure_portable(b: Bench) -> None:
    if not (b.portable_bin and b.want("hold")):
        return
    server = b.start_wsecho(binary=b.portable_bin, label=PORTABLE_LABEL)
    b.run("port-hold-1000", "hold", "--url", server.url, "--connections", 1000, "--hold", HOLD,
          "--pid", server.pid)
    b.stop()


# -------------------------------------------------------------------- rows --
def rows(b: Bench, r: Report, n: int) -> None:
    """wsecho's hold rows of N connections; with 1,000 its portable backend's
    and those after the greeting too."""
    if not b.want("hold"):
        return
    table(b, r, n, b.main_label)
    if n == 1000 and b.portable_bin:
        table(b, r, 1000, PORTABLE_LABEL, "port")
    if n == 1000:
        greeting_rows(b, r)


def beside(b: Bench, name: str, key: str, spec: str, group: str) -> str:
    """A Target cell showing the plain row's figure beside a TLS row's, or how to get it."""
    v = b.runs.get(name, key)
    return f"{DASH} (plain: {fmt(spec, v)})" if v is not None else f"{DASH} (plain: add the {group} group)"


def table(b: Bench, r: Report, n: int, label: str, prefix: str = "main") -> None:
    """The rows of run PREFIX-hold-N; PREFIX tls: TLS rows, with the plain
    figures beside them instead of wsecho's targets (which are for plain
    connections)."""
    name, plain = f"{prefix}-hold-{n}", f"main-hold-{n}"
    tls = prefix == "tls"
    title = f"hold {fmt_int(n)} idle" + (" over TLS" if tls else "")
    get, text = b.runs.get, b.runs.text
    if not b.runs.has(name):
        if tls and b.tls_note:
            r.row(title, label, "result", b.tls_note)
        else:
            r.missing(title, label, name, "all open and still echoing")
        return
    opened, still_echo = get(name, "opened"), get(name, "still_echo")
    rss, cpu, fds = get(name, "rss_per_conn_kib"), get(name, "idle_cpu_s"), get(name, "fds_per_conn")
    detail = "" if b.runs.ok(name) else f" ({b.runs.error(name)})"
    r.row(title, label, "opened / still echo", f"{text(name, 'opened')} / {text(name, 'still_echo')} of {n}{detail}",
          "all", check(lambda o, e: o == n and e == n, opened, still_echo))
    if rss is not None and cpu is not None and tls:
        r.row(title, label, "server RSS per idle connection", fmt("%.2f KiB", rss),
              beside(b, plain, "rss_per_conn_kib", "%.2f KiB", "hold"))
        r.row(title, label, CPU_FIGURE, fmt("%.3f s", cpu), beside(b, plain, "idle_cpu_s", "%.3f s", "hold"))
    elif rss is not None and cpu is not None:
        r.row(title, label, "server RSS per idle connection", fmt("%.2f KiB", rss), RSS.text, RSS.met(rss))
        r.row(title, label, CPU_FIGURE, fmt("%.3f s", cpu), IDLE_CPU.text, IDLE_CPU.met(cpu))
    elif tls:
        r.row(title, label, "server RSS and idle CPU", "not measured", DASH, NO)
    else:
        r.row(title, label, "server RSS and idle CPU", "not measured", f"{RSS.text}, {IDLE_CPU.text}", NO)
    memory_rows(b, r, name, title, label, prefix)
    # Connections opened per second while opening them all: at least 1.2 ×
    # tokio-tungstenite's example (wsecho's plain rows).
    open_s = get(name, "open_s")
    opened_trials = b.runs.trial_figures(name, "opened_per_s", r.figure)
    tt_trials = b.runs.trial_figures(f"tt-hold-{n}", "opened_per_s", r.figure)
    if prefix == "main" and open_s is not None and opened_trials and tt_trials:
        ratios = Ratios.of(opened_trials, tt_trials, len(b.runs.trials(name)))
        r.row(title, label, "connections opened/s (median of the trials)",
              fmt_int(awk_number(median(list(opened_trials.values())))),
              f"≥ {OPEN_RATE_VS_TT} × tokio-tungstenite (median of {len(tt_trials)}: "
              f"{fmt_int(awk_number(median(list(tt_trials.values()))))})",
              judge_ratio(ratios, OPEN_RATE_VS_TT))
    elif prefix == "main" and open_s is not None:
        rate = opened / open_s if open_s else None
        tt_open = get(f"tt-hold-{n}", "open_s")
        if tt_open is not None:
            wanted = OPEN_RATE_VS_TT * n / tt_open if tt_open else None
            r.row(title, label, "connections opened/s", fmt_int(awk_number(rate)),
                  f"≥ {OPEN_RATE_VS_TT} × tokio-tungstenite ({fmt_int(awk_number(wanted))})",
                  check(lambda rate, wanted: rate >= wanted, rate, wanted))
        else:
            r.row(title, label, "connections opened/s", fmt_int(awk_number(rate)),
                  f"≥ {OPEN_RATE_VS_TT} × tokio-tungstenite (run --compare)")
    # Open descriptors (/proc/PID/fd) after all connected minus before, per
    # connection: 1 is the client's socket alone.
    if fds is not None:
        target = DASH
        if tls:
            target = beside(b, plain, "fds_per_conn", "%.2f", "hold")
        elif prefix != "main" and get(plain, "fds_per_conn") is not None:
            target = f"{DASH} (wsecho: {fmt('%.2f', get(plain, 'fds_per_conn'))})"
        r.row(title, label, "server file descriptors per connection",
              f"{fmt('%.2f', fds)} ({fmt_int(get(name, 'fds_before'))} → {fmt_int(get(name, 'fds_after'))})", target)
    else:
        r.row(title, label, "server file descriptors per connection", "not measured")


def memory_rows(b: Bench, r: Report, name: str, title: str, label: str, prefix: str) -> None:
    """The kernel and RSS + kernel rows of a hold run, and its figures after a
    message (--then-echo) beside the fresh ones."""
    get = b.runs.get
    kernel, total = get(name, "kernel_per_conn_kib"), get(name, "total_per_conn_kib")
    rss = get(name, "rss_per_conn_kib")
    if kernel is not None:
        r.row(title, label, KERNEL_FIGURE,
              f"{fmt_kib(kernel)} (unreclaimable slab {fmt_kib(get(name, 'slab_unreclaimable_per_conn_kib'))}, "
              f"kernel stacks {fmt_kib(get(name, 'kernel_stack_per_conn_kib'))}, "
              f"page tables {fmt_kib(get(name, 'page_tables_per_conn_kib'))}; "
              f"samples spread {fmt_int(get(name, 'kernel_spread_kib'))} KiB)")
        if prefix == "main":
            r.row(title, label, "RSS + kernel per idle connection", fmt_kib(total), TOTAL.text, TOTAL.met(total))
        else:
            r.row(title, label, "RSS + kernel per idle connection", fmt_kib(total))
    size, after = get(name, "then_echo_bytes"), get(name, "after_message_rss_per_conn_kib")
    if size is not None and after is not None:
        echoed, opened = get(name, "then_echoed"), get(name, "opened")
        cell = f"{fmt_kib(after)} / {fmt_kib(get(name, 'after_message_total_per_conn_kib'))}"
        if b.runs.text(name, "then_echoed") != b.runs.text(name, "opened"):
            cell += f" (only {fmt_int(echoed)} of {fmt_int(opened)} echoed it intact)"
        r.row(title, label,
              f"after a {fmt_bytes(size)} message, {fmt_g(get(name, 'settle_s'))} s later: "
              "RSS / RSS + kernel per idle connection",
              cell, f"RSS ≤ fresh + {AFTER_SLACK_KIB} KiB (fresh: {fmt_kib(rss)} / {fmt_kib(total)})",
              check(lambda e, o, a, f: e == o and a <= f + AFTER_SLACK_KIB, echoed, opened, after, rss))


def greeting_rows(b: Bench, r: Report) -> None:
    """wsecho's 1,000 idle connections after their greeting."""
    if b.custom:
        return
    name, fresh, title = "main-hold-greeting-1000", "main-hold-1000", "hold 1,000 idle, greeting on (1 s)"
    get = b.runs.get
    if not b.runs.has(name):
        r.missing(title, "wsecho", name, "all greeted")
        return
    greeted, still_echo = get(name, "greetings"), get(name, "still_echo")
    r.row(title, "wsecho", "greetings received / still echo",
          f"{fmt_int(greeted)} / {fmt_int(still_echo)} of {fmt_int(get(name, 'opened'))} opened", "1,000",
          check(lambda g, e: g == 1000 and e == 1000, greeted, still_echo))
    after = get(name, "after_greeting_rss_per_conn_kib")
    target = f"RSS ≤ fresh + {AFTER_SLACK_KIB} KiB (fresh, greeting off: add the hold group)"
    m = DASH
    if b.runs.has(fresh):
        target = (f"RSS ≤ fresh + {AFTER_SLACK_KIB} KiB (fresh, greeting off: "
                  f"{fmt_kib(get(fresh, 'rss_per_conn_kib'))} / {fmt_kib(get(fresh, 'total_per_conn_kib'))})")
        if after is not None:
            m = check(lambda a, f: a <= f + AFTER_SLACK_KIB, after, get(fresh, "rss_per_conn_kib"))
    r.row(title, "wsecho",
          f"after the greeting, {fmt_g(get(name, 'settle_s'))} s later: RSS / RSS + kernel per idle connection",
          f"{fmt_kib(after)} / {fmt_kib(get(name, 'after_greeting_total_per_conn_kib'))}", target, m)


def compare(b: Bench, r: Report) -> None:
    """The side-by-side hold table."""
    heading = ("Hold: idle connections (per connection; kernel = SUnreclaim + KernelStack + PageTables, "
               "both ends: see --help)")
    if not (b.want("hold") and r.compare_table(heading, [(p, b.peers.label(p)) for p in PEERS if p in b.peers.ready])):
        return
    message = fmt_bytes(AFTER_MESSAGE)
    for n in b.cmp_hold_sizes:
        title, suffix = f"hold {fmt_int(n)} idle", f"hold-{n}"
        panel = f"Memory per idle connection, {fmt_int(n)} connections (KiB, lower is better)"
        kib = partial(Chart, panel, unit="KiB")
        r.compare_row(title, "connections opened/s", "higher", fmt_int, "opened_per_s", suffix)
        r.compare_row(title, "server RSS", "lower", fmt_kib, "rss_per_conn_kib", suffix, kib("RSS"))
        r.compare_row(title, "kernel", "lower", fmt_kib, "kernel_per_conn_kib", suffix)
        r.compare_row(title, "RSS + kernel", "lower", fmt_kib, "total_per_conn_kib", suffix, kib("RSS + kernel"))
        r.compare_row(title, f"server RSS after a {message} message + {b.settle_text}", "lower", fmt_kib,
                      "after_message_rss_per_conn_kib", suffix, kib(f"RSS after a {message} message"))
        r.compare_row(title, f"RSS + kernel after a {message} message + {b.settle_text}", "lower", fmt_kib,
                      "after_message_total_per_conn_kib", suffix, kib(f"RSS + kernel after a {message} message"))
