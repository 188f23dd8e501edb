#!/usr/bin/env bash
# Benchmarks wsecho with wsload and writes a Markdown table to
# target/bench/results.md (and prints it).
#
# Usage: scripts/bench.sh [--quick] [--soak] [--compare] [--portable]
#        scripts/bench.sh --rehearsal   (99,000 clients on a cluster of six)
# (scripts/bench.sh --help: the options, the environment variables, the
# peers of --compare and what each row measures; the text is
# scripts/bench/usage.txt). scripts/bench.sh --self-test checks the
# arithmetic of the interleaved trials (scripts/bench/trials.py) and builds
# and runs nothing.
#
# This wrapper checks the options, bounds the whole run in time, builds
# wsecho and wsload, and hands over to the driver in scripts/bench/, a Python
# package (3.11 or newer, standard library only): main.py holds the run plan,
# groups/ a module per group of rows, peers/ the sources of the comparison
# servers. Every server it starts listens on 127.0.0.1 only, and every client
# connects to it there (the storm rows' from 127.0.0.1 to 127.0.0.254); on
# exit (normal, error or Ctrl-C) it stops everything it started.
set -euo pipefail

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
say() { echo "bench: $*" >&2; }

for arg in "$@"; do
    case "$arg" in
    -h | --help)
        cat "$ROOT/scripts/bench/usage.txt"
        exit 0
        ;;
    esac
done

if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    say "error: the benchmark's driver needs python3, version 3.11 or newer"
    exit 1
fi
# The driver runs as `python3 -P -m bench` from scripts/ (-P: not from the
# current directory), and leaves no __pycache__ in the repository.
export PYTHONPATH="$ROOT/scripts${PYTHONPATH:+:$PYTHONPATH}" PYTHONDONTWRITEBYTECODE=1

if [[ ${1:-} == --self-test ]]; then
    exec python3 -P -m bench --self-test
fi

# Bound the whole run: re-run this script under timeout(1), for as long as
# the options ask for (the driver checks them, BENCH_ONLY too, and works it
# out). Each wsload run is bounded by itself; this catches anything else (a
# build that hangs, say).
if [[ -z ${BENCH_UNDER_TIMEOUT:-} ]]; then
    budget=$(python3 -P -m bench --budget "$@")
    export BENCH_UNDER_TIMEOUT=1
    exec timeout --foreground --kill-after=30 "$budget" bash "$0" "$@"
fi

command -v cargo >/dev/null || {
    say "error: cargo not found; install Rust first"
    exit 1
}
if [[ -n ${BENCH_SERVER:-} || -n ${WSECHO_BIN:-} ]]; then
    say "building wsload (release)"
    (cd "$ROOT" && cargo build --release --quiet -p wsload)
else
    say "building wsecho and wsload (release)"
    (cd "$ROOT" && cargo build --release --quiet --workspace)
fi

exec python3 -P -m bench "$@"
