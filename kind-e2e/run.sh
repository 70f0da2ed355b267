#!/usr/bin/env bash
# kind-e2e/run.sh: two kind clusters, west and east, on the shared "kind" docker
# network, joined into one Istio mesh through the meshfed east-west gateway; then
# assert that a call from west reaches east through that gateway, and failover.
#
# Usage: kind-e2e/run.sh [--dry-run] [--mode istio|plain|ambient] [--waypoint] [--keep] [--from STEP]
#   --dry-run       print every command (pasteable into bash) and run nothing
#   --mode istio    (default) Istio in both clusters; webapp -> catalog; failover
#   --mode plain    no Istio; mesh-workload pods call each other through the gateway
#   --mode ambient  Istio's ambient profile, multi-network; sleep (west) -> catalog
#                   (east) over HBONE through the gateway's 15008
#   --waypoint      (ambient) then give catalog a waypoint: the gateway must send the
#                   tunnels to it (opt-in: needs istiod to tell west's ztunnels of it)
#   --keep          keep the clusters afterwards (default: delete them on success)
#   --from STEP     resume at STEP after a failure (clusters already exist)
#
# Prerequisites, the steps and how to debug: kind-e2e/README.md.
set -euo pipefail

# shellcheck source=lib.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

MODE=istio
KEEP=0
FROM=""
WAYPOINT=0

usage() { sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while (($# > 0)); do
  case $1 in
    --dry-run) DRY_RUN=1 ;;
    --mode)
      (($# >= 2)) || die "--mode needs a value: istio, plain or ambient"
      MODE=$2
      shift
      ;;
    --mode=*) MODE=${1#--mode=} ;;
    --keep) KEEP=1 ;;
    --waypoint) WAYPOINT=1 ;;
    --from)
      (($# >= 2)) || die "--from needs a step name"
      FROM=$2
      shift
      ;;
    --from=*) FROM=${1#--from=} ;;
    -h | --help)
      usage
      exit 0
      ;;
    *) die "unknown argument: $1" "run with --help" ;;
  esac
  shift
done
[[ $MODE == istio || $MODE == plain || $MODE == ambient ]] ||
  die "--mode must be istio, plain or ambient, not '$MODE'"
[[ $WAYPOINT == 0 || $MODE == ambient ]] || die "--waypoint needs --mode ambient"

# ---------------------------------------------------------------- settings
# The manifests in kind-e2e/manifests/plain name this image, so it is fixed.
readonly IMAGE=meshfed/gateway:dev
METALLB_VERSION=${METALLB_VERSION:-v0.14.9}
METALLB_MANIFEST=https://raw.githubusercontent.com/metallb/metallb/${METALLB_VERSION}/config/manifests/metallb-native.yaml
# Optional: pin the Kubernetes node image, e.g. kindest/node:v1.32.2 (default: kind's own).
KIND_NODE_IMAGE=${KIND_NODE_IMAGE:-}
# meshctl built on this machine (step "certs"); override to use another build.
MESHCTL=${MESHCTL:-${CARGO_TARGET_DIR:-target}/release/meshctl}
# Bounded waits: TRIES attempts, DELAY seconds apart (30 x 2 s = 1 minute).
TRIES=${TRIES:-30}
DELAY=${DELAY:-2}
WAIT_TIMEOUT=${WAIT_TIMEOUT:-180s}

# Gateway API CRDs (ambient mode): Istio's ambient install guide applies this release's
# standard-install.yaml; meshctl join --ambient refuses to run without the Gateway CRD.
GATEWAY_API_VERSION=${GATEWAY_API_VERSION:-v1.4.0}
GATEWAY_API_MANIFEST=https://github.com/kubernetes-sigs/gateway-api/releases/download/${GATEWAY_API_VERSION}/standard-install.yaml

NS=istioinaction
GW=istio-eastwestgateway
GW_ADMIN_PORT=15020   # the gateway pod's --admin (meshctl's manifest); 15021 serves health only
# Ambient: the Secret holding the gateway's HBONE certificate (meshctl gateway install
# mounts it), the certificates' directory, and the authority ztunnels send for catalog.
HBONE_SECRET=istio-eastwestgateway-hbone-certs
HBONE_CERTS=$WORK_REL/hbone
AUTHORITY_CATALOG=catalog.$NS.svc.cluster.local:80
CERTS=$WORK_REL/certs
SNI_CATALOG=outbound_.80_._.catalog.$NS.svc.cluster.local
SNI_BACKEND=outbound_.80_._.simple-backend.$NS.svc.cluster.local
IPV4_RE='^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$'

# Context names: kind prefixes cluster names with "kind-". Cluster names in the
# mesh (remote secrets, Istio clusterName) are west-cluster / east-cluster.
ctx() { printf 'kind-%s' "$1"; }

# The kubectl/meshctl arguments that name both clusters.
CONTEXT_ARGS=(--context kind-west --context kind-east)
JOIN_ARGS=(
  --kubeconfig "$E2E_KUBECONFIG" "${CONTEXT_ARGS[@]}"
  --certs "$CERTS"
  --cluster-name kind-west=west-cluster --cluster-name kind-east=east-cluster
  --network kind-west=west-network --network kind-east=east-network
  --gateway-image "$IMAGE"
)

# ---------------------------------------------------------------- step helpers

