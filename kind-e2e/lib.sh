# shellcheck shell=bash
# kind-e2e/lib.sh: helpers shared by run.sh and teardown.sh. Sourced, never executed.
#
# Every command goes through one of these helpers, so that --dry-run prints the
# exact command (one per line, quoted so it can be pasted into bash) and runs
# nothing. Headers and notes are printed as `#` comments, so a whole dry-run
# transcript is itself a runnable script.

DRY_RUN=${DRY_RUN:-0}
STEP_NO=0
STEP_TOTAL=${STEP_TOTAL:-0}
CURRENT_STEP=""

# ---------------------------------------------------------------- printing

note() { printf '# %s\n' "$*"; }
warn() { printf '# WARNING: %s\n' "$*" >&2; }
die() {
  printf '\nERROR%s: %s\n' "${CURRENT_STEP:+ in step \"$CURRENT_STEP\"}" "$1" >&2
  shift
  local hint
  for hint in "$@"; do printf '  hint: %s\n' "$hint" >&2; done
  exit 1
}

# step NAME TITLE WHY: print a numbered header that says what the step does and why.
step() {
  STEP_NO=$((STEP_NO + 1))
  CURRENT_STEP=$1
  printf '\n# ==== [%s/%s] %s (step "%s")\n' "$STEP_NO" "$STEP_TOTAL" "$2" "$1"
  printf '#      why: %s\n' "$3"
}

