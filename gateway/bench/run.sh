#!/usr/bin/env bash
# The $(common ...) and $(cost ...) expansions are flag lists: word splitting is meant.
# shellcheck disable=SC2046
# Side-by-side SNI proxy benchmark on loopback: the gateway, HAProxy (mode tcp, req.ssl_sni)
# and nginx (stream, ssl_preread), each routing the same SNI to the same TLS backend.
# Each proxy runs one worker pinned to CPU 0; the load generator and the backend run on
# CPU 1. A proxy's cost is CPU 0's busy time (/proc/stat) per connection, request or GB.
# Every run restarts the proxies; the report gives the median of the runs and their range.
#
#   gateway/bench/run.sh            # full run: 3 runs (~8–10 minutes after the build); writes RESULTS.md
#   gateway/bench/run.sh --quick    # harness check (~40 s, one run), numbers meaningless
#
# Env: BENCH_RUNS (default 3), BENCH_PORT_BASE (default 27000), BENCH_OUT (default: a temp
# dir, kept), SKIP_BUILD=1, BENCH_PROFILE (the gateway's build: pgo, the build to deploy:
# production with profile-guided optimisation, by pgo.sh; or a cargo profile such as
# production; release with --quick), BENCH_GATEWAY (another gateway binary, e.g. an older build to
# compare against; RESULTS.md is then left alone).
set -euo pipefail

QUICK=0
[[ "${1:-}" == "--quick" ]] && QUICK=1

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
cd "$ROOT"
# shellcheck source=gateway/bench/common.sh
source "$HERE/common.sh"

if [[ "$QUICK" == 1 ]]; then
  DUR=500ms WARM=200ms TP_DUR=500ms IDLE_N=300 SETTLE=300ms PAUSE=0.2 HB_DUR=300ms RUNS=${BENCH_RUNS:-1}
else
  DUR=5s WARM=1s TP_DUR=4s IDLE_N=4000 SETTLE=2s PAUSE=1 HB_DUR=3s RUNS=${BENCH_RUNS:-3}
fi
# The quick check measures nothing again.
if [[ "$QUICK" == 1 ]]; then RETRIES=0; else RETRIES=2; fi
CONNRATE_CONC=32
RR_CONNS=32
BULK_CONNS=4

# The gateway as deployed (`pgo`: the `production` profile, fat LTO, built again with the
# counts of a training load; about ten minutes to build); the quick harness check takes the
# release build, as its numbers mean nothing anyway.
if [[ "$QUICK" == 1 ]]; then GW_PROFILE="${BENCH_PROFILE:-release}"; else GW_PROFILE="${BENCH_PROFILE:-pgo}"; fi
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  build_binaries "$GW_PROFILE"
fi
TARGET_DIR="$(target_dir "$ROOT")"
GW="${BENCH_GATEWAY:-$(gateway_binary "$TARGET_DIR" "$GW_PROFILE")}"
SB="$TARGET_DIR/release/sni-bench"
HAPROXY="$(command -v haproxy || echo /usr/sbin/haproxy)"
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
NGINX_STREAM_MOD="${NGINX_STREAM_MOD:-/usr/lib/nginx/modules/ngx_stream_module.so}"
for b in "$GW" "$SB" "$HAPROXY" "$NGINX" "$NGINX_STREAM_MOD"; do
  [[ -e "$b" ]] || { echo "missing $b (apt-get install -y haproxy nginx-light libnginx-mod-stream)" >&2; exit 1; }
done
command -v taskset >/dev/null || { echo "missing taskset (apt-get install -y util-linux)" >&2; exit 1; }

# Proxy on CPU 0, everything else on CPU 1. With one CPU, all share it (numbers then say less).
if (( $(nproc) >= 2 )); then PROXY_CPU=0 LOAD_CPU=1; else PROXY_CPU=0 LOAD_CPU=0; fi
ON_PROXY=(taskset -c "$PROXY_CPU")
ON_LOAD=(taskset -c "$LOAD_CPU")

