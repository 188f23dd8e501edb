#!/usr/bin/env bash
# Smoke test of a wsecho server with websocat: text echo, binary echo, the greeting, and
# (with --broadcast) a message from one client reaching another, or (with --cluster) text and
# binary from a client of one instance reaching a client of another, both ways; over ws:// or
# wss://. With the server's test controls (docs/testing-clients.md): a Close's code and reason
# (?close=4001&reason=...) reach the client as sent, messages sent in frames of 3 bytes
# (?fragment=3) arrive whole, and the client address the server sees (?whoami) is printed.
# These need python3 (its standard library reads the Close), and are skipped, with a note,
# when the server has them off (--no-test-controls: GET /echo is 404).
#
# usage: scripts/smoke.sh [--broadcast] [--tls | URL]
#        scripts/smoke.sh --cluster [URL1 URL2]
#        scripts/smoke.sh --install-only
#
#   URL            ws://HOST:PORT or wss://HOST:PORT of a running wsecho. Without it, a local
#                  wsecho is built and started on a free loopback port (greeting after 1s;
#                  --broadcast if asked).
#   --broadcast    also check broadcast, and that two rooms (URL paths) hear only their own;
#                  the server at URL must run with --broadcast.
#   --cluster      check a cluster (--broadcast --redis): URL1 and URL2 are two instances of
#                  one deployment (two ports of it, or each instance's own address behind the
#                  load balancer). Without them, a local redis-server (in a temporary folder,
#                  on a free loopback port) and two local instances on it are started; that
#                  needs redis-server (scripts/install-redis.sh installs it).
#   --tls          the local wsecho serves wss:// (--tls-cert, --tls-key) with a certificate
#                  authority and a server certificate made with the openssl command in a
#                  temporary folder; websocat trusts that authority for this run only.
#   --install-only only make sure websocat is there (building it if needed), then exit.
#
# env: WEBSOCAT        websocat to use (default: on PATH, else target/tools/bin/websocat,
#                      installed there with `cargo install --locked websocat` when missing)
#      SMOKE_CA        a CA certificate (PEM) to trust for a wss:// URL, e.g. a test
#                      deployment's own CA. It is passed to websocat as SSL_CERT_FILE: its TLS is
#                      OpenSSL's (through native-tls), which reads that variable in place of the
#                      system's CA bundle. Not needed for a certificate the system trusts.
#      WSECHO_FEATURES cargo features for the local wsecho (e.g. portable-poll)
#      SMOKE_TIMEOUT   seconds to wait for an echo (default 10)
#      SMOKE_GREETING  seconds to wait for the greeting (default 15)
#      REDIS_SERVER    redis-server for --cluster without URLs (default: on PATH)
#
# Exits 0 when every check passed, 1 when one failed, 2 when it could not run at all.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
ECHO_WAIT=${SMOKE_TIMEOUT:-10}
GREETING_WAIT=${SMOKE_GREETING:-15}
BROADCAST=0
CLUSTER=0
TLS=0
INSTALL_ONLY=0
URL=""
URLS=()
for arg in "$@"; do
    case "$arg" in
        --broadcast) BROADCAST=1 ;;
        --cluster) CLUSTER=1 ;;
        --tls) TLS=1 ;;
        --install-only) INSTALL_ONLY=1 ;;
        -h|--help) sed -n '2,41p' "$0"; exit 0 ;;
        ws://*|wss://*) URL=$arg; URLS+=("$arg") ;;
        *) echo "smoke: unknown argument '$arg' (see --help)" >&2; exit 2 ;;
    esac
done
if [[ $TLS == 1 && -n "$URL" ]]; then
    echo "smoke: --tls starts a local server; for a running one give its wss:// URL" \
        "(and SMOKE_CA if the system does not trust its certificate)" >&2
    exit 2
