#!/usr/bin/env bash
# CSI benchmark (as root): NodePublish + NodeUnpublish of moat-csi against the
# same bind mount with the mount/umount programs, side by side in one run, and
# CreateVolume + DeleteVolume medians per volume kind. Usage: bench/csi-publish.sh [samples]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p moat-csi -p moat-e2e --bin moat-csi --bin csi-bench
exec target/release/csi-bench "${1:-200}"
