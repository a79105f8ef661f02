#!/usr/bin/env bash
# A real container runtime drives the CNI plugin: containerd + `ctr run --cni`.
#
# What it does, all of it torn down again by traps even on failure:
#   1. makes a "node" network namespace (moatctr-node-<pid>) and a temp dir;
#   2. re-executes itself in a private mount namespace and bind-mounts temp dirs
#      over /etc/cni/net.d, /opt/cni/bin, /var/lib/cni and /run/containerd, so
#      the host's directories are never read or written;
#   3. starts containerd (own root, state, socket, config, no CRI) inside the
#      node netns;
#   4. builds a one-layer OCI image from Debian's busybox-static by hand
#      (tar + sha256sum) and imports it with `ctr images import`;
#   5. runs two containers with `ctr run --rm --cni`: ctr itself executes the
#      plugin from inside the node netns, exactly as it would on a real node;
#   6. checks that each container got an address in the plugin's range, that
#      they ping each other and the node pings them;
#   7. kills the tasks: ctr then calls CNI DEL (with an empty CNI_NETNS, as ctr
#      always does) and we check that the host side and the address are gone.
#
# Usage: tests/ctr/run.sh [--plugin moat|ptp] [--moat-bin PATH]
#   --plugin moat (default)  the built `moat` binary; located via --moat-bin,
#                            $MOAT_BIN_DIR/moat, or <repo>/target/{debug,release}/moat
#   --plugin ptp             Debian's reference ptp + host-local from /usr/lib/cni
#                            (same mechanism; used to prove the harness itself)
# Environment: MOAT_CTR_PLUGIN (same as --plugin), MOAT_BIN_DIR, CNI_REF_DIR
# (default /usr/lib/cni), MOAT_CTR_KEEP_LOGS=1 to print all logs on success too.
# Needs root, containerd, runc, ctr, nsenter, unshare, iproute2, busybox-static.
set -Eeuo pipefail

log() { printf '[ctr-test] %s\n' "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }

SCRIPT=$(readlink -f "${BASH_SOURCE[0]}")
REPO=$(cd "$(dirname "$SCRIPT")/../.." && pwd)
NS=moat-ctr-${MOAT_CTR_RUN:-$$}  # containerd namespace (and runc's cgroup parent)
IMAGE=docker.io/library/moat-busybox:test
SUBNET_PREFIX=10.199.0    # pods get 10.199.0.0/24
NODE_ADDR=192.0.2.10      # the node netns' own address (TEST-NET-1)
# Globals on purpose: the EXIT traps run after the stage functions returned.
containerd_pid=""
ctr_pids=()
ids=()
made_dirs=()
inner_pid=""

# ---------------------------------------------------------------------------
# inner stage: runs inside the private mount namespace
# ---------------------------------------------------------------------------
inner() {
  : "${T:?}" "${NODE:?}" "${PLUGIN:?}"
  local netns_path=/run/netns/$NODE
  local sock=$T/containerd.sock

  in_node() { nsenter --net="$netns_path" -- "$@"; }
  ctrc() { ctr --address "$sock" --namespace "$NS" "$@"; }

  inner_cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    for id in "${ids[@]}"; do
      ctrc task kill -s SIGKILL "$id" >/dev/null 2>&1
    done
    for pid in "${ctr_pids[@]}"; do
      timeout 20 tail --pid="$pid" -f /dev/null 2>/dev/null
      kill -KILL "$pid" 2>/dev/null
    done
    for id in "${ids[@]}"; do
      ctrc task delete -f "$id" >/dev/null 2>&1
      ctrc container delete "$id" >/dev/null 2>&1
    done
    if [[ -n $containerd_pid ]]; then
      kill -TERM "$containerd_pid" 2>/dev/null
      timeout 20 tail --pid="$containerd_pid" -f /dev/null 2>/dev/null
      kill -KILL "$containerd_pid" 2>/dev/null
    fi
    kill_ours  # shims or containers that outlived containerd
    for m in /run/containerd /var/lib/cni /opt/cni/bin /etc/cni/net.d; do
      mountpoint -q "$m" && umount -l "$m"
    done
    exit "$rc"
  }
  trap inner_cleanup EXIT
  trap 'exit 130' INT TERM

  # -- private view of the CNI and containerd directories ------------------
  mkdir -p "$T"/{netd,bin,varlibcni,runcontainerd,root,state,fifo,img}
  mount --bind "$T/netd" /etc/cni/net.d
  mount --bind "$T/bin" /opt/cni/bin
  mount --bind "$T/varlibcni" /var/lib/cni
  mount --bind "$T/runcontainerd" /run/containerd

  local ref_dir=${CNI_REF_DIR:-/usr/lib/cni}
  cp "$ref_dir/loopback" /opt/cni/bin/
  case $PLUGIN in
    ptp)
      cp "$ref_dir/ptp" "$ref_dir/host-local" /opt/cni/bin/
      cat >/etc/cni/net.d/10-moat.conflist <<EOF
{"cniVersion":"1.0.0","name":"moat-ctr","plugins":[{"type":"ptp","ipMasq":false,"mtu":1500,
 "ipam":{"type":"host-local","ranges":[[{"subnet":"$SUBNET_PREFIX.0/24"}]],
         "routes":[{"dst":"0.0.0.0/0"}],"dataDir":"$T/ipam"}}]}
