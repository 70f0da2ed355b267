# shellcheck shell=bash
# Shared by run.sh and callgrind.sh (sourced, not run).

# Where cargo puts binaries: CARGO_TARGET_DIR or the workspace's target/.
target_dir() { # root
  local d
  d="$(cargo metadata --format-version 1 --no-deps 2>/dev/null | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
  echo "${d:-$1/target}"
}

# Waits until something accepts on host:port, at most `seconds` (default 10); exits otherwise.
wait_port() { # host:port [seconds]
  local secs="${2:-10}"
  for _ in $(seq 1 $((secs * 10))); do
    if (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "nothing listening on $1 after $secs s" >&2; exit 1
}

# Stops the run when something already listens on one of these host:port addresses: an
# earlier run or a process left over would answer in place of this run's (a TLS backend with
# other certificates, or a second nginx sharing the port through SO_REUSEPORT) and every
# figure would be wrong without an error.
ports_free() { # host:port...
  local a
  for a in "$@"; do
    if (exec 3<>"/dev/tcp/${a%:*}/${a#*:}") 2>/dev/null; then
      echo "something already listens on $a (an earlier benchmark still running, or a process left over: see ss -ltnp); stop it or choose other ports with BENCH_PORT_BASE / CALLGRIND_PORT_BASE" >&2
      exit 1
    fi
  done
}

# The loopback addresses of a run from its port base (globals): the TLS backend and its plain
# port (the app behind the HBONE destination), the destination ztunnel double on
# "podIP:15008", the gateway's passthrough, HBONE and admin listeners, and the names routed.
# shellcheck disable=SC2034  # used by the scripts that source this file
bench_addresses() { # port-base
  local p="$1"
  BACKEND="127.0.0.2:$((p + 443))"
  BACKEND_PLAIN="127.0.0.2:$((p + 444))"
  HB_DEST="127.0.0.3:$((p + 508))"
  GW_ADDR="127.0.0.1:$((p + 1))"
  GW_HBONE="127.0.0.1:$((p + 8))"
  GW_ADMIN="127.0.0.1:$((p + 21))"
  HOST=bench.default.svc.cluster.local
  HB_HOST=hbone.default.svc.cluster.local
  HB_AUTH="$HB_HOST:80"
  SNI="outbound_.80_._.$HOST"
}

# The gateway's endpoints file for bench_addresses' layout: $HOST on the TLS backend and,
# with `hbone`, $HB_HOST behind the destination ztunnel double.
write_endpoints() { # file [hbone]
  {
    echo "services:"
    echo "  - host: $HOST"
    echo "    ports: [{port: 80, targetPort: ${BACKEND##*:}}]"
    echo "    endpoints: [{address: ${BACKEND%:*}}]"
    if [[ "${2:-}" == hbone ]]; then
      echo "  - host: $HB_HOST"
      echo "    ports: [{port: 80, targetPort: 80}]"
      echo "    hbone: {port: ${HB_DEST##*:}}"
      echo "    endpoints: [{address: ${HB_DEST%:*}}]"
    fi
  } >"$1"
}

# Builds the gateway with cargo profile `profile`, or `pgo` for the build to deploy
# (`production` with profile-guided optimisation, by pgo.sh), and the sni-bench load generator
# with `release`. Extra arguments go to cargo.
build_binaries() { # profile [cargo flags...]
  if [[ "$1" == pgo ]]; then
    bash "$(dirname "${BASH_SOURCE[0]}")/pgo.sh" >/dev/null
  else
    cargo build --profile "$1" "${@:2}" -p gateway
  fi
  cargo build --release "${@:2}" -p sni-bench
}

# Where build_binaries puts the gateway of `profile`.
gateway_binary() { # target-dir profile
  if [[ "$2" == pgo ]]; then echo "$1/pgo/production/gateway"; else echo "$1/$2/gateway"; fi
}

# HAProxy as the benchmark runs it: one thread, `mode tcp`, routing the SNI by
# `req.ssl_sni`, no logging. maxconn is left to HAProxy: it derives it from RLIMIT_NOFILE.
write_haproxy_cfg() { # file listen sni backend
  cat >"$1" <<EOT
global
    nbthread 1
defaults
    mode tcp
    timeout connect 1s
    timeout client 1h
    timeout server 1h
    # no 'log' line: no per-connection logging
frontend sni
    bind $2
    tcp-request inspect-delay 10s
    tcp-request content accept if { req.ssl_hello_type 1 }
    use_backend bench if { req.ssl_sni -m str $3 }
backend bench
    server b1 $4
EOT
}

# nginx as the benchmark runs it: one worker, `stream` with `ssl_preread`, no access log,
# under the directory `prefix` (its pid file and logs/). `master` is on for the benchmark;
# callgrind.sh turns it off so that the process it counts is the worker.
# map_hash_bucket_size: Istio's SNI names are long; with nginx's default (one cache line)
# nginx refuses the map ("could not build map_hash, you should increase map_hash_bucket_size").
# half_close (on|off, default off, nginx's default): `proxy_half_close on` (nginx 1.21.4+)
# passes a FIN on as a write shutdown and waits for the other side's, as HAProxy and the
# gateway do; off, nginx ends the session at the first FIN and closes both sides.
write_nginx_conf() { # prefix listen sni backend nofile master(on|off) [half_close(on|off)]
  mkdir -p "$1/logs"
  cat >"$1/nginx.conf" <<EOT
load_module ${NGINX_STREAM_MOD:-/usr/lib/nginx/modules/ngx_stream_module.so};
daemon off;
master_process $6;
worker_processes 1;
worker_rlimit_nofile $5;
pid $1/nginx.pid;
error_log $1/logs/error.log warn;
events {
    worker_connections $5;
}
stream {
    access_log off;
    map_hash_bucket_size 128;
    map \$ssl_preread_server_name \$upstream {
        $3 $4;
        default 127.0.0.1:1;
    }
    server {
        listen $2 reuseport;
        ssl_preread on;
        preread_timeout 10s;
        proxy_pass \$upstream;
        proxy_connect_timeout 1s;
        proxy_timeout 1h;
        tcp_nodelay on;
$([[ "${7:-off}" == on ]] && echo "        proxy_half_close on;")
    }
}
EOT
}