# shq ARG: quote one argument for display.
#  - plain words are printed as they are;
#  - in a dry run, an argument holding a ${NAME} placeholder (a value that a
#    previous printed `NAME=$(...)` line computes) is double-quoted with the
#    placeholder left live, so the pasted transcript expands it;
#  - anything else is single-quoted.
shq() {
  local a=$1
  if [[ -n $a && $a =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
    printf '%s' "$a"
  elif [[ $DRY_RUN == 1 && $a =~ \$\{[A-Z_][A-Z0-9_]*\} ]]; then
    a=${a//\\/\\\\}
    a=${a//\"/\\\"}
    a=${a//\`/\\\`}
    a=${a//\$/\\\$}
    while [[ $a =~ ^(.*)\\\$\{([A-Z_][A-Z0-9_]*)\}(.*)$ ]]; do
      a="${BASH_REMATCH[1]}\${${BASH_REMATCH[2]}}${BASH_REMATCH[3]}"
    done
    printf '"%s"' "$a"
  else
    printf "'%s'" "${a//\'/\'\\\'\'}"
  fi
}

# cmdline ARGS...: the quoted command line, on one line.
cmdline() {
  local out="" a
  for a in "$@"; do out+="${out:+ }$(shq "$a")"; done
  printf '%s' "$out"
}

# ---------------------------------------------------------------- running

# run CMD...: print the command, then run it (dry run: print only).
run() {
  printf '%s\n' "$(cmdline "$@")"
  [[ $DRY_RUN == 1 ]] && return 0
  "$@"
}

# capture VAR CMD...: run CMD and store its stdout in VAR.
# Dry run: print `VAR=$(CMD)` and set VAR to the text ${VAR}, so that later
# printed commands refer to the variable instead of an invented value.
capture() {
  local __var=$1
  shift
  printf '%s=%s(%s)\n' "$__var" '$' "$(cmdline "$@")"
  if [[ $DRY_RUN == 1 ]]; then
    printf -v "$__var" "\${%s}" "$__var"
    return 0
  fi
  local __out
  __out=$("$@") || return $?
  printf -v "$__var" '%s' "$__out"
}

# retry TRIES DELAY CMD...: run CMD until it exits 0; at most TRIES attempts,
# DELAY seconds apart (bounded in count and in time). Returns 1 if it never succeeds.
retry() {
  local tries=$1 delay=$2 i
  shift 2
  printf '%s  # retried: up to %s tries, %ss apart\n' "$(cmdline "$@")" "$tries" "$delay"
  [[ $DRY_RUN == 1 ]] && return 0
  for ((i = 1; i <= tries; i++)); do
    if "$@"; then return 0; fi
    if ((i < tries)); then
      note "attempt $i/$tries failed; next in ${delay}s"
      sleep "$delay"
    fi
  done
  return 1
}

# retry_match TRIES DELAY VAR REGEX CMD...: run CMD until it exits 0 and its
# stdout matches the bash regex REGEX; store that stdout in VAR. Bounded like retry.
# Dry run: print the command as `VAR=$(CMD)` and set VAR to ${VAR}.
retry_match() {
  local tries=$1 delay=$2 __var=$3 re=$4 i __out=""
  shift 4
  if ((tries > 1)); then
    printf '%s=%s(%s)  # retried until the output matches /%s/: up to %s tries, %ss apart\n' \
      "$__var" '$' "$(cmdline "$@")" "$re" "$tries" "$delay"
  else
    printf '%s=%s(%s)  # the output must match /%s/\n' "$__var" '$' "$(cmdline "$@")" "$re"
  fi
  if [[ $DRY_RUN == 1 ]]; then
    printf -v "$__var" "\${%s}" "$__var"
    return 0
  fi
  for ((i = 1; i <= tries; i++)); do
    # Only stdout is matched; stderr (e.g. kubectl's "No resources found") passes through.
    if __out=$("$@") && [[ $__out =~ $re ]]; then
      printf -v "$__var" '%s' "$__out"
      return 0
    fi
    if ((i < tries)); then
      note "attempt $i/$tries: output does not match yet; next in ${delay}s"
      sleep "$delay"
    fi
  done
  printf '%s\n' "last output: ${__out:-<empty>}" >&2
  return 1
}

# write_file PATH <<'EOF' ... EOF: write a generated file. Printed as a quoted
# heredoc (`cat > PATH <<'EOF'`), which a user can paste as it is.
write_file() {
  local path=$1 content=""
  IFS= read -r -d '' content || true
  content=${content%$'\n'}
  printf "cat > %s <<'EOF'\n%s\nEOF\n" "$(shq "$path")" "$content"
  [[ $DRY_RUN == 1 ]] && return 0
  printf '%s\n' "$content" >"$path"
}

# need TOOL...: fail early, with a hint, if a tool is missing. Skipped in a dry run.
need() {
  if [[ $DRY_RUN == 1 ]]; then
    note "dry run: not checking that these tools are installed: $*"
    return 0
  fi
  local missing=() t
  for t in "$@"; do command -v "$t" >/dev/null 2>&1 || missing+=("$t"); done
  if ((${#missing[@]} > 0)); then
    die "missing tools: ${missing[*]}" "see kind-e2e/README.md, section Prerequisites"
  fi
}

# assert_gt ACTUAL BASELINE WHAT: ACTUAL must be greater than BASELINE (skipped in a dry run).
assert_gt() {
  if [[ $DRY_RUN == 1 ]]; then
    note "check: $3 must have increased (not evaluated in a dry run)"
    return 0
  fi
  if (($1 > $2)); then
    note "ok: $3 went from $2 to $1"
  else
    return 1
  fi
}

# ---------------------------------------------------------------- shared values

# Repository root and the scratch directory (kubeconfig, certificates,
# generated manifests). The scratch directory is git-ignored and excluded from
# the Docker build context (Dockerfile.dockerignore): it holds private keys.
KIND_E2E_DIR=$(cd -P -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd -P -- "$KIND_E2E_DIR/.." && pwd)
WORK_REL=kind-e2e/.work
E2E_KUBECONFIG=$REPO_ROOT/$WORK_REL/kubeconfig
CLUSTERS=(west east)

# enter_repo: cd to the repository root and point KUBECONFIG at a dedicated file,
# so that the user's ~/.kube/config is never touched.
enter_repo() {
  run cd "$REPO_ROOT" || die "cannot cd to $REPO_ROOT"
  run mkdir -p "$WORK_REL"
  run export KUBECONFIG="$E2E_KUBECONFIG"
}

# delete_clusters: delete both kind clusters (their contexts leave KUBECONFIG).
delete_clusters() {
  local c
  for c in "${CLUSTERS[@]}"; do
    run kind delete cluster --name "$c"
  done
}
