//! SIGTERM and SIGINT as a readable file descriptor, so that the event loop
//! handles them like any other event.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};

/// A signalfd for SIGTERM and SIGINT, which are blocked in every thread the
/// caller starts afterwards.
pub struct StopSignals(File);

impl StopSignals {
    /// Blocks SIGTERM and SIGINT in the calling thread and opens a signalfd
    /// for them. Call it before spawning threads, which inherit the mask.
    pub fn new() -> io::Result<Self> {
        // SAFETY: sigset_t is plain data; sigemptyset initialises it.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid sigset_t; the calls only modify it.
        unsafe {
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::sigaddset(&mut set, libc::SIGINT);
            #[cfg(feature = "seccomp-trigger")]
            libc::sigaddset(&mut set, libc::SIGUSR2);
        }
        // SAFETY: `set` is initialised; a null old-set pointer is allowed.
        let ret = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if ret != 0 {
            return Err(io::Error::from_raw_os_error(ret));
        }
        // SAFETY: `set` is initialised; -1 asks for a new descriptor.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        Ok(Self(unsafe { File::from_raw_fd(fd) }))
    }

    /// Reads one pending signal's number, if any.
    pub(crate) fn read(&mut self) -> io::Result<Option<u32>> {
        let mut info = [0u8; std::mem::size_of::<libc::signalfd_siginfo>()];
        match self.0.read(&mut info) {
            Ok(n) if n == info.len() => Ok(Some(u32::from_ne_bytes([
                info[0], info[1], info[2], info[3],
            ]))),
            Ok(_) => Ok(None),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(err) => Err(err),
        }
    }
}

impl AsRawFd for StopSignals {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}
