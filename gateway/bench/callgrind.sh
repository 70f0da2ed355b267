#!/usr/bin/env bash
# The gateway's userspace instructions per new connection and per 64 B request, counted by
# valgrind's callgrind. Unlike the benchmark's CPU time these repeat while other work loads
# the machine (per request within 0.3 %, per connection within about 3 %), so they tell a
# small code change from noise; they leave out the kernel's work (measure that with the
# benchmark).
#
#   gateway/bench/callgrind.sh               # prints instructions per connection and per request
#   GATEWAY=path/to/gateway gateway/bench/callgrind.sh   # another build (e.g. before a change)
#   KEEP=1 ...                               # keep the callgrind dumps (for callgrind_annotate)
#   PROXY=haproxy|nginx gateway/bench/callgrind.sh   # the same count for HAProxy or nginx,
#                                            # configured as the benchmark runs them
#   SIM=1 ...                                # also simulate caches and branch prediction:
#                                            # misses and mispredictions per connection
#
# Differences cancel start-up, warm-up and timers: per connection = (Ir of 1000 connections -
# Ir of 200) / 800; per request = (Ir of 20,000 requests - Ir of 4,000) / 16,000, each phase
# on 16 new persistent connections held for the same 8 s.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
# shellcheck source=gateway/bench/common.sh
source "$ROOT/gateway/bench/common.sh"
command -v valgrind >/dev/null || { echo "missing valgrind (apt-get install -y valgrind)" >&2; exit 1; }

# The `production` profile: fat LTO, as deployed but without profile-guided optimisation, so
# that two versions of the code compare without two trainings in between. PROFILE=pgo for the
# build to deploy (pgo.sh), PROFILE=release for the faster build.
PROFILE="${PROFILE:-production}"
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  build_binaries "$PROFILE" -q
fi
TARGET_DIR="$(target_dir "$ROOT")"
GW="${GATEWAY:-$(gateway_binary "$TARGET_DIR" "$PROFILE")}"
SB="$TARGET_DIR/release/sni-bench"

bench_addresses "${CALLGRIND_PORT_BASE:-28000}"
ports_free "$BACKEND" "$BACKEND_PLAIN" "$GW_ADDR" "$GW_ADMIN"
OUT="$(mktemp -d /tmp/gw-callgrind.XXXXXX)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [[ "${KEEP:-0}" == 1 ]]; then echo "dumps kept in $OUT" >&2; else rm -rf "$OUT"; fi
}
trap cleanup EXIT


"$SB" certs --dir "$OUT/certs" >/dev/null
"$SB" backend --listen "$BACKEND" --plain-listen "$BACKEND_PLAIN" --certs "$OUT/certs" \
  --threads 1 2>"$OUT/backend.log" &
PIDS+=($!)
write_endpoints "$OUT/endpoints.yaml"
PROXY="${PROXY:-gateway}"
case "$PROXY" in
  gateway) CMD=("$GW" --listen "$GW_ADDR" --admin "$GW_ADMIN" --endpoints "$OUT/endpoints.yaml") ;;
  haproxy)
    write_haproxy_cfg "$OUT/haproxy.cfg" "$GW_ADDR" "$SNI" "$BACKEND"
    CMD=("$(command -v haproxy || echo /usr/sbin/haproxy)" -db -f "$OUT/haproxy.cfg") ;;
  nginx)
    write_nginx_conf "$OUT/nginx" "$GW_ADDR" "$SNI" "$BACKEND" 4096 off
    CMD=("$(command -v nginx || echo /usr/sbin/nginx)" -p "$OUT/nginx" -c "$OUT/nginx/nginx.conf" -e "$OUT/nginx/logs/error.log") ;;
  *) echo "PROXY must be gateway, haproxy or nginx" >&2; exit 1 ;;
esac
SIM_ARGS=()
if [[ "${SIM:-0}" == 1 ]]; then SIM_ARGS=(--cache-sim=yes --branch-sim=yes); fi
RUST_LOG=warn TOKIO_WORKER_THREADS=1 valgrind --tool=callgrind -q "${SIM_ARGS[@]}" \
  --callgrind-out-file="$OUT/cg.out" "${CMD[@]}" 2>"$OUT/proxy.log" &