# control_plane_ips: WEST_CP_IP / EAST_CP_IP = the control-plane containers' addresses
# on the kind network, the API server addresses that the OTHER cluster can reach.
control_plane_ips() {
  local fmt='{{.NetworkSettings.Networks.kind.IPAddress}}'
  capture WEST_CP_IP docker inspect -f "$fmt" west-control-plane
  capture EAST_CP_IP docker inspect -f "$fmt" east-control-plane
  if [[ $DRY_RUN == 0 ]]; then
    [[ $WEST_CP_IP =~ $IPV4_RE && $EAST_CP_IP =~ $IPV4_RE ]] ||
      die "could not read the control-plane addresses (west='$WEST_CP_IP', east='$EAST_CP_IP')" \
        "docker ps --filter name=control-plane; are both kind clusters running?"
    note "west API server for east: https://$WEST_CP_IP:6443; east API server for west: https://$EAST_CP_IP:6443"
  fi
}

# gateway_ip CLUSTER VAR: wait until the gateway Service has its MetalLB address.
gateway_ip() {
  retry_match "$TRIES" "$DELAY" "$2" "$IPV4_RE" \
    kubectl --context "$(ctx "$1")" -n istio-system get svc "$GW" \
    -o 'jsonpath={.status.loadBalancer.ingress[0].ip}' ||
    die "$1's gateway Service has no LoadBalancer address" \
      "kubectl --context $(ctx "$1") -n istio-system get svc $GW   (EXTERNAL-IP <pending>?)" \
      "kubectl --context $(ctx "$1") -n metallb-system get ipaddresspools,pods"
}

