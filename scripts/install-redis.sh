#!/usr/bin/env bash
# Installs a redis-server for the cluster tests (tests/cluster.rs) and the cluster smoke test:
# Debian's `redis-server` package. Does nothing when one is already there.
#
# The tests run $REDIS_SERVER, else redis-server on $PATH; this script checks the same. Each
# test starts its own redis-server on a free loopback port and stops it; this script only
# installs the program (the package's own service is not needed and may stay stopped).
set -euo pipefail

if [[ -n "${REDIS_SERVER:-}" ]]; then
    if [[ -x "$REDIS_SERVER" ]] || command -v "$REDIS_SERVER" >/dev/null 2>&1; then
        exit 0
    fi
    echo "install-redis: REDIS_SERVER=$REDIS_SERVER is not an executable; fix or unset REDIS_SERVER" >&2
    exit 1
fi

if command -v redis-server >/dev/null 2>&1; then
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-redis: no apt-get here; install Redis (redis-server) yourself, or set" \
        "REDIS_SERVER to its path, to run the cluster tests" >&2
    exit 1
fi

if [[ "$(id -u)" -eq 0 ]]; then
    as_root=(env DEBIAN_FRONTEND=noninteractive)
elif command -v sudo >/dev/null 2>&1; then
    as_root=(sudo env DEBIAN_FRONTEND=noninteractive)
else
    echo "install-redis: not root and no sudo; as root, run:" >&2
    echo "    apt-get update && apt-get install -y redis-server" >&2
    exit 1
fi

echo "install-redis: installing Debian's redis-server package..." >&2
"${as_root[@]}" apt-get update -qq
# --no-install-recommends: the server alone; the tests need no other tool.
"${as_root[@]}" apt-get install -y -qq --no-install-recommends redis-server >/dev/null

if ! command -v redis-server >/dev/null 2>&1; then
    echo "install-redis: apt-get installed redis-server, but it is not on the PATH afterwards" >&2
    exit 1
fi
echo "install-redis: installed $(redis-server --version | cut -d' ' -f1-3)" >&2
