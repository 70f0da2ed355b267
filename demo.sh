#!/usr/bin/env bash
# The main job: builds the binaries and runs the local two-cluster demo (loopback only,
# no Kubernetes, no root). Exits 0 only if every step behaved as expected.
set -euo pipefail
cd "$(dirname "$0")"
cargo build --release --locked -q -p gateway -p meshctl -p examples
# `cargo run` finds the binaries wherever cargo put them (CARGO_TARGET_DIR, build.target-dir);
# the demos start gateway and meshctl from the same directory.
bin=demo
if [ "${1:-}" = --rotation ]; then bin=rotation-demo; shift; fi  # README "Rotating trust"
exec cargo run --release --locked -q -p examples --bin "$bin" -- "$@"