GW_PID=$!
PIDS+=("$GW_PID")
wait_port "$BACKEND" 10
wait_port "$GW_ADDR" 60
# Something else on these ports (a run not yet ended) would be measured instead.
for p in "${PIDS[@]}"; do
  kill -0 "$p" 2>/dev/null || { echo "a process did not start; logs in $OUT" >&2; KEEP=1; exit 1; }
done

client() { "$SB" "$@" --target "$GW_ADDR" --certs "$OUT/certs" --threads 1; }
# Ir of the gateway's process since the last zeroing: dumps, then reads the dump's total.
# The dump's event names and all its totals also go to $OUT/<phase>.events (SIM=1 reads them).
counted() { # phase-name command...
  local name="$1"; shift
  callgrind_control -z "$GW_PID" >/dev/null 2>&1 || { echo "callgrind_control could not zero $GW_PID" >&2; exit 1; }
  "$@" >"$OUT/$name.json"
  grep -q '"errors":0,' "$OUT/$name.json" || { echo "errors in $name: $(cat "$OUT/$name.json")" >&2; KEEP=1; exit 1; }
  callgrind_control -d "$name" "$GW_PID" >/dev/null 2>&1 || { echo "callgrind_control could not dump $GW_PID" >&2; exit 1; }
  # callgrind numbers its dumps 1, 2, ...: the newest is the count (this runs in a subshell).
  local f; f="$OUT/cg.out.$(find "$OUT" -name 'cg.out.*' | wc -l)"
  sed -n 's/^events: *//p' "$f" | head -1 >"$OUT/$name.events"
  sed -n 's/^totals: *//p; s/^summary: *//p' "$f" | head -1 | tee -a "$OUT/$name.events" | cut -d' ' -f1
}
json_num() { sed -n "s/.*\"$2\": *\([0-9.]*\).*/\1/p" "$OUT/$1.json" | head -1; }

client connrate --concurrency 8 --max-conns 50 --duration 60s >/dev/null   # warm-up
c200=$(counted c200 client connrate --concurrency 8 --max-conns 200 --duration 120s)
c1000=$(counted c1000 client connrate --concurrency 8 --max-conns 1000 --duration 600s)
n200=$(json_num c200 connections)
n1000=$(json_num c1000 connections)
# rr stops sending at --max-requests but holds its connections for the whole duration: the
# same duration for both phases, so the idle time cancels too.
r1=$(counted r1 client rr --connections 16 --max-requests 4000 --duration 8s --warmup 0s)
r2=$(counted r2 client rr --connections 16 --max-requests 20000 --duration 8s --warmup 0s)
q1=$(json_num r1 requests)
q2=$(json_num r2 requests)

for v in c200 c1000 n200 n1000 r1 r2 q1 q2; do
  [[ -n "${!v}" ]] || { echo "no figure for $v; logs in $OUT" >&2; KEEP=1; exit 1; }
done
if [[ "$PROXY" == gateway ]]; then echo "gateway: $GW"; else echo "proxy: $PROXY (${CMD[0]})"; fi
echo "instructions per new connection: $(( (c1000 - c200) / (n1000 - n200) )) (connections $n200 and $n1000)"
echo "instructions per 64 B request:   $(( (r2 - r1) / (${q2%.*} - ${q1%.*}) )) (requests $q1 and $q2)"
if [[ "${SIM:-0}" == 1 ]]; then
  # Per connection, from the same two phases. callgrind's cycle estimate weighs a first-level
  # miss 10, a last-level miss 100 and a misprediction 10 instructions: a guide, not a clock.
  awk -v n=$((n1000 - n200)) 'NR == FNR { if (FNR == 1) k = split($0, name); else split($0, a); next }
    FNR == 2 { for (i = 1; i <= k; i++) d[name[i]] = ($i - a[i]) / n }
    END {
      printf "per connection: I1 misses %.0f, D1 misses %.0f, last-level misses %.1f, branch mispredictions %.0f\n",
        d["I1mr"], d["D1mr"] + d["D1mw"], d["ILmr"] + d["DLmr"] + d["DLmw"], d["Bcm"] + d["Bim"]
      printf "per connection: estimated cycles %.0f\n", d["Ir"] + 10 * (d["I1mr"] + d["D1mr"] + d["D1mw"] + d["Bcm"] + d["Bim"]) + 100 * (d["ILmr"] + d["DLmr"] + d["DLmw"])
    }' "$OUT/c200.events" "$OUT/c1000.events"
fi
