#!/usr/bin/env bash
# Benchmarks wsecho with wsload and writes a Markdown table to
# target/bench/results.md (and prints it).
#
# Usage: scripts/bench.sh [--quick] [--soak] [--compare] [--portable]
#   --quick    3 s echo rows instead of 10 s; with --compare, the peers'
#              hold rows at 1,000 connections only
#   --soak     add 10 minutes of mixed echo traffic, sampling the server's RSS
#   --compare  also run other servers (the peers below) through the same
#              rows, print them side by side with wsecho's, each row with
#              wsecho's figure as a multiple of the best peer's, and draw
#              the comparison as a chart (target/bench/comparison.svg)
#   --portable also build wsecho with its portable-poll feature (the portable
#              waker/poll backend) into target/portable and run the echo rows
#              1×32 B, 64×32 B, 64×4 KiB and hold 1,000 against it, labelled
#              "wsecho (portable backend)". If that build fails, the script
#              says so in one line and goes on without those rows.
#
# The peers of --compare, each built or installed into BENCH_CACHE (outside
# the repository; delete a folder there to get a newer version):
#   tokio-tungstenite  its echo-server example, and tungstenite's server
#   tungstenite        example (a thread per connection), from the published
#                      crates (0.30.0), built unchanged: echo and hold rows
#   Node ws            npm package ws, version 8 (npm install into
#                      BENCH_CACHE/node/ws), with the echo server of its
#                      README (text echoed as text, binary as binary): echo
#                      and hold rows; and its README's broadcast server (every
#                      message to every client, the sender too): fan-out rows
#   WebSocket-Node     npm package websocket, version 1, the library of the
#                      tutorial's server, with its README's echo server,
#                      without the logging: echo rows only
#   websocat           websocat -b -E ws-l:127.0.0.1:PORT broadcast:mirror:
#                      (every message to every client, the sender too; -b as
#                      the messages are binary): fan-out rows. Taken from
#                      WEBSOCAT or PATH, else built with cargo install
#                      --locked into BENCH_CACHE/websocat
# Node comes from PATH (or NODE), with npm beside it. A peer that cannot be
# built or installed is named in one line, and the run goes on without its
# rows. The peers' hold rows are 1,000 and 5,000 idle connections (wsecho
# gets a 5,000 row too); the tungstenite example's threads keep Rust's
# default 2 MiB stacks (address space, mostly untouched), so the counts stay
# moderate.
#
# The hold rows (wsecho's, and the peers' with --compare) report per idle
# connection:
#   RSS        the server's resident memory growth from before connecting to
#              once all are open, divided by the connections
#   kernel     the machine's kernel memory growth over the same span, from
#              /proc/meminfo: SUnreclaim (the unreclaimable slab: sockets,
#              files, epoll entries, each thread's task structures) +
#              KernelStack (16 KiB per thread on x86-64) + PageTables (a
#              thread's stack needs page-table pages of its own), medians of
#              several samples on each side. It counts what RSS does not
#              show: a thread-per-connection server's kernel stacks, and
#              every server's sockets. It also counts wsload's own end of
#              each connection (a socket and an epoll entry), the same for
#              every server, and whatever else the machine does meanwhile:
#              keep it otherwise quiet. Reclaimable slab (SReclaimable, about
#              1 KiB per socket for its inode and dentry, the same for every
#              server) is left out: it is mostly the file caches, which a
#              build elsewhere on the machine moves by tens of MiB; the raw
#              JSON has it apart (slab_reclaimable_per_conn_kib).
#   RSS + kernel  the two together: what an idle connection costs the machine
# and the same again after the connection did something, taken a settle time
# (3 s, BENCH_SETTLE) later: long enough for a server that gives back its
# buffers after a short idle time (wsecho's is to be about 1 s) to have done
# so (medians of 5 samples over 1 s):
#   after a 64 KiB message  every connection sent one binary message of
#              64 KiB and read its echo (wsload hold --then-echo 65536)
#   after the greeting      wsecho only, its greeting on (1 s after the
#              handshake): every connection got its greeting (wsecho's own
#              hold rows have the greeting off: --greeting-delay off)
#
# With --compare, results.md gets a side-by-side section: one table per
# group (echo, hold, fan-out), a column per server, and for each row wsecho's
# figure as a multiple of the best peer's in the same run, e.g. "0.93× best
# (Node ws)": the best is the highest for throughput and the lowest for
# latency and memory, each row says which it is. A peer whose run failed
# its checks is shown, marked, and not taken as the best. The same figures
# go to target/bench/comparison.tsv, and scripts/chart.py draws them as
# grouped bars, one panel per question, wsecho highlighted:
# target/bench/comparison.svg, with matplotlib from a virtual environment in
# BENCH_CACHE/venv (python3 -m venv, pip install matplotlib). Without
# python3 or PyPI the script says so in one line and draws no chart.
#
# Environment (all optional):
#   WSECHO_BIN      use this wsecho binary instead of building the workspace's
#   BENCH_SERVER    benchmark another server instead of wsecho: a command line
#                   in which {addr} becomes 127.0.0.1:PORT, for example
#                   BENCH_SERVER='/path/to/echo-server {addr}'. Rows that need
#                   wsecho's --broadcast or --greeting-delay are skipped.
#   BENCH_CACHE     where --compare builds and installs the peers, and the
#                   chart's Python environment
#                   (default: ${XDG_CACHE_HOME:-$HOME/.cache}/wsecho-bench)
#   BENCH_SETTLE    the settle time of the "after" figures (default 3s)
#   NODE            node for the Node peers (default: node on PATH)
#   WEBSOCAT        websocat for the fan-out peer (default: on PATH, else
#                   BENCH_CACHE/websocat/bin/websocat, built when missing)
#   BENCH_THREADS   wsload worker threads (default 1: on two cores every
#                   client thread competes with the server)
#   BENCH_SOAK_SECONDS  length of --soak (default 600)
#   BENCH_ONLY      run only these groups of rows, comma-separated, e.g.
#                   BENCH_ONLY=burst or BENCH_ONLY=echo,hold:
#                     echo      echo rows (also --compare's and --portable's)
#                     hold      hold 1,000 and 10,000 idle, 1,000 after the
#                               greeting (and --portable's, --compare's)
#                     greeting  10,000 greetings due at once
#                     fanout    fan-out 100 × 1,000 (and --compare's)
#                     burst     broadcast burst with one slow reader
#                     cluster   fan-out 100 × 1,000 across two instances
#                               on one redis-server (--redis): the sender
#                               on one, the listeners spread over both;
#                               needs redis-server (installed with
#                               scripts/install-redis.sh when missing)
#                     tls       hold 1,000 and 10,000 idle and echo 64×32 B
#                               over TLS (wss://), each printed beside its
#                               plain row with the difference, TLS − plain
#                   --soak runs when asked for, whatever BENCH_ONLY says.
#   REDIS_SERVER    redis-server for the cluster rows (default: on PATH)
#
# The tls rows make a certificate authority and a server certificate for
# localhost and 127.0.0.1 (EC P-256) with the openssl command into the run's
# temporary folder, start wsecho with --tls-cert/--tls-key, and have wsload
# trust only that authority (--ca). Without openssl, or with BENCH_SERVER,
# they are skipped with a note.
#
# Every server and client it starts listens on or connects to 127.0.0.1
# only, every run is bounded in time, and the whole script is bounded too; on
# exit (normal, error or Ctrl-C) it stops everything it started.
set -euo pipefail

QUICK=0 SOAK=0 COMPARE=0 PORTABLE=0
for arg in "$@"; do
    case "$arg" in
    --quick) QUICK=1 ;;
    --soak) SOAK=1 ;;
    --compare) COMPARE=1 ;;
    --portable) PORTABLE=1 ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "bench: unknown option $arg (try --help)" >&2
        exit 2
        ;;
    esac
done

SOAK_SECONDS=${BENCH_SOAK_SECONDS:-600}