fi
if [[ $CLUSTER == 1 ]]; then
    case ${#URLS[@]} in
        0) ;;
        2) URL=${URLS[0]} ;;
        *) echo "smoke: --cluster takes two URLs, of two instances (or none, for a local cluster)" >&2; exit 2 ;;
    esac
elif ((${#URLS[@]} > 1)); then
    echo "smoke: one URL, or --cluster and two (see --help)" >&2
    exit 2
fi

TMP=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap '' PIPE

passed=0
failed=0
ok() { echo "smoke: ok    $*"; passed=$((passed + 1)); }
not_ok() { echo "smoke: FAIL  $*"; failed=$((failed + 1)); }
die() { echo "smoke: error: $*" >&2; exit 2; }

# --- websocat ---------------------------------------------------------------------------
if [[ -n "${WEBSOCAT:-}" ]]; then
    command -v "$WEBSOCAT" >/dev/null || die "WEBSOCAT=$WEBSOCAT is not a program"
elif command -v websocat >/dev/null; then
    WEBSOCAT=websocat
else
    WEBSOCAT="$ROOT/target/tools/bin/websocat"
    if [[ ! -x "$WEBSOCAT" ]]; then
        echo "smoke: websocat not found; building it into target/tools/bin (about two minutes, once;" \
            "cargo's progress follows)" >&2
        command -v cargo >/dev/null || die "websocat is missing and cargo is not installed to build it"
        cargo install --locked --root "$ROOT/target/tools" websocat >&2 \
            || die "could not install websocat; install it (cargo install websocat) and run again"
    fi
fi

[[ $INSTALL_ONLY == 1 ]] && exit 0

# --- TLS ----------------------------------------------------------------------------------
# websocat checks a wss:// server's certificate against OpenSSL's trust store; SSL_CERT_FILE
# replaces its CA bundle for this process and its children only.
if [[ -n "${SMOKE_CA:-}" ]]; then
    [[ -r "$SMOKE_CA" ]] || die "SMOKE_CA=$SMOKE_CA is not a readable file"
    export SSL_CERT_FILE="$SMOKE_CA"
fi

# make_certificates DIR: a certificate authority (ca.pem) and a server certificate for
# 127.0.0.1 and localhost that it signed (cert.pem, key.pem), valid for a day.
make_certificates() {
    local dir=$1 ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
    command -v openssl >/dev/null \
        || die "--tls needs the openssl command (Debian: scripts/need.sh openssl openssl)"
    {
        openssl req -x509 "${ec[@]}" -days 1 -subj "/CN=wsecho smoke test CA" \
            -addext "basicConstraints=critical,CA:TRUE" \
            -addext "keyUsage=critical,keyCertSign,cRLSign" \
            -keyout "$dir/ca-key.pem" -out "$dir/ca.pem" &&
        openssl req "${ec[@]}" -subj "/CN=localhost" -keyout "$dir/key.pem" -out "$dir/cert.csr" &&
        printf '%s\n' "basicConstraints=CA:FALSE" "extendedKeyUsage=serverAuth" \
            "subjectAltName=IP:127.0.0.1,DNS:localhost" >"$dir/cert.ext" &&
        openssl x509 -req -in "$dir/cert.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca-key.pem" \
            -CAcreateserial -days 1 -extfile "$dir/cert.ext" -out "$dir/cert.pem"
    } >"$dir/openssl.log" 2>&1 || {
        cat "$dir/openssl.log" >&2
        die "openssl could not make the certificates"
    }
}

# --- the server -------------------------------------------------------------------------
# start_wsecho NAME FLAGS...: a local wsecho; sets STARTED_URL. The server prints its URL when
# it is ready to accept: wait for that line, not a sleep.
start_wsecho() {
    local name=$1
    shift
    mkfifo "$TMP/$name.ready"
    "$ROOT/target/debug/wsecho" --host 127.0.0.1 --port 0 --greeting-delay 1s --log-level warn \
        "$@" >"$TMP/$name.ready" &
    PIDS+=($!)
    read -r -t 30 STARTED_URL <"$TMP/$name.ready" || die "the local wsecho ($name) did not start"
}

# A local Redis for a local cluster: a free loopback port, a temporary folder, no persistence.
# A port nobody listens on may still be some client socket's own: redis-server then exits at
# once, and another port is tried (5 at most).
start_redis() {
    local program=${REDIS_SERVER:-redis-server} port="" reply="" pid
    command -v "$program" >/dev/null ||
        die "--cluster without URLs needs redis-server (scripts/install-redis.sh installs it)"
    for _ in 1 2 3 4 5; do
        for _ in $(seq 50); do
            port=$((20000 + RANDOM % 20000))
            (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || break
        done
        "$program" --bind 127.0.0.1 --port "$port" --save "" --appendonly no --dir "$TMP" \
            --logfile "$TMP/redis.log" --daemonize no &
        pid=$!
        PIDS+=("$pid")
        # Ready when it answers PING; each try is a connection attempt, bounded overall.
        for _ in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break # exited: the port was taken
            if { exec 3<>"/dev/tcp/127.0.0.1/$port"; } 2>/dev/null; then
                printf 'PING\r\n' >&3
                IFS= read -r -t 2 reply <&3 || true
                exec 3>&-
                [[ $reply == +PONG* ]] && break
            fi
            sleep 0.1
        done
        [[ $reply == +PONG* ]] && break
    done
    [[ $reply == +PONG* ]] || die "the local redis-server did not answer PING (log: $TMP/redis.log)"
    REDIS_URL_LOCAL="redis://127.0.0.1:$port/0"
    echo "smoke: started a local redis-server at $REDIS_URL_LOCAL"
}

if [[ -z "$URL" ]]; then
    cargo build --quiet --manifest-path "$ROOT/Cargo.toml" --bin wsecho \
        ${WSECHO_FEATURES:+--features "$WSECHO_FEATURES"} || die "cargo build failed"
    if [[ $CLUSTER == 1 ]]; then
        start_redis
        for name in one two; do
            start_wsecho "$name" --broadcast --redis "$REDIS_URL_LOCAL"
            URLS+=("$STARTED_URL")
        done
        URL=${URLS[0]}
        echo "smoke: started two local wsecho instances on it: ${URLS[*]}"
    else
        flags=()
        [[ $BROADCAST == 1 ]] && flags+=(--broadcast)
        if [[ $TLS == 1 ]]; then
            mkdir "$TMP/pki"
            make_certificates "$TMP/pki"
            flags+=(--tls-cert "$TMP/pki/cert.pem" --tls-key "$TMP/pki/key.pem")
            export SSL_CERT_FILE="$TMP/pki/ca.pem"
        fi
        start_wsecho server "${flags[@]}"
        URL=$STARTED_URL
        echo "smoke: started a local wsecho at $URL"
    fi
fi
trusting=""
[[ $URL == wss://* && ( $TLS == 1 || -n "${SMOKE_CA:-}" ) ]] && trusting=", trusting the CA in $SSL_CERT_FILE"
echo "smoke: testing $URL with $WEBSOCAT$trusting"

# --- clients ----------------------------------------------------------------------------
# connect NAME: a websocat client whose input and output are this shell's file descriptors
# ${NAME}_in and ${NAME}_out. Text lines go out as text; lines starting with B are base64
# and go out as binary; binary that comes in is printed the same way.
# connect NAME [URL]: to $URL unless another is given.
connect() {
    local name=$1 fifo="$TMP/$1" in out
    mkfifo "$fifo.in" "$fifo.out"
    "$WEBSOCAT" --text --binary-prefix B --base64 "${2:-$URL}" <"$fifo.in" >"$fifo.out" 2>"$fifo.err" &
    PIDS+=($!)
    exec {in}>"$fifo.in" {out}<"$fifo.out"
    printf -v "${name}_in" %s "$in"
    printf -v "${name}_out" %s "$out"
    : >"$fifo.seen"
}

# send NAME LINE. A client that could not connect has exited; the write then fails quietly
# and the expect that follows reports websocat's error.
send() {
    local fd="${1}_in"
    printf '%s\n' "$2" 1>&"${!fd}" 2>/dev/null || true
}

# expect NAME TEXT SECONDS: true once NAME has received a line containing TEXT. Lines seen
# while waiting for something else are kept, so the order of arrival does not matter.
expect() {
    local name=$1 want=$2 deadline=$((SECONDS + $3)) fd="${1}_out" line
    grep -qF -- "$want" "$TMP/$name.seen" && return 0
    while ((SECONDS < deadline)); do
        IFS= read -r -t $((deadline - SECONDS)) line <&"${!fd}" || break
        echo "$line" >>"$TMP/$name.seen"
        [[ "$line" == *"$want"* ]] && return 0
    done
    echo "smoke: $name received instead:" >&2
    sed 's/^/smoke:     /' "$TMP/$name.seen" "$TMP/$name.err" >&2
    return 1
}

connect alice
text="smoke text $$ héllo wörld ✓"
send alice "$text"
if expect alice "$text" "$ECHO_WAIT"; then ok "text echo"; else not_ok "text echo"; fi

binary="B$(printf '\x00\x01\x02\xfe\xff smoke %s' "$$" | base64 | tr -d '\n')"
send alice "$binary"
if expect alice "$binary" "$ECHO_WAIT"; then ok "binary echo"; else not_ok "binary echo"; fi

if expect alice "hello client !!!" "$GREETING_WAIT"; then
    ok "greeting: $(grep -F 'hello client !!!' "$TMP/alice.seen" | head -1)"
else
    not_ok "greeting (none within ${GREETING_WAIT}s)"
fi

if [[ $BROADCAST == 1 ]]; then
    connect bob
    # Bob has joined once he hears his own message (a broadcast reaches the sender too).
    send bob "bob joined $$"
    if expect bob "bob joined $$" "$ECHO_WAIT" && expect alice "bob joined $$" "$ECHO_WAIT"; then
        send alice "alice to everyone $$"
        if expect bob "alice to everyone $$" "$ECHO_WAIT"; then
            ok "broadcast between two clients"
        else
            not_ok "broadcast: bob did not hear alice"
        fi
    else
        not_ok "broadcast: bob's message did not reach both clients"
    fi
    # Rooms: the URL path names one. dave and erin are in two rooms of their own; each hears
    # its own room and nothing of the other's, nor of the lobby's.
    connect dave "${URL%/}/smoke-$$/dave's room"
    connect erin "${URL%/}/smoke-$$/erin's room"
    send dave "dave joined $$"
    send erin "erin joined $$"
    if expect dave "dave joined $$" "$ECHO_WAIT" && expect erin "erin joined $$" "$ECHO_WAIT"; then
        send dave "dave's room only $$"
        send alice "the lobby only $$"
        send erin "erin's room only $$"
        if expect erin "erin's room only $$" "$ECHO_WAIT" &&
            ! grep -qF -e "dave's room only $$" -e "the lobby only $$" "$TMP/erin.seen" &&
            expect dave "dave's room only $$" "$ECHO_WAIT" &&
            ! grep -qF -e "erin" -e "the lobby only $$" "$TMP/dave.seen"; then
            ok "rooms: two rooms and the lobby hear only their own"
        else
            not_ok "rooms: a message reached another room"
        fi
    else
        not_ok "rooms: dave or erin did not hear their own message"
    fi
fi

if [[ $CLUSTER == 1 ]]; then
    # carol is on the second instance. She has joined once she hears her own message; alice's
    # instance may still be (re)joining Redis, so a message that does not arrive is sent
    # again, a few times, before the check fails.
    connect carol "${URLS[1]}"
    send carol "carol joined $$"
    if expect carol "carol joined $$" "$ECHO_WAIT"; then
        across() { # across FROM TO WHAT LINE: FROM sends LINE until TO hears it
            local from=$1 to=$2 what=$3 line=$4
            for _ in 1 2 3 4 5; do
                send "$from" "$line"
                if expect "$to" "$line" 2 2>/dev/null; then
                    ok "cluster: $what"
                    return
                fi
            done
            expect "$to" "$line" 1 || true # prints what $to received instead
            not_ok "cluster: $what"
        }
        across alice carol "text from ${URLS[0]} to ${URLS[1]}" "alice to the cluster $$ ✓"
        across carol alice "text from ${URLS[1]} to ${URLS[0]}" "carol to the cluster $$"
        across alice carol "binary from ${URLS[0]} to ${URLS[1]}" \
            "B$(printf '\x00\xff cluster %s' "$$" | base64 | tr -d '\n')"
    else
        not_ok "cluster: carol (on ${URLS[1]}) did not hear her own message"
    fi
fi

# --- test controls ------------------------------------------------------------------------
# The server's test controls (docs/testing-clients.md), asked for in the URL's query: a Close
# with a code and a reason must reach the client as sent, a message sent in fragments must
# arrive whole, and ?whoami says which address the server sees. A server started with
# --no-test-controls answers GET /echo with 404 (and ignores the query): the checks are then
# skipped, as that is no fault of the deployment. websocat does not show a Close's code, so a
# small client in Python (standard library only) reads it.
write_probe() {
    cat >"$TMP/probe.py" <<'PYTHON'
# probe.py URL MODE SECONDS. MODE http: GET the URL without an upgrade, print "status N".
# MODE close: print "close CODE REASON" when the server's Close comes. MODE whoami: print
# "address A" from the first message (a JSON object), or "message TEXT" if it has none.
# Otherwise: "refused N" (the handshake's status), "timeout", or "eof".
import base64, json, os, socket, ssl, struct, sys
from urllib.parse import urlsplit

url, mode, wait = sys.argv[1], sys.argv[2], float(sys.argv[3])
u = urlsplit(url)
secure = u.scheme in ("wss", "https")
sock = socket.create_connection((u.hostname, u.port or (443 if secure else 80)), timeout=wait)
if secure:  # the CA bundle is OpenSSL's default, which SSL_CERT_FILE replaces
    sock = ssl.create_default_context().wrap_socket(sock, server_hostname=u.hostname)
target = (u.path or "/") + ("?" + u.query if u.query else "")
headers = "Connection: close\r\n" if mode == "http" else (
    "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
    "Sec-WebSocket-Key: " + base64.b64encode(os.urandom(16)).decode() + "\r\n")
sock.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (target, u.netloc, headers)).encode())
stream = sock.makefile("rb")

def send(opcode, payload=b""):  # a client's frame: masked; control payloads are short
    mask = os.urandom(4)
    sock.sendall(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask
                 + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

def read(n):
    data = stream.read(n)
    if len(data) < n:
        print("eof")
        sys.exit(0)
    return data

try:
    status = stream.readline().split()
    while stream.readline() not in (b"\r\n", b"\n", b""):
        pass
    code = status[1].decode() if len(status) > 1 else "?"
    if mode == "http":
        print("status", code)
        sys.exit(0)
    if code != "101":
        print("refused", code)
        sys.exit(0)
    message = b""
    while True:
        head = read(2)
        length = head[1] & 0x7F
        if length == 126:
            length = struct.unpack(">H", read(2))[0]
        elif length == 127:
            length = struct.unpack(">Q", read(8))[0]
        payload = read(length)  # a server's frames are not masked
        opcode = head[0] & 0x0F
        if opcode == 8:
            code = struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else 1005
            print("close", code, payload[2:].decode("utf-8", "replace"))
            send(8, payload[:2])
            sys.exit(0)
        if opcode == 9:
            send(10, payload)
        elif opcode in (0, 1, 2):
            message += payload
            if head[0] & 0x80:
                if mode == "whoami":
                    text = message.decode("utf-8", "replace")
                    try:
                        print("address", json.loads(text)["address"])
                    except (ValueError, KeyError, TypeError):
                        print("message", text)
                    sys.exit(0)
                message = b""
except (socket.timeout, TimeoutError):
    print("timeout")
PYTHON
}

# probe URL MODE [SECONDS]: the line probe.py prints, or "error ..." if it could not run.
probe() {
    python3 "$TMP/probe.py" "$1" "$2" "${3:-$ECHO_WAIT}" 2>"$TMP/probe.err" ||
        echo "error: $(tail -1 "$TMP/probe.err")"
}

# with_query URL QUERY: the URL with QUERY added to its query string.
with_query() {
    if [[ $1 == *\?* ]]; then echo "$1&$2"; else echo "$1?$2"; fi
}

if ! command -v python3 >/dev/null; then
    echo "smoke: note: python3 is not installed; the test-control checks are skipped"
else
    write_probe
    http_url=${URL/#ws/http} # ws:// to http://, wss:// to https://
    authority=${http_url#*://}
    echo_status=$(probe "${http_url%%://*}://${authority%%[/?]*}/echo" http)
    case "$echo_status" in
    "status 404")
        echo "smoke: note: the server's test controls are off (GET /echo is 404:" \
            "--no-test-controls); the close, fragment and whoami checks are skipped" ;;
    *)
        [[ $echo_status == "status 200" ]] ||
            echo "smoke: note: GET /echo answered '$echo_status' (200 expected); trying the controls anyway"
        # Close codes and reasons pass through.
        closed=$(probe "$(with_query "$URL" "close=4001&reason=smoke%20$$")" close)
        if [[ $closed == "close 4001 smoke $$" ]]; then
            ok "test controls: a Close with code 4001 and reason \"smoke $$\" arrives as sent"
        else
            not_ok "test controls: ?close=4001&reason=smoke%20$$ gave '$closed', not 'close 4001 smoke $$'"
        fi
        # Fragmented messages arrive whole: websocat reassembles the frames of 3 bytes into
        # messages, so a message that comes back intact came through in one piece.
        connect frank "$(with_query "$URL" fragment=3)"
        fragmented="smoke fragments $$ héllo wörld ✓"
        send frank "$fragmented"
        if expect frank "$fragmented" "$ECHO_WAIT"; then
            ok "test controls: a text message sent in frames of 3 bytes arrives whole"
        else
            not_ok "test controls: a text message sent in frames of 3 bytes (?fragment=3)"
        fi
        fragmented="B$(printf '\x00\x01\x02\xfe\xff fragments %s' "$$" | base64 | tr -d '\n')"
        send frank "$fragmented"
        if expect frank "$fragmented" "$ECHO_WAIT"; then
            ok "test controls: a binary message sent in frames of 3 bytes arrives whole"
        else
            not_ok "test controls: a binary message sent in frames of 3 bytes (?fragment=3)"
        fi
        # The client's address as the server sees it (behind a proxy: the proxy's, unless
        # the server trusts it with --trusted-proxy).
        seen=$(probe "$(with_query "$URL" whoami)" whoami)
        if [[ $seen == "address "?* ]]; then
            echo "smoke: the server sees this client as ${seen#address }"
        else
            not_ok "test controls: ?whoami gave '$seen', not a JSON object with an address"
        fi ;;
    esac
fi

if ((failed > 0)) && grep -qs "certificate verify failed" "$TMP"/*.err; then
    echo "smoke: websocat does not trust the server's certificate; set SMOKE_CA to the CA" \
        "certificate (PEM) that signed it"
fi
echo "smoke: $passed passed, $failed failed"
((failed == 0))