# File descriptors: each proxied idle connection costs the proxy two.
ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)"
NOFILE="$(ulimit -n)"
MAX_IDLE=$(( (NOFILE - 200) / 2 ))
if (( IDLE_N > MAX_IDLE )); then
  echo "RLIMIT_NOFILE is $NOFILE; idle test uses $MAX_IDLE connections instead of $IDLE_N" >&2
  IDLE_N=$MAX_IDLE
fi

P="${BENCH_PORT_BASE:-27000}"
bench_addresses "$P"
HA_ADDR="127.0.0.1:$((P + 2))"
NG_ADDR="127.0.0.1:$((P + 3))"
NGHC_ADDR="127.0.0.1:$((P + 4))"

ports_free "$BACKEND" "$BACKEND_PLAIN" "$GW_HBONE" "$HB_DEST" "$GW_ADDR" "$GW_ADMIN" "$HA_ADDR" "$NG_ADDR" "$NGHC_ADDR"

OUT="${BENCH_OUT:-$(mktemp -d /tmp/sni-bench.XXXXXX)}"
mkdir -p "$OUT/res" "$OUT/nginx/logs" "$OUT/nginx-hc/logs"
CERTS="$OUT/certs"
PIDS=()
RUN_PIDS=()
# The proxies of the current run too: a run that stops on an error (a client that cannot
# connect) would otherwise wait here for them for ever.
cleanup() {
  for p in "${PIDS[@]}" "${RUN_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT


"$SB" certs --dir "$CERTS"

# --- backend (CPU 1, for the whole benchmark) ----------------------------------------------
"${ON_LOAD[@]}" "$SB" backend --listen "$BACKEND" --plain-listen "$BACKEND_PLAIN" --certs "$CERTS" \
  --threads 1 2>"$OUT/backend.log" &
PIDS+=($!)
# An older gateway (BENCH_GATEWAY) may have no HBONE listener: then the HBONE part is skipped.
HBONE=0
if "$GW" --help 2>/dev/null | grep -q -- --hbone-listen; then
  HBONE=1
  "${ON_LOAD[@]}" "$SB" hbone-destination --listen "$HB_DEST" --certs "$CERTS" --app "$BACKEND_PLAIN" \
    --threads 1 2>"$OUT/hbone-destination.log" &
  PIDS+=($!)
  GW_HBONE_ARGS=(--hbone-listen "$GW_HBONE" --hbone-certs "$CERTS")
else
  GW_HBONE_ARGS=()
fi

# --- proxy configurations --------------------------------------------------------------------
write_endpoints "$OUT/endpoints.yaml" hbone
write_haproxy_cfg "$OUT/haproxy.cfg" "$HA_ADDR" "$SNI" "$BACKEND"
write_nginx_conf "$OUT/nginx" "$NG_ADDR" "$SNI" "$BACKEND" "$NOFILE" on
# A second nginx that passes half-closes on (`proxy_half_close on`), as HAProxy and the
# gateway do: measured beside the others for new connections only (README: "Half-close").
# nginx before 1.21.4 has no such directive: then it is left out, with a warning.
write_nginx_conf "$OUT/nginx-hc" "$NGHC_ADDR" "$SNI" "$BACKEND" "$NOFILE" on on
if "$NGINX" -t -q -p "$OUT/nginx-hc" -c "$OUT/nginx-hc/nginx.conf" -e "$OUT/nginx-hc/logs/error.log" \
  2>"$OUT/nginx-hc-test.log"; then
  NGHC=(nginx-hc)
else
  NGHC=()
  echo "warning: this nginx refuses proxy_half_close (nginx 1.21.4+ has it); the half-closing nginx is left out: $(tail -1 "$OUT/nginx-hc-test.log")" >&2
fi

# --- proxies (CPU 0, restarted for every run) -------------------------------------------------
start_nginx() { # prefix log: one nginx from its directory; $! is its master
  "${ON_PROXY[@]}" "$NGINX" -p "$1" -c "$1/nginx.conf" -e "$1/logs/error.log" 2>>"$2" &
}
nginx_workers() { # master-pid prefix: its workers' pids, comma-separated
  local w
  w="$(pgrep -P "$1" | paste -sd, -)"
  [[ -n "$w" ]] || { echo "nginx ($2) has no workers" >&2; cat "$2/logs/error.log" >&2; return 1; }
  echo "$w"
}
start_proxies() { # run
  RUST_LOG=warn TOKIO_WORKER_THREADS=1 "${ON_PROXY[@]}" "$GW" --listen "$GW_ADDR" --admin "$GW_ADMIN" \
    --endpoints "$OUT/endpoints.yaml" --max-connections 100000 "${GW_HBONE_ARGS[@]}" 2>>"$OUT/gateway.log" &
  GW_PID=$!
  "${ON_PROXY[@]}" "$HAPROXY" -db -f "$OUT/haproxy.cfg" 2>>"$OUT/haproxy.log" &
  HA_PID=$!
  start_nginx "$OUT/nginx" "$OUT/nginx.log"
  NG_PID=$!
  RUN_PIDS=("$GW_PID" "$HA_PID" "$NG_PID")
  if (( ${#NGHC[@]} )); then
    start_nginx "$OUT/nginx-hc" "$OUT/nginx-hc.log"
    NGHC_PID=$!
    RUN_PIDS+=("$NGHC_PID")
    wait_port "$NGHC_ADDR"
  fi
  for a in "$BACKEND" "$GW_ADDR" "$HA_ADDR" "$NG_ADDR"; do wait_port "$a"; done
  if [[ "$HBONE" == 1 ]]; then wait_port "$GW_HBONE"; wait_port "$HB_DEST"; fi
  sleep 0.5
  NG_WORKERS="$(nginx_workers "$NG_PID" "$OUT/nginx")"
  if (( ${#NGHC[@]} )); then NGHC_WORKERS="$(nginx_workers "$NGHC_PID" "$OUT/nginx-hc")"; fi
}
stop_proxies() {
  for p in "${RUN_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${RUN_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}

addr_of() { case "$1" in direct) echo "$BACKEND" ;; gateway) echo "$GW_ADDR" ;; haproxy) echo "$HA_ADDR" ;; nginx) echo "$NG_ADDR" ;; nginx-hc) echo "$NGHC_ADDR" ;; esac; }
pids_of() { case "$1" in gateway) echo "$GW_PID" ;; haproxy) echo "$HA_PID" ;; nginx) echo "$NG_PID,$NG_WORKERS" ;; nginx-hc) echo "$NGHC_PID,$NGHC_WORKERS" ;; direct) echo "" ;; esac; }
common() { echo --target "$(addr_of "$1")" --sni "$SNI" --certs "$CERTS" --name "$1" --threads 1; }
cost() { # target
  local pids; pids="$(pids_of "$1")"
  [[ -n "$pids" ]] || return 0
  echo --proxy-core "$PROXY_CPU" --cpu-pid "$pids"
  # What the traffic costs the client and backend's core: a proxy can shift work there.
  [[ "$LOAD_CPU" != "$PROXY_CPU" ]] && echo --load-core "$LOAD_CPU"
  return 0
}

