#!/usr/bin/env bash
# Pod -> pod TCP throughput (iperf3), moat side by side with Debian's reference ptp.
#
# Usage: bench/cni-throughput.sh [--moat-bin PATH] [--pods N] [--ref-pods N]
#                                [--rounds N] [--seconds S] [--streams N] [--json FILE]
#                                [--congestion ALGO] [--profile DIR]
#   moat is found via --moat-bin, $MOAT_BIN_DIR/moat, the static build of
#   scripts/build-plugin.sh (as it ships), target/release/moat, then target/debug/moat.
#   CNI_REF_DIR (default /usr/lib/cni) holds ptp and host-local.
#
# moat runs with isolation on and N (1000) background pods in 100 projects in its
# sets; the client and server pods share a project. The references are ptp +
# host-local with no filtering: with ptp's ipMasq on (the same features as moat,
# so the node tracks connections; the goal is judged against it) and bare (no
# NAT, no connection tracking), with the same number of background pods unless
# --ref-pods says otherwise. Each plugin has its own "node" netns
# (moattput-node-<pid>-moat / -ref / -bare); pod netns are moattput-<pid>-{m,r,b}-*.
# The host's root netns is never touched. A trap kills every process left in our
# namespaces (the iperf3 servers), deletes the namespaces and the temp dir, on
# success, failure or signal.
set -Eeuo pipefail

HERE=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
REF_DIR=${CNI_REF_DIR:-/usr/lib/cni}
# shellcheck source=bench/common.sh
source "$HERE/common.sh"
MOAT_BIN=""
PODS=1000 REF_PODS="" ROUNDS=5 SECONDS_=5 STREAMS=1 JSON="" CONGESTION=cubic PROFILE=
while (($#)); do
  case $1 in
    --moat-bin) MOAT_BIN=$2; shift 2 ;;
    --pods) PODS=$2; shift 2 ;;
    --ref-pods) REF_PODS=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --seconds) SECONDS_=$2; shift 2 ;;
    --streams) STREAMS=$2; shift 2 ;;
    --congestion) CONGESTION=$2; shift 2 ;;
    --json) JSON=$(readlink -f "$2"); shift 2 ;;
    --profile) PROFILE=$(readlink -f "$2"); shift 2 ;;
    -h|--help) sed -n '2,20p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) die "unknown argument $1" ;;
  esac
done

need_root_and_tools ip python3 nft nsenter iperf3 ping iptables ${PROFILE:+perf}
find_moat

T=$(mktemp -d /tmp/moattput.XXXXXX)
# moat's attachment state, on a tmpfs of our own: its default /run/cni/moat
# is tmpfs on a systemd node (this VM's /run is not)
RUN=$(mktemp -d /tmp/moattput-run.XXXXXX)
mount -t tmpfs -o size=64m,mode=0700 moattput-run "$RUN"
TAG=moattput-$$-
NODE_MOAT=moattput-node-$$-moat
NODE_REF=moattput-node-$$-ref
NODE_BARE=moattput-node-$$-bare
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
  local ours ns pids
  ours=$(ip netns list | awk '{print $1}' | grep -E "^(${TAG}|moattput-node-$$-)" || true)
  if [[ -n $ours ]]; then
    # processes still inside our namespaces (iperf3 servers of a killed helper)
    for ns in $ours; do
      pids=$(ip netns pids "$ns" 2>/dev/null)
      [[ -n $pids ]] && kill -KILL $pids 2>/dev/null
    done
    log "removing $(wc -l <<<"$ours") network namespaces"
    sed 's/^/netns delete /' <<<"$ours" | ip -force -batch - 2>/dev/null
  fi
  if ((rc != 0)) && [[ -s $T/moat.log ]]; then
    log "last lines of moat's log:"; tail -n 20 "$T/moat.log" >&2
  fi
  umount "$RUN" 2>/dev/null
  rm -rf "$T" "$RUN"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for n in "$NODE_MOAT" "$NODE_REF" "$NODE_BARE"; do
  ip netns add "$n"
  ip -n "$n" link set lo up
done
args=(--tmp "$T" --run-dir "$RUN" --tag "$TAG" --moat "$MOAT_BIN" --moat-node "/run/netns/$NODE_MOAT"
      --ref-dir "$REF_DIR" --ref-node "/run/netns/$NODE_REF" --bare-node "/run/netns/$NODE_BARE"
      --pods "$PODS"
      --rounds "$ROUNDS" --seconds "$SECONDS_" --streams "$STREAMS" --congestion "$CONGESTION")
[[ -n $REF_PODS ]] && args+=(--ref-pods "$REF_PODS")
[[ -n $JSON ]] && args+=(--json "$JSON")
[[ -n $PROFILE ]] && args+=(--profile "$PROFILE")

root_table_before=0
nft list table inet moat >/dev/null 2>&1 && root_table_before=1
log "moat: $MOAT_BIN; references: $REF_DIR/ptp + host-local, ipMasq on and off; iperf3 $(iperf3 --version | head -n1 | awk '{print $2}')"
log "kernel $(uname -r), $(nproc) cpus, load $(cut -d' ' -f1-3 /proc/loadavg)"
python3 "$HERE/cni_throughput.py" "${args[@]}" &
helper_pid=$!
wait "$helper_pid"
helper_pid=""
if ((!root_table_before)) && nft list table inet moat >/dev/null 2>&1; then
  die "a table inet moat appeared in the host's root netns during the run"
fi
