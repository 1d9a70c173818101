//! SIGTERM / SIGINT as an event the main thread can wait for (self-pipe).
//!
//! No signal is blocked: container processes inherit the signal mask of the thread
//! that forks them, and they must get SIGTERM. Handlers are reset at exec.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, IntoRawFd};
use std::sync::atomic::{AtomicI32, Ordering};

use nix::fcntl::OFlag;
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::unistd::pipe2;

/// Write end of the self-pipe, for the handler.
static PIPE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(_: libc::c_int) {
    let fd = PIPE.load(Ordering::Relaxed);
    // SAFETY: write(2) is async-signal-safe; the byte comes from a live static.
    unsafe { libc::write(fd, [0u8].as_ptr().cast(), 1) };
}

/// The read end: [`Stop::wait`] returns once SIGTERM or SIGINT arrived.
pub struct Stop(File);

impl Stop {
    /// Blocks until a stop signal arrives.
    pub fn wait(mut self) {
        let mut byte = [0u8; 1];
        loop {
            match self.0.read(&mut byte) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                _ => return,
            }
        }
    }
}

/// Installs the handlers.
pub fn install() -> io::Result<Stop> {
    let (read, write) = pipe2(OFlag::O_CLOEXEC).map_err(io::Error::from)?;
    // The write end lives as long as the process.
    PIPE.store(write.into_raw_fd(), Ordering::Relaxed);
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for signal in [Signal::SIGTERM, Signal::SIGINT] {
        // SAFETY: the handler only calls write(2), which is async-signal-safe.
        unsafe { sigaction(signal, &action) }.map_err(io::Error::from)?;
    }
    let stop = File::from(read);
    debug_assert!(stop.as_raw_fd() >= 0);
    Ok(Stop(stop))
}
