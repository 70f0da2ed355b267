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

# Builds the gateway with cargo profile `profile` (the bench measures `production`, the build
# to deploy) and the sni-bench load generator with `release`. Extra arguments go to cargo.
build_binaries() { # profile [cargo flags...]
  cargo build --profile "$1" "${@:2}" -p gateway
  cargo build --release "${@:2}" -p sni-bench
}
