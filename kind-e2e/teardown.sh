#!/usr/bin/env bash
# kind-e2e/teardown.sh: delete the two kind clusters (west, east) made by run.sh.
#
# Usage: kind-e2e/teardown.sh [--dry-run] [--purge]
#   --dry-run   print the commands and run nothing
#   --purge     also delete kind-e2e/.work (kubeconfig, certificates and keys,
#               generated manifests); the next run.sh then makes a new root CA
#
# To undo only the federation and keep the clusters, use instead:
#   meshctl unjoin --kubeconfig kind-e2e/.work/kubeconfig --context kind-west --context kind-east
set -euo pipefail

# shellcheck source=lib.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

PURGE=0
while (($# > 0)); do
  case $1 in
    --dry-run) DRY_RUN=1 ;;
    --purge) PURGE=1 ;;
    -h | --help)
      sed -n '2,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *) die "unknown argument: $1" "run with --help" ;;
  esac
  shift
done

STEP_TOTAL=$((1 + PURGE))
step clusters "Delete the kind clusters west and east" \
  "removes both clusters and everything in them (MetalLB, Istio, the gateways, the sample); their contexts leave the e2e kubeconfig"
need kind
enter_repo
delete_clusters
if ((PURGE == 1)); then
  step purge "Delete $WORK_REL" "it holds private keys and a kubeconfig for clusters that no longer exist"
  run rm -rf "$WORK_REL"
fi
printf '\n'
note "teardown done$( ((DRY_RUN == 1)) && printf ' (dry run: nothing was run)')"
