#!/usr/bin/env bash
# kind-e2e/ci-check.sh: what CI runs for kind-e2e (no Docker, kind or cluster needed).
#  1. shellcheck on every script (config: kind-e2e/.shellcheckrc);
#  2. the dry runs must exit 0, print the key commands, and call none of
#     docker, kind, kubectl, istioctl, cargo or meshctl: stubs that record any
#     call and fail are put first on PATH.
set -euo pipefail
cd "$(dirname -- "${BASH_SOURCE[0]}")/.."

printf '# shellcheck %s\n' kind-e2e/*.sh
command -v shellcheck >/dev/null || { echo "shellcheck is not installed (apt-get install -y shellcheck)" >&2; exit 1; }
shellcheck kind-e2e/*.sh

stubs=$(mktemp -d)
trap 'rm -rf "$stubs"' EXIT
for tool in docker kind kubectl istioctl cargo meshctl; do
  printf '#!/bin/sh\necho "%s $*" >> "%s/called"\nexit 97\n' "$tool" "$stubs" >"$stubs/$tool"
  chmod +x "$stubs/$tool"
done

# dry_run NAME EXPECTED-SUBSTRING... -- ARGS...: run one dry run and check its output.
dry_run() {
  local name=$1 out expected=()
  shift
  while [[ $1 != -- ]]; do expected+=("$1"); shift; done
  shift
  printf '# dry run: %s\n' "$name"
  out=$(PATH="$stubs:$PATH" bash "$@") || { printf '%s\n' "$out"; echo "FAIL: '$name' exited non-zero" >&2; exit 1; }
  local e
  for e in "${expected[@]}"; do
    [[ $out == *"$e"* ]] || { printf '%s\n' "$out"; echo "FAIL: '$name' output lacks: $e" >&2; exit 1; }
  done
  if [[ -s $stubs/called ]]; then
    echo "FAIL: '$name' ran tools during a dry run:" >&2
    cat "$stubs/called" >&2
    exit 1
  fi
  printf '#   ok (%s lines)\n' "$(printf '%s\n' "$out" | wc -l)"
}

dry_run "run.sh --dry-run (istio mode)" \
  'kind create cluster --name west --config kind-e2e/kind/west.yaml' \
  'metallb-native.yaml' 'docker build -f kind-e2e/Dockerfile -t meshfed/gateway:dev .' \
  'kind load docker-image meshfed/gateway:dev --name east' \
  'certs init --clusters west-cluster,east-cluster' \
  "--server \"kind-west=https://\${WEST_CP_IP}:6443\"" '--expose-services' \
  'istioctl install -y --context kind-west -f kind-e2e/istio/west.yaml' \
  'meshctl check' 'gateway_connections_opened_total' 'scale deployment/simple-backend-west --replicas=0' \
  'apply -f kind-e2e/manifests/istio/strict/' \
  'kind delete cluster --name east' \
  -- kind-e2e/run.sh --dry-run
dry_run "run.sh --dry-run --mode plain" \
  'certs workload --ca kind-e2e/.work/certs/east-cluster' 'create secret generic catalog-certs' \
  'apply -f kind-e2e/manifests/plain/west/' 'kind delete cluster --name west' \
  -- kind-e2e/run.sh --dry-run --mode plain
dry_run "run.sh --dry-run --mode ambient" \
  'gateway-api/releases/download/v1.4.0/standard-install.yaml' \
  'certs workload --ca kind-e2e/.work/certs/east-cluster --namespace istio-system --service-account istio-eastwestgateway' \
  '--ambient --protocols both' 'create secret generic istio-eastwestgateway-hbone-certs' \
  'istioctl install -y --context kind-east -f kind-e2e/istio/ambient-east.yaml' \
  'rollout status daemonset/ztunnel' 'get gateways.gateway.networking.k8s.io' 'meshctl check' \
  'apply -f kind-e2e/manifests/ambient/east/' 'gateway_hbone_tunnels_opened_total' \
  'kind delete cluster --name east' \
  -- kind-e2e/run.sh --dry-run --mode ambient
dry_run "run.sh --dry-run --mode ambient --from ambient-verify" \
  'skipping step ambient-join (--from ambient-verify)' 'hbone_endpoints' \
  -- kind-e2e/run.sh --dry-run --mode ambient --from ambient-verify
dry_run "run.sh --dry-run --mode ambient --waypoint --from ambient-waypoint" \
  'skipping step ambient-verify (--from ambient-waypoint)' 'waypoint apply -n istioinaction --wait' \
  'label svc catalog istio.io/use-waypoint=waypoint' '"waypoint": "waypoint' \
  -- kind-e2e/run.sh --dry-run --mode ambient --waypoint --from ambient-waypoint
dry_run "run.sh --dry-run --keep (no teardown)" 'dry run complete' \
  -- kind-e2e/run.sh --dry-run --keep
dry_run "teardown.sh --dry-run" 'kind delete cluster --name west' 'kind delete cluster --name east' \
  -- kind-e2e/teardown.sh --dry-run
if PATH="$stubs:$PATH" bash kind-e2e/run.sh --dry-run --keep | grep -q 'kind delete cluster'; then
  echo "FAIL: --keep still deletes the clusters" >&2
  exit 1
fi
echo "# kind-e2e checks passed"
