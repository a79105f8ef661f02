#!/usr/bin/env bash
# Debian 12 packages Moat's demo, tests and benchmarks use; installs only what is
# missing, so it is cheap to run before every demo or test run.
set -euo pipefail

PACKAGES=(
  nftables iproute2 iputils-ping procps util-linux kmod   # netns, veth, nft, ping, losetup
  e2fsprogs xfsprogs btrfs-progs                           # mkfs / resize for volumes
  containerd runc containernetworking-plugins busybox-static  # a real runtime + reference CNI
  iperf3 hyperfine python3                                 # benchmarks
  tini                                                     # reaps detached DEL children here
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >&2
  apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi
# The Debian containerd unit may start it on install; the tests run their own.
modprobe loop 2>/dev/null || true
