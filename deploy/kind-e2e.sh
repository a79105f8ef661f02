#!/usr/bin/env bash
# Moat end to end on a kind cluster: build the images, create the cluster
# (deploy/kind/cluster.yaml: no default CNI, 1 control plane + 2 workers, a shared
# pool directory), load the images, install moat-cni and moat-csi, then check:
#
#   network  pods in namespaces alpha and beta on two workers:
#            same project reaches (same node and across nodes), other project is
#            refused (ping and TCP, both directions, same node and across nodes),
#            kube-system (global) serves DNS to everyone, `moat drops --follow`
#            in a node's agent shows a refused ping with both projects,
#            `moat project join` opens alpha<->beta live, `moat project isolate`
#            closes it again.
#   volumes  RWO: write works; a pod on a second node cannot attach it.
#            ROX: a write fails with "Read-only file system".
#            RWX: pods on two nodes write and see each other's files.
#            Block: a raw device that keeps what is written.
#            Snapshot: a PVC restored from a snapshot has the content.
#            Cross-namespace: a PV pointing at alpha's volume, claimed from beta,
#            is refused at mount (PermissionDenied).
#
# Then deletes the cluster (also on failure; MOAT_E2E_KEEP=1 keeps it).
#
# Needs: docker, kind (>= 0.20), kubectl, internet access for the nodes (busybox
# image, CSI sidecars from registry.k8s.io, snapshot CRDs from GitHub).
# Env: KIND_NODE_IMAGE (default: kind's own), MOAT_KIND_CLUSTER (name),
#      MOAT_E2E_KEEP=1, MOAT_E2E_SKIP_BUILD=1 (reuse moat-cni:dev / moat-csi:dev).
set -Eeuo pipefail

REPO=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
CLUSTER=${MOAT_KIND_CLUSTER:-moat-e2e-$$}
TEST_IMAGE=busybox:1.36.1
SNAPSHOTTER=v8.2.0   # external-snapshotter release for the CRDs and snapshot-controller
SNAP_BASE=https://raw.githubusercontent.com/kubernetes-csi/external-snapshotter/$SNAPSHOTTER

step() { printf '\n=== %s\n' "$*" >&2; }
log() { printf '    %s\n' "$*" >&2; }
die() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
PASSED=0
ok() { PASSED=$((PASSED + 1)); printf '    ok   %s\n' "$*" >&2; }

for t in docker kind kubectl; do command -v "$t" >/dev/null || die "missing $t"; done

TMP=$(mktemp -d)
POOL=$TMP/pool
mkdir -p "$POOL"
export KUBECONFIG=$TMP/kubeconfig
CLUSTER_MADE=0

diagnostics() {
  step "diagnostics"
  kubectl get nodes -o wide >&2 || true
  kubectl get pods -A -o wide >&2 || true
  kubectl get pvc,pv,volumeattachments -A >&2 || true
  kubectl get events -A --sort-by=.lastTimestamp 2>/dev/null | tail -n 40 >&2 || true
  kubectl -n moat-system logs ds/moat-cni -c install --tail=30 >&2 || true
  kubectl -n moat-system logs ds/moat-cni -c agent --tail=30 >&2 || true
  kubectl -n moat-system logs deploy/moat-csi-controller -c moat-csi --tail=40 >&2 || true
  kubectl -n moat-system logs ds/moat-csi-node -c moat-csi --tail=40 >&2 || true
}

cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  ((rc != 0)) && ((CLUSTER_MADE)) && diagnostics
  if ((CLUSTER_MADE)) && [[ ${MOAT_E2E_KEEP:-0} == 1 ]]; then
    printf '\nkept cluster %s: KUBECONFIG=%s; delete with: kind delete cluster --name %s && rm -rf %s\n' \
      "$CLUSTER" "$KUBECONFIG" "$CLUSTER" "$TMP" >&2
    exit "$rc"
  fi
  if ((CLUSTER_MADE)); then
    step "teardown"
    # Give the driver the chance to unpublish and detach: loop devices belong to
    # the host kernel and would outlive the node containers.
    kubectl delete namespace alpha beta --wait=true --timeout=120s >/dev/null 2>&1
    kubectl delete pv moat-e2e-steal --wait=false >/dev/null 2>&1
    kubectl wait --for=delete pv --all --timeout=120s >/dev/null 2>&1   # DeleteVolume ran
    local n
    for n in $(kind get nodes --name "$CLUSTER" 2>/dev/null); do
      docker exec "$n" sh -c '
        losetup -a 2>/dev/null | grep /var/lib/moat/pool | cut -d: -f1 | while read -r d; do
          umount -l "$d" 2>/dev/null; losetup -d "$d"; done
        grep " /var/lib/kubelet/.*csi.moat.dev\| /var/lib/kubelet/plugins/kubernetes.io/csi" /proc/mounts \
          | cut -d" " -f2 | sort -r | while read -r m; do umount -l "$m"; done' 2>/dev/null
    done
    # the pool's files belong to root inside the nodes: remove them from there
    n=$(kind get nodes --name "$CLUSTER" 2>/dev/null | head -n1)
    [[ -n $n ]] && docker exec "$n" sh -c 'rm -rf /var/lib/moat/pool/* /var/lib/moat/pool/.[!.]*' 2>/dev/null
    kind delete cluster --name "$CLUSTER" --kubeconfig "$KUBECONFIG" >&2
  fi
  rm -rf "$TMP"
  ((rc == 0)) && printf '\nPASS: %d checks\n' "$PASSED" >&2
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------
step "building images"
if [[ ${MOAT_E2E_SKIP_BUILD:-0} != 1 ]]; then
  docker build -f "$REPO/deploy/Dockerfile.cni" -t moat-cni:dev "$REPO"
  docker build -f "$REPO/deploy/Dockerfile.csi" -t moat-csi:dev "$REPO"
fi

step "creating kind cluster $CLUSTER"
sed "s#/tmp/moat-kind-pool#$POOL#g" "$REPO/deploy/kind/cluster.yaml" >"$TMP/cluster.yaml"
CLUSTER_MADE=1
kind create cluster --name "$CLUSTER" --config "$TMP/cluster.yaml" --kubeconfig "$KUBECONFIG" \
  ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"} --wait 0s
mapfile -t NODES < <(kind get nodes --name "$CLUSTER")

# moat executes `nft`; the CSI node plugin needs /dev/loopN nodes, and a kind
# node's /dev only has the loop devices that existed when it was created.
for n in "${NODES[@]}"; do
  docker exec "$n" sh -c '
    command -v nft >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nftables >/dev/null; }
    for i in $(seq 0 63); do [ -e /dev/loop$i ] || mknod -m 0660 /dev/loop$i b 7 $i; done' \
    || die "preparing node $n"
done
kind load docker-image --name "$CLUSTER" moat-cni:dev moat-csi:dev

# ---------------------------------------------------------------------------
step "installing moat"
kubectl apply -f "$REPO/deploy/manifests/"
kubectl -n moat-system rollout status ds/moat-cni --timeout=180s
kubectl wait --for=condition=Ready nodes --all --timeout=180s
kubectl -n kube-system rollout status deploy/coredns --timeout=180s
ok "moat-cni installed on ${#NODES[@]} nodes, nodes Ready, CoreDNS running on the moat network"

kubectl apply -f "$SNAP_BASE/client/config/crd/snapshot.storage.k8s.io_volumesnapshotclasses.yaml" \
              -f "$SNAP_BASE/client/config/crd/snapshot.storage.k8s.io_volumesnapshotcontents.yaml" \
              -f "$SNAP_BASE/client/config/crd/snapshot.storage.k8s.io_volumesnapshots.yaml"
kubectl wait --for=condition=Established --timeout=60s \
  crd/volumesnapshotclasses.snapshot.storage.k8s.io crd/volumesnapshotcontents.snapshot.storage.k8s.io \
  crd/volumesnapshots.snapshot.storage.k8s.io
kubectl apply -f "$SNAP_BASE/deploy/kubernetes/snapshot-controller/rbac-snapshot-controller.yaml" \
              -f "$SNAP_BASE/deploy/kubernetes/snapshot-controller/setup-snapshot-controller.yaml"
kubectl apply -f "$REPO/deploy/manifests/snapshot/"
kubectl -n moat-system rollout status deploy/moat-csi-controller --timeout=300s
kubectl -n moat-system rollout status ds/moat-csi-node --timeout=300s
ok "moat-csi controller and node plugins running"