# sum_counter TEXT METRIC SNI [LABEL]: sum of METRIC{...LABEL="SNI"...} samples in
# Prometheus text (LABEL defaults to sni).
sum_counter() {
  local line rest value total=0 label=${4:-sni}
  while IFS= read -r line; do
    [[ $line == "$2{"* && $line == *"$label=\"$3\""* ]] || continue
    rest=${line#*\} }
    value=${rest%% *}
    value=${value%%.*}
    [[ $value =~ ^[0-9]+$ ]] && total=$((total + value))
  done <<<"$1"
  printf '%s' "$total"
}

# gateway_routes CONTEXT [QUERY]: the gateway's /debug/routes from its first pod's admin port,
# through the API server's pod proxy. The gateway's Service exposes only the status port
# (health), as Istio's does; the admin port (metrics, the route table) is the pod's.
gateway_routes() {
  local pod
  pod=$(kubectl --context "$1" -n istio-system get pods -l app=$GW \
    -o 'jsonpath={.items[0].metadata.name}') && [[ -n $pod ]] || return 1
  kubectl --context "$1" get --raw \
    "/api/v1/namespaces/istio-system/pods/${pod}:$GW_ADMIN_PORT/proxy/debug/routes${2:-}"
}

# gateway_count CLUSTER SNI [METRIC LABEL]: SNI_COUNT = gateway_connections_opened_total{sni=SNI}
# (or METRIC{LABEL=SNI}) summed over that cluster's gateway pods, read through the API
# server's pod proxy (the image has no shell or curl, and this needs no port-forward).
gateway_count() {
  local c=$1 sni=$2 metric=${3:-gateway_connections_opened_total} label=${4:-sni} pod pods=()
  capture GW_PODS kubectl --context "$(ctx "$c")" -n istio-system get pods -l app=$GW \
    -o 'jsonpath={.items[*].metadata.name}'
  read -ra pods <<<"$GW_PODS"
  SNI_COUNT=0
  GW_METRICS_ALL=""
  for pod in "${pods[@]}"; do
    capture GW_METRICS kubectl --context "$(ctx "$c")" get --raw \
      "/api/v1/namespaces/istio-system/pods/${pod}:$GW_ADMIN_PORT/proxy/metrics"
    [[ $DRY_RUN == 1 ]] && continue
    GW_METRICS_ALL+=$GW_METRICS$'\n'
    SNI_COUNT=$((SNI_COUNT + $(sum_counter "$GW_METRICS" "$metric" "$sni" "$label")))
  done
  if [[ $DRY_RUN == 1 ]]; then
    note "read by hand: grep -F '$metric{$label=\"$sni\"}' <<<\"\$GW_METRICS\"   (one metrics read per gateway pod; the run sums them)"
  else
    note "$c gateway: $metric{$label=\"$sni\"} = $SNI_COUNT (sum over pods: ${pods[*]})"
  fi
}

# show_rejections: on failure, print the gateway's rejection counters (by reason).
show_rejections() {
  local line
  while IFS= read -r line; do
    if [[ $line == gateway_connections_rejected_total* || $line == gateway_hbone_refused_total* ]]; then
      printf '#   %s\n' "$line"
    fi
  done <<<"${GW_METRICS_ALL:-}"
  return 0
}

# curl run inside west's sleep pod (its traffic goes through its sidecar);
# each attempt is bounded by curl's --max-time. The URL is appended.
SLEEP_CURL=(kubectl --context kind-west -n "$NS" exec deploy/sleep -c sleep --
  curl -sS --fail --max-time 5)

# ---------------------------------------------------------------- steps

step_preflight() {
  step preflight "Check tools; use a dedicated kubeconfig" \
    "fail early with a clear message; never touch ~/.kube/config"
  local tools=(docker kind kubectl cargo)
  [[ $MODE != plain ]] && tools+=(istioctl)
  need "${tools[@]}"
  enter_repo
  run docker version --format 'docker client {{.Client.Version}}, engine {{.Server.Version}}' ||
    die "the docker engine is not reachable" "is docker running? docker info"
  run kind version
  run kubectl version --client
  if [[ $MODE != plain ]]; then run istioctl version --remote=false; fi
}

step_clusters() {
  step clusters "Create kind clusters west and east" \
    "two clusters with distinct pod/service ranges (west 10.10/16 + 10.110/16, east 10.20/16 + 10.120/16), both on the docker network 'kind'"
  local c existing="" image_args=()
  [[ -n $KIND_NODE_IMAGE ]] && image_args=(--image "$KIND_NODE_IMAGE")
  if [[ $DRY_RUN == 0 ]]; then existing=$(kind get clusters 2>/dev/null || true); fi
  for c in "${CLUSTERS[@]}"; do
    if [[ $'\n'$existing$'\n' == *$'\n'$c$'\n'* ]]; then
      note "kind cluster '$c' already exists; reusing it (delete it with kind-e2e/teardown.sh)"
      run kind export kubeconfig --name "$c"
    else
      run kind create cluster --name "$c" --config "kind-e2e/kind/$c.yaml" --wait 3m ${image_args[@]+"${image_args[@]}"}
    fi
    run kubectl --context "$(ctx "$c")" wait --for=condition=Ready nodes --all --timeout="$WAIT_TIMEOUT"
  done
}

# ipv4 <-> integer, for the MetalLB address slices.
ip2int() {
  local a b c d
  IFS=. read -r a b c d <<<"$1"
  printf '%s' $(((a << 24) | (b << 16) | (c << 8) | d))
}
int2ip() { printf '%s.%s.%s.%s' $((($1 >> 24) & 255)) $((($1 >> 16) & 255)) $((($1 >> 8) & 255)) $(($1 & 255)); }

step_metallb() {
  step metallb "Install MetalLB $METALLB_VERSION and give each cluster its own address slice" \
    "the gateway Service is type LoadBalancer; its address must be reachable from the other cluster, so it comes from the shared 'kind' network, and the two clusters must not hand out the same address"
  local subnets subnet="" s base prefix last24 c
  capture KIND_SUBNETS docker network inspect kind -f '{{range .IPAM.Config}}{{.Subnet}} {{end}}'
  subnets=$KIND_SUBNETS
  if [[ $DRY_RUN == 1 ]]; then
    subnets=172.18.0.0/16
    note "dry run: assuming the kind network's IPv4 subnet is $subnets (placeholder; the real run reads it from the command above)"
  fi
  for s in $subnets; do
    if [[ $s =~ ^([0-9]+\.[0-9]+\.[0-9]+\.[0-9]+)/([0-9]+)$ ]]; then
      subnet=$s
      break
    fi
  done
  [[ -n $subnet ]] || die "no IPv4 subnet on the docker network 'kind' (got: '$subnets')" \
    "docker network inspect kind"
  base=$(ip2int "${BASH_REMATCH[1]}")
  prefix=${BASH_REMATCH[2]}
  ((prefix <= 24)) || die "the kind network $subnet is smaller than a /24; cannot carve two address pools from it"
  # The last /24 of the subnet: docker hands out container addresses from the
  # bottom, so its top is free. west gets .200-.224, east .225-.250.
  last24=$((base + (1 << (32 - prefix)) - 256))
  POOL_west="$(int2ip $((last24 + 200)))-$(int2ip $((last24 + 224)))"
  POOL_east="$(int2ip $((last24 + 225)))-$(int2ip $((last24 + 250)))"
  note "kind network $subnet: west pool $POOL_west, east pool $POOL_east"

  for c in "${CLUSTERS[@]}"; do
    local k=(kubectl --context "$(ctx "$c")") pool_var="POOL_$c"
    run "${k[@]}" apply -f "$METALLB_MANIFEST"
    run "${k[@]}" -n metallb-system rollout status deployment/controller --timeout="$WAIT_TIMEOUT"
    run "${k[@]}" -n metallb-system rollout status daemonset/speaker --timeout="$WAIT_TIMEOUT"
    write_file "$WORK_REL/metallb-$c.yaml" <<EOF
# MetalLB pool for $c: a slice of the kind network that no other cluster uses.
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata:
  name: kind-$c
  namespace: metallb-system
spec:
  addresses:
    - ${!pool_var}
---
apiVersion: metallb.io/v1beta1
kind: L2Advertisement
metadata:
  name: kind-$c
  namespace: metallb-system
spec:
  ipAddressPools:
    - kind-$c
EOF
    # MetalLB's admission webhook answers a few seconds after its pod is Ready.
    retry "$TRIES" "$DELAY" "${k[@]}" apply -f "$WORK_REL/metallb-$c.yaml" ||
      die "MetalLB did not accept the address pool for $c" \
        "kubectl --context $(ctx "$c") -n metallb-system get pods,events"
  done
}

step_image() {
  step image "Build the gateway image and load it into both clusters" \
    "kind nodes cannot see the local docker image store; 'kind load' copies $IMAGE onto each node (tag :dev, so pods use IfNotPresent and never pull)"
  run docker build -f kind-e2e/Dockerfile -t "$IMAGE" .
  local c
  for c in "${CLUSTERS[@]}"; do
    run kind load docker-image "$IMAGE" --name "$c"
    # A kept cluster's gateway runs the image it started with until its pods are replaced
    # (join re-applies the same pod template, which replaces nothing).
    if [[ $DRY_RUN == 0 ]] &&
      kubectl --context "$(ctx "$c")" -n istio-system get deployment "$GW" >/dev/null 2>&1; then
      run kubectl --context "$(ctx "$c")" -n istio-system rollout restart deployment "$GW"
    fi
  done
}

step_certs() {
  step certs "Build meshctl and create the shared-trust certificates" \
    "one root and one intermediate CA per cluster (Istio's plugged-in CA layout); the mesh's mTLS works across clusters only if both chain to the same root"
  run cargo build --release --locked -p meshctl
  if [[ $DRY_RUN == 0 && -f $CERTS/root-cert.pem ]]; then
    note "$CERTS already holds a root; reusing it (the clusters' cacerts must keep the same root)"
  else
    run "$MESHCTL" certs init --clusters west-cluster,east-cluster --out "$CERTS"
  fi
  if [[ $MODE == plain ]]; then
    note "plain mode: workload certificates, as istiod would issue them (catalog from east's CA, webapp from west's)"
    # Leaves issued again each run (--force: a re-run or --from certs finds the last ones),
    # valid for 30 days so that --keep'd clusters outlive a day.
    run "$MESHCTL" certs workload --ca "$CERTS/east-cluster" --namespace "$NS" \
      --service-account catalog --out "$WORK_REL/workload/catalog" --force --hours 720
    run "$MESHCTL" certs workload --ca "$CERTS/west-cluster" --namespace "$NS" \
      --service-account webapp --out "$WORK_REL/workload/webapp" --force --hours 720
  fi
  if [[ $MODE == ambient ]]; then
    note "ambient mode: each gateway's HBONE certificate, spiffe://cluster.local/ns/istio-system/sa/$GW (what peers' ztunnels expect), from its cluster's CA"
    local c
    for c in "${CLUSTERS[@]}"; do
      run "$MESHCTL" certs workload --ca "$CERTS/$c-cluster" --namespace istio-system \
        --service-account "$GW" --out "$HBONE_CERTS/$c" --force --hours 720
    done
  fi
}

step_join() {
  step join "meshctl join: cacerts, network labels, gateway, remote secrets (both ways)" \
    "--server must be each control-plane container's address: the kind kubeconfig says 127.0.0.1:<port>, which the other cluster's istiod cannot reach"
  control_plane_ips
  # In istio mode this first join runs before Istio exists: cacerts must be in
  # place before istiod starts (or istiod signs with its own root), and the
  # cross-network Gateway needs Istio's CRDs, so it comes in step "expose".
  run "$MESHCTL" join "${JOIN_ARGS[@]}" \
    --server "kind-west=https://${WEST_CP_IP}:6443" --server "kind-east=https://${EAST_CP_IP}:6443"
  local c ip_var
  for c in "${CLUSTERS[@]}"; do
    run kubectl --context "$(ctx "$c")" -n istio-system rollout status "deployment/$GW" --timeout="$WAIT_TIMEOUT"
    ip_var="GW_IP_$c"
    gateway_ip "$c" "$ip_var"
    if [[ $DRY_RUN == 0 ]]; then note "$c gateway address: ${!ip_var}"; fi
  done
  if [[ $MODE == plain ]]; then
    retry 10 3 "$MESHCTL" check --kubeconfig "$E2E_KUBECONFIG" "${CONTEXT_ARGS[@]}" ||
      die "meshctl check failed" "read its hints above; kind-e2e/README.md, section Debugging"
  fi
}

step_istio() {
  local c file=""
  if [[ $MODE == ambient ]]; then
    file=ambient-
    step istio "Install Istio's ambient profile in both clusters, multi-network (istioctl, IstioOperator files)" \
      "istiod with AMBIENT_ENABLE_MULTI_NETWORK=true builds the cross-network workloads ztunnels dial through a gateway; ztunnel gets its NETWORK from values.global.network; istiod picks up cacerts and the remote secrets that join created"
  else
    step istio "Install Istio in both clusters (istioctl, IstioOperator files)" \
      "meshID usmesh, clusterName west-cluster/east-cluster, network west-network/east-network, as in the walkthrough; istiod picks up cacerts and the remote secrets that join created"
  fi
  for c in "${CLUSTERS[@]}"; do
    run istioctl install -y --context "$(ctx "$c")" -f "kind-e2e/istio/$file$c.yaml"
    run kubectl --context "$(ctx "$c")" -n istio-system rollout status deployment/istiod --timeout="$WAIT_TIMEOUT"
    if [[ $MODE == ambient ]]; then
      run kubectl --context "$(ctx "$c")" -n istio-system rollout status daemonset/ztunnel --timeout="$WAIT_TIMEOUT"
    fi
  done
}

step_expose() {
  step expose "meshctl join --expose-services, then meshctl check" \
    "join is idempotent; now that Istio's CRDs exist it adds the cross-network-gateway Gateway (AUTO_PASSTHROUGH, *.local on 15443), which tells istiod that remote sidecars may use this gateway"
  control_plane_ips
  run "$MESHCTL" join "${JOIN_ARGS[@]}" \
    --server "kind-west=https://${WEST_CP_IP}:6443" --server "kind-east=https://${EAST_CP_IP}:6443" \
    --expose-services
  retry 10 3 "$MESHCTL" check --kubeconfig "$E2E_KUBECONFIG" "${CONTEXT_ARGS[@]}" ||
    die "meshctl check failed" "read its hints above; kind-e2e/README.md, section Debugging"
}

step_deploy() {
  step deploy "Deploy the walkthrough's sample: webapp + sleep in west, catalog in east, simple-backend in both" \
    "catalog runs only in east; west has the catalog Service without pods so that the name resolves (the walkthrough's stub service)"
  local c d
  for c in "${CLUSTERS[@]}"; do
    run kubectl --context "$(ctx "$c")" apply -f kind-e2e/manifests/istio/common/
    run kubectl --context "$(ctx "$c")" apply -f "kind-e2e/manifests/istio/$c/"
  done
  for d in webapp sleep simple-backend-west; do
    run kubectl --context kind-west -n "$NS" rollout status "deployment/$d" --timeout="$WAIT_TIMEOUT"
  done
  for d in catalog simple-backend-east; do
    run kubectl --context kind-east -n "$NS" rollout status "deployment/$d" --timeout="$WAIT_TIMEOUT"
  done
}

step_verify() {
  step verify "Assert: west's webapp reaches catalog in east, through OUR gateway" \
    "istiod must point west's sidecars at east's gateway address, the call must succeed, and east's gateway must count a connection for catalog's SNI"
  gateway_ip east EAST_GW_IP
  local ep_re="${EAST_GW_IP//./\\.}:15443"
  retry_match "$TRIES" "$DELAY" ENDPOINTS "$ep_re" \
    istioctl --context kind-west -n "$NS" proxy-config endpoints deploy/sleep \
    --cluster "outbound|80||catalog.$NS.svc.cluster.local" ||
    die "west's sidecar has no endpoint ${EAST_GW_IP}:15443 for catalog" \
      "istioctl --context kind-west -n $NS proxy-config endpoints deploy/sleep | grep catalog" \
      "kubectl --context kind-east -n istio-system get svc $GW --show-labels   (topology.istio.io/network=east-network?)" \
      "kubectl --context kind-west -n istio-system logs deploy/istiod | grep -i -e 'remote' -e 'network'"
  [[ $DRY_RUN == 0 ]] && printf '%s\n' "$ENDPOINTS"

  gateway_count east "$SNI_CATALOG"
  local before=$SNI_COUNT
  retry "$TRIES" "$DELAY" "${SLEEP_CURL[@]}" "http://catalog.$NS.svc.cluster.local/items" ||
    die "sleep (west) could not call catalog (east)" \
      "kubectl --context kind-west -n $NS logs deploy/sleep -c istio-proxy --tail=20" \
      "kubectl --context kind-east -n istio-system logs deploy/$GW --tail=50"
  retry "$TRIES" "$DELAY" "${SLEEP_CURL[@]}" "http://webapp.$NS.svc.cluster.local/api/catalog" ||
    die "webapp (west) could not call catalog (east)" \
      "kubectl --context kind-west -n $NS logs deploy/webapp -c istio-proxy --tail=20"
  gateway_count east "$SNI_CATALOG"
  if ! assert_gt "$SNI_COUNT" "$before" "east gateway's connections for $SNI_CATALOG"; then
    note "east gateway's rejection counters:"
    show_rejections
    die "the call succeeded but east's gateway did not count it: traffic did not go through our gateway" \
      "kubectl --context kind-east -n istio-system port-forward deploy/$GW $GW_ADMIN_PORT   (then: curl -s localhost:$GW_ADMIN_PORT/debug/routes)"
  fi
  note "routes that east's gateway serves (for the record):"
  run gateway_routes kind-east
}

step_failover() {
  step failover "Assert failover: scale west's simple-backend to 0; calls must still succeed, served by east" \
    "with no local endpoint left, west's sidecars must send simple-backend traffic to east through east's gateway"
  local backend_url="http://simple-backend.$NS.svc.cluster.local/" i
  retry_match "$TRIES" "$DELAY" REPLY_BEFORE 'Hello from (WEST|EAST)' "${SLEEP_CURL[@]}" "$backend_url" ||
    die "simple-backend does not answer before failover"
  gateway_count east "$SNI_BACKEND"
  local before=$SNI_COUNT
  run kubectl --context kind-west -n "$NS" scale deployment/simple-backend-west --replicas=0
  retry_match "$TRIES" "$DELAY" WEST_BACKEND_PODS '^$' \
    kubectl --context kind-west -n "$NS" get pods -l app=simple-backend -o name ||
    die "west's simple-backend pods did not go away"
  retry_match "$TRIES" "$DELAY" REPLY_AFTER 'Hello from EAST' "${SLEEP_CURL[@]}" "$backend_url" ||
    die "after scaling west to 0, calls to simple-backend are not served by east" \
      "istioctl --context kind-west -n $NS proxy-config endpoints deploy/sleep --cluster 'outbound|80||simple-backend.$NS.svc.cluster.local'"
  note "five more calls (i = 1..5); every one must be served by east"
  for i in 1 2 3 4 5; do
    retry_match 1 0 REPLY_AFTER 'Hello from EAST' "${SLEEP_CURL[@]}" "$backend_url" ||
      die "call $i/5 after failover was not served by east"
  done
  gateway_count east "$SNI_BACKEND"
  assert_gt "$SNI_COUNT" "$before" "east gateway's connections for $SNI_BACKEND" ||
    die "failover calls did not go through east's gateway"
}

step_strict() {
  step strict "Mesh-wide mTLS STRICT in both clusters; calls still go through OUR gateway" \
    "the gateway reads PeerAuthentications: STRICT keeps catalog's sidecars on its 15443 routes, so the call must still be counted by east's gateway"
  local c
  for c in west east; do
    run kubectl --context "$(ctx "$c")" apply -f kind-e2e/manifests/istio/strict/
  done
  gateway_count east "$SNI_CATALOG"
  local before=$SNI_COUNT
  retry "$TRIES" "$DELAY" "${SLEEP_CURL[@]}" "http://catalog.$NS.svc.cluster.local/items" ||
    die "with mesh-wide STRICT, sleep (west) could not call catalog (east)" \
      "kubectl --context kind-east -n istio-system port-forward deploy/$GW $GW_ADMIN_PORT   (then: curl -s localhost:$GW_ADMIN_PORT/debug/routes; look for mtls_off)" \
      "kubectl --context kind-east get peerauthentications -A"
  gateway_count east "$SNI_CATALOG"
  assert_gt "$SNI_COUNT" "$before" "east gateway's connections for $SNI_CATALOG" ||
    die "with mesh-wide STRICT the call did not go through east's gateway"
}

step_plain_deploy() {
  step plain-deploy "Plain mode: catalog (mesh-workload serve) in east, workload certificates as Secrets" \
    "no Istio: the workloads do their own mTLS with certificates from the shared root; the gateway only routes by SNI"
  local c
  for c in "${CLUSTERS[@]}"; do
    run kubectl --context "$(ctx "$c")" apply -f kind-e2e/manifests/plain/common/
  done
  run kubectl --context kind-east -n "$NS" delete secret catalog-certs --ignore-not-found
  run kubectl --context kind-east -n "$NS" create secret generic catalog-certs --from-file="$WORK_REL/workload/catalog"
  run kubectl --context kind-west -n "$NS" delete secret webapp-certs --ignore-not-found
  run kubectl --context kind-west -n "$NS" create secret generic webapp-certs --from-file="$WORK_REL/workload/webapp"
  run kubectl --context kind-east apply -f kind-e2e/manifests/plain/east/
  run kubectl --context kind-east -n "$NS" rollout status deployment/catalog --timeout="$WAIT_TIMEOUT"
  gateway_ip east EAST_GW_IP
  run kubectl --context kind-west -n "$NS" delete configmap east-gateway --ignore-not-found
  run kubectl --context kind-west -n "$NS" create configmap east-gateway --from-literal="address=${EAST_GW_IP}:15443"
}

step_plain_verify() {
  step plain-verify "Plain mode: a Job in west calls catalog in east through east's gateway" \
    "proves SNI routing and end-to-end mTLS without Istio: the Job succeeds only if catalog's identity checks out, and east's gateway must count the connection"
  retry_match "$TRIES" "$DELAY" ROUTES 'catalog\.istioinaction' \
    gateway_routes kind-east ||
    die "east's gateway has no route for catalog" \
      "kubectl --context kind-east -n $NS get endpointslices -l kubernetes.io/service-name=catalog" \
      "kubectl --context kind-east -n istio-system logs deploy/$GW --tail=50"
  gateway_count east "$SNI_CATALOG"
  local before=$SNI_COUNT
  run kubectl --context kind-west -n "$NS" delete job webapp-call --ignore-not-found --wait=true
  run kubectl --context kind-west apply -f kind-e2e/manifests/plain/west/
  # Wait for Complete or Failed, whichever comes first (kubectl wait takes one condition).
  retry_match 90 2 JOB_STATE '(Complete|Failed)' \
    kubectl --context kind-west -n "$NS" get job webapp-call \
    -o 'jsonpath={.status.conditions[?(@.status=="True")].type}' ||
    die "the webapp-call Job neither completed nor failed in time"
  run kubectl --context kind-west -n "$NS" logs job/webapp-call --all-containers
  if [[ $DRY_RUN == 0 && $JOB_STATE != *Complete* ]]; then
    die "the webapp-call Job failed: $JOB_STATE" \
      "kubectl --context kind-west -n $NS describe job webapp-call" \
      "kubectl --context kind-west -n $NS logs -l app=webapp-call --prefix" \
      "kubectl --context kind-east -n $NS logs deploy/catalog"
  fi
  gateway_count east "$SNI_CATALOG"
  if ! assert_gt "$SNI_COUNT" "$before" "east gateway's connections for $SNI_CATALOG"; then
    note "east gateway's rejection counters:"
    show_rejections
    die "the Job succeeded but east's gateway did not count it"
  fi
}

step_gateway_api() {
  step gateway-api "Install the Kubernetes Gateway API CRDs ($GATEWAY_API_VERSION) in both clusters" \
    "ztunnels learn network gateways only from Gateway API objects, so meshctl join --ambient announces each peer's gateway as a Gateway of class istio-remote, and refuses to run before the CRD is served; Istio's ambient profile needs these CRDs too"
  local c
  for c in "${CLUSTERS[@]}"; do
    run kubectl --context "$(ctx "$c")" apply --server-side -f "$GATEWAY_API_MANIFEST"
    run kubectl --context "$(ctx "$c")" wait --for condition=Established \
      crd/gateways.gateway.networking.k8s.io --timeout="$WAIT_TIMEOUT"
  done
}

# ambient_join: meshctl join --ambient with both protocols on the gateway (15443 for sidecars,
# 15008 HBONE for ztunnels); idempotent, so it runs before Istio (cacerts first) and again after.
ambient_join() {
  control_plane_ips
  run "$MESHCTL" join "${JOIN_ARGS[@]}" \
    --server "kind-west=https://${WEST_CP_IP}:6443" --server "kind-east=https://${EAST_CP_IP}:6443" \
    --ambient --protocols both --hbone-certs files
}

step_ambient_join() {
  step ambient-join "meshctl join --ambient --protocols both --hbone-certs files; the gateways' HBONE certificates as Secrets" \
    "cacerts must exist before istiod starts; the gateway (meshctl gateway install --protocols both) mounts its HBONE certificate from the Secret $HBONE_SECRET, so its pods start once that Secret exists; the first join cannot announce the peers yet (no load-balancer address), the step ambient-announce does"
  ambient_join
  local c ip_var
  for c in "${CLUSTERS[@]}"; do
    local k=(kubectl --context "$(ctx "$c")" -n istio-system)
    run "${k[@]}" delete secret "$HBONE_SECRET" --ignore-not-found
    run "${k[@]}" create secret generic "$HBONE_SECRET" \
      --from-file="$HBONE_CERTS/$c/cert-chain.pem" --from-file="$HBONE_CERTS/$c/key.pem" \
      --from-file="$HBONE_CERTS/$c/root-cert.pem"
    run "${k[@]}" rollout status "deployment/$GW" --timeout="$WAIT_TIMEOUT"
    ip_var="GW_IP_$c"
    gateway_ip "$c" "$ip_var"
    if [[ $DRY_RUN == 0 ]]; then note "$c gateway address: ${!ip_var}"; fi
  done
}

step_ambient_announce() {
  step ambient-announce "meshctl join --ambient again: announce each peer's gateway; meshctl check" \
    "now that both gateways have load-balancer addresses, join applies in each cluster a Gateway of class istio-remote per peer network (status.addresses = the peer gateway's address, HBONE listener 15008), from which istiod tells ztunnels where the other network's gateway is; check verifies istiod's multi-network setting, the gateway identity and the announcements"
  ambient_join
  local c
  for c in "${CLUSTERS[@]}"; do
    run kubectl --context "$(ctx "$c")" -n istio-system get gateways.gateway.networking.k8s.io -o wide
  done
  retry 10 3 "$MESHCTL" check --kubeconfig "$E2E_KUBECONFIG" "${CONTEXT_ARGS[@]}" ||
    die "meshctl check failed" "read its hints above; kind-e2e/README.md, section Debugging"
}

step_ambient_deploy() {
  step ambient-deploy "Ambient sample: catalog in east (global Service, ambient pods), sleep in west" \
    "the namespace and the catalog Service carry istio.io/global=true (the ambient profile's global scope: only global services cross networks) and the pods istio.io/dataplane-mode=ambient (captured by ztunnel; our gateway's discovery reads the pod label); west has the catalog Service without pods so the name resolves"
  local c
  for c in "${CLUSTERS[@]}"; do
    run kubectl --context "$(ctx "$c")" apply -f kind-e2e/manifests/ambient/common/
  done
  run kubectl --context kind-east apply -f kind-e2e/manifests/ambient/east/
  run kubectl --context kind-west apply -f kind-e2e/manifests/ambient/west/
  run kubectl --context kind-east -n "$NS" rollout status deployment/catalog --timeout="$WAIT_TIMEOUT"
  run kubectl --context kind-west -n "$NS" rollout status deployment/sleep --timeout="$WAIT_TIMEOUT"
}

step_ambient_verify() {
  step ambient-verify "Assert: sleep (west, ambient) reaches catalog (east) over HBONE through OUR gateway's 15008" \
    "meshctl check must pass with the global service in place, east's gateway must list catalog's HBONE endpoint (podIP:15008), the call must succeed, and the gateway's HBONE tunnel counter for $AUTHORITY_CATALOG must increase"
  retry 10 3 "$MESHCTL" check --kubeconfig "$E2E_KUBECONFIG" "${CONTEXT_ARGS[@]}" ||
    die "meshctl check failed" "read its hints above; kind-e2e/README.md, section Debugging"
  retry_match "$TRIES" "$DELAY" ROUTES '"hbone_endpoints": \[[[:space:]]*\{[[:space:]]*"address": "[0-9.]+:15008"' \
    gateway_routes kind-east "?host=catalog.$NS" ||
    die "east's gateway has no HBONE endpoint for catalog" \
      "kubectl --context kind-east -n $NS get svc catalog --show-labels   (istio.io/global=true?)" \
      "kubectl --context kind-east -n $NS get pods -l app=catalog --show-labels   (istio.io/dataplane-mode=ambient?)" \
      "kubectl --context kind-east -n istio-system logs deploy/$GW --tail=50"
  gateway_count east "$AUTHORITY_CATALOG" gateway_hbone_tunnels_opened_total authority
  local before=$SNI_COUNT
  retry "$TRIES" "$DELAY" "${SLEEP_CURL[@]}" "http://catalog.$NS.svc.cluster.local/items" ||
    die "sleep (west) could not call catalog (east) over ambient" \
      "istioctl --context kind-west ztunnel-config services | grep catalog   (is catalog global, with east's endpoints?)" \
      "istioctl --context kind-west ztunnel-config workloads | grep -i -e catalog -e NetworkGateway" \
      "kubectl --context kind-west -n istio-system logs ds/ztunnel --tail=50" \
      "kubectl --context kind-east -n istio-system logs deploy/$GW --tail=50"
  gateway_count east "$AUTHORITY_CATALOG" gateway_hbone_tunnels_opened_total authority
  if ! assert_gt "$SNI_COUNT" "$before" "east gateway's HBONE tunnels for $AUTHORITY_CATALOG"; then
    note "east gateway's HBONE refusals:"
    show_rejections
    die "the call succeeded but east's gateway did not count a tunnel: traffic did not go through our gateway's 15008" \
      "istioctl --context kind-west ztunnel-config workloads | grep NetworkGateway   (east's gateway address and port 15008?)"
  fi
}

step_ambient_waypoint() {
  step ambient-waypoint "A waypoint for catalog (east): sleep's calls are sent to it by OUR gateway" \
    "istioctl waypoint apply deploys the waypoint (Gateway waypoint in $NS) and waits until it is ready (status.addresses); the label istio.io/use-waypoint=waypoint on the catalog Service binds it. West's ztunnel still sends its double HBONE to east's gateway naming catalog (ztunnel does so for a service whose waypoint is on another network), and the gateway dials the waypoint's pod at 15008 instead of catalog's; meshctl check must pass (a ready waypoint), and the gateway's access line must name the waypoint"
  run istioctl --context kind-east waypoint apply -n "$NS" --wait
  run kubectl --context kind-east -n "$NS" label svc catalog istio.io/use-waypoint=waypoint --overwrite
  retry_match "$TRIES" "$DELAY" ROUTES "\"waypoint\": \"waypoint\\.$NS\\.svc\\.cluster\\.local\"" \
    gateway_routes kind-east "?host=catalog.$NS" ||
    die "east's gateway does not send catalog's tunnels to its waypoint" \
      "kubectl --context kind-east -n $NS get gateways.gateway.networking.k8s.io waypoint -o yaml   (status.addresses set?)" \
      "kubectl --context kind-east -n $NS get svc catalog --show-labels   (istio.io/use-waypoint=waypoint?)" \
      "kubectl --context kind-east -n istio-system logs deploy/$GW --tail=50   (403 on gateways?)"
  retry 10 3 "$MESHCTL" check --kubeconfig "$E2E_KUBECONFIG" "${CONTEXT_ARGS[@]}" ||
    die "meshctl check failed" "read its hints above; kind-e2e/README.md, section Debugging"
  gateway_count east "$AUTHORITY_CATALOG" gateway_hbone_tunnels_opened_total authority
  local before=$SNI_COUNT
  retry "$TRIES" "$DELAY" "${SLEEP_CURL[@]}" "http://catalog.$NS.svc.cluster.local/items" ||
    die "sleep (west) could not call catalog (east) through its waypoint" \
      "istioctl --context kind-west ztunnel-config services | grep catalog   (does west's ztunnel know catalog's waypoint?)" \
      "kubectl --context kind-east -n $NS logs deploy/waypoint --tail=50" \
      "kubectl --context kind-east -n istio-system logs deploy/$GW --tail=50"
  gateway_count east "$AUTHORITY_CATALOG" gateway_hbone_tunnels_opened_total authority
  assert_gt "$SNI_COUNT" "$before" "east gateway's HBONE tunnels for $AUTHORITY_CATALOG" ||
    die "the call succeeded but east's gateway did not count a tunnel"
  retry_match "$TRIES" "$DELAY" ACCESS "waypoint\"?[=:]\"?waypoint\\.$NS\\.svc" \
    kubectl --context kind-east -n istio-system logs -l "app=$GW" --prefix --tail=200 ||
    die "east's gateway logged no tunnel sent to the waypoint" \
      "kubectl --context kind-east -n istio-system logs -l app=$GW --prefix --tail=200 | grep 'HBONE tunnel closed'"
}

step_teardown() {
  step teardown "Delete both clusters" "leave nothing running (use --keep to keep them)"
  delete_clusters
}

# ---------------------------------------------------------------- main

case $MODE in
  istio) STEPS=(preflight clusters metallb image certs join istio expose deploy verify failover strict) ;;
  plain) STEPS=(preflight clusters metallb image certs join plain-deploy plain-verify) ;;
  ambient)
    STEPS=(preflight clusters metallb image certs gateway-api ambient-join istio
      ambient-announce ambient-deploy ambient-verify)
    ((WAYPOINT == 0)) || STEPS+=(ambient-waypoint)
    ;;
