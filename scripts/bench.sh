#!/usr/bin/env bash
# Benchmarks wsecho with wsload and writes a Markdown table to
# target/bench/results.md (and prints it).
#
# Usage: scripts/bench.sh [--quick] [--soak] [--compare] [--portable]
#   --quick    3 s echo rows instead of 10 s
#   --soak     add 10 minutes of mixed echo traffic, sampling the server's RSS
#   --compare  also build tokio-tungstenite's echo example and tungstenite's
#              server example from their published crates and run the echo
#              rows against them (the targets refer to their figures)
#   --portable also build wsecho with its portable-poll feature (the portable
#              waker/poll backend) into target/portable and run the echo rows
#              1×32 B, 64×32 B, 64×4 KiB and hold 1,000 against it, labelled
#              "wsecho (portable backend)". If that build fails, the script
#              says so in one line and goes on without those rows.
#
# Environment (all optional):
#   WSECHO_BIN      use this wsecho binary instead of building the workspace's
#   BENCH_SERVER    benchmark another server instead of wsecho: a command line
#                   in which {addr} becomes 127.0.0.1:PORT, for example
#                   BENCH_SERVER='/path/to/echo-server {addr}'. Rows that need
#                   wsecho's --broadcast or --greeting-delay are skipped.
#   BENCH_CACHE     where --compare builds the comparison servers
#                   (default: ${XDG_CACHE_HOME:-$HOME/.cache}/wsecho-bench)
#   BENCH_THREADS   wsload worker threads (default 1: on two cores every
#                   client thread competes with the server)
#   BENCH_SOAK_SECONDS  length of --soak (default 600)
#   BENCH_ONLY      run only these groups of rows, comma-separated, e.g.
#                   BENCH_ONLY=burst or BENCH_ONLY=echo,hold:
#                     echo      echo rows (also --compare's and --portable's)
#                     hold      hold 1,000 and 10,000 idle (and --portable's)
#                     greeting  10,000 greetings due at once
#                     fanout    fan-out 100 × 1,000
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
    budget=$((40 * 60 + COMPARE * 15 * 60 + PORTABLE * 15 * 60 + SOAK * (SOAK_SECONDS + 5 * 60)))
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
        die "$label did not come up on port $port"
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
    start_command "custom (${words[0]##*/})" "$port" "${words[@]}"
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

# Comparison servers first: wsecho's targets refer to their figures.
if ((COMPARE)) && want echo; then
    CACHE=${BENCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/wsecho-bench}
    CMP="$CACHE/compare"
    say "building the comparison servers in $CMP"
    mkdir -p "$CMP/src/bin"
    cat >"$CMP/Cargo.toml" <<'EOF'
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
EOF
    # An empty library target lets cargo resolve and download the crates
    # before the examples are copied in as binaries.
    echo "// Only here so the package has a target before the examples arrive." >"$CMP/src/lib.rs"
    (cd "$CMP" && cargo fetch --quiet)
    meta=$(cd "$CMP" && cargo metadata --format-version 1)
    tt_dir=$(grep -o '"manifest_path":"[^"]*/tokio-tungstenite-0\.30\.0/Cargo.toml"' <<<"$meta" | head -1 | sed 's/.*:"//; s/Cargo.toml"$//')
    t_dir=$(grep -o '"manifest_path":"[^"]*/tungstenite-0\.30\.0/Cargo.toml"' <<<"$meta" | head -1 | sed 's/.*:"//; s/Cargo.toml"$//')
    [[ -f ${tt_dir}examples/echo-server.rs && -f ${t_dir}examples/server.rs ]] ||
        die "could not find the examples in the downloaded crate sources"
    cp "${tt_dir}examples/echo-server.rs" "$CMP/src/bin/tokio-tungstenite-echo.rs"
    cp "${t_dir}examples/server.rs" "$CMP/src/bin/tungstenite-server.rs"
    (cd "$CMP" && cargo build --release --quiet)

    port=$(free_port)
    start_command "tokio-tungstenite echo-server example" "$port" \
        "$CMP/target/release/tokio-tungstenite-echo" "127.0.0.1:$port"
    echo_rows tt "$SERVER_URL"
    stop_server

    # tungstenite's example hard-codes 127.0.0.1:3012.
    if (exec 3<>/dev/tcp/127.0.0.1/3012) 2>/dev/null; then
        say "port 3012 is taken: skipping tungstenite's server example"
    else
        start_command "tungstenite server example" 3012 "$CMP/target/release/tungstenite-server"
        echo_rows tung "$SERVER_URL"
        stop_server
    fi
fi

if want echo; then
    start_default_server
    echo_rows main "$SERVER_URL"
    stop_server
fi

