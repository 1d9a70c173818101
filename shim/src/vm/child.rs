//! What the VMM's child process does between fork and exec: only
//! async-signal-safe system calls on what the parent prepared.

use std::os::fd::RawFd;

/// Moves this process into the cgroup whose `cgroup.procs` is open as `fd`.
pub(super) fn join_cgroup(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: a two-byte literal; `fd` is held open by the parent's `File`.
    if unsafe { libc::write(fd, b"0\n".as_ptr().cast(), 2) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Writes `adj` (a number and a newline) to this process's `oom_score_adj`.
/// Async-signal-safe: for a child between fork and exec.
pub(super) fn write_own_oom_score_adj(adj: &[u8]) -> std::io::Result<()> {
    // SAFETY: the path is a NUL-terminated literal; open(2) reads only it.
    let fd = unsafe {
        libc::open(
            c"/proc/self/oom_score_adj".as_ptr(),
            libc::O_WRONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `adj` is a live slice of `adj.len()` bytes; `fd` was just opened.
    let written = unsafe { libc::write(fd, adj.as_ptr().cast(), adj.len()) };
    let result = if written < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    };
    // SAFETY: `fd` is ours and closed once.
    unsafe { libc::close(fd) };
    result
}

/// Clears close-on-exec on `fds`, so that the exec'd VMM has them under the
/// numbers its command line names.
pub(super) fn inherit_fds(fds: &[RawFd]) -> std::io::Result<()> {
    for &fd in fds {
        // SAFETY: F_GETFD/F_SETFD on an fd number change only that fd's flags.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        // SAFETY: as above.
        if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