GROUPS_ALL="echo hold greeting fanout burst cluster tls"
ONLY=${BENCH_ONLY:-}
for group in ${ONLY//,/ }; do
    if [[ " $GROUPS_ALL " != *" $group "* ]]; then
        echo "bench: unknown group '$group' in BENCH_ONLY (groups: ${GROUPS_ALL// /, })" >&2
        exit 2
    fi
done
want() { # want GROUP: true if BENCH_ONLY is unset or names GROUP
    [[ -z $ONLY || ",$ONLY," == *",$1,"* ]]
}

# Bound the whole run: re-run this script under timeout(1). Each wsload run is
# bounded by itself, this catches anything else (a build that hangs, say).
if [[ -z ${BENCH_UNDER_TIMEOUT:-} ]]; then
    budget=$((40 * 60 + COMPARE * 30 * 60 + PORTABLE * 15 * 60 + SOAK * (SOAK_SECONDS + 5 * 60)))
    export BENCH_UNDER_TIMEOUT=1
    exec timeout --foreground --kill-after=30 "$budget" bash "$0" "$@"
fi

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
OUT="$ROOT/target/bench"
RAW="$OUT/raw"
mkdir -p "$RAW"
rm -f "$RAW"/*.json "$RAW"/*.err "$RAW"/*.txt
WORK=$(mktemp -d "${TMPDIR:-/tmp}/wsecho-bench.XXXXXX")
THREADS=${BENCH_THREADS:-1}
ECHO_SECONDS=$((QUICK ? 3 : 10))
WARMUP=1s
# The burst row: 800 messages of 64 KiB (50 MiB) at full speed to 10
# listeners and one more that reads 2 MiB/s.
BURST_LISTENERS=10 BURST_MESSAGES=800 BURST_SIZE=65536 BURST_RATE=2097152

say() { echo "bench: $*" >&2; }
die() {
    say "error: $*"
    exit 1
}

# ---------------------------------------------------------------- cleanup --
SERVER_PID=""
DRAIN_PID=""
SAMPLER_PID=""
CLUSTER_PIDS=() # the cluster rows' redis-server, instances and their stdout drains

stop_pid() { # stop_pid PID: TERM, wait up to 10 s, then KILL; returns its exit status
    local pid=$1 status=0
    [[ -n $pid ]] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    if ! timeout 10 tail --pid="$pid" -f /dev/null 2>/dev/null; then
        say "pid $pid ignored SIGTERM for 10 s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || status=$?
    return "$status"
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    stop_pid "$SAMPLER_PID" || true
    stop_pid "$SERVER_PID" || true
    stop_pid "$DRAIN_PID" || true
    for pid in "${CLUSTER_PIDS[@]}"; do stop_pid "$pid" || true; done
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------------ build --
command -v cargo >/dev/null || die "cargo not found; install Rust first"
CUSTOM=${BENCH_SERVER:-}
if [[ -n $CUSTOM || -n ${WSECHO_BIN:-} ]]; then
    say "building wsload (release)"
    (cd "$ROOT" && cargo build --release --quiet -p wsload)
else
    say "building wsecho and wsload (release)"
    (cd "$ROOT" && cargo build --release --quiet --workspace)
fi
WSLOAD="$ROOT/target/release/wsload"
WSECHO=${WSECHO_BIN:-$ROOT/target/release/wsecho}
[[ -x $WSLOAD ]] || die "$WSLOAD was not built"
if [[ -z $CUSTOM ]]; then
    [[ -x $WSECHO ]] || die "$WSECHO not found (set WSECHO_BIN or BENCH_SERVER)"
fi

# The portable backend: the same source built with the portable-poll feature,
# in a target directory of its own so that it never replaces the default
# binary. A failed build skips its rows, not the whole run.
PORTABLE_BIN="" PORTABLE_NOTE=""
PORTABLE_LABEL="wsecho (portable backend)"
if ((PORTABLE)) && [[ -n $CUSTOM ]]; then
    PORTABLE_NOTE="not run: --portable measures wsecho, not BENCH_SERVER"
    say "--portable is ignored with BENCH_SERVER"
elif ((PORTABLE)) && (want echo || want hold); then
    say "building wsecho with --features portable-poll (release, target/portable)"
    build_log="$OUT/portable-build.log"
    if (cd "$ROOT" && cargo build --release -p wsecho --features portable-poll \
        --target-dir "$ROOT/target/portable") >"$build_log" 2>&1 &&
        [[ -x $ROOT/target/portable/release/wsecho ]]; then
        PORTABLE_BIN=$ROOT/target/portable/release/wsecho
    else
        why=$(grep -m1 '^error' "$build_log" || tail -1 "$build_log")
        PORTABLE_NOTE="not built, rows skipped: ${why:-no output}"
        say "--portable: building wsecho with --features portable-poll failed (${why:-no output}); skipping the portable-backend rows (full log: target/bench/portable-build.log)"
    fi
fi

# ------------------------------------------------------- file descriptors --
# wsecho needs one descriptor per client (its socket), so 10,000 clients need
# a little over 10,000, and wsload as many again in its own process. Raising
# the hard limit needs root (and a container that lets root do it); take
# whatever we can get.
ulimit -Hn 1048576 2>/dev/null || true
ulimit -Sn "$(ulimit -Hn)" 2>/dev/null || true
FD_LIMIT=$(ulimit -Sn)
say "open-file limit for the servers and wsload: $FD_LIMIT"
if [[ $FD_LIMIT != unlimited ]] && ((FD_LIMIT < 10100)); then
    say "warning: below the ~10,100 descriptors wsecho needs for 10,000 clients; the 10,000 rows may fall short"
fi

# ---------------------------------------------------------------- servers --
SERVER_URL=""
SERVER_LABEL=""

start_wsecho() { # start_wsecho [extra wsecho flags]: sets SERVER_PID and SERVER_URL
    start_wsecho_binary "$WSECHO" wsecho "$@"
}

start_wsecho_binary() { # start_wsecho_binary BINARY LABEL [extra wsecho flags]
    local binary=$1 label=$2 fifo="$WORK/stdout.fifo" fd line
    shift 2
    rm -f "$fifo"
    mkfifo "$fifo"
    "$binary" --host 127.0.0.1 --port 0 --log-level off --greeting-delay off "$@" \
        >"$fifo" 2>"$WORK/server.err" &
    SERVER_PID=$!
    exec {fd}<"$fifo"
    # The server prints exactly one line, its URL, once it is listening.
    if ! read -r -t 30 -u "$fd" line; then
        exec {fd}<&-
        sed 's/^/  server: /' "$WORK/server.err" >&2 || true
        die "wsecho $* did not print its URL within 30 s"
    fi
    # Keep draining stdout so the server can never block on a full pipe.
    cat <&"$fd" >/dev/null &
    DRAIN_PID=$!
    exec {fd}<&-
    [[ $line == ws://* || $line == wss://* ]] || die "wsecho printed '$line' instead of its URL"
    SERVER_URL=$line
    SERVER_LABEL=$label
}

free_port() { # a port nobody listens on (checked by trying to connect)
    local port
    for _ in $(seq 200); do
        port=$((20000 + RANDOM % 20000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return 0
        fi
    done
    die "no free port found"
}

start_command() { # start_command LABEL PORT COMMAND...: a server that listens on a known port
    local label=$1 port=$2
    shift 2
    "$@" >/dev/null 2>"$WORK/server.err" &
    SERVER_PID=$!
    SERVER_URL="ws://127.0.0.1:$port"
    SERVER_LABEL=$label
    if ! "$WSLOAD" wait --url "$SERVER_URL" --timeout 30s; then
        sed 's/^/  server: /' "$WORK/server.err" | tail -5 >&2 || true
        say "$label did not come up on port $port"
        return 1
    fi
}

start_custom() { # BENCH_SERVER with {addr} replaced
    local port words=() word
    port=$(free_port)
    read -r -a words <<<"$CUSTOM"
    for i in "${!words[@]}"; do
        word=${words[$i]}
        words[i]=${word//\{addr\}/127.0.0.1:$port}
    done
    start_command "custom (${words[0]##*/})" "$port" "${words[@]}" || die "BENCH_SERVER did not come up"
}

start_default_server() { # wsecho with default flags, or BENCH_SERVER when given
    if [[ -n $CUSTOM ]]; then start_custom; else start_wsecho; fi
    MAIN_LABEL=$SERVER_LABEL
}
MAIN_LABEL=wsecho

stop_server() {
    local status=0
    stop_pid "$SERVER_PID" || status=$?
    SERVER_PID=""
    stop_pid "$DRAIN_PID" || true
    DRAIN_PID=""
    if [[ $SERVER_LABEL == wsecho* && $status -ne 0 ]]; then
        say "warning: $SERVER_LABEL exited with status $status on SIGTERM"
        STOP_WARNINGS+="$SERVER_LABEL exited with status $status on SIGTERM. "
    fi
}
STOP_WARNINGS=""

# -------------------------------------------------------------------- tls --
# A certificate authority and a server certificate it issued, for the tls
# rows: made afresh for every run, in the temporary folder (removed on exit).
TLS_DIR="$WORK/tls" TLS_NOTE=""
TLS_OPTS=() # wsload's TLS options
make_tls_files() { # sets TLS_NOTE when the files cannot be made
    local log="$WORK/openssl.log"
    if ! command -v openssl >/dev/null; then
        TLS_NOTE="not run: the openssl command is not installed"
        return
    fi
    mkdir -p "$TLS_DIR"
    printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" "basicConstraints=critical,CA:FALSE" \
        "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" >"$TLS_DIR/server.ext"
    if openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -days 2 \
        -subj "/CN=wsecho bench CA" -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -keyout "$TLS_DIR/ca.key" -out "$TLS_DIR/ca.pem" >"$log" 2>&1 &&
        openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -subj "/CN=localhost" \
            -keyout "$TLS_DIR/server.key" -out "$TLS_DIR/server.csr" >>"$log" 2>&1 &&
        openssl x509 -req -in "$TLS_DIR/server.csr" -CA "$TLS_DIR/ca.pem" -CAkey "$TLS_DIR/ca.key" \
            -set_serial "0x$(openssl rand -hex 8)" -days 2 -extfile "$TLS_DIR/server.ext" \
            -out "$TLS_DIR/server.pem" >>"$log" 2>&1; then
        # The certificate names localhost: wsload sends that as SNI, as a
        # browser opening wss://localhost:PORT would.
        TLS_OPTS=(--ca "$TLS_DIR/ca.pem" --server-name localhost)
    else
        TLS_NOTE="not run: openssl could not make the certificates ($(grep -m1 -i error "$log" || tail -1 "$log"))"
    fi
}
TLS_LABEL="wsecho over TLS"
if want tls; then
    if [[ -n $CUSTOM ]]; then
        TLS_NOTE="not run: the tls rows measure wsecho, not BENCH_SERVER"
    else
        make_tls_files
    fi
    [[ -n $TLS_NOTE ]] && say "tls rows: $TLS_NOTE"