esac
((KEEP == 1)) || STEPS+=(teardown)

if [[ -n $FROM && " ${STEPS[*]} " != *" $FROM "* ]]; then
  die "unknown step for --from: $FROM" "steps in $MODE mode: ${STEPS[*]}"
fi

on_exit() {
  local rc=$?
  ((rc == 0)) && return 0
  printf '\nFAILED in step "%s" (exit %s). The clusters are kept for debugging:\n' "$CURRENT_STEP" "$rc" >&2
  printf '  export KUBECONFIG=%s\n' "$E2E_KUBECONFIG" >&2
  printf '  %s check --kubeconfig %s --context kind-west --context kind-east\n' "$MESHCTL" "$E2E_KUBECONFIG" >&2
  printf '  resume:   kind-e2e/run.sh --mode %s --from %s\n' "$MODE" "${CURRENT_STEP:-preflight}" >&2
  printf '  clean up: kind-e2e/teardown.sh\n' >&2
}
trap on_exit EXIT

STEP_TOTAL=${#STEPS[@]}
note "kind-e2e: mode=$MODE dry_run=$DRY_RUN keep=$KEEP steps: ${STEPS[*]}"
((DRY_RUN == 1)) && note "dry run: commands are printed, nothing is run; values that a real run computes appear as \${NAME}, set by an earlier NAME=\$(...) line"
skipping=0
[[ -n $FROM ]] && skipping=1
for s in "${STEPS[@]}"; do
  [[ $s == "$FROM" ]] && skipping=0
  if ((skipping == 1)) && [[ $s != preflight ]]; then
    STEP_NO=$((STEP_NO + 1))
    note "skipping step $s (--from $FROM)"
    continue
  fi
  "step_${s//-/_}"
done
printf '\n'
if ((DRY_RUN == 1)); then
  note "dry run complete ($MODE mode): nothing was run"
else
  note "PASS: kind e2e ($MODE mode)"
  if ((KEEP == 1)); then
    note "clusters kept: export KUBECONFIG=$E2E_KUBECONFIG; delete them with kind-e2e/teardown.sh"
  fi
fi
