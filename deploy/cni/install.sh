#!/bin/sh
# moat-cni init container: installs the plugin binary and this node's conflist.
#
# Mounts (see deploy/manifests/10-cni-daemonset.yaml):
#   /host/opt/cni/bin       <- hostPath /opt/cni/bin
#   /host/etc/cni/net.d     <- hostPath /etc/cni/net.d
#   /var/lib/cni/moat       <- hostPath /var/lib/cni/moat (moat's dataDir)
#   /etc/moat               <- ConfigMap moat-cni (10-moat.conflist, policy.json)
# Env: NODE_NAME (downward API).
#
# The node's pod CIDRs come from the Node object (.spec.podCIDRs): containerd does
# not pass kubelet's podCIDR to plugins, so the conflist gets them written in. The
# conflist is written last, atomically: kubelet reports the node Ready as soon as
# a network config appears, and by then the binary is in place.
set -eu
. /usr/local/lib/moat/kube-api.sh

: "${NODE_NAME:?NODE_NAME must be set from the downward API}"
SRC=/etc/moat/10-moat.conflist
BIN_DIR=/host/opt/cni/bin
CONF_DIR=/host/etc/cni/net.d
DATA_DIR=/var/lib/cni/moat

log() { echo "moat-install: $*" >&2; }

cidrs=""
i=0
while [ -z "$cidrs" ]; do
  cidrs=$(kube_get "/api/v1/nodes/$NODE_NAME" \
            | jq -r '(.spec.podCIDRs // [.spec.podCIDR // empty]) | .[]' 2>/dev/null || true)
  if [ -z "$cidrs" ]; then
    i=$((i + 1))
    [ "$i" -gt 60 ] && { log "node $NODE_NAME has no podCIDR after 2 minutes (is --allocate-node-cidrs on?)"; exit 1; }
    sleep 2
  fi
done
log "node $NODE_NAME pod CIDRs: $(echo $cidrs)"

# ranges: one range set per CIDR, in host-local's shape: [[{"subnet":...}], ...]
# shellcheck disable=SC2086
ranges=$(jq -cn '$ARGS.positional | map([{subnet: .}])' --args $cidrs)

mkdir -p "$BIN_DIR" "$CONF_DIR" "$DATA_DIR"
# binary first, via rename: a runtime executing the old one is not disturbed
cp /usr/local/bin/moat "$BIN_DIR/.moat.new"
chmod 0755 "$BIN_DIR/.moat.new"
mv -f "$BIN_DIR/.moat.new" "$BIN_DIR/moat"

# seed the node-local policy from the ConfigMap on first install only; later
# changes are applied by the node agent (ConfigMap) or `moat project ...` (CLI).
# moat keeps it at isolation.policyFile, else <dataDir>/<network name>/policy.json.
policy=$(policy_path "$SRC")
case $policy in
  "$DATA_DIR"/*) ;;
  *) log "policy file $policy is outside $DATA_DIR (the mounted dataDir): not seeding it"; policy="" ;;
esac
if [ -n "$policy" ] && [ ! -s "$policy" ] && [ -s /etc/moat/policy.json ]; then
  mkdir -p "$(dirname "$policy")"
  cp /etc/moat/policy.json "$policy.new"
  mv -f "$policy.new" "$policy"
  sha256sum /etc/moat/policy.json | cut -d' ' -f1 > "$(dirname "$policy")/.configmap-policy.sha256"
  log "seeded $policy from the ConfigMap"
fi

jq --argjson r "$ranges" '(.plugins[] | select(.type == "moat") | .ipam.ranges) = $r' "$SRC" \
  > "$CONF_DIR/.10-moat.conflist.new"
mv -f "$CONF_DIR/.10-moat.conflist.new" "$CONF_DIR/10-moat.conflist"
log "installed $BIN_DIR/moat and $CONF_DIR/10-moat.conflist"
