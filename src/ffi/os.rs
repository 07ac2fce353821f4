//! The few operating-system and CPU calls p11gate needs that std does not offer: for the audit
//! writer (`SIOCOUTQ`, `sendmmsg`, `atexit`), for the upstream mutexes and the fork gate
//! (futexes, `membarrier`), and for metrics' timing (`rdtsc`).

use std::os::fd::AsRawFd;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

/// Bytes this socket has sent that the receiver has not read yet (`SIOCOUTQ`). For a Unix
/// datagram socket the kernel charges each unread datagram to its sender, so this says how
/// many recently sent records a syslog daemon would lose if it went away now.
pub fn unread_bytes(socket: &impl AsRawFd) -> std::io::Result<usize> {
    let mut value: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (== TIOCOUTQ) writes one c_int through the pointer, which is valid and
    // writable for the duration of the call; the descriptor is open (borrowed from `socket`).
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::TIOCOUTQ, &mut value) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(value.max(0) as usize)
}

/// Runs `f` when the process exits normally (`exit()` or returning from `main`).
pub fn at_exit(f: extern "C" fn()) -> bool {
    // SAFETY: atexit stores the function pointer; `f` is a plain extern "C" function that lives
    // as long as the library, which is linked -z nodelete and so is never unmapped.
    unsafe { libc::atexit(f) == 0 }
}

/// Sends several datagrams on a connected socket with one system call (`sendmmsg`); returns how
/// many were sent (the first ones). Batching lets a syslog daemon be woken once per batch rather
/// than once per record.
pub fn send_many(socket: &impl AsRawFd, datagrams: &[Vec<u8>]) -> std::io::Result<usize> {
    if datagrams.is_empty() {
        return Ok(0);
    }
    let mut iovecs: Vec<libc::iovec> = datagrams
        .iter()
        .map(|d| libc::iovec {
            iov_base: d.as_ptr() as *mut libc::c_void,
            iov_len: d.len(),
        })
        .collect();
    let mut headers: Vec<libc::mmsghdr> = iovecs
        .iter_mut()
        .map(|iov| {
            // SAFETY: msghdr is a plain C struct for which all-zero is a valid value (no name,
            // no control data); only the iovec fields are set below.
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_iov = iov;
            h.msg_hdr.msg_iovlen = 1;
            h
        })
        .collect();
    let count = headers.len().min(libc::c_uint::MAX as usize) as libc::c_uint;
    // SAFETY: `headers` holds `count` initialised mmsghdr entries, each pointing to one iovec in
    // `iovecs`, which points into a datagram of `datagrams`; all of them outlive the call, and
    // the kernel only reads the buffers (and writes msg_len into the headers, which we own).
    let sent = unsafe { libc::sendmmsg(socket.as_raw_fd(), headers.as_mut_ptr(), count, 0) };
    if sent < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(sent as usize)
}

/// Sleeps while `word` holds `expected` (or until woken, or `timeout` passes; spurious wake-ups
/// are possible: callers re-check their condition).
pub fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs().min(libc::time_t::MAX as u64) as libc::time_t,
        tv_nsec: t.subsec_nanos() as libc::c_long,
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: FUTEX_WAIT_PRIVATE reads the 32-bit word at a valid, live address and sleeps only
    // while it still holds `expected`; the timeout is NULL or a timespec that outlives the call.
    // No other memory is touched.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            ts_ptr,
        );
    }
}

/// Wakes up to `count` threads sleeping in [`futex_wait`] on `word`.
pub fn futex_wake(word: &AtomicU32, count: i32) {
    // SAFETY: FUTEX_WAKE_PRIVATE on a valid, live address wakes at most `count` waiters and
    // touches no memory.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            count,
        );
    }
}

/// `MEMBARRIER_CMD_PRIVATE_EXPEDITED` and its registration, from `<linux/membarrier.h>`.
const MEMBARRIER_CMD_PRIVATE_EXPEDITED: libc::c_int = 1 << 3;
const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_int = 1 << 4;

/// Registers this process for [`membarrier`] (Linux 4.14 and later); `false` when the kernel
/// (or a seccomp filter) does not offer it. The registration is inherited by `fork()`.
pub fn membarrier_register() -> bool {
    // SAFETY: membarrier takes two integers and a CPU id (unused here) and touches no memory.
    unsafe {
        libc::syscall(
            libc::SYS_membarrier,
            MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED,
            0,
            0,
        ) == 0
    }
}

/// Makes every other running thread of this process execute a full memory barrier before this
/// returns: the expensive half of an asymmetric barrier whose cheap half is a compiler fence.
/// Needs [`membarrier_register`] first; `false` if it failed.
pub fn membarrier() -> bool {
    // SAFETY: as in membarrier_register.
    unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) == 0 }
}

/// Registers the three `fork()` handlers (once per call: callers register once per process).
pub fn at_fork(prepare: extern "C" fn(), parent: extern "C" fn(), child: extern "C" fn()) -> i32 {
    // SAFETY: pthread_atfork stores the three function pointers; they are plain extern "C"
    // functions of this library, which is linked -z nodelete and so is never unmapped.
    unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) }
}

/// The CPU's time-stamp counter (`rdtsc`): a few nanoseconds to read, where `clock_gettime`
/// takes about thirty. Metrics time calls with it when [`tsc_readable`] and the kernel's own
/// clock source is the TSC (so it is invariant and synchronised across CPUs).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub fn cpu_ticks() -> u64 {
    // SAFETY: rdtsc reads a counter into registers: no memory is touched and every x86_64 CPU
    // has it. It faults only when the process disabled it with PR_SET_TSC, which callers rule
    // out first with tsc_readable().
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Whether this process may read the time-stamp counter (nobody set `PR_TSC_SIGSEGV`).
#[cfg(target_arch = "x86_64")]
pub fn tsc_readable() -> bool {
    let mut state: libc::c_int = 0;
    // SAFETY: PR_GET_TSC writes one c_int through the pointer, which is valid and writable for
    // the duration of the call.
    let rc = unsafe { libc::prctl(libc::PR_GET_TSC, &mut state as *mut libc::c_int) };
    rc == 0 && state == libc::PR_TSC_ENABLE
}
