#!/usr/bin/env bash
# Side-by-side SNI proxy benchmark on loopback: the gateway, HAProxy (mode tcp, req.ssl_sni)
# and nginx (stream, ssl_preread), each routing the same SNI to the same TLS backend, plus a
# direct connection. Prints one markdown table; the full run also writes RESULTS.md.
#
#   gateway/bench/run.sh            # full run (~3-4 minutes after the build), writes RESULTS.md
#   gateway/bench/run.sh --quick    # harness check (~30 s), numbers meaningless
#
# Env: BENCH_PORT_BASE (default 27000), BENCH_OUT (default: a temp dir, kept), SKIP_BUILD=1.
set -euo pipefail

QUICK=0
[[ "${1:-}" == "--quick" ]] && QUICK=1

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
cd "$ROOT"

if [[ "$QUICK" == 1 ]]; then
  CONNRATE_DUR=500ms LAT_DUR=500ms LAT_WARM=100ms TP_DUR=500ms IDLE_N=300 SETTLE=300ms SPLICE_DUR=500ms PAUSE=0.2
else
  CONNRATE_DUR=5s LAT_DUR=5s LAT_WARM=1s TP_DUR=4s IDLE_N=10000 SETTLE=2s SPLICE_DUR=4s PAUSE=1
fi
CONNRATE_CONC=32
LAT_CONNS=16
LAT_RATE=4000
TP_CONNS=1
CLIENT_THREADS=2
PROXY_THREADS=2

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  cargo build --release -p gateway -p sni-bench
fi
TARGET_DIR="$(cargo metadata --format-version 1 --no-deps 2>/dev/null | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
TARGET_DIR="${TARGET_DIR:-$ROOT/target}"
GW="$TARGET_DIR/release/gateway"
SB="$TARGET_DIR/release/sni-bench"
HAPROXY="$(command -v haproxy || echo /usr/sbin/haproxy)"
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
NGINX_STREAM_MOD="${NGINX_STREAM_MOD:-/usr/lib/nginx/modules/ngx_stream_module.so}"
for b in "$GW" "$SB" "$HAPROXY" "$NGINX" "$NGINX_STREAM_MOD"; do
  [[ -e "$b" ]] || { echo "missing $b (apt-get install -y haproxy nginx-light libnginx-mod-stream)" >&2; exit 1; }
done

# File descriptors: each proxied idle connection costs the proxy two. Raise the soft limit to
# the hard limit (root may raise the hard limit too, unless the container forbids it).
ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)"
NOFILE="$(ulimit -n)"
MAX_IDLE=$(( (NOFILE - 200) / 2 ))
if (( IDLE_N > MAX_IDLE )); then
  echo "RLIMIT_NOFILE is $NOFILE (hard limit); idle test uses $MAX_IDLE connections instead of $IDLE_N" >&2
  IDLE_N=$MAX_IDLE
fi

P="${BENCH_PORT_BASE:-27000}"
BACKEND="127.0.0.2:$((P + 443))"
BACKEND_PLAIN="127.0.0.2:$((P + 444))"
GW_ADDR="127.0.0.1:$((P + 1))"
GW_ADMIN="127.0.0.1:$((P + 21))"
HA_ADDR="127.0.0.1:$((P + 2))"
NG_ADDR="127.0.0.1:$((P + 3))"
FWD_COPY="127.0.0.1:$((P + 11))"
FWD_SPLICE="127.0.0.1:$((P + 12))"
FWD_HYBRID="127.0.0.1:$((P + 13))"
HOST=bench.default.svc.cluster.local
SNI="outbound_.80_._.$HOST"

OUT="${BENCH_OUT:-$(mktemp -d /tmp/sni-bench.XXXXXX)}"
mkdir -p "$OUT/res" "$OUT/nginx/logs"
CERTS="$OUT/certs"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

wait_port() { # host:port
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "nothing listening on $1" >&2; exit 1
}

"$SB" certs --dir "$CERTS"

# --- backend ------------------------------------------------------------------------------
"$SB" backend --listen "$BACKEND" --plain-listen "$BACKEND_PLAIN" --certs "$CERTS" --threads 2 \
  2>"$OUT/backend.log" &
