#!/usr/bin/env bash
# Makes sure a command the tests need is installed, installing Debian's package for it with
# apt-get (as root, or through sudo) when it is missing.
#
# usage: scripts/need.sh COMMAND PACKAGE [PACKAGE...]
#   e.g. scripts/need.sh promtool prometheus
set -euo pipefail

command=${1:?usage: scripts/need.sh COMMAND PACKAGE [PACKAGE...]}
shift
(($# > 0)) || { echo "usage: scripts/need.sh COMMAND PACKAGE [PACKAGE...]" >&2; exit 2; }
command -v "$command" >/dev/null 2>&1 && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
    echo "need: $command is missing and there is no apt-get here; install $* yourself" >&2
    exit 1
fi
if [[ "$(id -u)" -eq 0 ]]; then
    as_root=(env DEBIAN_FRONTEND=noninteractive)
elif command -v sudo >/dev/null 2>&1; then
    as_root=(sudo env DEBIAN_FRONTEND=noninteractive)
else
    echo "need: $command is missing; as root, run: apt-get install -y $*" >&2
    exit 1
fi
echo "need: $command is missing; installing Debian's $* ..." >&2
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" apt-get install -y -qq --no-install-recommends "$@" >/dev/null
command -v "$command" >/dev/null 2>&1 || {
    echo "need: apt-get installed $*, but $command is still not found" >&2
    exit 1
}
echo "need: installed $command" >&2
