//! The few syscalls the child makes, raw: libc's wrappers set `errno`, which
//! lives in the TLS of the parent thread whose memory the child shares.

use std::os::fd::RawFd;

#[cfg(target_arch = "x86_64")]
unsafe fn syscall(n: libc::c_long, a: [usize; 6]) -> isize {
    let ret: isize;
    // SAFETY: the Linux x86_64 syscall ABI; the caller vouches for the arguments.
    unsafe {
        std::arch::asm!("syscall", inlateout("rax") n as isize => ret,
            in("rdi") a[0], in("rsi") a[1], in("rdx") a[2],
            in("r10") a[3], in("r8") a[4], in("r9") a[5],
            lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    ret
}

#[cfg(target_arch = "aarch64")]
unsafe fn syscall(n: libc::c_long, a: [usize; 6]) -> isize {
    let ret: isize;
    // SAFETY: the Linux aarch64 syscall ABI; the caller vouches for the arguments.
    unsafe {
        std::arch::asm!("svc 0", in("x8") n, inlateout("x0") a[0] as isize => ret,
            in("x1") a[1], in("x2") a[2], in("x3") a[3], in("x4") a[4], in("x5") a[5],
            options(nostack));
    }
    ret
}

/// Elsewhere libc's wrapper, whose errno write is a (harmless) race.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
unsafe fn syscall(n: libc::c_long, a: [usize; 6]) -> isize {
    // SAFETY: the caller vouches for the arguments.
    let r = unsafe { libc::syscall(n, a[0], a[1], a[2], a[3], a[4], a[5]) };
    if r < 0 {
        -(libc::EINTR as isize)
    } else {
        r as isize
    }
}

fn call(n: libc::c_long, a: [usize; 6]) -> isize {
    // SAFETY: every caller below passes plain integers or pointers to live
    // memory of the stated length.
    unsafe { syscall(n, a) }
}

pub fn setsid() {
    call(libc::SYS_setsid, [0; 6]);
}

pub fn close(fd: RawFd) {
    call(libc::SYS_close, [fd as usize, 0, 0, 0, 0, 0]);
}

/// Close `from..=to`; kernels before 5.9 lack close_range.
pub fn close_range(from: u32, to: u32) {
    if call(
        libc::SYS_close_range,
        [from as usize, to as usize, 0, 0, 0, 0],
    ) != 0
    {
        for fd in from..=to.min(4095) {
            close(fd as RawFd);
        }
    }
}

/// Send `request` to the kernel on a new rtnetlink socket; returns when the
/// kernel has processed it (rtnetlink runs in the sender's context).
pub fn send_rtnetlink(request: &[u8]) {
    let fd = call(
        libc::SYS_socket,
        [
            libc::AF_NETLINK as usize,
            (libc::SOCK_RAW | libc::SOCK_CLOEXEC) as usize,
            libc::NETLINK_ROUTE as usize,
            0,
            0,
            0,
        ],
    );
    if fd < 0 {
        return;
    }
    // SAFETY: all-zero is a valid sockaddr_nl; the family is set below.
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    call(
        libc::SYS_sendto,
        [
            fd as usize,
            request.as_ptr() as usize,
            request.len(),
            0,
            &kernel as *const libc::sockaddr_nl as usize,
            std::mem::size_of::<libc::sockaddr_nl>(),
        ],
    );
}

/// Block until the pipe's write end is closed everywhere.
pub fn await_eof(fd: RawFd) {
    let mut byte = 0u8;
    loop {
        let n = call(
            libc::SYS_read,
            [fd as usize, &mut byte as *mut u8 as usize, 1, 0, 0, 0],
        );
        if n == 0 || (n < 0 && n != -(libc::EINTR as isize)) {
            return;
        }
    }
}

/// Wait out an RCU grace period without holding any kernel lock:
/// membarrier(MEMBARRIER_CMD_GLOBAL) is synchronize_rcu() (on one CPU a
/// grace period is immediate anyway); nohz_full kernels refuse it, so sleep
/// 20 ms there (a grace period on our nodes is ~10 ms).
pub fn await_grace_period() {
    const MEMBARRIER_CMD_GLOBAL: usize = 1;
    if call(libc::SYS_membarrier, [MEMBARRIER_CMD_GLOBAL, 0, 0, 0, 0, 0]) == 0 {
        return;
    }
    let pause = libc::timespec {
        tv_sec: 0,
        tv_nsec: 20_000_000,
    };
    call(
        libc::SYS_nanosleep,
        [&pause as *const libc::timespec as usize, 0, 0, 0, 0, 0],
    );
}