EOF
      ;;
    moat)
      cp "${MOAT_BIN:?}" /opt/cni/bin/moat
      # containerd 1.6 (Debian 12) links libcni 1.1, which knows CNI up to 1.0.0:
      # the config asks for 1.0.0 and moat must answer in 1.0.0.
      cat >/etc/cni/net.d/10-moat.conflist <<EOF
{"cniVersion":"1.0.0","name":"moat","plugins":[{"type":"moat","mtu":1500,
 "dataDir":"$T/moat-data","runDir":"$T/moat-run","logFile":"$T/moat.log","logLevel":"debug",
 "ipam":{"ranges":[[{"subnet":"$SUBNET_PREFIX.0/24"}]]},
 "capabilities":{"ipRanges":true},
 "isolation":{"enabled":true,"table":"moat","globalProjects":["kube-system"],"defaultProject":"default",
              "clusterCIDRs":["10.199.0.0/16"],"masquerade":true,"logDrops":false}}]}
EOF
      ;;
    *) die "unknown plugin '$PLUGIN' (moat|ptp)" ;;
  esac
  log "plugin: $PLUGIN, conflist: $(tr -d '\n' </etc/cni/net.d/10-moat.conflist)"

  # -- containerd with its own everything, inside the node netns ------------
  cat >"$T/containerd.toml" <<EOF
version = 2
root = "$T/root"
state = "$T/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$sock"
[ttrpc]
  address = "$sock.ttrpc"
[debug]
  address = ""