mapfile -t WORKERS < <(kubectl get nodes -l '!node-role.kubernetes.io/control-plane' -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}')
((${#WORKERS[@]} >= 2)) || die "expected 2 workers, got: ${WORKERS[*]}"
W1=${WORKERS[0]} W2=${WORKERS[1]}

# ---------------------------------------------------------------------------
# helpers
kubectl create namespace alpha >/dev/null
kubectl create namespace beta >/dev/null

# net_pod NS NAME NODE: busybox answering ping and HTTP on 8080 with its name
net_pod() {
  kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: $2, namespace: $1, labels: {moat-e2e: net}}
spec:
  nodeName: $3
  terminationGracePeriodSeconds: 1
  containers:
    - name: main
      image: $TEST_IMAGE
      command: ["sh", "-c", "mkdir -p /www && echo $1/$2 > /www/index.html && httpd -p 8080 -h /www && exec sleep 36000"]
EOF
}
pod_ip() { kubectl -n "$1" get pod "$2" -o jsonpath='{.status.podIP}'; }

# reaches FROM_NS FROM_POD TO_NS TO_POD: ping and HTTP both pass
reaches() {
  local ip; ip=$(pod_ip "$3" "$4")
  kubectl -n "$1" exec "$2" -- ping -c 2 -W 2 "$ip" >/dev/null 2>&1 || return 1
  [[ $(kubectl -n "$1" exec "$2" -- wget -T 3 -qO- "http://$ip:8080/" 2>/dev/null) == "$3/$4" ]]
}
# refused FROM_NS FROM_POD TO_NS TO_POD: ping and HTTP both fail
refused() {
  local ip; ip=$(pod_ip "$3" "$4")
  ! kubectl -n "$1" exec "$2" -- ping -c 2 -W 2 "$ip" >/dev/null 2>&1 \
    && ! kubectl -n "$1" exec "$2" -- wget -T 3 -qO- "http://$ip:8080/" >/dev/null 2>&1
}
expect_reach() { reaches "$@" && ok "$1/$2 -> $3/$4 reaches" || die "$1/$2 -> $3/$4 should reach"; }
expect_refused() { refused "$@" && ok "$1/$2 -> $3/$4 refused" || die "$1/$2 -> $3/$4 should be refused"; }

# moat_all ARGS...: run the moat CLI in the agent pod of every node
moat_all() {
  local p
  for p in $(kubectl -n moat-system get pods -l app.kubernetes.io/name=moat-cni -o name); do
    kubectl -n moat-system exec "$p" -c agent -- moat --config /etc/cni/net.d/10-moat.conflist "$@" >/dev/null \
      || die "moat $* failed in $p"
  done
}

# ---------------------------------------------------------------------------
step "network isolation"
net_pod alpha a1 "$W1"; net_pod alpha a2 "$W1"; net_pod alpha a3 "$W2"
net_pod beta b1 "$W1"; net_pod beta b2 "$W2"
kubectl wait --for=condition=Ready pod -l moat-e2e=net -n alpha --timeout=180s >/dev/null
kubectl wait --for=condition=Ready pod -l moat-e2e=net -n beta --timeout=180s >/dev/null
for p in alpha/a1 alpha/a2 alpha/a3 beta/b1 beta/b2; do log "$p: $(pod_ip "${p%/*}" "${p#*/}")"; done

expect_reach alpha a1 alpha a2       # same project, same node
expect_reach alpha a1 alpha a3       # same project, across nodes
expect_refused alpha a1 beta b1      # other project, same node
expect_refused beta b1 alpha a1
expect_refused alpha a1 beta b2      # other project, across nodes
expect_refused beta b2 alpha a3
kubectl -n alpha exec a1 -- nslookup kubernetes.default.svc.cluster.local >/dev/null 2>&1 \
  && ok "alpha/a1 resolves through CoreDNS (kube-system is global)" || die "DNS from alpha/a1 failed"

# The ConfigMap's logGroup: W1's agent sees a1's refused pings as they happen.
w1_agent=$(kubectl -n moat-system get pods -l app.kubernetes.io/name=moat-cni \
  --field-selector spec.nodeName="$W1" -o name)
kubectl -n moat-system exec "$w1_agent" -c agent -- timeout 30 \
  moat --config /etc/cni/net.d/10-moat.conflist drops --follow --count 1 >"$TMP/droplog" 2>/dev/null &
follower=$!
sleep 3
kubectl -n alpha exec a1 -- ping -c 3 -W 1 "$(pod_ip beta b1)" >/dev/null 2>&1 || true
wait "$follower" || true
grep -q "cross-tenant  alpha $(pod_ip alpha a1) -> beta $(pod_ip beta b1) icmp" "$TMP/droplog" \
  && ok "moat drops --follow on $W1 names the refused alpha -> beta ping" \
  || die "no drop logged on $W1: $(cat "$TMP/droplog")"

moat_all project join alpha beta
expect_reach alpha a1 beta b1
expect_reach beta b2 alpha a3
moat_all project isolate alpha
expect_refused alpha a1 beta b1
expect_refused beta b2 alpha a3

# ---------------------------------------------------------------------------
step "volumes"
pvc() {  # NS NAME CLASS MODE [Block]
  kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: $2, namespace: $1}
spec:
  storageClassName: $3
  accessModes: [$4]
  volumeMode: ${5:-Filesystem}
  resources: {requests: {storage: 64Mi}}
EOF
}
# vol_pod NS NAME NODE CLAIM: busybox with the claim at /data
vol_pod() {
  kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: $2, namespace: $1, labels: {moat-e2e: vol}}
spec:
  nodeName: $3
  terminationGracePeriodSeconds: 1
  containers:
    - name: main
      image: $TEST_IMAGE
      command: ["sleep", "36000"]
      volumeMounts: [{name: v, mountPath: /data}]
  volumes: [{name: v, persistentVolumeClaim: {claimName: $4}}]
EOF
}
wait_ready() { kubectl -n "$1" wait --for=condition=Ready "pod/$2" --timeout="${3:-180s}" >/dev/null; }
# never_ready NS POD SECONDS: the pod must not become Ready in that time
never_ready() { ! kubectl -n "$1" wait --for=condition=Ready "pod/$2" --timeout="${3}s" >/dev/null 2>&1; }
events_of() {
  kubectl -n "$1" get events --field-selector "involvedObject.name=$2" -o jsonpath='{range .items[*]}{.reason}: {.message}{"\n"}{end}'
}

