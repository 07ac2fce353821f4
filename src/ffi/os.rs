//! The few operating-system calls the audit writer needs that std does not offer.

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