if want hold; then
    for n in 1000 10000; do
        start_default_server
        run "main-hold-$n" hold --url "$SERVER_URL" --connections "$n" --hold 10s --pid "$SERVER_PID"
        stop_server
    done
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
        run main-fanout-full fanout --url "$SERVER_URL" --listeners 100 --messages 1000 --rate 0
        run main-fanout-500 fanout --url "$SERVER_URL" --listeners 100 --messages 1000 --rate 500
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
        # Throughput target (wsecho's, whichever backend).
        target="—" m="—"
        if [[ $prefix == main || $prefix == port ]]; then
            tt=$(jget "tt-echo-$spec" msgs_per_s)
            case $spec in
            64x32)
                if num "$tt"; then
                    target="≥ 1.25 × tokio-tungstenite ($(fmt_int "$(calc "1.25 * $tt")"))"
                    m=$(met "$msgs >= 1.25 * $tt")
                else target="≥ 1.25 × tokio-tungstenite (run --compare)"; fi
                ;;
            64x4096)
                if num "$tt"; then
                    target="≥ tokio-tungstenite ($(fmt_int "$tt"))"
                    m=$(met "$msgs >= $tt")
                else target="≥ tokio-tungstenite (run --compare)"; fi
                ;;
            esac
        else
            target="reference"
        fi
        row "$title" "$label" "msgs/s (MB/s)" "$(fmt_int "$msgs") ($(jget "$name" mb_per_s | awk '{ printf "%.1f", $1 }'))" "$target" "$m"
        # Latency target.
        target="—" m="—"
        if [[ $prefix == main || $prefix == port ]]; then
            case $spec in
            1x32)
                tp=$(jget "tung-echo-$spec" p99_us)
                if num "$tp"; then
                    target="p99 ≤ tungstenite example ($(fmt_us "$tp"))"
                    m=$(met "$p99 <= $tp")
                else target="p99 ≤ tungstenite example (run --compare)"; fi
                ;;
            64x32)
                tp=$(jget "tt-echo-$spec" p99_us)
                if num "$tp"; then
                    target="p99 ≤ tokio-tungstenite ($(fmt_us "$tp"))"
                    m=$(met "$p99 <= $tp")
                else target="p99 ≤ tokio-tungstenite (run --compare)"; fi
                ;;
            esac
        fi
        row "$title" "$label" "latency p50 / p99 / p99.9 / max" "$(latency_cell "$name")" "$target" "$m"
        m="**no**"
        [[ $(jget "$name" ok) == true ]] && m="yes"
        row "$title" "$label" "echo checks" "$(checks_cell "$name")" "all verified" "$m"
    done
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
        row "$title" "$label" "server CPU over 10 s idle" "$(awk -v v="$cpu" 'BEGIN { printf "%.3f s", v }')" "$(beside "$plain" idle_cpu_s "%.3f s" hold)" "—"
    elif num "$rss" && num "$cpu"; then
        row "$title" "$label" "server RSS per idle connection" "$(awk -v v="$rss" 'BEGIN { printf "%.2f KiB", v }')" "≤ 16 KiB" "$(met "$rss <= 16")"
        row "$title" "$label" "server CPU over 10 s idle" "$(awk -v v="$cpu" 'BEGIN { printf "%.3f s", v }')" "< 0.05 s" "$(met "$cpu < 0.05")"
    elif [[ $prefix == tls ]]; then
        row "$title" "$label" "server RSS and idle CPU" "not measured" "—" "**no**"
    else
        row "$title" "$label" "server RSS and idle CPU" "not measured" "≤ 16 KiB, < 0.05 s" "**no**"
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
            "$(awk -v t="$t" -v p="$p" 'BEGIN { printf "%+.0f (%+.0f %%)", t - p, p > 0 ? 100 * (t - p) / p : 0 }') / $(difference "$name" "$plain" p99_us "%+.0f µs")" \
            "—" "—"
    fi
}

if ((COMPARE)) && want echo; then
    echo_table tt "tokio-tungstenite example"
    [[ -f $RAW/tung-echo-1x32.json ]] && echo_table tung "tungstenite example"
fi
if want echo; then
    echo_table main "$MAIN_LABEL"
    [[ -n $PORTABLE_BIN ]] && echo_table port "$PORTABLE_LABEL" "$PORTABLE_ECHO_SPECS"
fi
want tls && tls_echo_table
# Each hold size: the plain rows, then the same over TLS and the difference.
for n in 1000 10000; do
    if want hold; then
        hold_table "$n" "$MAIN_LABEL"
        [[ $n == 1000 && -n $PORTABLE_BIN ]] && hold_table 1000 "$PORTABLE_LABEL" port
    fi
    if want tls; then
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
        if [[ $rate == full ]]; then
            dps=$(jget $name deliveries_per_s)
            row "$title" wsecho "deliveries/s" "$(fmt_int "$dps")" "≥ 500,000" "$(met "$dps >= 500000")"
            row "$title" wsecho "latency p50 / p99 / p99.9 / max" "$(latency_cell $name)" "—" "—"
        else
            row "$title" wsecho "latency p50 / p99 / p99.9 / max" "$(latency_cell $name)" "p99 < 1 ms" "$(met "$(jget $name p99_us) < 1000")"
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
    [[ -n $STOP_WARNINGS ]] && echo "- warnings: $STOP_WARNINGS"
    echo "- latency is per message, measured by the client: send → complete echo (or delivery) read"
    echo
    printf '%s' "$TABLE"
    echo
    echo "Raw JSON of every run: target/bench/raw/."
} >"$OUT/results.md"
cat "$OUT/results.md"
if grep -q '\*\*no\*\*' "$OUT/results.md"; then
    say "some targets were not met (marked **no**)"
fi