fi
start_wsecho_tls() { # wsecho with default flags, serving wss:// with the run's certificate
    start_wsecho_binary "$WSECHO" "$TLS_LABEL" \
        --tls-cert "$TLS_DIR/server.pem" --tls-key "$TLS_DIR/server.key"
    [[ $SERVER_URL == wss://* ]] || die "wsecho with --tls-cert printed $SERVER_URL, not a wss:// URL"
}

# ------------------------------------------------------------------- runs --
# run NAME wsload-arguments...: runs wsload with --json, keeps the JSON in
# target/bench/raw/NAME.json, prints a one-line summary.
run() {
    local name=$1 status=0
    shift
    say "$name: wsload $*"
    timeout 1800 "$WSLOAD" "$@" --threads "$THREADS" --json \
        >"$RAW/$name.json" 2>"$RAW/$name.err" || status=$?
    if [[ ! -s $RAW/$name.json ]]; then
        say "$name: no result (exit $status): $(tail -1 "$RAW/$name.err")"
        rm -f "$RAW/$name.json"
    elif ((status != 0)); then
        say "$name: verification FAILED (details in $RAW/$name.json)"
    fi
}

# jget NAME KEY: a number (or true/false/null) from NAME's JSON. wsload's
# reports use each key once, so a sed match is enough and no JSON tool is
# needed on a fresh machine.
jget() {
    local file="$RAW/$1.json"
    [[ -f $file ]] || return 0
    sed -n "s/.*\"$2\":\([^,}]*\).*/\1/p" "$file" | head -1
}

# jerr NAME: first_error of NAME, or the last line wsload printed on stderr.
jerr() {
    local text=""
    [[ -f $RAW/$1.json ]] && text=$(sed -n 's/.*"first_error":"\(\([^"\\]\|\\.\)*\)".*/\1/p' "$RAW/$1.json")
    [[ -z $text && -f $RAW/$1.err ]] && text=$(tail -1 "$RAW/$1.err")
    echo "$text"
}

ECHO_SPECS="1x32 16x32 64x32 64x4096"
PORTABLE_ECHO_SPECS="1x32 64x32 64x4096"

echo_rows() { # echo_rows PREFIX URL [SPECS]: connections x size, e.g. "1x32 64x4096"
    local prefix=$1 url=$2 spec_list=${3:-$ECHO_SPECS} spec c s
    for spec in $spec_list; do
        c=${spec%x*} s=${spec#*x}
        run "$prefix-echo-$spec" echo --url "$url" --connections "$c" --size "$s" \
            --duration "${ECHO_SECONDS}s" --warmup "$WARMUP"
    done
}

START_LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
STARTED_AT=$(date -u '+%Y-%m-%d %H:%M UTC')
SECONDS=0

# ------------------------------------------------------------------ peers --
# The other servers of --compare, each built or installed into the cache.
# A peer that cannot be had is named once (PEER_NOTES) and its rows skipped.
CACHE=${BENCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/wsecho-bench}
PEERS_READY=" " # the peers that can run, e.g. " tt tung node "
PEER_NOTES=()   # one line per peer that cannot
declare -A PEER_LABEL=(
    [tt]="tokio-tungstenite example" [tung]="tungstenite example"
    [node]="Node ws" [nodebc]="Node ws broadcast" [wsnode]="WebSocket-Node"
    [websocat]="websocat"
)
declare -A PEER_ABOUT=() # what each peer is, with its version, for results.md
peer_ready() { [[ $PEERS_READY == *" $1 "* ]]; }
peer_skip() { # peer_skip NAMES WHY: one line, and no rows
    say "--compare: $1: $2; going on without its rows"
    PEER_NOTES+=("$1: $2")
}
peer_label() { echo "${PEER_LABEL[$1]:-$1}"; }
run_peer() { echo "${1%%-*}"; } # run_peer RUN: the peer a raw run belongs to (tt-echo-1x32: tt)
first_error() { # first_error LOG: the line of LOG that says what went wrong
    grep -m1 -i -E '^error|npm error|ERR!' "$1" || tail -1 "$1"
}

CMP="$CACHE/compare"
prepare_rust_peers() { # tokio-tungstenite's echo-server and tungstenite's server examples
    local log="$OUT/compare-build.log" tt_dir t_dir
    say "building the tokio-tungstenite and tungstenite examples in $CMP"
    mkdir -p "$CMP/src/bin"
    cat >"$CMP/Cargo.toml" <<'TOML'
# Generated by wsecho's scripts/bench.sh: the published examples of
# tokio-tungstenite and tungstenite, built unchanged, as comparison servers.
[package]
name = "wsecho-bench-compare"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
tokio-tungstenite = "=0.30.0"
tungstenite = "=0.30.0"
tokio = { version = "1", features = ["full"] }
futures-util = "0.3"
futures-channel = "0.3"
log = "0.4"
env_logger = "0.11"

[profile.release]
debug = 1

[workspace]
TOML
    # An empty library target lets cargo resolve and download the crates
    # before the examples are copied in as binaries.
    echo "// Only here so the package has a target before the examples arrive." >"$CMP/src/lib.rs"
    if ! (cd "$CMP" && cargo fetch --quiet && cargo metadata --format-version 1 >"$CMP/metadata.json") >"$log" 2>&1; then
        peer_skip "tokio-tungstenite, tungstenite" "could not fetch the crates ($(first_error "$log"))"
        return
    fi
    tt_dir=$(grep -o '"manifest_path":"[^"]*/tokio-tungstenite-0\.30\.0/Cargo.toml"' "$CMP/metadata.json" | head -1 | sed 's/.*:"//; s/Cargo.toml"$//')
    t_dir=$(grep -o '"manifest_path":"[^"]*/tungstenite-0\.30\.0/Cargo.toml"' "$CMP/metadata.json" | head -1 | sed 's/.*:"//; s/Cargo.toml"$//')
    if [[ ! -f ${tt_dir}examples/echo-server.rs || ! -f ${t_dir}examples/server.rs ]]; then
        peer_skip "tokio-tungstenite, tungstenite" "the examples are not in the downloaded crate sources"
        return
    fi
    cp "${tt_dir}examples/echo-server.rs" "$CMP/src/bin/tokio-tungstenite-echo.rs"
    cp "${t_dir}examples/server.rs" "$CMP/src/bin/tungstenite-server.rs"
    if ! (cd "$CMP" && cargo build --release --quiet) >>"$log" 2>&1; then
        peer_skip "tokio-tungstenite, tungstenite" "the build failed ($(first_error "$log"); target/bench/compare-build.log)"
        return
    fi
    PEERS_READY+="tt tung "
    PEER_ABOUT[tt]="tokio-tungstenite 0.30.0's examples/echo-server.rs (tokio, a task per connection), built unchanged"
    PEER_ABOUT[tung]="tungstenite 0.30.0's examples/server.rs (a thread per connection, std's default 2 MiB stacks), built unchanged; it listens on 127.0.0.1:3012"
}

NODE_BIN=${NODE:-node}
NODE_DIR="$CACHE/node"
npm_package() { # npm_package DIR NAME RANGE: NAME@RANGE installed in DIR (once); prints its version
    local dir=$1 name=$2 range=$3 log="$OUT/npm-$2.log"
    mkdir -p "$dir"
    cat >"$dir/package.json.new" <<JSON
{
  "name": "wsecho-bench-$name",
  "private": true,
  "description": "Written by wsecho's scripts/bench.sh: the library of a comparison server.",
  "dependencies": { "$name": "$range" }
}
JSON
    if ! cmp -s "$dir/package.json.new" "$dir/package.json" || [[ ! -f $dir/node_modules/$name/package.json ]]; then
        mv "$dir/package.json.new" "$dir/package.json"
        rm -rf "$dir/node_modules" "$dir/package-lock.json"
        say "installing the npm package $name@$range into $dir (once)"
        if ! (cd "$dir" && npm install --no-audit --no-fund --omit=dev --loglevel=error) >"$log" 2>&1; then
            echo "npm install $name@$range failed ($(first_error "$log"))"
            return 1
        fi
    fi
    rm -f "$dir/package.json.new"
    (cd "$dir" && "$NODE_BIN" -p "require('$name/package.json').version")
}

prepare_node_peers() { # Node ws (echo, broadcast) and WebSocket-Node (echo)
    local version node_version
    if ! command -v "$NODE_BIN" >/dev/null; then
        peer_skip "Node ws, WebSocket-Node" "no node (install Node.js, or set NODE)"
        return
    fi
    if ! command -v npm >/dev/null; then
        peer_skip "Node ws, WebSocket-Node" "no npm to install their packages with"
        return
    fi
    node_version=$("$NODE_BIN" --version)
    if version=$(npm_package "$NODE_DIR/ws" ws 8); then
        # ws's README: its "Simple server", sending back what it receives the
        # way its broadcast examples send it on; and "Server broadcast".
        cat >"$NODE_DIR/ws/echo-server.mjs" <<'JS'
// Written by wsecho's scripts/bench.sh: the server of ws's README, echoing
// every message to its sender, text as text and binary as binary.
// Usage: node echo-server.mjs PORT (listens on 127.0.0.1).
import { WebSocketServer } from 'ws';

const wss = new WebSocketServer({ host: '127.0.0.1', port: Number(process.argv[2]) });

wss.on('connection', function connection(ws) {
  ws.on('error', console.error);

  ws.on('message', function message(data, isBinary) {
    ws.send(data, { binary: isBinary });
  });
});
JS
        cat >"$NODE_DIR/ws/broadcast-server.mjs" <<'JS'
// Written by wsecho's scripts/bench.sh: the "Server broadcast" example of
// ws's README, every message to every connected client, the sender too.
// Usage: node broadcast-server.mjs PORT (listens on 127.0.0.1).
import WebSocket, { WebSocketServer } from 'ws';

const wss = new WebSocketServer({ host: '127.0.0.1', port: Number(process.argv[2]) });

wss.on('connection', function connection(ws) {
  ws.on('error', console.error);

  ws.on('message', function message(data, isBinary) {
    wss.clients.forEach(function each(client) {
      if (client.readyState === WebSocket.OPEN) {
        client.send(data, { binary: isBinary });
      }
    });
  });
});
JS
        PEERS_READY+="node nodebc "
        PEER_LABEL[node]="Node ws $version"
        PEER_LABEL[nodebc]="Node ws $version"
        PEER_ABOUT[node]="npm package ws $version on Node $node_version (without the optional native add-ons), the echo server of its README"
        PEER_ABOUT[nodebc]="for the fan-out rows, the same ws $version with its README's \"Server broadcast\" example (every message to every client, the sender too)"
    else
        peer_skip "Node ws" "$version"
    fi
    if version=$(npm_package "$NODE_DIR/websocket" websocket 1); then
        cat >"$NODE_DIR/websocket/echo-server.js" <<'JS'
// Written by wsecho's scripts/bench.sh: the server example of WebSocket-Node's
// README without its logging, accepting a client that asks for no
// subprotocol (the README's accepts only 'echo-protocol'). Echoes text as
// text and binary as binary. Usage: node echo-server.js PORT (on 127.0.0.1).
var WebSocketServer = require('websocket').server;
var http = require('http');

var server = http.createServer(function (request, response) {
  response.writeHead(404);
  response.end();
});
server.listen(Number(process.argv[2]), '127.0.0.1');

var wsServer = new WebSocketServer({ httpServer: server, autoAcceptConnections: false });

wsServer.on('request', function (request) {
  var connection = request.accept(null, request.origin);
  connection.on('message', function (message) {
    if (message.type === 'utf8') {
      connection.sendUTF(message.utf8Data);
    } else if (message.type === 'binary') {
      connection.sendBytes(message.binaryData);
    }
  });
});
JS
        PEERS_READY+="wsnode "
        PEER_LABEL[wsnode]="WebSocket-Node $version"
        PEER_ABOUT[wsnode]="npm package websocket $version (WebSocket-Node, the tutorial's library) on Node $node_version, its README's echo server without the logging"
    else
        peer_skip "WebSocket-Node" "$version"
    fi
}

WEBSOCAT_VERSION=1.14.1
WEBSOCAT_BIN=""
prepare_websocat() { # websocat's broadcast:mirror: for the fan-out rows
    local bin=${WEBSOCAT:-} log="$OUT/websocat-build.log" version
    if [[ -n $bin ]]; then
        if ! command -v "$bin" >/dev/null; then
            peer_skip websocat "WEBSOCAT=$bin is not a program"
            return
        fi
    elif command -v websocat >/dev/null; then
        bin=websocat
    else
        bin="$CACHE/websocat/bin/websocat"
        if [[ ! -x $bin ]]; then
            say "building websocat $WEBSOCAT_VERSION into $CACHE/websocat (a few minutes, once)"
            if ! cargo install --locked --quiet --root "$CACHE/websocat" websocat --version "$WEBSOCAT_VERSION" >"$log" 2>&1; then
                peer_skip websocat "cargo install websocat failed ($(first_error "$log"); target/bench/websocat-build.log)"
                return
            fi
        fi
    fi
    WEBSOCAT_BIN=$bin
    version=$("$bin" --version 2>/dev/null | awk '{ print $2 }')
    PEERS_READY+="websocat "
    PEER_LABEL[websocat]="websocat ${version:-?}"
    PEER_ABOUT[websocat]="websocat ${version:-?} as \`websocat -b -E ws-l:127.0.0.1:PORT broadcast:mirror:\` (every message to every client, the sender too; -b: binary messages)"
}

start_peer() { # start_peer NAME: starts peer NAME (sets SERVER_PID, SERVER_URL); false if it did not come up
    local name=$1 label port
    label=$(peer_label "$name")
    if [[ $name == tung ]]; then
        # tungstenite's example hard-codes 127.0.0.1:3012.
        if (exec 3<>/dev/tcp/127.0.0.1/3012) 2>/dev/null; then
            say "port 3012 is taken: skipping a run of tungstenite's server example"
            return 1
        fi
        start_command "$label" 3012 "$CMP/target/release/tungstenite-server"
        return
    fi
    port=$(free_port)
    case $name in
    tt) start_command "$label" "$port" "$CMP/target/release/tokio-tungstenite-echo" "127.0.0.1:$port" ;;
    node) start_command "$label" "$port" "$NODE_BIN" "$NODE_DIR/ws/echo-server.mjs" "$port" ;;
    nodebc) start_command "$label" "$port" "$NODE_BIN" "$NODE_DIR/ws/broadcast-server.mjs" "$port" ;;
    wsnode) start_command "$label" "$port" "$NODE_BIN" "$NODE_DIR/websocket/echo-server.js" "$port" ;;
    websocat) start_command "$label" "$port" "$WEBSOCAT_BIN" -b -E "ws-l:127.0.0.1:$port" broadcast:mirror: ;;
    *) die "unknown peer $name" ;;
    esac
}

