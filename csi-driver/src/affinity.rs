//! The async thread and its blocking workers share one CPU.
//!
//! Every RPC that mounts hands its work from the async thread to a blocking
//! worker and the answer back. Across CPUs each hand-off is a wake-up of an
//! idle CPU (37 µs there, 12 µs back, measured on a 2-vCPU VM); on one CPU it
//! is a switch (12 µs and 9 µs): ~80 µs of a 0.7 ms publish + unpublish. The
//! driver's own work is light (metadata and mount calls), so one CPU is
//! plenty; the programs it runs (mkfs, losetup) get the original CPU set back.

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::OnceLock;

use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;

/// The CPU set the process started with, for child programs.
static STARTED_WITH: OnceLock<CpuSet> = OnceLock::new();

#[derive(Debug, thiserror::Error)]
pub enum AffinityError {
    #[error("cannot read or set the CPU affinity")]
    Sched(#[source] nix::Error),
}

/// Pin the calling thread (and so every thread it starts later) to the CPU it
/// runs on; returns that CPU. Call before the runtime starts its threads.
pub fn pin_to_current_cpu() -> Result<usize, AffinityError> {
    let here = Pid::from_raw(0);
    let original = sched_getaffinity(here).map_err(AffinityError::Sched)?;
    // SAFETY: sched_getcpu reads the current CPU number; no memory is involved.
    let cpu = unsafe { nix::libc::sched_getcpu() };
    let cpu = usize::try_from(cpu).map_err(|_| AffinityError::Sched(nix::Error::last()))?;
    let mut one = CpuSet::new();
    one.set(cpu).map_err(AffinityError::Sched)?;
    sched_setaffinity(here, &one).map_err(AffinityError::Sched)?;
    let _ = STARTED_WITH.set(original);
    Ok(cpu)
}

/// A command for a program the driver runs, on the CPUs the driver started with.
pub fn command(program: &str) -> Command {
    let mut cmd = Command::new(program);
    if let Some(set) = STARTED_WITH.get().copied() {
        // SAFETY: between fork and exec only sched_setaffinity runs, a plain
        // syscall that allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                sched_setaffinity(Pid::from_raw(0), &set).map_err(std::io::Error::from)
            });
        }
    }
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(status: &str) -> String {
        status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    }

    /// The pinned thread runs on one CPU; a program it starts has the
    /// original set again.
    #[test]
    fn a_pinned_thread_starts_programs_with_the_original_cpus() {
        let before = allowed(&std::fs::read_to_string("/proc/thread-self/status").unwrap());
        std::thread::spawn(move || {
            let cpu = pin_to_current_cpu().unwrap();
            let mine = allowed(&std::fs::read_to_string("/proc/thread-self/status").unwrap());
            assert_eq!(mine, cpu.to_string());
            let out = command("grep")
                .args(["Cpus_allowed_list", "/proc/self/status"])
                .output()
                .unwrap();
            assert_eq!(allowed(&String::from_utf8_lossy(&out.stdout)), before);
        })
        .join()
        .unwrap();
    }
}
