# Sourced by the CNI benchmarks: logging, the root check and finding the plugins.
# Expects REPO and REF_DIR set; sets MOAT_BIN (to an absolute path) unless empty
# and not wanted.

SELF=$(readlink -f "$0")
# shellcheck source=scripts/reaper.sh
source "$REPO/scripts/reaper.sh"

log() { printf '[bench] %s\n' "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }

# need_root_and_tools TOOL... : root, the named programs and the reference plugins.
need_root_and_tools() {
  [[ $(id -u) -eq 0 ]] || die "needs root (network namespaces)"
  local t p
  for t in "$@"; do command -v "$t" >/dev/null || die "missing $t"; done
  for p in ptp host-local; do
    [[ -x $REF_DIR/$p ]] || die "$REF_DIR/$p missing (apt-get install containernetworking-plugins)"
  done
}

# find_moat [HINT]: --moat-bin, then $MOAT_BIN_DIR/moat, the shipped (static)
# build of scripts/build-plugin.sh, target/release, target/debug.
find_moat() {
  local c host
  host=$(rustc -vV 2>/dev/null | sed -n 's/^host: //p')
  if [[ -z $MOAT_BIN ]]; then
    for c in ${MOAT_BIN_DIR:+"$MOAT_BIN_DIR/moat"} ${host:+"$REPO/target/$host/release/moat"} \
             "$REPO/target/release/moat" "$REPO/target/debug/moat"; do
      [[ -x $c ]] && { MOAT_BIN=$c; break; }
    done
  fi
  [[ -n $MOAT_BIN && -x $MOAT_BIN ]] || die "moat binary not found (--moat-bin, MOAT_BIN_DIR, or scripts/build-plugin.sh)${1:+; $1}"
  MOAT_BIN=$(readlink -f "$MOAT_BIN")
  if [[ -x $REPO/target/release/moat && $REPO/target/release/moat -nt $MOAT_BIN ]]; then
    log "note: target/release/moat is newer than $MOAT_BIN; rerun scripts/build-plugin.sh to measure current code"
  fi
  [[ $MOAT_BIN == */release/* ]] || log "note: $MOAT_BIN is not a release build"
  log "moat: $MOAT_BIN ($(file -b "$MOAT_BIN" 2>/dev/null | grep -o 'static-pie linked\|statically linked\|dynamically linked' || echo '?'))"
}
