#!/bin/sh
# moat-cni node agent (the DaemonSet's long-running container, host network).
#
# Every MOAT_AGENT_INTERVAL seconds (default 10):
#  1. routes: for every other node, a route to each of its pod CIDRs via its
#     InternalIP of the same family (moat is routed, no overlay: nodes on one L2
#     segment, as kind's are, need nothing else). Our routes carry protocol 0x4d
#     ("M") so stale ones (node gone) are found and removed; others are never touched.
#  2. policy: when the ConfigMap's policy.json changes (compared with the last one
#     applied on this node), it replaces the node's policy file
#     (<dataDir>/<network>/policy.json) and
#     `moat reconcile` applies it to running pods in one transaction. Operators who prefer the CLI leave policy.json out of the
#     ConfigMap and run `moat project ...` in this container on every node.
#  3. peers: the addresses and namespaces of pods running on other nodes go to
#     `moat peers sync -`, so a connection a remote pod opens is judged by its
#     project like a local one (unknown remote pods are dropped). Only applied
#     when the list changed.
#  4. self-heal: `moat reconcile` when CNI STATUS answers 51 (table gone).
set -u
. /usr/local/lib/moat/kube-api.sh

: "${NODE_NAME:?NODE_NAME must be set from the downward API}"
CONF=${MOAT_CONFIG:-/etc/cni/net.d/10-moat.conflist}
POLICY_SRC=/etc/moat/policy.json
INTERVAL=${MOAT_AGENT_INTERVAL:-10}
PROTO=77

log() { echo "moat-agent: $*" >&2; }

sync_routes() {
  nodes=$(kube_get /api/v1/nodes) || { log "cannot list nodes"; return; }
  want=$(printf '%s' "$nodes" | jq -r --arg me "$NODE_NAME" '
    .items[] | select(.metadata.name != $me)
    | [.status.addresses[]? | select(.type == "InternalIP") | .address] as $ips
    | (.spec.podCIDRs // [.spec.podCIDR // empty])[] as $cidr
    | ($ips[] | select((contains(":")) == ($cidr | contains(":")))) as $via
    | "\($cidr) \($via)"')
  printf '%s\n' "$want" | while read -r cidr via; do
    [ -n "$cidr" ] || continue
    ip route replace "$cidr" via "$via" proto "$PROTO" || log "route $cidr via $via failed"
  done
  for fam in -4 -6; do
    ip "$fam" route show proto "$PROTO" | while read -r dst _; do
      printf '%s\n' "$want" | grep -q "^$dst " || { ip "$fam" route del "$dst" proto "$PROTO"; log "removed stale route $dst"; }
    done
  done
}

# The checksum of the last ConfigMap policy applied on this node is kept next to
# the policy, so an agent restart does not undo CLI changes made since then.
sync_policy() {
  [ -s "$POLICY_SRC" ] && [ -f "$CONF" ] || return 0
  policy=$(policy_path "$CONF") || return 0
  applied=$(dirname "$policy")/.configmap-policy.sha256
  sum=$(sha256sum "$POLICY_SRC" | cut -d' ' -f1)
  [ "$sum" = "$(cat "$applied" 2>/dev/null)" ] && return 0
  mkdir -p "$(dirname "$policy")"
  cp "$POLICY_SRC" "$policy.new" && mv -f "$policy.new" "$policy" || return 0
  if moat --config "$CONF" reconcile; then
    echo "$sum" > "$applied"
    log "applied policy from the ConfigMap to $policy ($sum)"
  else
    log "reconcile after a policy change failed; will retry"
  fi
}

sync_peers() {
  [ -f "$CONF" ] || return 0
  pods=$(kube_get "/api/v1/pods?fieldSelector=spec.nodeName%21%3D$NODE_NAME%2Cstatus.phase%3DRunning") \
    || { log "cannot list pods"; return; }
  peers=$(printf '%s' "$pods" | jq -c '[.items[] | select(.spec.hostNetwork != true)
    | .metadata.namespace as $ns | (.status.podIPs // [])[] | {ip: .ip, project: $ns}] | sort')
  state=$(dirname "$(policy_path "$CONF")") || return 0
  [ "$peers" = "$(cat "$state/.peers-synced" 2>/dev/null)" ] && return 0
  if printf '%s' "$peers" | moat --config "$CONF" peers sync - >/dev/null; then
    printf '%s' "$peers" > "$state/.peers-synced"
  else
    log "peers sync failed; will retry"
  fi
}

heal() {
  [ -f "$CONF" ] || return 0
  # CNI STATUS (spec 1.1) answers 51 when moat's table is gone: rebuild it
  plugin=$(jq -c '. as $l | .plugins[] | select(.type == "moat") | . + {cniVersion: "1.1.0", name: $l.name}' "$CONF") || return 0
  out=$(printf '%s' "$plugin" | CNI_COMMAND=STATUS CNI_PATH=/opt/cni/bin moat 2>/dev/null) && return 0
  code=$(printf '%s' "$out" | jq -r '.code // empty' 2>/dev/null)
  if [ "$code" = 51 ]; then
    log "STATUS 51 (table missing): reconciling"
    moat --config "$CONF" reconcile || log "reconcile failed"
  fi
}

trap 'exit 0' TERM INT
log "node $NODE_NAME, config $CONF, every ${INTERVAL}s"
while :; do
  sync_routes
  sync_policy
  sync_peers
  heal
  sleep "$INTERVAL" &
  wait $!
done