# The hold rows and their "after" figures.
SETTLE=${BENCH_SETTLE:-3s}
SETTLE_TEXT=$SETTLE # for people: 3s -> 3 s
[[ $SETTLE =~ ^([0-9.]+)s$ ]] && SETTLE_TEXT="${BASH_REMATCH[1]} s"
AFTER_MESSAGE=65536
HOLD_SIZES="1000 10000"
CMP_HOLD_SIZES="1000 5000"
((QUICK)) && CMP_HOLD_SIZES="1000"
if ((COMPARE)) && ! ((QUICK)); then HOLD_SIZES="1000 5000 10000"; fi
hold_run() { # hold_run NAME N [wsload options]: a hold row, then the figures after a 64 KiB message
    local name=$1 n=$2
    shift 2
    run "$name" hold --url "$SERVER_URL" --connections "$n" --hold 10s --pid "$SERVER_PID" \
        --then-echo "$AFTER_MESSAGE" --settle "$SETTLE" "$@"
}
fanout_runs() { # fanout_runs PREFIX: the fan-out rows, full speed and 500/s
    run "$1-fanout-full" fanout --url "$SERVER_URL" --listeners 100 --messages 1000 --rate 0
    run "$1-fanout-500" fanout --url "$SERVER_URL" --listeners 100 --messages 1000 --rate 500
}

ECHO_PEERS="tt tung node wsnode"
HOLD_PEERS="tt tung node"
FANOUT_PEERS="websocat nodebc"

# Comparison servers first: wsecho's targets refer to their figures.
if ((COMPARE)); then
    if want echo || want hold; then prepare_rust_peers; fi
    if want echo || want hold || want fanout; then prepare_node_peers; fi
    if want fanout; then prepare_websocat; fi
    if want echo; then
        for peer in $ECHO_PEERS; do
            peer_ready "$peer" || continue
            start_peer "$peer" && echo_rows "$peer" "$SERVER_URL"
            stop_server
        done
    fi
    if want hold; then
        for peer in $HOLD_PEERS; do
            peer_ready "$peer" || continue
            for n in $CMP_HOLD_SIZES; do
                start_peer "$peer" && hold_run "$peer-hold-$n" "$n"
                stop_server
            done
        done
    fi
    if want fanout; then
        for peer in $FANOUT_PEERS; do
            peer_ready "$peer" || continue
            start_peer "$peer" && fanout_runs "$peer"
            stop_server
        done
    fi
fi

if want echo; then
    start_default_server
    echo_rows main "$SERVER_URL"
    stop_server
fi

if want hold; then
    # Greeting off (start_wsecho's default): the fresh figures, and with
    # 1,000 (and 5,000 with --compare) the figures after a 64 KiB message.
    for n in $HOLD_SIZES; do
        start_default_server
        if [[ " $CMP_HOLD_SIZES " == *" $n "* ]]; then
            hold_run "main-hold-$n" "$n"
        else
            run "main-hold-$n" hold --url "$SERVER_URL" --connections "$n" --hold 10s --pid "$SERVER_PID"
        fi
        stop_server
    done
    if [[ -z $CUSTOM ]]; then
        # The greeting on, 1 s after each handshake: the figures once every
        # connection has had it, plus the settle time.
        start_wsecho --greeting-delay 1s
        run main-hold-greeting-1000 hold --url "$SERVER_URL" --connections 1000 --hold 2s \
            --pid "$SERVER_PID" --greeting-delay 1s --settle "$SETTLE"
        stop_server
    fi
fi

if want tls && [[ -z $TLS_NOTE ]]; then
    # The same hold rows over wss://: the same sizes, idle time and figures.
    for n in 1000 10000; do
        start_wsecho_tls
        run "tls-hold-$n" hold --url "$SERVER_URL" "${TLS_OPTS[@]}" --connections "$n" \
            --hold 10s --pid "$SERVER_PID"
        stop_server
    done
    start_wsecho_tls
    run tls-echo-64x32 echo --url "$SERVER_URL" "${TLS_OPTS[@]}" --connections 64 --size 32 \
        --duration "${ECHO_SECONDS}s" --warmup "$WARMUP"
    stop_server
fi

if [[ -z $CUSTOM ]]; then
    if want greeting; then
        # All 10,000 handshakes as fast as possible, so their greetings fall
        # due together: 1,000 at once from one address, which is what the
        # per-address handshake cap (64 by default) exists to refuse, so it is
        # off for this row.
        start_wsecho --greeting-delay 2s --max-handshakes-per-ip off
        run main-greeting-10000 hold --url "$SERVER_URL" --connections 10000 --hold 5s \
            --greeting-delay 2s --concurrency 1000
        stop_server
    fi

    if want fanout; then
        start_wsecho --broadcast
        fanout_runs main
        stop_server
    fi

    if want burst; then
        # A 50 MiB burst that one listener reads at only 2 MiB/s: with the
        # default flow control (--max-backlog 4 MiB, --send-timeout 10 s) the
        # sender must be slowed to that pace, and the slow reader, which never
        # stops reading, must get every message and never be closed. About
        # 25 s; wsload gives up after 60 s.
        start_wsecho --broadcast
        run main-burst fanout --url "$SERVER_URL" --listeners "$BURST_LISTENERS" \
            --messages "$BURST_MESSAGES" --size "$BURST_SIZE" --rate 0 \
            --slow-listener "$BURST_RATE" --timeout 60s
        stop_server
    fi
fi

