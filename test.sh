#!/usr/bin/env bash
# The project's test command (README): unit, integration and process tests for every crate.
set -euo pipefail
cd "$(dirname "$0")"
cargo test --workspace --locked "$@"
