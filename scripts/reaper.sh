# Sourced by the entry scripts (demo, tests, CNI benches) before anything else
# that DELs pods: re-run the caller under a child subreaper. A `moat` DEL
# leaves the kernel's freeing of a veth pair to a detached child, which a
# node's init (systemd) or a subreaping containerd reaps; an init that never
# reaps (some sandboxes' PID 1) would collect one zombie per DEL. tini -s
# adopts and reaps them and passes the exit status through.
# Expects SELF: the caller's absolute path.
if [[ -z ${MOAT_UNDER_REAPER:-} ]] && command -v tini >/dev/null; then
  export MOAT_UNDER_REAPER=1
  exec tini -s -- "${SELF:?}" "$@"
fi
