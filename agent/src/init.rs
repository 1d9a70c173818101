//! Duties of the guest's init process: pseudo file systems and power-off.

use nix::mount::{mount, MsFlags};
use nix::sys::reboot::{reboot, RebootMode};
use std::fs;
use std::io;

/// Errors of the init duties.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// Creating a mount point failed.
    #[error("cannot create mount point {path}: {source}")]
    MountPoint {
        path: &'static str,
        source: io::Error,
    },
    /// A mount(2) call failed.
    #[error("cannot mount {fstype} on {target}: {source}")]
    Mount {
        fstype: &'static str,
        target: &'static str,
        source: nix::Error,
    },
    /// The debug port cannot be reached.
    #[error("cannot signal the boot timer: {0}")]
    BootTimer(io::Error),
    /// The reboot(2) call that ends the VM failed.
    #[error("cannot power off the guest: {0}")]
    PowerOff(nix::Error),
}

/// Mounts `/proc`, the one file system the agent needs at this stage.
pub fn mount_pseudo_filesystems() -> Result<(), InitError> {
    mount_fs(
        "proc",
        "/proc",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
    )
}

fn mount_fs(fstype: &'static str, target: &'static str, flags: MsFlags) -> Result<(), InitError> {
    fs::create_dir_all(target).map_err(|source| InitError::MountPoint {
        path: target,
        source,
    })?;
    mount(Some(fstype), target, Some(fstype), flags, None::<&str>).map_err(|source| {
        InitError::Mount {
            fstype,
            target,
            source,
        }
    })
}

/// Tells the VMM's boot timer that init runs: one byte to the debug port.
/// Best effort: outside runv-vmm (QEMU, say) the write is simply ignored.
pub fn signal_boot_timer() -> Result<(), InitError> {
    let port = protocol::BOOT_TIMER_PORT;
    // SAFETY: ioperm only changes this process's I/O permission bitmap.
    if unsafe { libc::ioperm(libc::c_ulong::from(port), 1, 1) } != 0 {
        return Err(InitError::BootTimer(io::Error::last_os_error()));
    }
    // SAFETY: ioperm above granted access to exactly this port; an OUT to the
    // debug port has no effect on this process's memory.
    unsafe {
        std::arch::asm!(
            "out dx, al",
            in("dx") port,
            in("al") protocol::BOOT_TIMER_INIT_STARTED,
            options(nomem, nostack, preserves_flags)
        );
    }
    Ok(())
}

/// Ends the VM. The guest kernel runs with `reboot=k`, so a restart is a reset
/// through the i8042 controller (or a triple fault), which the VMM treats as the
/// guest's exit: this works without ACPI, as in Firecracker.
pub fn power_off() -> InitError {
    match reboot(RebootMode::RB_AUTOBOOT) {
        Ok(never) => match never {},
        Err(err) => InitError::PowerOff(err),
    }
}
