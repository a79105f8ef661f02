//! Kernel waits the runtime should not sit through, carried by a detached
//! child process after the plugin has answered.
//!
//! Two of them: deleting a veth pair ends in an `rcu_barrier()` in the
//! deleting task (15–20 ms, see `netlink::release`), and closing a
//! netfilter netlink socket flushes the namespace's deferred nf_tables
//! clean-up (an RCU grace period after any recent delete, ~10 ms, held under
//! the nf_tables commit lock). The child is made with `clone(CLONE_VM)`: no
//! page tables are copied (a fork cost ~150 µs here, this ~30 µs), so it shares
//! our memory and must touch only the region made for it, and it makes raw
//! syscalls only, since libc's wrappers would write `errno` in our thread's TLS.

use std::io;
use std::os::fd::RawFd;

use serde::Deserialize;

mod sys;

/// Whether the kernel's clean-up waits are carried by detached children
/// (the config's `kernelCleanup`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Cleanup {
    /// DEL returns once the veth pair is unlisted and the plugin does not
    /// close its nf_tables socket itself; children finish both.
    #[default]
    Background,
    /// The plugin waits for both itself and leaves no process behind.
    Wait,
}

/// Descriptors a child can keep; the callers need one or two.
const MAX_KEEP: usize = 4;
/// The largest rtnetlink request a child can send (a DELLINK is 32 bytes).
const MAX_REQUEST: usize = 256;
/// The child's region: its job, then its stack.
const REGION: usize = 64 * 1024;

/// What the child does, in order: send `request` on a fresh rtnetlink socket
/// (returning when the kernel is done with it), wait until the plugin has
/// exited, wait one more RCU grace period, close `keep`.
#[repr(C)]
struct Job {
    keep: [RawFd; MAX_KEEP],
    keep_len: usize,
    parent_gone: RawFd,
    request: [u8; MAX_REQUEST],
    request_len: usize,
}

/// Hand copies of `fds` to a detached child that closes them once this
/// process has exited and one grace period has passed.
pub fn hand_off(fds: &[RawFd]) -> io::Result<()> {
    spawn(fds, &[], true)
}

/// Send one rtnetlink request from a detached child, so that the kernel's
/// work after answering it (done in the sender's context) is not ours.
pub fn send_detached(request: &[u8]) -> io::Result<()> {
    spawn(&[], request, false)
}

fn spawn(fds: &[RawFd], request: &[u8], await_exit: bool) -> io::Result<()> {
    if fds.len() > MAX_KEEP || request.len() > MAX_REQUEST {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "job too large"));
    }
    let pipe = if await_exit { Some(pipe()?) } else { None };
    // SAFETY: a fresh private anonymous mapping, never unmapped: the child
    // runs on it after we have exited.
    let region = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            REGION,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
            -1,
            0,
        )
    };
    if region == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let mut job = Job {
        keep: [-1; MAX_KEEP],
        keep_len: fds.len(),
        parent_gone: pipe.map_or(-1, |(r, _)| r),
        request: [0; MAX_REQUEST],
        request_len: request.len(),
    };
    job.keep[..fds.len()].copy_from_slice(fds);
    job.request[..request.len()].copy_from_slice(request);
    let job_ptr = region.cast::<Job>();
    // SAFETY: the region is large enough and suitably aligned (page-aligned);
    // the stack starts at its end, 16-byte aligned, far above the job.
    let pid = unsafe {
        job_ptr.write(job);
        let stack_top = region.cast::<u8>().add(REGION);
        libc::clone(
            child_main,
            stack_top.cast(),
            libc::CLONE_VM | libc::SIGCHLD,
            job_ptr.cast(),
        )
    };
    if let Some((read_end, _write_end)) = pipe {
        // The write end stays open, unowned, until we exit: that EOF is the
        // child's signal. Our read end is not needed.
        // SAFETY: the read end is ours; the child has its own copy.
        unsafe { libc::close(read_end) };
    }
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn pipe() -> io::Result<(RawFd, RawFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((fds[0], fds[1]))
}

/// The child. Touches only its job and its stack, through raw syscalls.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the job written before clone, never touched again by
    // the parent and never unmapped.
    let job = unsafe { &*arg.cast::<Job>() };
    let keep_len = job.keep_len.min(MAX_KEEP);
    let mut keep = [-1 as RawFd; MAX_KEEP + 1];
    keep[..keep_len].copy_from_slice(&job.keep[..keep_len]);
    keep[keep_len] = job.parent_gone;
    let keep = &mut keep[..=keep_len];
    keep.sort_unstable();
    sys::setsid();
    // Above all stdout, which the runtime reads to EOF, and the state lock.
    for_each_gap(keep, sys::close_range);
    let request_len = job.request_len.min(MAX_REQUEST);
    if request_len > 0 {
        sys::send_rtnetlink(&job.request[..request_len]);
    }
    if job.parent_gone >= 0 {
        sys::await_eof(job.parent_gone);
        // Closing while a deferred clean-up is still pending would hold the
        // nf_tables commit lock until it finishes, stalling every ADD in the
        // meantime. Ours was queued before the parent exited.
        sys::await_grace_period();
    }
    for &fd in keep.iter() {
        if fd >= 0 {
            sys::close(fd);
        }
    }
    0
}

/// Call `f(from, to)` for each inclusive descriptor range around the sorted
/// `keep` (negative entries ignored), up to the largest descriptor number.
/// Allocates nothing: it runs in the child.
fn for_each_gap(keep: &[RawFd], mut f: impl FnMut(u32, u32)) {
    let mut from: u32 = 0;
    for &k in keep.iter().filter(|k| **k >= 0) {
        let k = k as u32;
        if k > from {
            f(from, k - 1);
        }
        from = k + 1;
    }
    f(from, u32::MAX);
}

#[cfg(test)]
mod tests {
    use super::{for_each_gap, Cleanup};

    #[test]
    fn cleanup_spelling() {
        let m: Cleanup = serde_json::from_str("\"wait\"").unwrap();
        assert_eq!(m, Cleanup::Wait);
        assert_eq!(Cleanup::default(), Cleanup::Background);
        assert!(serde_json::from_str::<Cleanup>("\"later\"").is_err());
    }

    fn gaps(keep: &[i32]) -> Vec<(u32, u32)> {
        let mut out = Vec::new();
        for_each_gap(keep, |a, b| out.push((a, b)));
        out
    }

    #[test]
    fn closes_everything_around_the_kept_descriptors() {
        assert_eq!(gaps(&[]), [(0, u32::MAX)]);
        assert_eq!(gaps(&[-1, 5]), [(0, 4), (6, u32::MAX)]);
        assert_eq!(gaps(&[0, 1, 7]), [(2, 6), (8, u32::MAX)]);
        assert_eq!(gaps(&[3, 4]), [(0, 2), (5, u32::MAX)]);
    }
}