pvc alpha rwo moat-rwo ReadWriteOnce
pvc alpha rox moat-rox ReadOnlyMany
pvc alpha rwx moat-rwx ReadWriteMany
pvc alpha blk moat-block ReadWriteOnce Block
for c in rwo rox rwx blk; do
  kubectl -n alpha wait --for=jsonpath='{.status.phase}'=Bound "pvc/$c" --timeout=120s >/dev/null \
    || die "pvc alpha/$c not Bound"
done
ok "RWO, ROX, RWX and Block claims provisioned"

# RWO: writable on one node, refused on a second
vol_pod alpha rwo-1 "$W1" rwo
wait_ready alpha rwo-1
kubectl -n alpha exec rwo-1 -- sh -c 'echo moat > /data/hello && sync && cat /data/hello' | grep -qx moat \
  && ok "RWO: write and read back on $W1" || die "RWO write failed"
vol_pod alpha rwo-2 "$W2" rwo
if never_ready alpha rwo-2 60; then
  ev=$(events_of alpha rwo-2)
  grep -qi 'FailedAttachVolume\|Multi-Attach' <<<"$ev" || die "RWO on a second node: no attach failure event: $ev"
  ok "RWO: a pod on $W2 cannot attach it ($(grep -i 'FailedAttach\|Multi-Attach' <<<"$ev" | head -n1 | cut -c1-120))"
else
  die "RWO volume was attached on a second node"
fi
kubectl -n alpha delete pod rwo-2 --wait=false >/dev/null

# ROX: even a read-write volumeMount cannot write
vol_pod alpha rox-1 "$W1" rox
wait_ready alpha rox-1
out=$(kubectl -n alpha exec rox-1 -- sh -c 'echo x > /data/x' 2>&1 || true)
grep -qi 'read-only file system' <<<"$out" && ok "ROX: write refused (${out##*: })" || die "ROX: write was not refused: $out"

