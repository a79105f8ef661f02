//! Releasing descriptors after the runtime has stopped waiting for us.
//!
//! Closing a netfilter netlink socket flushes the namespace's deferred
//! nf_tables transaction cleanup, and that cleanup starts with an RCU grace
//! period whenever a recent commit removed something (our DEL, or another
//! process's moments ago): up to ~10 ms. Our last close happens at exit at the
//! latest, and the runtime waits for our exit. So a forked child keeps a copy
//! of such descriptors until we are gone (its end of a pipe reads EOF then)
//! and pays the wait; our own close is then not the last one and is cheap.

use std::io;
use std::os::fd::RawFd;

/// Hand copies of `fds` to a detached child that closes them once this
/// process has exited.
pub fn hand_off(fds: &[RawFd]) -> io::Result<()> {
    let mut pipe = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let [read_end, write_end] = pipe;
    let mut keep: Vec<RawFd> = fds.iter().copied().chain([read_end]).collect();
    keep.sort_unstable();
    // SAFETY: the child only makes async-signal-safe calls on memory
    // prepared before the fork.
    match unsafe { libc::fork() } {
        -1 => {
            let e = io::Error::last_os_error();
            // SAFETY: both ends are ours and unused.
            unsafe {
                libc::close(read_end);
                libc::close(write_end);
            }
            Err(e)
        }
        0 => unsafe { linger(&keep, read_end) },
        _ => {
            // The write end stays open, unowned, until we exit: that EOF is
            // the child's signal.
            // SAFETY: the read end is ours and no longer needed here.
            unsafe { libc::close(read_end) };
            Ok(())
        }
    }
}

/// # Safety
/// Only in a freshly forked child: it never returns.
unsafe fn linger(keep: &[RawFd], parent_gone: RawFd) -> ! {
    // SAFETY: plain syscalls on descriptors this child owns.
    unsafe {
        libc::setsid();
        close_all_but(keep);
        let mut byte = 0u8;
        loop {
            let n = libc::read(parent_gone, (&mut byte as *mut u8).cast(), 1);
            if n == 0 || (n < 0 && *libc::__errno_location() != libc::EINTR) {
                break;
            }
        }
        // Closing while a deferred cleanup is still pending would hold the
        // namespace's nf_tables commit lock until it finishes, stalling every
        // ADD in the meantime. Ours was queued before the parent exited, so
        // after one more grace period it is done.
        await_grace_period();
        for &fd in keep {
            libc::close(fd);
        }
        libc::_exit(0)
    }
}

/// Wait out an RCU grace period without holding any kernel lock:
/// membarrier(MEMBARRIER_CMD_GLOBAL) is synchronize_rcu() (on one CPU a
/// grace period is immediate anyway); nohz_full kernels refuse it, so sleep
/// 20 ms there (a grace period on our nodes is ~10 ms).
unsafe fn await_grace_period() {
    const MEMBARRIER_CMD_GLOBAL: libc::c_int = 1;
    // SAFETY: membarrier and nanosleep take no pointers we do not own.
    unsafe {
        if libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0u32) == 0 {
            return;
        }
        let pause = libc::timespec {
            tv_sec: 0,
            tv_nsec: 20_000_000,
        };
        libc::nanosleep(&pause, std::ptr::null_mut());
    }
}

/// Close every descriptor except the sorted `keep`: stdout above all, since
/// the runtime reads it to EOF, and the state lock.
///
/// # Safety
/// Closes descriptors other code may own; only for a forked child.
pub unsafe fn close_all_but(keep: &[RawFd]) {
    // SAFETY: see the function's contract.
    for_each_gap(keep, |from, to| unsafe { close_range(from, to) });
}

/// Call `f(from, to)` for each inclusive descriptor range around the sorted
/// `keep`, up to the largest descriptor number. Allocates nothing: it runs
/// in a forked child.
fn for_each_gap(keep: &[RawFd], mut f: impl FnMut(u32, u32)) {
    let mut from: u32 = 0;
    for &k in keep {
        let k = k as u32;
        if k > from {
            f(from, k - 1);
        }
        from = k + 1;
    }
    f(from, u32::MAX);
}

/// close_range(2), with a loop for kernels older than 5.9.
unsafe fn close_range(from: u32, to: u32) {
    // SAFETY: the caller owns these descriptors.
    unsafe {
        if libc::syscall(libc::SYS_close_range, from, to, 0u32) != 0 {
            for fd in from..=to.min(4095) {
                libc::close(fd as libc::c_int);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::for_each_gap;

    fn gaps(keep: &[i32]) -> Vec<(u32, u32)> {
        let mut out = Vec::new();
        for_each_gap(keep, |a, b| out.push((a, b)));
        out
    }

    #[test]
    fn closes_everything_around_the_kept_descriptors() {
        assert_eq!(gaps(&[]), [(0, u32::MAX)]);
        assert_eq!(gaps(&[5]), [(0, 4), (6, u32::MAX)]);
        assert_eq!(gaps(&[0, 1, 7]), [(2, 6), (8, u32::MAX)]);
        assert_eq!(gaps(&[3, 4]), [(0, 2), (5, u32::MAX)]);
    }
}