PIDS+=($!)

# --- gateway ------------------------------------------------------------------------------
cat >"$OUT/endpoints.yaml" <<EOF
services:
  - host: $HOST
    ports: [{port: 80, targetPort: $((P + 443))}]
    endpoints: [{address: 127.0.0.2}]
EOF
RUST_LOG=warn TOKIO_WORKER_THREADS=$PROXY_THREADS "$GW" --listen "$GW_ADDR" --admin "$GW_ADMIN" \
  --endpoints "$OUT/endpoints.yaml" --max-connections 100000 2>"$OUT/gateway.log" &
GW_PID=$!
PIDS+=($GW_PID)

# --- haproxy ------------------------------------------------------------------------------
cat >"$OUT/haproxy.cfg" <<EOF
global
    nbthread $PROXY_THREADS
    # maxconn is left to HAProxy: it derives it from RLIMIT_NOFILE.
defaults
    mode tcp
    timeout connect 1s
    timeout client 1h
    timeout server 1h
    # no 'log' line: no per-connection logging
frontend sni
    bind $HA_ADDR
    tcp-request inspect-delay 10s
    tcp-request content accept if { req.ssl_hello_type 1 }
    use_backend bench if { req.ssl_sni -m str $SNI }
backend bench
    server b1 $BACKEND
EOF
"$HAPROXY" -db -f "$OUT/haproxy.cfg" 2>"$OUT/haproxy.log" &
HA_PID=$!
PIDS+=($HA_PID)

# --- nginx --------------------------------------------------------------------------------
cat >"$OUT/nginx/nginx.conf" <<EOF
load_module $NGINX_STREAM_MOD;
daemon off;
master_process on;
worker_processes $PROXY_THREADS;
worker_rlimit_nofile $NOFILE;
pid $OUT/nginx/nginx.pid;
error_log $OUT/nginx/logs/error.log warn;
events {
    worker_connections $NOFILE;
}
stream {
    access_log off;
    map_hash_bucket_size 128;
    map \$ssl_preread_server_name \$upstream {
        $SNI $BACKEND;
        default 127.0.0.1:1;
    }
    server {
        listen $NG_ADDR reuseport;
        ssl_preread on;
        preread_timeout 10s;
        proxy_pass \$upstream;
        proxy_connect_timeout 1s;
        proxy_timeout 1h;
        tcp_nodelay on;
    }
}
EOF
"$NGINX" -p "$OUT/nginx" -c "$OUT/nginx/nginx.conf" -e "$OUT/nginx/logs/error.log" 2>"$OUT/nginx.log" &
NG_PID=$!
PIDS+=($NG_PID)

# --- splice experiment forwarders ---------------------------------------------------------
"$SB" forward --mode copy --listen "$FWD_COPY" --upstream "$BACKEND_PLAIN" --threads 2 2>"$OUT/fwd-copy.log" &
FC_PID=$!
PIDS+=($FC_PID)
"$SB" forward --mode splice --listen "$FWD_SPLICE" --upstream "$BACKEND_PLAIN" --threads 2 2>"$OUT/fwd-splice.log" &
FS_PID=$!
PIDS+=($FS_PID)
"$SB" forward --mode hybrid --listen "$FWD_HYBRID" --upstream "$BACKEND_PLAIN" --threads 2 2>"$OUT/fwd-hybrid.log" &
FH_PID=$!
PIDS+=($FH_PID)

for a in "$BACKEND" "$BACKEND_PLAIN" "$GW_ADDR" "$HA_ADDR" "$NG_ADDR" "$FWD_COPY" "$FWD_SPLICE" "$FWD_HYBRID"; do wait_port "$a"; done
sleep 0.5
NG_WORKERS="$(pgrep -P "$NG_PID" | paste -sd, -)"
[[ -n "$NG_WORKERS" ]] || { echo "nginx has no workers" >&2; cat "$OUT/nginx/logs/error.log" >&2; exit 1; }

