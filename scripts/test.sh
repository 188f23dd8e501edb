#!/usr/bin/env bash
# Runs every test of the project, as on a fresh machine (Linux: the tests read /proc and
# drive Linux tools):
#   1. installs what the tests need when it is missing: Chromium for the browser test
#      (scripts/install-chromium.sh), redis-server for the cluster tests
#      (scripts/install-redis.sh), Debian's prometheus package for `promtool` (the metrics
#      format check), openssl (key formats, SNI), nginx and haproxy (the tests behind a
#      real proxy) and iproute2's `ss` (the sockets of stalled clients) through
#      scripts/need.sh, and websocat for the smoke test (built once into target/tools/bin),
#   2. cargo test for the whole workspace: unit tests, the integration tests in tests/ (a real
#      wsecho on a free loopback port, tungstenite and raw TCP clients, the demo page in
#      headless Chromium, property tests of the request parsing), and wsload's own tests,
#   3. the websocat smoke test (scripts/smoke.sh) against a local server, in echo mode and in
#      broadcast mode, over ws:// and then over wss:// (a certificate made with openssl), and
#      against a local cluster of two instances on one redis-server,
#   4. the container image (without --features only: the image is the default build): Debian's
#      runc and podman (scripts/need.sh), the image's tests (tests/image.rs, #[ignore]d in a
#      plain cargo test: cargo test --test image -- --ignored, which builds the image with
#      scripts/image.sh), and the smoke test against a container of it.
#
# usage: scripts/test.sh [--features FEATURES]
#   --features portable-poll   test the portable backend (the one macOS and Windows use)
set -euo pipefail
cd "$(dirname "$0")/.."

features=()
case "${1:-}" in
--features) features=(--features "$2") ;;
"") ;;
*) echo "test: unknown argument '$1' (usage: scripts/test.sh [--features FEATURES])" >&2; exit 2 ;;
esac

step() { echo "== test: $*" >&2; }

step "checking for Chromium (browser test)"
scripts/install-chromium.sh
step "checking for promtool and openssl (metrics and TLS tests, TLS smoke test)"
scripts/need.sh promtool prometheus
scripts/need.sh openssl openssl
step "checking for nginx and haproxy (the proxy tests)"
scripts/need.sh nginx nginx
scripts/need.sh haproxy haproxy
step "checking for ss (the sockets of stalled clients)"
scripts/need.sh ss iproute2
step "checking for systemd-socket-activate and strace (socket activation, one exec)"
scripts/need.sh systemd-socket-activate systemd
scripts/need.sh strace strace
step "checking for redis-server (cluster tests)"
scripts/install-redis.sh
step "checking for websocat (smoke test)"
scripts/smoke.sh --install-only
step "cargo test --workspace ${features[*]}"
cargo test --workspace "${features[@]}"
export WSECHO_FEATURES="${features[1]:-}"
step "smoke test, echo mode"
scripts/smoke.sh
step "smoke test, broadcast mode"
scripts/smoke.sh --broadcast
step "smoke test over TLS (wss://), echo mode"
scripts/smoke.sh --tls
step "smoke test over TLS (wss://), broadcast mode"
scripts/smoke.sh --tls --broadcast
step "smoke test, a cluster of two instances on one Redis"
scripts/smoke.sh --cluster

if ((${#features[@]} > 0)); then
    step "not testing the container image with ${features[*]}: it is the default build" \
        "(scripts/test.sh without --features tests it)"
else
    step "checking for runc and podman (container image)"
    # runc first, so that Debian's podman does not bring crun in its place: the container
    # tests are run with runc.
    scripts/need.sh runc runc
    scripts/need.sh podman podman
    step "the container image: cargo test --test image -- --ignored (builds it with scripts/image.sh)"
    cargo test --test image -- --ignored
    step "smoke test against a container of the image"
    # The flags tests/image.rs explains (RUN_FLAGS): the host's network, so that --port 0
    # picks a free port that the ready line names, and open-file and process limits below the
    # host's hard limits (podman's own ask for more, which takes CAP_SYS_RESOURCE).
    container=wsecho-smoke-$$
    ready=$(mktemp -u)
    mkfifo "$ready"
    trap 'podman rm --force "$container" >/dev/null 2>&1 || true; rm -f "$ready"' EXIT
    podman run --name "$container" --network host \
        --ulimit nofile=4096:4096 --ulimit nproc=4096:4096 \
        localhost/wsecho:latest --port 0 --greeting-delay 1s --log-level warn >"$ready" &
    running=$!
    exec {ready_fd}<"$ready"
    read -r -t 60 url <&"$ready_fd" || { echo "test: the container did not start" >&2; exit 1; }
    scripts/smoke.sh "ws://127.0.0.1:${url##*:}"
    podman stop "$container" >/dev/null
    wait "$running" || { echo "test: the container exited with status $? after podman stop" >&2; exit 1; }
fi
