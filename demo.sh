#!/usr/bin/env bash
# The main job: builds the binaries and runs the local two-cluster demo (loopback only,
# no Kubernetes, no root). Exits 0 only if every step behaved as expected.
set -euo pipefail
cd "$(dirname "$0")"
cargo build --release --locked -q -p gateway -p meshctl -p examples
exec target/release/demo "$@"
