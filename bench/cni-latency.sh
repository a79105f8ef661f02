#!/usr/bin/env bash
# CNI ADD/DEL latency, moat side by side with Debian's reference ptp + host-local.
#
# Usage: bench/cni-latency.sh [--moat-bin PATH | --ref-only] [--samples N] [--pods N]
#                             [--concurrency N] [--rounds N] [--json FILE]
#   moat is found via --moat-bin, $MOAT_BIN_DIR/moat, the static build of
#   scripts/build-plugin.sh (as it ships), target/release/moat, then target/debug/moat.
#   CNI_REF_DIR (default /usr/lib/cni) holds ptp and host-local.
#
# Everything happens in namespaces this script makes and removes: one "node"
# netns per plugin (moatbench-node-<pid>-moat / -ref, and -moat0: a second moat
# node that stays empty, for ADD@0 in the same rounds as ADD@1000) and the pod
# netns (moatbench-<pid>-{m,z,r}-*), a temp dir for IPAM/state/logs. The host's root
# netns is never touched. A trap removes all of it on success, failure or signal.
set -Eeuo pipefail

HERE=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
REF_DIR=${CNI_REF_DIR:-/usr/lib/cni}
# shellcheck source=bench/common.sh
source "$HERE/common.sh"
MOAT_BIN="" REF_ONLY=0
SAMPLES=30 PODS=1000 CONC=32 ROUNDS=3 JSON=""
while (($#)); do
  case $1 in
    --moat-bin) MOAT_BIN=$2; shift 2 ;;
    --ref-only) REF_ONLY=1; shift ;;
    --samples) SAMPLES=$2; shift 2 ;;
    --pods) PODS=$2; shift 2 ;;
    --concurrency) CONC=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --json) JSON=$(readlink -f "$2"); shift 2 ;;
    -h|--help) sed -n '2,15p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) die "unknown argument $1" ;;
  esac
done

need_root_and_tools ip python3 nft
((REF_ONLY)) || find_moat "--ref-only measures the reference alone"

T=$(mktemp -d /tmp/moatbench.XXXXXX)
# moat's attachment state, on a tmpfs of our own: its default /run/cni/moat
# is tmpfs on a systemd node (this VM's /run is not)
RUN=$(mktemp -d /tmp/moatbench-run.XXXXXX)
mount -t tmpfs -o size=64m,mode=0700 moatbench-run "$RUN"
TAG=moatbench-$$-
NODE_MOAT=moatbench-node-$$-moat
NODE_REF=moatbench-node-$$-ref
NODE_MOAT0=moatbench-node-$$-moat0  # a second moat node that stays empty
helper_pid=""

cleanup() {
  local rc=$?
  set +e
  # A second signal (a supervisor's TERM after ^C, say) must not cut the
  # clean-up short and leave thousands of namespaces behind.
  trap - EXIT
  trap '' INT TERM
  if [[ -n $helper_pid ]] && kill -0 "$helper_pid" 2>/dev/null; then
    kill -TERM "$helper_pid"; sleep 0.5; kill -KILL "$helper_pid" 2>/dev/null
    wait "$helper_pid" 2>/dev/null
  fi
  # every netns of ours: the node netns and the pod netns, nothing else
  local ours
  ours=$(ip netns list | awk '{print $1}' | grep -E "^(${TAG}|moatbench-node-$$-)" || true)
  if [[ -n $ours ]]; then
    log "removing $(wc -l <<<"$ours") network namespaces"
    sed 's/^/netns delete /' <<<"$ours" | ip -force -batch - 2>/dev/null
  fi
  if ((rc != 0)) && [[ -s $T/moatbench.log ]]; then
    log "last lines of moat's log:"; tail -n 20 "$T/moatbench.log" >&2
  fi
  umount "$RUN" 2>/dev/null
  rm -rf "$T" "$RUN"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Each node netns has an address, as a real node has on its uplink: the
# kernel picks a route's source address from the devices, and on a node
# with none it walks every interface for each route added.
node_netns() { ip netns add "$1"; ip -n "$1" link set lo up; ip -n "$1" addr add 10.255.0.1/32 dev lo; }
node_netns "$NODE_REF"
args=(--tmp "$T" --run-dir "$RUN" --tag "$TAG" --ref-dir "$REF_DIR" --ref-node "/run/netns/$NODE_REF"
      --samples "$SAMPLES" --pods "$PODS" --concurrency "$CONC" --rounds "$ROUNDS")
if ((!REF_ONLY)); then
  node_netns "$NODE_MOAT"
  node_netns "$NODE_MOAT0"
  args+=(--moat "$MOAT_BIN" --moat-node "/run/netns/$NODE_MOAT" --moat0-node "/run/netns/$NODE_MOAT0")
fi
[[ -n $JSON ]] && args+=(--json "$JSON")

# moat must build its table in its node netns, never in the host's root netns
root_table_before=0
nft list table inet moat >/dev/null 2>&1 && root_table_before=1
log "moat: ${MOAT_BIN:-(not measured)}; reference: $REF_DIR/ptp + host-local"
log "kernel $(uname -r), $(nproc) cpus, load $(cut -d' ' -f1-3 /proc/loadavg)"
python3 "$HERE/cni_latency.py" "${args[@]}" &
helper_pid=$!
wait "$helper_pid"
helper_pid=""
if ((!root_table_before)) && nft list table inet moat >/dev/null 2>&1; then
  die "a table inet moat appeared in the host's root netns during the run"
fi
