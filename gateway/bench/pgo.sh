#!/usr/bin/env bash
# The gateway's deployment build with profile-guided optimisation (PGO): an instrumented
# build runs a training load on loopback, and the build to deploy is compiled again with the
# counts, so LLVM lays hot code together and optimises the paths connections take. Callgrind
# (gateway/PERFORMANCE.md, change 30): about 16 % fewer userspace instructions per new
# connection, 30 % fewer per request and about 40 % fewer instruction-cache misses.
#
#   gateway/bench/pgo.sh                       # writes target/pgo/production/gateway
#   PGO_PROFILE=release gateway/bench/pgo.sh   # writes target/pgo/release/gateway: minutes
#                                              # faster, for checking the script (CI)
#
# Needs llvm-profdata matching rustc's LLVM: `rustup component add llvm-tools`.
# The training load is the gateway's production shape, with sni-bench as clients, TLS
# backend and destination ztunnel: new mTLS connections, request/response and bulk on
# 15443, new, pooled and long HBONE tunnels on 15008, idle connections, /metrics. It runs
# twice: with every core and the default logging (access logs, plain and JSON), and with one
# worker and warnings only (the benchmark's shape), so that neither scheduler nor the
# logging path counts as cold. Only loopback addresses are used (ports PGO_PORT_BASE, default
# 29000, and up). Last, the optimised binary forwards a short load without errors.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
# shellcheck source=gateway/bench/common.sh
source "$ROOT/gateway/bench/common.sh"

PROFILE="${PGO_PROFILE:-production}"
HOST_TRIPLE="$(rustc -vV | sed -n 's/^host: //p')"
PROFDATA="$(rustc --print sysroot)/lib/rustlib/$HOST_TRIPLE/bin/llvm-profdata"
[[ -x "$PROFDATA" ]] || { echo "missing $PROFDATA: run 'rustup component add llvm-tools'" >&2; exit 1; }

TARGET_DIR="$(target_dir "$ROOT")"
GEN_DIR="$TARGET_DIR/pgo-generate"
USE_DIR="$TARGET_DIR/pgo"
RAW="$GEN_DIR/profiles-$PROFILE"
PROFILE_DATA="$GEN_DIR/gateway-$PROFILE.profdata"
# The user's flags (CARGO_ENCODED_RUSTFLAGS, else RUSTFLAGS) plus one, as cargo's encoded
# form: RUSTFLAGS splits at spaces, which a checkout path may hold.
rustflags_with() { # flag
  local words=() w out=""
  if [[ -n "${CARGO_ENCODED_RUSTFLAGS:-}" ]]; then
    IFS=$'\x1f' read -r -a words <<<"$CARGO_ENCODED_RUSTFLAGS"
  else
    read -r -a words <<<"${RUSTFLAGS:-}"
  fi
  for w in "${words[@]}"; do out+="$w"$'\x1f'; done
  printf '%s' "$out$1"
}
# Own target directories: other flags would rebuild every crate in target/ each time.
echo "== instrumented build ($PROFILE)" >&2
CARGO_TARGET_DIR="$GEN_DIR" CARGO_ENCODED_RUSTFLAGS="$(rustflags_with "-Cprofile-generate=$RAW")" \
  cargo build --locked --profile "$PROFILE" -p gateway
cargo build --locked --release -p sni-bench
GEN_GW="$GEN_DIR/$PROFILE/gateway"
SB="$TARGET_DIR/release/sni-bench"

bench_addresses "${PGO_PORT_BASE:-29000}"
ports_free "$BACKEND" "$BACKEND_PLAIN" "$HB_DEST" "$GW_ADDR" "$GW_HBONE" "$GW_ADMIN"

OUT="$(mktemp -d /tmp/gw-pgo.XXXXXX)"
PIDS=()
GW_PID=""
cleanup() {
  for p in "${PIDS[@]}" $GW_PID; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$OUT"
}
trap cleanup EXIT

"$SB" certs --dir "$OUT/certs" >/dev/null
"$SB" backend --listen "$BACKEND" --plain-listen "$BACKEND_PLAIN" --certs "$OUT/certs" \
  --threads 1 2>"$OUT/backend.log" &
PIDS+=($!)
"$SB" hbone-destination --listen "$HB_DEST" --certs "$OUT/certs" --app "$BACKEND_PLAIN" \
  --threads 1 2>"$OUT/hbone-destination.log" &
