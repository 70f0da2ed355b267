#!/usr/bin/env bash
# The project's test command (README): every crate's unit, integration and process tests,
# then the multi-network end-to-end test, which needs root (network namespaces).
set -euo pipefail
cd "$(dirname "$0")"
cargo test --workspace --locked "$@"
if [ "$(id -u)" = 0 ] && command -v ip >/dev/null; then
  cargo build --locked -q -p gateway -p meshctl -p examples   # the test runs these binaries
  cargo test --locked -p examples --test netns_e2e -- --ignored
else
  echo "SKIPPED: examples/tests/netns_e2e/ needs root and iproute2 (network namespaces); it was not run"
fi
