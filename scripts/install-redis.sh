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

# Debian's package, the server alone (scripts/need.sh: apt-get as root or through sudo).
exec "$(dirname "$0")/need.sh" redis-server redis-server
