//! The few operating-system and CPU calls p11gate needs that std does not offer.

use std::os::fd::AsRawFd;

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