addr_of() { case "$1" in direct) echo "$BACKEND" ;; gateway) echo "$GW_ADDR" ;; haproxy) echo "$HA_ADDR" ;; nginx) echo "$NG_ADDR" ;; esac; }
pids_of() { case "$1" in gateway) echo "$GW_PID" ;; haproxy) echo "$HA_PID" ;; nginx) echo "$NG_PID,$NG_WORKERS" ;; direct) echo "" ;; esac; }
common() { echo --target "$(addr_of "$1")" --sni "$SNI" --certs "$CERTS" --name "$1" --threads "$CLIENT_THREADS"; }

run() { # scenario target args...
  local s="$1" t="$2"; shift 2
  echo "== $s / $t" >&2
  "$SB" "$s" $(common "$t") "$@" >"$OUT/res/$s-$t.json"
  cat "$OUT/res/$s-$t.json" >&2
}

START=$(date +%s)
# Warm-up: a few connections through each target (page-in, allocator, first handshakes).
for t in direct gateway haproxy nginx; do
  "$SB" connrate $(common "$t") --concurrency 4 --duration 300ms >/dev/null
done

for t in direct gateway haproxy nginx; do
  run connrate "$t" --concurrency "$CONNRATE_CONC" --duration "$CONNRATE_DUR"
  sleep "$PAUSE"
done
for t in direct gateway haproxy nginx; do
  run latency "$t" --connections "$LAT_CONNS" --rate "$LAT_RATE" --duration "$LAT_DUR" --warmup "$LAT_WARM"
done
for t in direct gateway haproxy nginx; do
  pids="$(pids_of "$t")"
  run throughput "$t" --connections "$TP_CONNS" --duration "$TP_DUR" ${pids:+--cpu-pid "$pids"}
done
for t in gateway haproxy nginx; do
  run idle "$t" --connections "$IDLE_N" --pid "$(pids_of "$t")" --settle "$SETTLE"
  sleep "$PAUSE"; sleep "$PAUSE"
done

# Splice experiment: plain TCP, so the forwarder is not hidden behind TLS cost.
plain() { echo --sni "$SNI" --certs "$CERTS" --plain --threads "$CLIENT_THREADS"; }
echo "== splice experiment" >&2
"$SB" throughput $(plain) --target "$BACKEND_PLAIN" --name splice-direct --duration "$SPLICE_DUR" >"$OUT/res/splice-direct.json"
"$SB" throughput $(plain) --target "$FWD_COPY" --name splice-copy --duration "$SPLICE_DUR" --cpu-pid "$FC_PID" >"$OUT/res/splice-copy.json"
"$SB" throughput $(plain) --target "$FWD_SPLICE" --name splice-splice --duration "$SPLICE_DUR" --cpu-pid "$FS_PID" >"$OUT/res/splice-splice.json"
"$SB" throughput $(plain) --target "$FWD_HYBRID" --name splice-hybrid --duration "$SPLICE_DUR" --cpu-pid "$FH_PID" >"$OUT/res/splice-hybrid.json"
cat "$OUT"/res/splice-*.json >&2
ELAPSED=$(( $(date +%s) - START ))

# --- report -------------------------------------------------------------------------------
CPU_MODEL="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
{
  echo "## Run of $(date -u +'%Y-%m-%d %H:%M UTC')$([[ $QUICK == 1 ]] && echo ' (--quick: harness check, numbers meaningless)')"
  echo
  echo "Machine: $(nproc) CPUs ($CPU_MODEL), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM, Linux $(uname -r);"
  echo "$("$HAPROXY" -v | head -1 | cut -d' ' -f1-3), $("$NGINX" -v 2>&1 | sed 's/.*: //'), gateway $(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet -- gateway/src || echo '+dirty'), $(rustc --version | cut -d' ' -f1-2)."
  echo "Load generator, backend and proxy share these $(nproc) CPUs; each proxy runs $PROXY_THREADS worker threads/processes."
  echo "Scenario time ${ELAPSED}s. RLIMIT_NOFILE $NOFILE, idle connections requested: $IDLE_N."
} >"$OUT/machine.md"
"$SB" report --dir "$OUT/res" --machine "$OUT/machine.md" | tee "$OUT/report.md"
if [[ "$QUICK" == 0 ]]; then
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