# RWX: two nodes, both write, both see both
vol_pod alpha rwx-1 "$W1" rwx
vol_pod alpha rwx-2 "$W2" rwx
wait_ready alpha rwx-1; wait_ready alpha rwx-2
kubectl -n alpha exec rwx-1 -- sh -c 'echo one > /data/from-1'
kubectl -n alpha exec rwx-2 -- sh -c 'echo two > /data/from-2'
[[ $(kubectl -n alpha exec rwx-1 -- cat /data/from-2) == two && $(kubectl -n alpha exec rwx-2 -- cat /data/from-1) == one ]] \
  && ok "RWX: pods on $W1 and $W2 write and see each other's files" || die "RWX sharing failed"

# Block: a raw device
kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: blk-1, namespace: alpha, labels: {moat-e2e: vol}}
spec:
  nodeName: $W1
  terminationGracePeriodSeconds: 1
  containers:
    - name: main
      image: $TEST_IMAGE
      command: ["sleep", "36000"]
      volumeDevices: [{name: v, devicePath: /dev/moat-blk}]
  volumes: [{name: v, persistentVolumeClaim: {claimName: blk}}]
EOF
wait_ready alpha blk-1
kubectl -n alpha exec blk-1 -- sh -c 'echo moat-block | dd of=/dev/moat-blk bs=512 count=1 conv=sync,fsync 2>/dev/null && dd if=/dev/moat-blk bs=512 count=1 2>/dev/null' \
  | tr -d '\0' | grep -q moat-block && ok "Block: raw device keeps what is written" || die "Block device write/read failed"

# Snapshot of the RWO volume, restored into a new claim
kubectl apply -f - >/dev/null <<EOF
apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshot
metadata: {name: rwo-snap, namespace: alpha}
spec:
  volumeSnapshotClassName: moat-snapshots
  source: {persistentVolumeClaimName: rwo}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: restored, namespace: alpha}
spec:
  storageClassName: moat-rwo
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 64Mi}}
  dataSource: {name: rwo-snap, kind: VolumeSnapshot, apiGroup: snapshot.storage.k8s.io}
EOF
kubectl -n alpha wait --for=jsonpath='{.status.readyToUse}'=true volumesnapshot/rwo-snap --timeout=120s >/dev/null \
  || die "snapshot not ready"
vol_pod alpha restored-1 "$W1" restored
wait_ready alpha restored-1
[[ $(kubectl -n alpha exec restored-1 -- cat /data/hello) == moat ]] \
  && ok "Snapshot: the restored claim has the content" || die "restored volume lacks the snapshot's content"

# Cross-namespace: beta claims a PV that points at alpha's RWX volume, copying its
# volume attributes too (what a PV author could forge). The driver knows the owner.
handle=$(kubectl get pv "$(kubectl -n alpha get pvc rwx -o jsonpath='{.spec.volumeName}')" -o jsonpath='{.spec.csi.volumeHandle}')
attrs=$(kubectl get pv "$(kubectl -n alpha get pvc rwx -o jsonpath='{.spec.volumeName}')" -o jsonpath='{.spec.csi.volumeAttributes}')
[[ -n $attrs ]] || attrs='{}'
kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: PersistentVolume
metadata: {name: moat-e2e-steal}
spec:
  capacity: {storage: 64Mi}
  accessModes: [ReadWriteMany]
  persistentVolumeReclaimPolicy: Retain   # deleting this PV must not delete alpha's volume
  storageClassName: ""
  claimRef: {namespace: beta, name: steal}
  csi:
    driver: csi.moat.dev
    volumeHandle: "$handle"
    volumeAttributes: $attrs
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: steal, namespace: beta}
spec:
  storageClassName: ""
  volumeName: moat-e2e-steal
  accessModes: [ReadWriteMany]
  resources: {requests: {storage: 64Mi}}
EOF
vol_pod beta thief "$W1" steal
if never_ready beta thief 60; then
  ev=$(events_of beta thief)
  grep -qi 'PermissionDenied\|permission denied' <<<"$ev" || die "cross-namespace mount failed without PermissionDenied: $ev"
  ok "Cross-namespace: beta's pod cannot mount alpha's volume (PermissionDenied)"
else
  die "a pod in beta mounted alpha's volume"
fi