PIDS+=($!)
write_endpoints "$OUT/endpoints.yaml" hbone
wait_port "$BACKEND"
wait_port "$HB_DEST"

# Each sni-bench run that counts errors must end without any (bulk runs stop at the first):
# a training or check run that failed would count error paths as hot, or pass a broken binary.
load() { # name mode args...
  local name="$1"; shift
  "$SB" "$@" --certs "$OUT/certs" --threads 1 >"$OUT/$name.json"
  if grep -q '"errors":' "$OUT/$name.json" && ! grep -q '"errors":0[,}]' "$OUT/$name.json"; then
    echo "errors in $name: $(cat "$OUT/$name.json")" >&2
    echo "gateway log (warnings, errors and connections of a second or more):" >&2
    grep -E ' (WARN|ERROR) |duration_ms=[0-9]{4,}' "$OUT/gateway.log" | tail -20 >&2 || true
    exit 1
  fi
}
tls() { load "$1" "${@:2}" --target "$GW_ADDR" --sni "$SNI" --name gateway; }
hbone() { load "$1" "${@:2}" --target "$GW_HBONE" --double --authority "$HB_AUTH" --name gateway; }
scrape() { # GET /metrics on the admin port, body discarded
  exec 3<>"/dev/tcp/${GW_ADMIN%:*}/${GW_ADMIN#*:}"
  printf 'GET /metrics HTTP/1.1\r\nHost: pgo\r\nConnection: close\r\n\r\n' >&3
  cat <&3 >/dev/null
  exec 3<&-
}

start_gateway() { # binary [extra args...]
  "$1" --listen "$GW_ADDR" --admin "$GW_ADMIN" --endpoints "$OUT/endpoints.yaml" \
    --hbone-listen "$GW_HBONE" --hbone-certs "$OUT/certs" "${@:2}" 2>>"$OUT/gateway.log" &
  GW_PID=$!
  wait_port "$GW_ADDR" 30
  wait_port "$GW_HBONE" 30
}
# The counts are written when the process exits: SIGTERM, then the drain, then exit.
stop_gateway() {
  kill -TERM "$GW_PID"
  wait "$GW_PID" || { echo "the gateway exited with an error; log in $OUT/gateway.log" >&2; exit 1; }
  GW_PID=""
}

train() { # duration-of-each-scenario
  local d="$1"
  tls connrate connrate --concurrency 32 --duration "$d"
  tls rr32 rr --connections 32 --size 64 --duration "$d" --warmup 200ms
  tls rr1 rr --connections 1 --size 64 --duration "$d" --warmup 200ms
  tls bulk throughput --connections 4 --duration "$d"
  hbone hb-new hbone-connrate --concurrency 32 --duration "$d"
  hbone hb-pooled hbone-pooled --concurrency 32 --duration "$d"
  hbone hb-rr hbone-rr --tunnels 32 --duration "$d" --warmup 200ms
  hbone hb-bulk hbone-throughput --tunnels 4 --duration "$d"
  tls idle idle --connections 500 --pid "$GW_PID" --settle 500ms
  scrape
}

rm -rf "$RAW"
echo "== training: every core, access logs (plain)" >&2
start_gateway "$GEN_GW"
train 2s
stop_gateway
echo "== training: every core, access logs (JSON)" >&2
start_gateway "$GEN_GW" --log-format json
train 500ms
stop_gateway
echo "== training: one worker, warnings only" >&2
RUST_LOG=warn TOKIO_WORKER_THREADS=1 start_gateway "$GEN_GW"
train 2s
stop_gateway

compgen -G "$RAW/*.profraw" >/dev/null || { echo "the instrumented gateway wrote no profile to $RAW" >&2; exit 1; }
"$PROFDATA" merge -o "$PROFILE_DATA" "$RAW"

echo "== optimised build ($PROFILE)" >&2
CARGO_TARGET_DIR="$USE_DIR" CARGO_ENCODED_RUSTFLAGS="$(rustflags_with "-Cprofile-use=$PROFILE_DATA")" \
  cargo build --locked --profile "$PROFILE" -p gateway
GW="$USE_DIR/$PROFILE/gateway"

echo "== check: the optimised gateway forwards" >&2
start_gateway "$GW"
tls check-tls connrate --concurrency 8 --max-conns 200 --duration 30s
hbone check-hbone hbone-connrate --concurrency 8 --duration 500ms
stop_gateway
echo "$GW"
