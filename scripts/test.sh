#!/usr/bin/env bash
# Runs every test of the project, as on a fresh machine:
#   1. installs Chromium for the browser test when it is missing (scripts/install-chromium.sh),
#   2. cargo test for the whole workspace: unit tests, the integration tests in tests/ (a real
#      wsecho on a free loopback port, tungstenite and raw TCP clients, the demo page in
#      headless Chromium, property tests of the request parsing), and wsload's own tests,
#   3. the websocat smoke test (scripts/smoke.sh) against a local server, in echo mode and in
#      broadcast mode (websocat is built into target/tools the first time).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-chromium.sh
cargo test --workspace
scripts/smoke.sh
scripts/smoke.sh --broadcast
