#!/usr/bin/env bash
# Installs a Chromium for the browser tests (tests/browser.rs): Debian's
# `chromium` package, and a CJK font so the screenshots show the test's
# Chinese text. Does nothing when a browser is already there.
#
# The tests look for $CHROMIUM, then /usr/bin/chromium, then chromium,
# chromium-browser, google-chrome and google-chrome-stable on $PATH; this
# script checks the same.
set -euo pipefail

found_browser() {
    [[ -x /usr/bin/chromium ]] && return 0
    local name
    for name in chromium chromium-browser google-chrome google-chrome-stable; do
        command -v "$name" >/dev/null 2>&1 && return 0
    done
    return 1
}

if [[ -n "${CHROMIUM:-}" ]]; then
    if [[ -x "$CHROMIUM" ]] || command -v "$CHROMIUM" >/dev/null 2>&1; then
        exit 0
    fi
    echo "install-chromium: CHROMIUM=$CHROMIUM is not an executable; fix or unset CHROMIUM" >&2
    exit 1
fi

if found_browser; then
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-chromium: no apt-get here; install Chromium or Chrome yourself" \
        "(or set CHROMIUM to its path) to run the browser tests" >&2
    exit 1
fi

if [[ "$(id -u)" -eq 0 ]]; then
    as_root=(env DEBIAN_FRONTEND=noninteractive)
elif command -v sudo >/dev/null 2>&1; then
    as_root=(sudo env DEBIAN_FRONTEND=noninteractive)
else
    echo "install-chromium: not root and no sudo; as root, run:" >&2
    echo "    apt-get update && apt-get install -y chromium fonts-wqy-zenhei" >&2
    exit 1
fi

echo "install-chromium: installing Debian's chromium package..." >&2
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" apt-get install -y -qq chromium fonts-wqy-zenhei >/dev/null

if ! found_browser; then
    echo "install-chromium: apt-get installed chromium, but no browser was found afterwards" >&2
    exit 1
fi
echo "install-chromium: installed $(command -v chromium || echo /usr/bin/chromium)" >&2
