//! Why a VM ended, and how the VMM reports it.

use crate::seccomp::SeccompError;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use vmm_sys_util::eventfd::EventFd;

/// Why the VM ended.
#[derive(Debug)]
pub enum VmExit {
    /// The guest powered off or rebooted (i8042 reset or a KVM system event).
    PoweredOff,
    /// The VMM was told to stop it (SIGTERM, SIGINT or the Shutdown API call).
    Stopped,
    /// The guest kernel panicked; the console line says why.
    Panicked(String),
    /// The guest triple-faulted.
    TripleFault,
    /// A vCPU could not go on.
    Crashed(Crash),
}

/// Why a vCPU could not go on.
#[derive(Debug, thiserror::Error)]
pub enum Crash {
    /// The vCPU thread cannot install its seccomp filter.
    #[error(transparent)]
    Confine(#[from] SeccompError),
    /// KVM_RUN failed with an error other than an interruption.
    #[error("vCPU {index}: KVM_RUN failed: {source}")]
    Run {
        index: u8,
        source: kvm_ioctls::Error,
    },
    /// The guest said it crashed (a KVM crash system event).
    #[error("the guest reported a crash")]
    GuestReported,
    /// The guest halted a CPU with nothing left to wake it.
    #[error("the guest halted its CPU for good")]
    Halted,
    /// KVM could not enter the guest.
    #[error("KVM could not enter the guest on CPU {cpu} (hardware reason {reason:#x})")]
    FailEntry { reason: u64, cpu: u32 },
    /// KVM failed to emulate an instruction.
    #[error("KVM internal error (emulation failure)")]
    Internal,
    /// An exit the VMM does not handle, as KVM's wrapper shows it.
    #[error("unexpected VM exit {0}")]
    Unexpected(String),
}

impl VmExit {
    /// Process exit status: 0 for an orderly end, 1 for a failed guest.
    pub fn exit_code(&self) -> u8 {
        match self {
            VmExit::PoweredOff | VmExit::Stopped => 0,
            VmExit::Panicked(_) | VmExit::TripleFault | VmExit::Crashed(_) => 1,
        }
    }
}

impl std::fmt::Display for VmExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VmExit::PoweredOff => write!(f, "the guest powered off"),
            VmExit::Stopped => write!(f, "the VM was stopped on request"),
            VmExit::Panicked(line) => write!(f, "the guest kernel panicked: {line}"),
            VmExit::TripleFault => write!(f, "the guest triple-faulted (KVM_EXIT_SHUTDOWN)"),
            VmExit::Crashed(why) => write!(f, "the VM crashed: {why}"),
        }
    }
}

/// The first reported exit, with an eventfd that wakes the event loop.
pub struct ExitReporter {
    exit: Mutex<Option<VmExit>>,
    reported: AtomicBool,
    /// Readable once an exit was reported.
    pub event: EventFd,
}

impl ExitReporter {
    /// A reporter with a fresh eventfd.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            exit: Mutex::new(None),
            reported: AtomicBool::new(false),
            event: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
        })
    }

    /// Records `exit` unless an earlier one was recorded, and wakes the loop.
    pub fn report(&self, exit: VmExit) {
        let mut slot = self.exit.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(exit);
        }
        self.reported.store(true, Ordering::Release);
        if let Err(err) = self.event.write(1) {
            // The guest drives exits (a reset, a triple fault) as often as it likes.
            protocol::log_limited!(log::Level::Error, "cannot wake the event loop: {err}");
        }
    }

    /// Whether the VM must end: vCPUs stop entering the guest once it is.
    pub fn is_reported(&self) -> bool {
        self.reported.load(Ordering::Acquire)
    }

    /// The recorded exit, if any.
    pub fn take(&self) -> Option<VmExit> {
        self.exit.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_report_wins_and_wakes() {
        let reporter = ExitReporter::new().unwrap();
        assert!(!reporter.is_reported());
        reporter.report(VmExit::TripleFault);
        assert!(reporter.is_reported());
        reporter.report(VmExit::PoweredOff);
        assert_eq!(reporter.event.read().unwrap(), 2);
        assert!(matches!(reporter.take(), Some(VmExit::TripleFault)));
        assert_eq!(VmExit::TripleFault.exit_code(), 1);
        assert_eq!(VmExit::Stopped.exit_code(), 0);
    }
}