# A window of which the hypervisor stole more than 2 % from the proxy's core (`sni-bench
# steal-share` says `retry`) is measured again, at most RETRIES times (the last measurement
# counts), so one disturbed window does not decide a proxy's figure; the report names the
# windows measured again.
run() { # run-dir scenario-name mode target args...
  local dir="$1" name="$2" mode="$3" t="$4"; shift 4
  local f="$dir/$name-$t.json" try steal pct verdict
  for try in $(seq 0 "$RETRIES"); do
    echo "== $(basename "$dir") $name / $t" >&2
    "${ON_LOAD[@]}" "$SB" "$mode" $(common "$t") "$@" >"$f"
    cat "$f" >&2
    steal="$("$SB" steal-share "$f")"
    read -r pct verdict <<<"$steal"
    if (( try == RETRIES )) || [[ "$verdict" != retry ]]; then
      break
    fi
    echo "   steal took $pct % of the window: measuring again" >&2
    echo "$name/$t" >>"$dir/retried"
  done
}

# New connections, requests on 32 connections and latency at c=1 are measured in turns
# (`sni-bench interleaved`): every target takes turns of `slice`, round after round, over the
# same seconds, since the host's state drifts over seconds (README: "Targets take turns") and
# would otherwise decide whichever window it fell in. A target whose turns had over 2 % steal
# has all measured again, as `run` does.
turns() { # run-dir scenario-name slice "targets" interleaved-args...
  local dir="$1" name="$2" slice="$3" targets="$4" try t again ats=() pids=()
  shift 4
  for t in $targets; do
    ats+=(--at "$t=$(addr_of "$t")")
    [[ -n "$(pids_of "$t")" ]] && pids+=(--pids "$t=$(pids_of "$t")")
  done
  for try in $(seq 0 "$RETRIES"); do
    echo "== $(basename "$dir") $name / $targets in turns of $slice" >&2
    "${ON_LOAD[@]}" "$SB" interleaved "${ats[@]}" "${pids[@]}" --sni "$SNI" --certs "$CERTS" \
      --slice "$slice" --proxy-core "$PROXY_CPU" --out-dir "$dir" --prefix "$name" "$@" >/dev/null
    again=()
    for t in $targets; do
      cat "$dir/$name-$t.json" >&2
      [[ "$t" != direct && "$("$SB" steal-share "$dir/$name-$t.json")" == *retry ]] && again+=("$name/$t")
    done
    if (( try == RETRIES )) || (( ${#again[@]} == 0 )); then
      break
    fi
    echo "   steal took over 2 % of ${again[*]}: measuring all again" >&2
    printf '%s\n' "${again[@]}" >>"$dir/retried"
  done
}

hb() { # run-dir scenario-name mode direct|gateway args...
  local dir="$1" name="$2" mode="$3" k="$4"; shift 4
  local to=(--target "$HB_DEST")
  [[ "$k" == gateway ]] && to=(--target "$GW_HBONE" --double)
  echo "== $(basename "$dir") $name / $k" >&2
  "${ON_LOAD[@]}" "$SB" "$mode" "${to[@]}" --authority "$HB_AUTH" --certs "$CERTS" --name "$k" --threads 1 "$@" \
    >"$dir/$name-$k.json"
  cat "$dir/$name-$k.json" >&2
}

# Busy share (%) of the proxy core over one second with the proxies idle: other load on
# CPU 0 would be counted as the proxy's.
quiet_core() { "$SB" core-busy --core "$PROXY_CPU" --window 1s; }

START=$(date +%s)
NOISE=()
ORDERS=("haproxy nginx gateway" "nginx gateway haproxy" "gateway haproxy nginx")
for r in $(seq 1 "$RUNS"); do
  D="$OUT/res/r$r"
  mkdir -p "$D"
  rm -f "$D/retried"
  start_proxies
  NOISE+=("$(quiet_core)")
  (( ${NOISE[-1]} <= 5 )) || echo "warning: CPU $PROXY_CPU was ${NOISE[-1]}% busy with the proxies idle; figures include that load" >&2
  # Rotate the order, so no proxy always goes first or last.
  read -r -a ORDER <<<"${ORDERS[$(( (r - 1) % 3 ))]}"
  for t in "${ORDER[@]}" "${NGHC[@]}"; do # warm-up: page-in, allocator, first handshakes
    "${ON_LOAD[@]}" "$SB" connrate $(common "$t") --concurrency 4 --duration 300ms >/dev/null
  done
  turns "$D" connrate 250ms "${ORDER[*]} ${NGHC[*]}" --scenario connrate --concurrency "$CONNRATE_CONC" \
    --duration "$DUR" --warmup 0s
  turns "$D" rr32 250ms "${ORDER[*]}" --scenario rr --connections "$RR_CONNS" --size 64 \
    --duration "$DUR" --warmup "$WARM"
  for t in "${ORDER[@]}"; do
    run "$D" bulk throughput "$t" --connections "$BULK_CONNS" --duration "$TP_DUR" $(cost "$t")
  done
  turns "$D" rr1 100ms "direct ${ORDER[*]}" --scenario rr --connections 1 --size 64 \
    --duration "$DUR" --warmup "$WARM"
  for t in "${ORDER[@]}"; do
    run "$D" idle idle "$t" --connections "$IDLE_N" --pid "$(pids_of "$t")" --settle "$SETTLE"
    sleep "$PAUSE"
  done
  if [[ "$HBONE" == 1 ]]; then
    # Latency at c=1: double HBONE through the gateway against single HBONE straight to the
    # destination (what the gateway adds); cost at c=32 and in bulk.
    for k in direct gateway; do
      hb "$D" hb-new1 hbone-connrate "$k" --concurrency 1 --duration "$HB_DUR"
      hb "$D" hb-pooled1 hbone-pooled "$k" --concurrency 1 --duration "$HB_DUR"
      hb "$D" hb-rr1 hbone-rr "$k" --tunnels 1 --duration "$HB_DUR" --warmup "$WARM"
    done
    hb "$D" hb-new32 hbone-connrate gateway --concurrency 32 --duration "$HB_DUR" $(cost gateway)
    hb "$D" hb-pooled32 hbone-pooled gateway --concurrency 32 --duration "$HB_DUR" $(cost gateway)
    hb "$D" hb-rr32 hbone-rr gateway --tunnels 32 --duration "$HB_DUR" --warmup "$WARM" $(cost gateway)
    hb "$D" hb-bulk hbone-throughput gateway --tunnels 4 --duration "$TP_DUR" $(cost gateway)
  fi
  stop_proxies
done
ELAPSED=$(( $(date +%s) - START ))

# --- report -------------------------------------------------------------------------------
CPU_MODEL="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
{
  echo "## Run of $(date -u +'%Y-%m-%d %H:%M UTC')$([[ $QUICK == 1 ]] && echo ' (--quick: harness check, numbers meaningless)')"
  echo
  echo "Machine: $(nproc) CPUs ($CPU_MODEL), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM, Linux $(uname -r);"
  echo "$("$HAPROXY" -v | head -1 | cut -d' ' -f1-3), $("$NGINX" -v 2>&1 | sed 's/.*: //'), gateway ${BENCH_GATEWAY:-$(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet -- gateway/src || echo '+dirty') ($GW_PROFILE build)}, $(rustc --version | cut -d' ' -f1-2)."
  echo "Each proxy: one worker (HAProxy nbthread 1, nginx worker_processes 1, gateway TOKIO_WORKER_THREADS=1) pinned to CPU $PROXY_CPU; load generator and TLS backend on CPU $LOAD_CPU."
  echo "$RUNS run(s), proxies restarted for each, order rotated; ${ELAPSED}s in all. CPU $PROXY_CPU busy with the proxies idle before each run: ${NOISE[*]} %. Idle connections: $IDLE_N."
} >"$OUT/machine.md"
"$SB" report --dir "$OUT/res" --machine "$OUT/machine.md" | tee "$OUT/report.md"
if [[ "$QUICK" == 0 && -z "${BENCH_GATEWAY:-}" ]]; then
  {
    echo "# Benchmark results"
    echo
    echo "Generated by \`gateway/bench/run.sh\`; do not edit by hand. Raw JSON was in \`$OUT/res\`."
    echo
    cat "$OUT/report.md"
  } >"$HERE/RESULTS.md"
  # The README shows the same table between its markers.
  awk -v f="$OUT/report.md" '
    /<!-- results:begin -->/ { print; while ((getline l < f) > 0) print l; skip = 1; next }
    /<!-- results:end -->/ { skip = 0 }
    !skip' "$HERE/README.md" >"$OUT/README.md" && cp "$OUT/README.md" "$HERE/README.md"
  echo "wrote $HERE/RESULTS.md and the results section of $HERE/README.md" >&2
fi
echo "results and logs: $OUT" >&2