# ------------------------------------------------------------ the cluster --
# Two wsecho instances on one redis-server, all on this machine: the sender
# on the first, 100 listeners spread over both (50 each), so half of the
# deliveries cross from one instance to the other through Redis, and all of
# them make the round trip through Redis (the sender's instance fans out what
# its subscription receives, in Redis's order).
CLUSTER_NOTE=""
redis_ping() { # redis_ping PORT: true when a Redis answers PING there
    local reply=""
    { exec 3<>"/dev/tcp/127.0.0.1/$1"; } 2>/dev/null || return 1
    printf 'PING\r\n' >&3
    IFS= read -r -t 2 reply <&3 || true
    exec 3>&-
    [[ $reply == +PONG* ]]
}
healthz_says() { # healthz_says URL TEXT: true when ws://HOST:PORT's /healthz contains TEXT
    local hostport=${1#ws://} body=""
    { exec 4<>"/dev/tcp/${hostport%:*}/${hostport##*:}"; } 2>/dev/null || return 1
    printf 'GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n' >&4
    body=$(timeout 2 cat <&4 || true)
    exec 4>&-
    [[ $body == *"$2"* ]]
}
if [[ -z $CUSTOM ]] && want cluster; then
    REDIS_BIN=${REDIS_SERVER:-redis-server}
    if ! command -v "$REDIS_BIN" >/dev/null && ! "$ROOT/scripts/install-redis.sh"; then
        CLUSTER_NOTE="not run: no redis-server (scripts/install-redis.sh could not install one)"
        say "cluster: $CLUSTER_NOTE"
    else
        REDIS_BIN=${REDIS_SERVER:-redis-server}
        redis_port=$(free_port)
        "$REDIS_BIN" --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no \
            --dir "$WORK" --logfile "$WORK/redis.log" --daemonize no &
        CLUSTER_PIDS+=($!)
        for _ in $(seq 100); do redis_ping "$redis_port" && break; sleep 0.1; done
        redis_ping "$redis_port" || die "redis-server did not answer PING on port $redis_port"
        say "cluster: redis-server $("$REDIS_BIN" --version | cut -d' ' -f3) on port $redis_port"
        CLUSTER_URLS=()
        for _ in 1 2; do
            start_wsecho --broadcast --redis "redis://127.0.0.1:$redis_port/0"
            CLUSTER_URLS+=("$SERVER_URL")
            CLUSTER_PIDS+=("$SERVER_PID" "$DRAIN_PID")
            SERVER_PID="" DRAIN_PID=""
        done
        # Each instance has subscribed once its /healthz says so (bounded wait).
        for url in "${CLUSTER_URLS[@]}"; do
            for _ in $(seq 100); do healthz_says "$url" '"redis":"up"' && break; sleep 0.1; done
            healthz_says "$url" '"redis":"up"' || die "wsecho at $url did not join Redis"
        done
        spread=(--listener-url "${CLUSTER_URLS[0]}" --listener-url "${CLUSTER_URLS[1]}")
        run cluster-fanout-full fanout --url "${CLUSTER_URLS[0]}" "${spread[@]}" \
            --listeners 100 --messages 1000 --rate 0
        run cluster-fanout-500 fanout --url "${CLUSTER_URLS[0]}" "${spread[@]}" \
            --listeners 100 --messages 1000 --rate 500
        for pid in "${CLUSTER_PIDS[@]}"; do stop_pid "$pid" || true; done
        CLUSTER_PIDS=()
    fi
fi

if [[ -n $PORTABLE_BIN ]]; then
    if want echo; then
        start_wsecho_binary "$PORTABLE_BIN" "$PORTABLE_LABEL"
        echo_rows port "$SERVER_URL" "$PORTABLE_ECHO_SPECS"
        stop_server
    fi
    if want hold; then
        start_wsecho_binary "$PORTABLE_BIN" "$PORTABLE_LABEL"
        run port-hold-1000 hold --url "$SERVER_URL" --connections 1000 --hold 10s --pid "$SERVER_PID"
        stop_server
    fi
fi

SOAK_IDLE_KIB="" SOAK_START_KIB="" SOAK_END_KIB="" SOAK_MAX_KIB="" SOAK_TURNS=0 SOAK_FAILED=0
rss_kib() { sed -n 's/^VmRSS:[[:space:]]*\([0-9]*\).*/\1/p' "/proc/$1/status" 2>/dev/null || true; }
if ((SOAK)); then
    start_default_server
    say "soak: ${SOAK_SECONDS} s of mixed echo traffic"
    (
        while kill -0 "$SERVER_PID" 2>/dev/null; do
            rss_kib "$SERVER_PID"
            sleep 5
        done
    ) >"$RAW/soak-rss.txt" &
    SAMPLER_PID=$!
    SOAK_IDLE_KIB=$(rss_kib "$SERVER_PID")
    soak_end=$((SECONDS + SOAK_SECONDS))
    turn=0
    # Turns of 20 s: few and many connections, small and large messages.
    specs=(1x32 64x32 16x4096 256x32 64x16384 512x128)
    while ((SECONDS + 20 <= soak_end)); do
        spec=${specs[turn % ${#specs[@]}]}
        c=${spec%x*} s=${spec#*x}
        run "soak-$turn" echo --url "$SERVER_URL" --connections "$c" --size "$s" \
            --duration 19s --warmup 0s
        [[ $(jget "soak-$turn" ok) == true ]] || SOAK_FAILED=$((SOAK_FAILED + 1))
        # The baseline is taken once every kind of turn has run (or after the
        # first turn in a soak too short for that): buffers and allocator
        # arenas have grown to their working size by then, and any further
        # growth is a leak.
        if ((turn == 0 || turn == ${#specs[@]} - 1)); then
            SOAK_START_KIB=$(rss_kib "$SERVER_PID")
        fi
        turn=$((turn + 1))
    done
    SOAK_TURNS=$turn
    SOAK_END_KIB=$(rss_kib "$SERVER_PID")
    stop_pid "$SAMPLER_PID" || true
    SAMPLER_PID=""
    SOAK_MAX_KIB=$(sort -n "$RAW/soak-rss.txt" | tail -1)
    stop_server
fi

# ------------------------------------------------------------------ table --
# awk does the arithmetic: it is on every Unix, unlike jq or python.
calc() { awk "BEGIN { v = $1; print v }"; }
fmt_int() { awk -v v="$1" 'BEGIN { s = sprintf("%.0f", v); r = ""; while (length(s) > 3) { r = "," substr(s, length(s) - 2) r; s = substr(s, 1, length(s) - 3) } print s r }'; }
fmt_us() { awk -v v="$1" 'BEGIN { a = v < 0 ? -v : v; if (a >= 1000000) printf "%.2f s", v / 1000000; else if (a >= 1000) printf "%.2f ms", v / 1000; else if (a >= 10) printf "%.0f µs", v; else printf "%.1f µs", v }'; }
met() { if awk "BEGIN { exit !($1) }"; then echo "yes"; else echo "**no**"; fi; }
num() { [[ -n $1 && $1 != null ]]; }

# best KEY high|low NAME...: the best figure among the runs NAME that have one
# (highest or lowest), and after a tab its run's name; nothing if none has.
best() {
    local key=$1 dir=$2 best="" who="" name v
    shift 2
    for name in "$@"; do
        v=$(jget "$name" "$key")
        num "$v" || continue
        if [[ -z $best ]] || awk -v v="$v" -v b="$best" -v d="$dir" 'BEGIN { exit !(d == "high" ? v > b : v < b) }'; then
            best=$v who=$name
        fi
    done
    [[ -z $best ]] || printf '%s\t%s\n' "$best" "$who"
}

TABLE="| Test | Server | Figure | Measured | Target | Met |
|---|---|---|---|---|---|
"
row() { TABLE+="| $1 | $2 | $3 | $4 | $5 | $6 |"$'\n'; }
missing_row() { row "$1" "$2" "result" "no result: $(jerr "$3")" "${4:-—}" "**no**"; }

latency_cell() { # latency_cell NAME: p50 / p99 / p99.9 / max
    echo "$(fmt_us "$(jget "$1" p50_us)") / $(fmt_us "$(jget "$1" p99_us)") / $(fmt_us "$(jget "$1" p999_us)") / $(fmt_us "$(jget "$1" max_us)")"
}

checks_cell() { # the verification outcome of an echo run
    local name=$1
    if [[ $(jget "$name" ok) == true ]]; then
        echo "$(jget "$name" opened) conns, 0 mismatches, 0 errors"
    else
        echo "$(jget "$name" opened)/$(jget "$name" connections) conns, $(jget "$name" mismatches) mismatches, $(jget "$name" errors) errors: $(jerr "$name")"
    fi
}

echo_table() { # echo_table PREFIX LABEL [SPECS]
    local prefix=$1 label=$2 spec_list=${3:-$ECHO_SPECS} spec name title target m tt tp
    for spec in $spec_list; do
        name="$prefix-echo-$spec"
        title="echo ${spec%x*}×${spec#*x} B"
        [[ $spec == 64x4096 ]] && title="echo 64×4 KiB"
        if [[ ! -f $RAW/$name.json ]]; then
            missing_row "$title" "$label" "$name"
            continue
        fi
        local msgs p99
        msgs=$(jget "$name" msgs_per_s)
        p99=$(jget "$name" p99_us)
        # Targets (wsecho's, whichever backend): 1×32 B, tungstenite's own
        # thread-per-connection example; 64×32 B and 64×4 KiB, the better of
        # tokio-tungstenite's example and Node ws, in msgs/s and in p99.
        local peers=() best_msgs="" best_p99=""
        case $spec in
        1x32) peers=("tung-echo-$spec") ;;
        64x32 | 64x4096) peers=("tt-echo-$spec" "node-echo-$spec") ;;
        esac
        target="—" m="—"
        if [[ $prefix == main || $prefix == port ]] && ((${#peers[@]})); then
            best_msgs=$(best msgs_per_s high "${peers[@]}")
            best_p99=$(best p99_us low "${peers[@]}")
            if [[ -n $best_msgs ]]; then
                target="≥ $(peer_label "$(run_peer "${best_msgs#*$'\t'}")") ($(fmt_int "${best_msgs%$'\t'*}"))"
                m=$(met "$msgs >= ${best_msgs%$'\t'*}")
            else target="≥ the best peer (run --compare)"; fi
        elif [[ $prefix != main && $prefix != port ]]; then
            target="reference"
        fi
        row "$title" "$label" "msgs/s (MB/s)" "$(fmt_int "$msgs") ($(jget "$name" mb_per_s | awk '{ printf "%.1f", $1 }'))" "$target" "$m"
        target="—" m="—"
        if [[ $prefix == main || $prefix == port ]] && ((${#peers[@]})); then
            if [[ -n $best_p99 ]]; then
                target="p99 ≤ $(peer_label "$(run_peer "${best_p99#*$'\t'}")") ($(fmt_us "${best_p99%$'\t'*}"))"
                m=$(met "$p99 <= ${best_p99%$'\t'*}")
            else target="p99 ≤ the best peer (run --compare)"; fi
        fi
        row "$title" "$label" "latency p50 / p99 / p99.9 / max" "$(latency_cell "$name")" "$target" "$m"
        m="**no**"
        [[ $(jget "$name" ok) == true ]] && m="yes"
        row "$title" "$label" "echo checks" "$(checks_cell "$name")" "all verified" "$m"
    done
}

fmt_kib() { # fmt_kib VALUE: "12.34 KiB", or n/a
    if num "$1"; then awk -v v="$1" 'BEGIN { printf "%.2f KiB", v }'; else echo "n/a"; fi
}
fmt_bytes() { # fmt_bytes N: 65536 -> 64 KiB
    awk -v v="$1" 'BEGIN { if (v >= 1024 && v % 1024 == 0) printf "%d KiB", v / 1024; else printf "%d B", v }'
}

# hold_memory_rows NAME TITLE LABEL: the kernel and RSS + kernel rows of a hold
# run, and its figures after a message (--then-echo) beside the fresh ones.
hold_memory_rows() {
    local name=$1 title=$2 label=$3 prefix=${4:-main} kernel total_target="—" total_met="—"
    kernel=$(jget "$name" kernel_per_conn_kib)
    if num "$kernel"; then
        row "$title" "$label" "kernel memory per idle connection (SUnreclaim + KernelStack + PageTables, both ends; see --help)" \
            "$(fmt_kib "$kernel") (unreclaimable slab $(fmt_kib "$(jget "$name" slab_unreclaimable_per_conn_kib)"), kernel stacks $(fmt_kib "$(jget "$name" kernel_stack_per_conn_kib)"), page tables $(fmt_kib "$(jget "$name" page_tables_per_conn_kib)"); samples spread $(fmt_int "$(jget "$name" kernel_spread_kib)") KiB)" \
            "—" "—"
        if [[ $prefix == main ]]; then
            total_target="≤ 28 KiB" total_met=$(met "$(jget "$name" total_per_conn_kib) <= 28")
        fi
        row "$title" "$label" "RSS + kernel per idle connection" "$(fmt_kib "$(jget "$name" total_per_conn_kib)")" "$total_target" "$total_met"
    fi
    local bytes after echoed opened cell
    bytes=$(jget "$name" then_echo_bytes) after=$(jget "$name" after_message_rss_per_conn_kib)
    if num "$bytes" && num "$after"; then
        echoed=$(jget "$name" then_echoed) opened=$(jget "$name" opened)
        cell="$(fmt_kib "$after") / $(fmt_kib "$(jget "$name" after_message_total_per_conn_kib)")"
        [[ $echoed == "$opened" ]] || cell+=" (only $(fmt_int "$echoed") of $(fmt_int "$opened") echoed it intact)"
        row "$title" "$label" "after a $(fmt_bytes "$bytes") message, $(jget "$name" settle_s | awk '{ printf "%g", $1 }') s later: RSS / RSS + kernel per idle connection" \
            "$cell" "RSS ≤ fresh + 2 KiB (fresh: $(fmt_kib "$(jget "$name" rss_per_conn_kib)") / $(fmt_kib "$(jget "$name" total_per_conn_kib)"))" \
            "$(met "$echoed == $opened && $after <= $(jget "$name" rss_per_conn_kib) + 2")"
    fi
}

greeting_hold_table() { # wsecho's 1,000 idle connections after their greeting
    local name=main-hold-greeting-1000 title="hold 1,000 idle, greeting on (1 s)" fresh=main-hold-1000 beside_cell
    [[ -z $CUSTOM ]] || return 0
    if [[ ! -f $RAW/$name.json ]]; then
        missing_row "$title" wsecho "$name" "all greeted"
        return
    fi
    local greeted
    greeted=$(jget "$name" greetings)
    row "$title" wsecho "greetings received / still echo" "$(fmt_int "$greeted") / $(fmt_int "$(jget "$name" still_echo)") of $(fmt_int "$(jget "$name" opened)") opened" "1,000" "$(met "$greeted == 1000 && $(jget "$name" still_echo) == 1000")"
    local after_rss met_cell="—"
    after_rss=$(jget "$name" after_greeting_rss_per_conn_kib)
    beside_cell="RSS ≤ fresh + 2 KiB (fresh, greeting off: add the hold group)"
    if [[ -f $RAW/$fresh.json ]]; then
        beside_cell="RSS ≤ fresh + 2 KiB (fresh, greeting off: $(fmt_kib "$(jget "$fresh" rss_per_conn_kib)") / $(fmt_kib "$(jget "$fresh" total_per_conn_kib)"))"
        num "$after_rss" && met_cell=$(met "$after_rss <= $(jget "$fresh" rss_per_conn_kib) + 2")
    fi
    row "$title" wsecho "after the greeting, $(jget "$name" settle_s | awk '{ printf "%g", $1 }') s later: RSS / RSS + kernel per idle connection" \
        "$(fmt_kib "$after_rss") / $(fmt_kib "$(jget "$name" after_greeting_total_per_conn_kib)")" \
        "$beside_cell" "$met_cell"
}

# beside NAME KEY FORMAT GROUP: a Target cell showing the plain row's figure
# beside a TLS row's, or how to get it.
beside() {
    local v
    v=$(jget "$1" "$2")
    if num "$v"; then
        echo "— (plain: $(awk -v v="$v" -v f="$3" 'BEGIN { printf f, v }'))"
    else
        echo "— (plain: add the $4 group)"
    fi
}

hold_table() { # hold_table N LABEL [PREFIX]; PREFIX tls: TLS rows, with the plain figures beside
    local n=$1 label=$2 prefix=${3:-main} title
    local name="$prefix-hold-$n" plain="main-hold-$n"
    title="hold $(fmt_int "$n") idle"
    [[ $prefix == tls ]] && title+=" over TLS"
    if [[ ! -f $RAW/$name.json ]]; then
        if [[ $prefix == tls && -n $TLS_NOTE ]]; then
            row "$title" "$label" "result" "$TLS_NOTE" "—" "—"
        else
            missing_row "$title" "$label" "$name" "all open and still echoing"
        fi
        return
    fi
    local opened echo_ok rss cpu fds
    opened=$(jget "$name" opened)
    echo_ok=$(jget "$name" still_echo)
    rss=$(jget "$name" rss_per_conn_kib)
    cpu=$(jget "$name" idle_cpu_s)
    fds=$(jget "$name" fds_per_conn)
    local detail=""
    [[ $(jget "$name" ok) == true ]] || detail=" ($(jerr "$name"))"
    row "$title" "$label" "opened / still echo" "$opened / $echo_ok of $n$detail" "all" "$(met "$opened == $n && $echo_ok == $n")"
    if num "$rss" && num "$cpu" && [[ $prefix == tls ]]; then
        # wsecho's targets are for plain connections: the TLS rows show the
        # plain figures beside theirs instead.
        row "$title" "$label" "server RSS per idle connection" "$(awk -v v="$rss" 'BEGIN { printf "%.2f KiB", v }')" "$(beside "$plain" rss_per_conn_kib "%.2f KiB" hold)" "—"
        row "$title" "$label" "server CPU while idle (from 2 s after the last opened to the end of the 10 s hold)" "$(awk -v v="$cpu" 'BEGIN { printf "%.3f s", v }')" "$(beside "$plain" idle_cpu_s "%.3f s" hold)" "—"
    elif num "$rss" && num "$cpu"; then
        row "$title" "$label" "server RSS per idle connection" "$(awk -v v="$rss" 'BEGIN { printf "%.2f KiB", v }')" "≤ 10 KiB" "$(met "$rss <= 10")"
        row "$title" "$label" "server CPU while idle (from 2 s after the last opened to the end of the 10 s hold)" "$(awk -v v="$cpu" 'BEGIN { printf "%.3f s", v }')" "< 0.05 s" "$(met "$cpu < 0.05")"
    elif [[ $prefix == tls ]]; then
        row "$title" "$label" "server RSS and idle CPU" "not measured" "—" "**no**"
    else
        row "$title" "$label" "server RSS and idle CPU" "not measured" "≤ 10 KiB, < 0.05 s" "**no**"
    fi
    hold_memory_rows "$name" "$title" "$label" "$prefix"
    # Connections opened per second while opening them all: at least 1.2 ×
    # tokio-tungstenite's example (wsecho's plain rows).
    local open_s tt_open
    open_s=$(jget "$name" open_s)
    if [[ $prefix == main ]] && num "$open_s"; then
        tt_open=$(jget "tt-hold-$n" open_s)
        if num "$tt_open"; then
            row "$title" "$label" "connections opened/s" "$(fmt_int "$(calc "$opened / $open_s")")" "≥ 1.2 × tokio-tungstenite ($(fmt_int "$(calc "1.2 * $n / $tt_open")"))" "$(met "$opened / $open_s >= 1.2 * $n / $tt_open")"
        else
            row "$title" "$label" "connections opened/s" "$(fmt_int "$(calc "$opened / $open_s")")" "≥ 1.2 × tokio-tungstenite (run --compare)" "—"
        fi
    fi
    # Open descriptors (/proc/PID/fd) after all connected minus before, per
    # connection: 1 is the client's socket alone.
    if num "$fds"; then
        local target="—" other
        if [[ $prefix == tls ]]; then
            target=$(beside "$plain" fds_per_conn "%.2f" hold)
        elif [[ $prefix != main ]]; then
            other=$(jget "$plain" fds_per_conn)
            num "$other" && target="— (wsecho: $(awk -v v="$other" 'BEGIN { printf "%.2f", v }'))"
        fi
        row "$title" "$label" "server file descriptors per connection" "$(awk -v v="$fds" 'BEGIN { printf "%.2f", v }') ($(fmt_int "$(jget "$name" fds_before)") → $(fmt_int "$(jget "$name" fds_after)"))" "$target" "—"
    else
        row "$title" "$label" "server file descriptors per connection" "not measured" "—" "—"
    fi
}

# difference TLS PLAIN KEY FORMAT: TLS's figure minus the plain one, signed,
# or "n/a" when either is missing.
difference() {
    local a b
    a=$(jget "$1" "$3") b=$(jget "$2" "$3")
    if num "$a" && num "$b"; then
        awk -v a="$a" -v b="$b" -v f="$4" 'BEGIN { printf f, a - b }'
    else
        echo "n/a"
    fi
}

tls_hold_difference() { # tls_hold_difference N: the TLS − plain line under the TLS hold rows
    local n=$1 t="tls-hold-$1" p="main-hold-$1"
    [[ -f $RAW/$t.json && -f $RAW/$p.json ]] || return 0
    row "hold $(fmt_int "$n") idle: TLS − plain" wsecho \
        "server RSS per connection / CPU over 10 s idle / descriptors per connection" \
        "$(difference "$t" "$p" rss_per_conn_kib "%+.2f KiB") / $(difference "$t" "$p" idle_cpu_s "%+.3f s") / $(difference "$t" "$p" fds_per_conn "%+.2f")" \
        "—" "—"
}

tls_echo_table() { # the echo row over TLS, beside the plain one
    local name=tls-echo-64x32 plain=main-echo-64x32 title="echo 64×32 B over TLS"
    if [[ ! -f $RAW/$name.json ]]; then
        if [[ -n $TLS_NOTE ]]; then
            row "$title" "$TLS_LABEL" "result" "$TLS_NOTE" "—" "—"
        else
            missing_row "$title" "$TLS_LABEL" "$name" "all verified"
        fi
        return
    fi
    local plain_msgs="— (plain: add the echo group)" plain_latency="— (plain: add the echo group)"
    if [[ -f $RAW/$plain.json ]]; then
        plain_msgs="— (plain: $(fmt_int "$(jget "$plain" msgs_per_s)"))"
        plain_latency="— (plain: $(latency_cell "$plain"))"
    fi
    row "$title" "$TLS_LABEL" "msgs/s (MB/s)" "$(fmt_int "$(jget "$name" msgs_per_s)") ($(jget "$name" mb_per_s | awk '{ printf "%.1f", $1 }'))" "$plain_msgs" "—"
    row "$title" "$TLS_LABEL" "latency p50 / p99 / p99.9 / max" "$(latency_cell "$name")" "$plain_latency" "—"
    local m="**no**"
    [[ $(jget "$name" ok) == true ]] && m="yes"
    row "$title" "$TLS_LABEL" "echo checks" "$(checks_cell "$name")" "all verified" "$m"
    if [[ -f $RAW/$plain.json ]]; then
        local t p
        t=$(jget "$name" msgs_per_s) p=$(jget "$plain" msgs_per_s)
        row "echo 64×32 B: TLS − plain" wsecho "msgs/s / p99 latency" \
            "$(awk -v t="$t" -v p="$p" 'BEGIN { printf "%+.0f (%+.0f %%)", t - p, (p > 0 ? 100 * (t - p) / p : 0) }') / $(difference "$name" "$plain" p99_us "%+.0f µs")" \
            "—" "—"
    fi
}

if want echo; then
    echo_table main "$MAIN_LABEL"
    [[ -n $PORTABLE_BIN ]] && echo_table port "$PORTABLE_LABEL" "$PORTABLE_ECHO_SPECS"
fi
want tls && tls_echo_table
# Each hold size: the plain rows, then the same over TLS and the difference.
for n in $HOLD_SIZES; do
    if want hold; then
        hold_table "$n" "$MAIN_LABEL"
        [[ $n == 1000 && -n $PORTABLE_BIN ]] && hold_table 1000 "$PORTABLE_LABEL" port
        [[ $n == 1000 ]] && greeting_hold_table
    fi
    if want tls && [[ $n != 5000 ]]; then
        hold_table "$n" "$TLS_LABEL" tls
        tls_hold_difference "$n"
    fi
done

if [[ -z $CUSTOM ]] && want greeting; then
    name=main-greeting-10000
    if [[ -f $RAW/$name.json ]]; then
        greeted=$(jget $name greetings)
        row "greeting, 10,000 at once (delay 2 s)" wsecho "greetings received" "$(fmt_int "$greeted") of $(fmt_int "$(jget $name opened)") opened" "10,000" "$(met "$greeted == 10000")"
        row "greeting, 10,000 at once (delay 2 s)" wsecho "lateness p50 / p99 / p99.9 / max" "$(latency_cell $name)" "p99 < 50 ms" "$(met "$(jget $name p99_us) < 50000")"
    else
        missing_row "greeting, 10,000 at once" wsecho $name "p99 lateness < 50 ms"
    fi
fi

if [[ -z $CUSTOM ]] && want fanout; then
    for rate in full 500; do
        name=main-fanout-$rate
        title="fan-out 100 × 1,000 at $([[ $rate == full ]] && echo "full speed" || echo "500/s")"
        if [[ ! -f $RAW/$name.json ]]; then
            missing_row "$title" wsecho $name "all delivered in order"
            continue
        fi
        delivered=$(jget $name delivered) missing=$(jget $name missing) ooo=$(jget $name out_of_order)
        row "$title" wsecho "delivered / missing / out of order" "$(fmt_int "$delivered") / $missing / $ooo" "all, in order" "$(met "$missing == 0 && $ooo == 0 && $(jget $name duplicates) == 0")"
        # Targets: at full speed at least 2 × websocat's broadcast; at 500/s a
        # p50 and a p99 no worse than websocat's, and a p99 under 1 ms.
        peer=websocat-fanout-$rate
        if [[ $rate == full ]]; then
            dps=$(jget $name deliveries_per_s)
            if num "$(jget $peer deliveries_per_s)"; then
                row "$title" wsecho "deliveries/s" "$(fmt_int "$dps")" "≥ 2 × websocat ($(fmt_int "$(calc "2 * $(jget $peer deliveries_per_s)")"))" "$(met "$dps >= 2 * $(jget $peer deliveries_per_s)")"
            else
                row "$title" wsecho "deliveries/s" "$(fmt_int "$dps")" "≥ 500,000 (and 2 × websocat: run --compare)" "$(met "$dps >= 500000")"
            fi
            row "$title" wsecho "latency p50 / p99 / p99.9 / max" "$(latency_cell $name)" "—" "—"
        else
            p50=$(jget $name p50_us) p99=$(jget $name p99_us)
            if num "$(jget $peer p99_us)"; then
                row "$title" wsecho "latency p50 / p99 / p99.9 / max" "$(latency_cell $name)" \
                    "p50 ≤ websocat ($(fmt_us "$(jget $peer p50_us)")), p99 ≤ websocat ($(fmt_us "$(jget $peer p99_us)")) and < 1 ms" \
                    "$(met "$p50 <= $(jget $peer p50_us) && $p99 <= $(jget $peer p99_us) && $p99 < 1000")"
            else
                row "$title" wsecho "latency p50 / p99 / p99.9 / max" "$(latency_cell $name)" "p99 < 1 ms (and ≤ websocat: run --compare)" "$(met "$p99 < 1000")"
            fi
        fi
    done
fi

if [[ -z $CUSTOM ]] && want cluster; then
    for rate in full 500; do
        name=cluster-fanout-$rate
        title="cluster: fan-out 100 × 1,000 at $([[ $rate == full ]] && echo "full speed" || echo "500/s"), 2 instances + Redis"
        label="wsecho ×2, --redis"
        if [[ ! -f $RAW/$name.json ]]; then
            if [[ -n $CLUSTER_NOTE ]]; then
                row "$title" "$label" "result" "$CLUSTER_NOTE" "all delivered in order" "**no**"
            else
                missing_row "$title" "$label" $name "all delivered in order"
            fi
            continue
        fi
        delivered=$(jget $name delivered) missing=$(jget $name missing) ooo=$(jget $name out_of_order)
        row "$title" "$label" "delivered / missing / out of order" "$(fmt_int "$delivered") / $missing / $ooo" "all, in order" "$(met "$missing == 0 && $ooo == 0 && $(jget $name duplicates) == 0")"
        [[ $rate == full ]] && row "$title" "$label" "deliveries/s" "$(fmt_int "$(jget $name deliveries_per_s)")" "—" "—"
        row "$title" "$label" "latency p50 / p99 / p99.9 / max" "$(latency_cell $name)" "—" "—"
        # What Redis adds: the same row on one instance alone (the fanout group).
        single=main-fanout-$rate
        if [[ -f $RAW/$single.json ]]; then
            added="$(fmt_us "$(calc "$(jget $name p50_us) - $(jget $single p50_us)")") / $(fmt_us "$(calc "$(jget $name p99_us) - $(jget $single p99_us)")")"
            row "$title" "$label" "latency added over one instance, p50 / p99" "$added" "—" "—"
        else
            row "$title" "$label" "latency added over one instance, p50 / p99" "not measured: run the fanout group too (BENCH_ONLY=fanout,cluster)" "—" "—"
        fi
    done
fi

if [[ -z $CUSTOM ]] && want burst; then
    name=main-burst
    title="broadcast burst, $BURST_MESSAGES × $((BURST_SIZE / 1024)) KiB at full speed to $BURST_LISTENERS + 1 slow reader ($(calc "$BURST_RATE / 1048576") MiB/s)"
    if [[ ! -f $RAW/$name.json ]]; then
        missing_row "$title" wsecho $name "all delivered in order, no close"
    else
        closed=$(jget $name slow_closed_by_server) code=$(jget $name slow_close_code)
        closed_cell=no not_closed=1
        if [[ $closed != false ]]; then
            closed_cell="yes" not_closed=0
            num "$code" && closed_cell="yes ($code)"
        fi
        detail=""
        [[ $(jget $name ok) == true ]] || detail=" ($(jerr $name))"
        row "$title" wsecho "slow reader: delivered / missing / out of order / closed" \
            "$(fmt_int "$(jget $name slow_delivered)") / $(jget $name slow_missing) / $(jget $name slow_out_of_order) / $closed_cell$detail" \
            "all, in order, not closed" \
            "$(met "$(jget $name slow_missing) == 0 && $(jget $name slow_out_of_order) == 0 && $(jget $name slow_duplicates) == 0 && $not_closed")"
        took=$(jget $name slow_last_delivery_s)
        # Reading every frame (payload + 10 bytes of header) at the rate.
        ideal=$(calc "$BURST_MESSAGES * ($BURST_SIZE + 10) / $BURST_RATE")
        row "$title" wsecho "time for the burst (slow reader's last delivery)" \
            "$(if num "$took"; then awk -v v="$took" 'BEGIN { printf "%.2f s", v }'; else echo "no delivery"; fi)" \
            "— (reading it all at the rate: $(awk -v v="$ideal" 'BEGIN { printf "%.1f s", v }'))" "—"
        delivered=$(jget $name delivered) missing=$(jget $name missing) ooo=$(jget $name out_of_order)
        row "$title" wsecho "fast listeners: delivered / missing / out of order" \
            "$(fmt_int "$delivered") / $missing / $ooo" "all, in order" \
            "$(met "$missing == 0 && $ooo == 0 && $(jget $name duplicates) == 0")"
    fi
fi

if ((SOAK)); then
    if num "$SOAK_START_KIB" && num "$SOAK_END_KIB"; then
        row "soak, ${SOAK_SECONDS} s mixed echo" "$MAIN_LABEL" "server RSS before → after first round → end (max)" "$(fmt_int "$SOAK_IDLE_KIB") → $(fmt_int "$SOAK_START_KIB") → $(fmt_int "$SOAK_END_KIB") KiB ($(fmt_int "$SOAK_MAX_KIB"))" "flat: end ≤ first round + 5 % + 1 MiB" "$(met "$SOAK_END_KIB <= $SOAK_START_KIB * 1.05 + 1024")"
    else
        row "soak, ${SOAK_SECONDS} s mixed echo" "$MAIN_LABEL" "server RSS" "not measured" "flat" "**no**"
    fi
    row "soak, ${SOAK_SECONDS} s mixed echo" "$MAIN_LABEL" "turns verified" "$((SOAK_TURNS - SOAK_FAILED)) of $SOAK_TURNS" "all" "$(met "$SOAK_FAILED == 0 && $SOAK_TURNS > 0")"
fi

# ------------------------------------------------------------ side by side --
# With --compare: a table per group, a column per server, and wsecho's figure
# as a multiple of the best peer's. The same figures, one per line, go to
# comparison.tsv for scripts/chart.py: panel, category, server, value, unit,
# and 1 for wsecho's line (highlighted), 0 for a peer's.
CMP_TSV="$OUT/comparison.tsv"
rm -f "$CMP_TSV" "$OUT/comparison.svg"
CMP_TABLES=""
CMP_PEERS=""

fmt_value() { # fmt_value FORMAT VALUE: int, us or kib
    case $1 in
    int) fmt_int "$2" ;;
    us) fmt_us "$2" ;;
    kib) fmt_kib "$2" ;;
    esac
}

figure() { # figure NAME KEY: KEY of run NAME; opened_per_s is worked out
    if [[ $2 == opened_per_s ]]; then
        local opened open_s
        opened=$(jget "$1" opened) open_s=$(jget "$1" open_s)
        if num "$opened" && num "$open_s"; then
            awk -v o="$opened" -v s="$open_s" 'BEGIN { if (s > 0) print o / s }'
        fi
    else
        jget "$1" "$2"
    fi
}

# compare_row TEST FIGURE DIRECTION FORMAT KEY SUFFIX [PANEL CATEGORY UNIT]:
# a row of figure KEY of the runs main-SUFFIX (wsecho) and PEER-SUFFIX for
# each of CMP_PEERS, then wsecho's as a multiple of the best peer's (the
# highest or the lowest, as DIRECTION says which is better). A peer's run
# that failed its checks is marked and not taken as the best. With PANEL,
# the figures go to the chart too. Nothing when no peer has the figure.
compare_row() {
    local test=$1 what=$2 dir=$3 fmt=$4 key=$5 suffix=$6 panel=${7:-} category=${8:-} unit=${9:-}
    local peer value cell cells="" best="" best_peer="" any=0 lines="" mine ratio
    for peer in $CMP_PEERS; do
        value=$(figure "$peer-$suffix" "$key")
        if ! num "$value"; then
            cells+=" | —"
            continue
        fi
        any=1
        cell=$(fmt_value "$fmt" "$value")
        if [[ $(jget "$peer-$suffix" ok) != true ]]; then
            cell+=" (failed its checks: $(jerr "$peer-$suffix"))"
        elif [[ -z $best ]] || awk -v a="$value" -v b="$best" -v d="$dir" 'BEGIN { exit !(d == "higher" ? a > b : a < b) }'; then
            best=$value best_peer=$peer
        fi
        cells+=" | $cell"
        lines+="$panel"$'\t'"$category"$'\t'"$(peer_label "$peer")"$'\t'"$value"$'\t'"$unit"$'\t'0$'\n'
    done
    ((any)) || return 0
    mine=$(figure "main-$suffix" "$key")
    if num "$mine"; then
        cell=$(fmt_value "$fmt" "$mine")
        [[ $(jget "main-$suffix" ok) == true ]] || cell+=" (failed its checks)"
        lines="$panel"$'\t'"$category"$'\t'"$MAIN_LABEL"$'\t'"$mine"$'\t'"$unit"$'\t'1$'\n'"$lines"
    else
        cell="— (not run)"
    fi
    if ! num "$mine"; then
        ratio="—"
    elif [[ -z $best ]]; then
        ratio="— (no peer passed its checks)"
    else
        ratio=$(awk -v v="$mine" -v b="$best" -v d="$dir" -v who="$(peer_label "$best_peer")" 'BEGIN {
            if (b <= 0 || v <= 0) printf "n/a (best: %s, %g; a figure ≤ 0 is noise)", who, b
            else printf "%.2f× best (%s); %s is better", v / b, who, d
        }')
    fi
    CMP_TABLES+="| $test | $what | $cell$cells | $ratio |"$'\n'
    [[ -n $panel ]] && printf '%s' "$lines" >>"$CMP_TSV"
    return 0
}

compare_table() { # compare_table HEADING "PEERS": starts a side-by-side table; false if no peer can run
    local heading=$1 peer header="| Test | Figure | $MAIN_LABEL" rule="|---|---|---"
    CMP_PEERS=""
    for peer in $2; do
        peer_ready "$peer" || continue
        CMP_PEERS+="$peer "
        header+=" | $(peer_label "$peer")"
        rule+="|---"
    done
    [[ -n $CMP_PEERS ]] || return 1
    CMP_TABLES+=$'\n'"### $heading"$'\n\n'"$header | $MAIN_LABEL vs best peer |"$'\n'"$rule|---|"$'\n'
}

if ((COMPARE)); then
    printf 'panel\tcategory\tserver\tvalue\tunit\tmain\n' >"$CMP_TSV"
    if want echo && compare_table "Echo: closed loop, one message in flight per connection, ${ECHO_SECONDS} s" "$ECHO_PEERS"; then
        for spec in $ECHO_SPECS; do
            title="echo ${spec%x*}×$(fmt_bytes "${spec#*x}")"
            compare_row "$title" "msgs/s" higher int msgs_per_s "echo-$spec" \
                "Echo throughput (msgs/s, higher is better)" "${spec%x*}×$(fmt_bytes "${spec#*x}")" msgs/s
            compare_row "$title" "latency p50" lower us p50_us "echo-$spec"
            compare_row "$title" "latency p99" lower us p99_us "echo-$spec" \
                "Echo latency p99 (µs, lower is better)" "${spec%x*}×$(fmt_bytes "${spec#*x}")" µs
        done
    fi
    if want hold && compare_table "Hold: idle connections (per connection; kernel = SUnreclaim + KernelStack + PageTables, both ends: see --help)" "$HOLD_PEERS"; then
        for n in $CMP_HOLD_SIZES; do
            title="hold $(fmt_int "$n") idle"
            panel="Memory per idle connection, $(fmt_int "$n") connections (KiB, lower is better)"
            compare_row "$title" "connections opened/s" higher int opened_per_s "hold-$n"
            compare_row "$title" "server RSS" lower kib rss_per_conn_kib "hold-$n" "$panel" "RSS" KiB
            compare_row "$title" "kernel" lower kib kernel_per_conn_kib "hold-$n"
            compare_row "$title" "RSS + kernel" lower kib total_per_conn_kib "hold-$n" "$panel" "RSS + kernel" KiB
            compare_row "$title" "server RSS after a $(fmt_bytes "$AFTER_MESSAGE") message + $SETTLE_TEXT" lower kib after_message_rss_per_conn_kib "hold-$n" \
                "$panel" "RSS after a $(fmt_bytes "$AFTER_MESSAGE") message" KiB
            compare_row "$title" "RSS + kernel after a $(fmt_bytes "$AFTER_MESSAGE") message + $SETTLE_TEXT" lower kib after_message_total_per_conn_kib "hold-$n" \
                "$panel" "RSS + kernel after a $(fmt_bytes "$AFTER_MESSAGE") message" KiB
        done
    fi
    if want fanout && [[ -z $CUSTOM ]] && compare_table "Fan-out: 100 listeners × 1,000 messages of 32 B, every message to every client" "$FANOUT_PEERS"; then
        compare_row "fan-out at 500/s" "latency p50" lower us p50_us fanout-500 \
            "Fan-out delivery latency at 500 msgs/s (µs, lower is better)" p50 µs
        compare_row "fan-out at 500/s" "latency p99" lower us p99_us fanout-500 \
            "Fan-out delivery latency at 500 msgs/s (µs, lower is better)" p99 µs
        compare_row "fan-out at full speed" "deliveries/s" higher int deliveries_per_s fanout-full \
            "Fan-out deliveries/s at full speed (higher is better)" "deliveries/s" deliveries/s
        compare_row "fan-out at full speed" "latency p99" lower us p99_us fanout-full
    fi
fi

# The chart of the side-by-side figures, with matplotlib from a virtual
# environment in the cache (made once).
CHART_NOTE=""
draw_chart() {
    local venv="$CACHE/venv" log="$OUT/chart.log"
    if ! "$venv/bin/python" -c 'import matplotlib' >/dev/null 2>&1; then
        if ! command -v python3 >/dev/null; then
            CHART_NOTE="no chart: python3 is not installed"
            return
        fi
        say "installing matplotlib into $venv (once)"
        if ! { python3 -m venv "$venv" && "$venv/bin/pip" install --quiet --disable-pip-version-check 'matplotlib>=3.8,<4'; } >"$log" 2>&1; then
            CHART_NOTE="no chart: could not install matplotlib ($(first_error "$log"); target/bench/chart.log)"
            return
        fi
    fi
    if MPLCONFIGDIR="$CACHE/mplconfig" "$venv/bin/python" "$ROOT/scripts/chart.py" "$CMP_TSV" "$OUT/comparison.svg" \
        --title "wsecho and its peers, $STARTED_AT, $(nproc) cores, client and servers on one machine" >"$log" 2>&1; then
        CHART_NOTE="chart of these figures: target/bench/comparison.svg"
    else
        CHART_NOTE="no chart: scripts/chart.py failed ($(tail -1 "$log"); target/bench/chart.log)"
    fi
}
if ((COMPARE)); then
    if [[ $(wc -l <"$CMP_TSV") -gt 1 ]]; then
        draw_chart
    else
        CHART_NOTE="no chart: no peer ran"
    fi
    say "$CHART_NOTE"
fi

{
    echo "# wsecho benchmark"
    echo
    echo "- started: $STARTED_AT; took $((SECONDS / 60)) min $((SECONDS % 60)) s; options: ${*:-none}"
    echo "- machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'), Linux $(uname -r); load average at start: $START_LOAD"
    if commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null); then
        git -C "$ROOT" diff --quiet HEAD 2>/dev/null || commit+=" (with uncommitted changes)"
    else
        commit="none yet"
    fi
    echo "- commit: $commit"
    echo "- client: wsload, $THREADS thread(s), on the same machine; echo rows ${ECHO_SECONDS} s after $WARMUP warm-up; open-file limit $FD_LIMIT"
    [[ -n $CUSTOM ]] && echo "- server: BENCH_SERVER='$CUSTOM' (rows needing wsecho's --broadcast / --greeting-delay skipped)"
    [[ -n $ONLY ]] && echo "- only these groups of rows: $ONLY (BENCH_ONLY)"
    if ((PORTABLE)); then
        if [[ -n $PORTABLE_BIN ]]; then
            echo "- $PORTABLE_LABEL: wsecho built with --features portable-poll (target/portable)"
        else
            echo "- $PORTABLE_LABEL: ${PORTABLE_NOTE:-no rows selected}"
        fi
    fi
    if want tls; then
        if [[ -n $TLS_NOTE ]]; then
            echo "- $TLS_LABEL: $TLS_NOTE"
        else
            echo "- $TLS_LABEL: wss:// with TLS 1.3 as rustls negotiates it, an EC P-256 certificate for localhost issued by a CA made for this run (openssl); wsload trusts only that CA and sends SNI localhost; no session resumption"
        fi
    fi
    if ((COMPARE)); then
        echo "- compared with (--compare):"
        for peer in $ECHO_PEERS $HOLD_PEERS $FANOUT_PEERS; do
            [[ -n ${PEER_ABOUT[$peer]:-} ]] || continue
            compgen -G "$RAW/$peer-*.json" >/dev/null || continue # no rows in this run
            [[ ${listed:-} == *" $peer "* ]] && continue
            listed+=" $peer "
            echo "  - $(peer_label "$peer"): ${PEER_ABOUT[$peer]}"
        done
        for note in "${PEER_NOTES[@]}"; do echo "  - not run: $note"; done
        echo "  - $CHART_NOTE"
    fi
    [[ -n $STOP_WARNINGS ]] && echo "- warnings: $STOP_WARNINGS"
    echo "- latency is per message, measured by the client: send → complete echo (or delivery) read"
    echo
    printf '%s' "$TABLE"
    if [[ -n $CMP_TABLES ]]; then
        echo
        echo "## Side by side (--compare)"
        echo
        echo "Each row: the same run's figures for every server, and wsecho's as a multiple of the best peer's."
        echo "Kernel memory is the machine's (SUnreclaim + KernelStack + PageTables, from /proc/meminfo): it counts wsload's end of every connection too, the same for every server."
        echo "\"After a 64 KiB message\": every connection sent one binary message of 64 KiB and read its echo, and the figures were taken $SETTLE_TEXT later (medians of 5 samples over 1 s)."
        printf '%s' "$CMP_TABLES"
    fi
    echo
    echo "Raw JSON of every run: target/bench/raw/."
} >"$OUT/results.md"
cat "$OUT/results.md"
if grep -q '\*\*no\*\*' "$OUT/results.md"; then
    say "some targets were not met (marked **no**)"
fi
