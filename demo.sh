#!/usr/bin/env bash
# The main job: builds the binaries and runs the local two-cluster demo (loopback only,
# no Kubernetes, no root). Exits 0 only if every step behaved as expected.
set -euo pipefail
cd "$(dirname "$0")"
cargo build --release --locked -q -p gateway -p meshctl -p examples
if [ "${1:-}" = --rotation ]; then exec target/release/rotation-demo "${@:2}"; fi  # README "Rotating trust"
exec target/release/demo "$@"
