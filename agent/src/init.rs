//! Duties of the guest's init process: pseudo file systems, the shared
//! directory, loopback, free page reporting and power-off.

use nix::mount::{mount, MsFlags};
use nix::sys::reboot::{reboot, RebootMode};
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

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
    /// Moving the root off the initramfs failed.
    #[error("cannot move the root off the initramfs ({step}): {source}")]
    Reroot {
        step: &'static str,
        source: io::Error,
    },
    /// The loopback interface cannot be brought up.
    #[error("cannot bring up lo: {step}: {source}")]
    Loopback {
        step: &'static str,
        source: io::Error,
    },
    /// The debug port cannot be reached.
    #[error("cannot signal the boot timer: {0}")]
    BootTimer(io::Error),
    /// The kernel refused the free page reporting order.
    #[error("cannot set {PAGE_REPORTING_ORDER}: {0}")]
    PageReportingOrder(io::Error),
    /// The reboot(2) call that ends the VM failed.
    #[error("cannot power off the guest: {0}")]
    PowerOff(nix::Error),
}

/// Argument init re-executes itself with once its root is a tmpfs.
pub const REROOTED_ARG: &str = "--runv-rerooted";

/// Moves init from the initramfs to a tmpfs root and re-executes it there
/// (as switch_root does): pivot_root(2), which containers are made with, is
/// refused while the root is the initramfs. Returns only on failure.
pub fn leave_initramfs() -> InitError {
    let fail = |step: &'static str| move |err: io::Error| InitError::Reroot { step, source: err };
    let result: Result<std::convert::Infallible, InitError> = (|| {
        fs::create_dir_all("/newroot").map_err(fail("create /newroot"))?;
        mount(
            Some("tmpfs"),
            "/newroot",
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0755"),
        )
        .map_err(|e| fail("mount a tmpfs on /newroot")(e.into()))?;
        fs::copy("/init", "/newroot/init").map_err(fail("copy /init"))?;
        // The initramfs copy is not needed any more: free its memory.
        fs::remove_file("/init").map_err(fail("remove the initramfs /init"))?;
        std::env::set_current_dir("/newroot").map_err(fail("enter /newroot"))?;
        mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
            .map_err(|e| fail("move /newroot onto /")(e.into()))?;
        nix::unistd::chroot(".").map_err(|e| fail("chroot into the new root")(e.into()))?;
        std::env::set_current_dir("/").map_err(fail("enter the new root"))?;
        let err = std::os::unix::process::CommandExt::exec(
            std::process::Command::new("/init").arg(REROOTED_ARG),
        );
        Err(fail("re-execute /init")(err))
    })();
    match result {
        Ok(never) => match never {},
        Err(err) => err,
    }
}

/// Mounts the pseudo file systems containers and the agent rely on: /proc,
/// /sys, /dev (devtmpfs, devpts, shm, mqueue), /run and the cgroup v2 tree.
pub fn mount_pseudo_filesystems() -> Result<(), InitError> {
    let secure = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let table: [(
        &'static str,
        &'static str,
        &'static str,
        MsFlags,
        Option<&str>,
    ); 8] = [
        ("proc", "proc", "/proc", secure, None),
        ("sysfs", "sysfs", "/sys", secure, None),
        (
            "devtmpfs",
            "dev",
            "/dev",
            MsFlags::MS_NOSUID,
            Some("mode=0755"),
        ),
        (
            "devpts",
            "devpts",
            "/dev/pts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("newinstance,ptmxmode=0666,mode=0620"),
        ),
        ("tmpfs", "shm", "/dev/shm", secure, Some("mode=1777")),
        ("mqueue", "mqueue", "/dev/mqueue", secure, None),
        (
            "tmpfs",
            "run",
            "/run",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0755"),
        ),
        ("cgroup2", "cgroup2", "/sys/fs/cgroup", secure, None),
    ];
    for (fstype, source, target, flags, data) in table {
        mount_fs(fstype, source, target, flags, data)?;
    }
    Ok(())
}

/// Mounts the virtio-fs share `tag` on `target`.
pub fn mount_shared_dir(tag: &'static str, target: &'static str) -> Result<(), InitError> {
    mount_fs("virtiofs", tag, target, MsFlags::MS_NODEV, None)
}

fn mount_fs(
    fstype: &'static str,
    source: &'static str,
    target: &'static str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), InitError> {
    fs::create_dir_all(target).map_err(|source| InitError::MountPoint {
        path: target,
        source,
    })?;
    mount(Some(source), target, Some(fstype), flags, data).map_err(|source| InitError::Mount {
        fstype,
        target,
        source,
    })
}

/// Brings up the loopback interface.
pub fn bring_up_loopback() -> Result<(), InitError> {
    let fail = |step| InitError::Loopback {
        step,
        source: io::Error::last_os_error(),
    };
    // SAFETY: plain socket creation; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(fail("socket"));
    }
    // SAFETY: `fd` was just created and is owned by nothing else.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    request.ifr_name[..2].copy_from_slice(&[b'l' as libc::c_char, b'o' as libc::c_char]);
    // SAFETY: SIOCGIFFLAGS fills the flags of the named interface in `request`.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) } < 0 {
        return Err(fail("SIOCGIFFLAGS lo"));
    }
    // SAFETY: the flags member is the one SIOCGIFFLAGS set.
    unsafe { request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads the name and flags from `request`.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &request) } < 0 {
        return Err(fail("SIOCSIFFLAGS lo"));
    }
    Ok(())
}

/// The guest kernel's order of the smallest free block it reports to the
/// VMM's balloon.
const PAGE_REPORTING_ORDER: &str = "/sys/module/page_reporting/parameters/page_reporting_order";
/// Blocks of 2 MiB (order 9 of 4 KiB pages), the host's huge page.
const REPORTED_BLOCK_ORDER: &str = "9";

/// Makes the guest report free blocks from 2 MiB on. The kernel's default
/// is its pageblock order, 4 MiB in a kernel without hugetlb as ours, which
/// leaves every free 2 MiB block next to a used one on the host. Nothing to
/// do for a kernel without page reporting.
pub fn tune_free_page_reporting() -> Result<(), InitError> {
    match fs::write(PAGE_REPORTING_ORDER, REPORTED_BLOCK_ORDER) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => {
            Err(InitError::PageReportingOrder(err))
        }
        _ => Ok(()),
    }
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