EOF
  in_node containerd --config "$T/containerd.toml" >"$T/containerd.log" 2>&1 &
  containerd_pid=$!
  local i
  for i in $(seq 1 100); do
    ctr --address "$sock" version >/dev/null 2>&1 && break
    kill -0 "$containerd_pid" 2>/dev/null || die "containerd exited early"
    sleep 0.1
  done
  ctr --address "$sock" version >/dev/null 2>&1 || die "containerd did not come up"
  log "containerd up (pid $containerd_pid)"

  # -- a one-layer OCI image of busybox-static, made by hand ----------------
  build_image "$T/img" "$T/image.tar"
  ctrc images import "$T/image.tar" >"$T/import.log" 2>&1 || { cat "$T/import.log" >&2; die "image import"; }
  ctrc images ls -q | grep -qx "$IMAGE" || die "image $IMAGE not listed after import"
  log "image $IMAGE imported"

  # -- two containers, networked by ctr through the plugin ------------------
  local tag=$$
  ids=("c1-$tag" "c2-$tag")
  for id in "${ids[@]}"; do
    in_node ctr --address "$sock" --namespace "$NS" run --rm --cni --null-io \
      --fifo-dir "$T/fifo" "$IMAGE" "$id" /bin/sleep 600 >"$T/$id.ctr.log" 2>&1 &
    ctr_pids+=($!)
  done

  local -A ip=()
  for id in "${ids[@]}"; do
    local addr="" n=0
    for i in $(seq 1 100); do
      if ctrc task ls 2>/dev/null | awk '{print $1, $3}' | grep -qx "$id RUNNING"; then
        addr=$(ctrc task exec --fifo-dir "$T/fifo" --exec-id "ip$((n++))" "$id" \
                 /bin/ip -4 -o addr show dev eth0 2>/dev/null | awk '{print $4}' | head -n1) || true
        [[ -n $addr ]] && break
      fi
      sleep 0.2
    done
    [[ -n $addr ]] || { cat "$T/$id.ctr.log" >&2; die "$id: no IPv4 address on eth0"; }
    [[ $addr == "$SUBNET_PREFIX".* ]] || die "$id: address $addr is not from $SUBNET_PREFIX.0/24"
    ip[$id]=${addr%/*}
    log "$id: eth0 $addr"
  done

  # the host side of each attachment lives in the node netns
  local host_links
  host_links=$(ip -n "$NODE" -o link show type veth | awk -F': ' '{print $2}' | cut -d@ -f1)
  log "veths in node netns: $(echo $host_links)"
  [[ $(wc -w <<<"$host_links") -eq 2 ]] || die "expected 2 host-side veths, got: $host_links"
  if [[ $PLUGIN == moat ]]; then
    for l in $host_links; do
      [[ $l =~ ^moat[0-9a-f]{11}$ ]] || die "host veth '$l' is not moat's (moat + 11 hex)"
    done
  fi

  # -- reachability ---------------------------------------------------------
  ping_from() {  # container target
    ctrc task exec --fifo-dir "$T/fifo" --exec-id "ping-$RANDOM" "$1" \
      /bin/ping -c 3 -W 2 "$2"
  }
  ping_from "c1-$tag" "${ip[c2-$tag]}" >"$T/ping12.log" 2>&1 || { cat "$T/ping12.log" >&2; die "c1 cannot reach c2"; }
  log "c1 -> c2 (${ip[c2-$tag]}): $(grep -Eo '[0-9]+ packets received' "$T/ping12.log")"
  ping_from "c2-$tag" "${ip[c1-$tag]}" >"$T/ping21.log" 2>&1 || { cat "$T/ping21.log" >&2; die "c2 cannot reach c1"; }
  log "c2 -> c1 (${ip[c1-$tag]}): $(grep -Eo '[0-9]+ packets received' "$T/ping21.log")"
  in_node ping -c 2 -W 2 "${ip[c1-$tag]}" >"$T/pingn1.log" 2>&1 || { cat "$T/pingn1.log" >&2; die "node cannot reach c1"; }
  log "node -> c1: ok"

  if [[ $PLUGIN == moat ]]; then
    in_node /opt/cni/bin/moat --config /etc/cni/net.d/10-moat.conflist pods >"$T/pods.log" 2>&1 \
      || { cat "$T/pods.log" >&2; die "'moat pods' failed"; }
    log "moat pods:"; sed 's/^/    /' "$T/pods.log" >&2
    for id in "${ids[@]}"; do
      grep -qF "${ip[$id]}" "$T/pods.log" || die "'moat pods' does not list $id (${ip[$id]})"
    done
    # isolation is on: moat's table lives in the node netns and holds both pods
    in_node nft -j list set inet moat pods4 >"$T/pods4.json" 2>"$T/nft.err" \
      || { cat "$T/nft.err" >&2; die "no set pods4 of table inet moat in the node netns"; }
    for id in "${ids[@]}"; do
      grep -qF "\"${ip[$id]}\"" "$T/pods4.json" || die "${ip[$id]} ($id) missing from set inet moat pods4"
    done
    log "table inet moat in node netns: both pods in pods4"
  fi

  # -- teardown through the runtime: ctr issues CNI DEL ---------------------
  for id in "${ids[@]}"; do ctrc task kill -s SIGKILL "$id"; done
  for pid in "${ctr_pids[@]}"; do
    timeout 30 tail --pid="$pid" -f /dev/null || die "ctr run (pid $pid) did not exit after kill"
  done
  ctr_pids=()
  for id in "${ids[@]}"; do
    # ctr's own errors (logrus level=error, or "ctr: ..."); plugin stderr may be mixed in
    if grep -qE 'level=error|^ctr: ' "$T/$id.ctr.log"; then
      cat "$T/$id.ctr.log" >&2
      die "$id: ctr reported an error while tearing down (CNI DEL)"
    fi
  done
  ctrc containers ls -q | grep -q "$tag" && die "containers still listed after ctr run --rm"
  ids=()
  host_links=$(ip -n "$NODE" -o link show type veth | awk -F': ' '{print $2}')
  [[ -z $host_links ]] || die "host-side veths left after DEL: $host_links"
  case $PLUGIN in
    ptp)
      local left
      left=$(find "$T/ipam" -type f -name "$SUBNET_PREFIX.*" 2>/dev/null || true)
      [[ -z $left ]] || die "host-local still holds: $left"
      ;;
    moat)
      in_node /opt/cni/bin/moat --config /etc/cni/net.d/10-moat.conflist pods >"$T/pods.log" 2>&1 \
        || { cat "$T/pods.log" >&2; die "'moat pods' failed after DEL"; }
      for id in c1-$tag c2-$tag; do
        if grep -qF "${ip[$id]}" "$T/pods.log" || grep -qF "$id" "$T/pods.log"; then
          cat "$T/pods.log" >&2; die "moat still lists $id after DEL"
        fi
      done
      in_node nft -j list set inet moat pods4 >"$T/pods4.json" 2>"$T/nft.err" \
        || { cat "$T/nft.err" >&2; die "table inet moat gone from the node netns after DEL"; }
      for id in c1-$tag c2-$tag; do
        if grep -qF "\"${ip[$id]}\"" "$T/pods4.json"; then die "${ip[$id]} ($id) still in set pods4 after DEL"; fi
      done
      ;;
  esac
  [[ -z $(ls -A /var/lib/cni/results 2>/dev/null) ]] || die "libcni result cache not cleared: $(ls /var/lib/cni/results)"
  log "DEL via ctr released everything"
  log "PASS ($PLUGIN)"
}

# Kill every process whose command line or executable mentions our temp dir
# (containerd, its shims, ctr): found by our unique path, killed by pid.
kill_ours() {
  local p pids=()
  for p in /proc/[0-9]*; do
    [[ ${p#/proc/} == "$$" ]] && continue
    if { tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null | grep -qF -- "$T/"; then
      pids+=("${p#/proc/}")
    fi
  done
  ((${#pids[@]})) || return 0
  kill -KILL "${pids[@]}" 2>/dev/null || true
  sleep 0.5
}

# build_image WORKDIR OUT_TAR: an OCI image layout with one uncompressed layer
# holding /bin/busybox and the applet links we use.
build_image() {
  local w=$1 out=$2 busybox arch
  busybox=$(command -v busybox) || die "busybox not found (apt-get install busybox-static)"
  file -L "$busybox" 2>/dev/null | grep -q 'dynamically' && die "$busybox is dynamic: need busybox-static"
  case $(uname -m) in
    x86_64) arch=amd64 ;; aarch64) arch=arm64 ;; *) arch=$(uname -m) ;;
  esac
  mkdir -p "$w/rootfs/bin" "$w/rootfs/etc" "$w/rootfs/proc" "$w/rootfs/sys" "$w/rootfs/dev" \
           "$w/rootfs/tmp" "$w/layout/blobs/sha256"
  cp "$busybox" "$w/rootfs/bin/busybox"
  local a
  for a in sh sleep ip ping ping6 cat ls nc hostname ifconfig route; do
    ln -sf busybox "$w/rootfs/bin/$a"
  done
  echo 'root:x:0:0:root:/:/bin/sh' >"$w/rootfs/etc/passwd"
  echo 'root:x:0:' >"$w/rootfs/etc/group"
  tar --sort=name --numeric-owner --owner=0 --group=0 --mtime=@0 -C "$w/rootfs" -cf "$w/layer.tar" .

  blob() {  # file -> prints "sha256 size", stores it in the layout
    local d s
    d=$(sha256sum "$1" | cut -d' ' -f1); s=$(stat -c %s "$1")
    cp "$1" "$w/layout/blobs/sha256/$d"
    echo "$d $s"
  }
  local layer_d layer_s cfg_d cfg_s man_d man_s
  read -r layer_d layer_s < <(blob "$w/layer.tar")
  cat >"$w/config.json" <<EOF
{"architecture":"$arch","os":"linux","config":{"Env":["PATH=/bin"],"Cmd":["/bin/sh"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:$layer_d"]}}
EOF
  read -r cfg_d cfg_s < <(blob "$w/config.json")
  cat >"$w/manifest.json" <<EOF
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:$cfg_d","size":$cfg_s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:$layer_d","size":$layer_s}]}
EOF
  read -r man_d man_s < <(blob "$w/manifest.json")
  cat >"$w/layout/index.json" <<EOF
{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:$man_d","size":$man_s,"platform":{"architecture":"$arch","os":"linux"},"annotations":{"io.containerd.image.name":"$IMAGE","org.opencontainers.image.ref.name":"test"}}]}
EOF
  echo '{"imageLayoutVersion":"1.0.0"}' >"$w/layout/oci-layout"
  tar --numeric-owner --owner=0 --group=0 -C "$w/layout" -cf "$out" oci-layout index.json blobs
}

# ---------------------------------------------------------------------------
# outer stage: host mount namespace; owns the node netns and the temp dir
# ---------------------------------------------------------------------------
outer() {
  PLUGIN=${MOAT_CTR_PLUGIN:-moat}
  MOAT_BIN=""
  while (($#)); do
    case $1 in
      --plugin) PLUGIN=$2; shift 2 ;;
      --moat-bin) MOAT_BIN=$2; shift 2 ;;
      -h|--help) sed -n '2,30p' "$SCRIPT"; exit 0 ;;
      *) die "unknown argument $1" ;;
    esac
  done
  [[ $(id -u) -eq 0 ]] || die "needs root (network and mount namespaces, containerd)"
  local t
  for t in containerd containerd-shim-runc-v2 runc ctr nsenter unshare ip nft sha256sum tar busybox; do
    command -v "$t" >/dev/null || die "missing '$t' (apt-get install containerd runc busybox-static iproute2 util-linux)"
  done
  if [[ $PLUGIN == moat ]]; then
    if [[ -z $MOAT_BIN ]]; then
      local c
      for c in ${MOAT_BIN_DIR:+"$MOAT_BIN_DIR/moat"} "$REPO/target/debug/moat" "$REPO/target/release/moat"; do
        [[ -x $c ]] && { MOAT_BIN=$c; break; }
      done
    fi
    [[ -n $MOAT_BIN && -x $MOAT_BIN ]] || die "moat binary not found: set MOAT_BIN_DIR or run 'cargo build --workspace --bins'"
    MOAT_BIN=$(readlink -f "$MOAT_BIN")
  fi

  T=$(mktemp -d /tmp/moat-ctr.XXXXXX)
  NODE=moatctr-node-$$

  outer_cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    if [[ -n $inner_pid ]] && kill -0 "$inner_pid" 2>/dev/null; then
      kill -TERM "$inner_pid" 2>/dev/null   # its own trap tears down containers
      timeout 40 tail --pid="$inner_pid" -f /dev/null 2>/dev/null
    fi
    kill_ours
    # our table dies with the node netns; removed explicitly first all the same
    [[ -e /run/netns/$NODE ]] && nsenter --net="/run/netns/$NODE" -- nft delete table inet moat 2>/dev/null
    ip netns delete "$NODE" 2>/dev/null
    if [[ -e /run/netns/$NODE ]]; then log "cleanup: netns $NODE still present"; ((rc)) || rc=1; fi
    local i c
    # runc leaves the per-namespace parent cgroup (/<ns>) behind: remove it
    for c in /sys/fs/cgroup/*/"$NS"/* /sys/fs/cgroup/*/"$NS"; do
      [[ -d $c ]] && rmdir "$c" 2>/dev/null
    done
    for ((i = ${#made_dirs[@]} - 1; i >= 0; i--)); do rmdir "${made_dirs[i]}" 2>/dev/null; done
    if ((rc != 0)) || [[ ${MOAT_CTR_KEEP_LOGS:-} == 1 ]]; then
      local f
      if [[ -s $T/containerd.log ]]; then
        echo "----- containerd.log (errors and warnings, last 30) -----" >&2
        grep -E 'level=(error|warning|fatal)' "$T/containerd.log" | grep -v 'snapshotter\|devmapper' | tail -n 30 >&2
      fi
      for f in "$T"/moat.log "$T"/*.ctr.log; do
        [[ -s $f ]] || continue
        echo "----- ${f#"$T"/} (last 60 lines) -----" >&2
        tail -n 60 "$f" >&2
      done
    fi
    rm -rf "$T"
    exit "$rc"
  }
  trap outer_cleanup EXIT
  trap 'exit 130' INT TERM

  # Mount points for the private bind mounts. Created only where missing and
  # removed again (only if still empty) afterwards.
  local d p
  for d in /etc/cni/net.d /opt/cni/bin /var/lib/cni /run/containerd; do
    local -a chain=()
    p=$d
    while [[ ! -e $p ]]; do chain=("$p" "${chain[@]}"); p=$(dirname "$p"); done
    for p in "${chain[@]}"; do mkdir "$p" && made_dirs+=("$p"); done
  done

  ip netns add "$NODE"
  ip -n "$NODE" link set lo up
  # the node's own address (a real node has one on its uplink): source of node -> pod
  # (on lo: this kernel may lack the dummy driver)
  ip -n "$NODE" addr add "$NODE_ADDR/32" dev lo

  root_table_before=0
  nft list table inet moat >/dev/null 2>&1 && root_table_before=1
  export T NODE PLUGIN MOAT_BIN MOAT_CTR_RUN=$$
  # In the background + wait, so a signal to us is handled at once.
  unshare --mount --propagation private -- "$BASH" "$SCRIPT" --inner &
  inner_pid=$!
  local rc=0
  wait "$inner_pid" || rc=$?
  inner_pid=""
  if ((rc == 0 && !root_table_before)) && nft list table inet moat >/dev/null 2>&1; then
    log "FAIL: a table inet moat appeared in the host's root netns"; rc=1
  fi
  return "$rc"
}

if [[ ${1:-} == --inner ]]; then
  inner
else
  outer "$@"
fi
