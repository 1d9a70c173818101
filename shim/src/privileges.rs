//! What the VMM may do as a process: the capabilities it keeps, its resource
//! limits and no new privileges, set in the child between fork and exec.
//!
//! The VMM stays uid 0 (see the README's threat model): virtio-fs's
//! passthrough must create files as the guest's uids and gids and keep their
//! ownership and modes, which takes the capabilities below whatever uid it
//! runs as. It keeps only those, in a jail that holds nothing else of the host.

use protocol::{SHARE_MAX_FDS, VMM_BASE_FDS};
use std::fs;
use std::io;

/// The capabilities the VMM keeps (bounding set; as root, its effective set
/// after exec): what virtio-fs's passthrough needs to keep the guest's files
/// as the guest made them — change their owner (CHOWN), reach and change files
/// of any owner and mode (DAC_OVERRIDE, FOWNER), keep set-id bits on a write
/// (FSETID), and create files as the caller's uid and gid (SETUID, SETGID;
/// per-thread `setfsuid`/`setfsgid`).
///
/// Everything else goes. In particular CAP_DAC_READ_SEARCH (`open_by_handle_at`
/// reaches any file of a file system the VMM has an fd on, past any jail; the
/// share uses `O_PATH` fds, not file handles), CAP_SYS_RESOURCE (the fd limit
/// comes set from the shim; without it the VMM can neither lower its OOM score
/// nor use a file system's reserved blocks), CAP_SYS_ADMIN, CAP_NET_ADMIN,
/// CAP_SYS_PTRACE, CAP_MKNOD: the tap comes open, `/dev/kvm` needs none, and
/// the pod's share is not `privileged` (no device nodes, no file capabilities).
const VMM_CAPABILITIES: [u32; 6] = [
    0, // CAP_CHOWN
    1, // CAP_DAC_OVERRIDE
    3, // CAP_FOWNER
    4, // CAP_FSETID
    6, // CAP_SETGID
    7, // CAP_SETUID
];
/// The kernel's capability count, where it cannot be read.
const DEFAULT_LAST_CAP: u32 = 40;

/// The VMM's open-file limit (soft and hard): its own fds plus its one share's.
/// The VMM asks virtio-fs for [`SHARE_MAX_FDS`] and raises its soft limit to
/// this, which needs no capability.
pub const VMM_OPEN_FILES: u64 = VMM_BASE_FDS + SHARE_MAX_FDS;

/// Resource limits of the VMM: its fds; no core dump (it would hold the
/// guest's memory); no locked memory (it locks none).
const VMM_RLIMITS: [(libc::__rlimit_resource_t, u64); 3] = [
    (libc::RLIMIT_NOFILE, VMM_OPEN_FILES),
    (libc::RLIMIT_CORE, 0),
    (libc::RLIMIT_MEMLOCK, 0),
];

/// The privileges the VMM gets, worked out before the fork.
#[derive(Debug, Clone)]
pub struct VmmPrivileges {
    /// Bounding-set bits to drop: every capability of this kernel but
    /// [`VMM_CAPABILITIES`].
    drop: Vec<u32>,
}

impl VmmPrivileges {
    /// The VMM's privileges on this kernel.
    pub fn new() -> Self {
        let last = fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(DEFAULT_LAST_CAP);
        Self {
            drop: (0..=last)
                .filter(|cap| !VMM_CAPABILITIES.contains(cap))
                .collect(),
        }
    }

    /// Sets the calling process's resource limits, drops the capabilities the
    /// VMM does not keep from its bounding set, empties its inheritable set
    /// (so the exec'd root process gets only what the bounding set keeps) and
    /// sets no_new_privs.
    ///
    /// Async-signal-safe, for a child between fork and exec: system calls on
    /// data made before the fork or on the stack, no allocation.
    pub fn apply(&self) -> io::Result<()> {
        for (resource, value) in VMM_RLIMITS {
            set_limit(resource, value)?;
        }
        for cap in &self.drop {
            // SAFETY: PR_CAPBSET_DROP takes a capability number; no memory.
            let ret = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, *cap as libc::c_ulong, 0, 0, 0) };
            // EINVAL: a capability this kernel does not have.
            if ret != 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
                return Err(io::Error::last_os_error());
            }
        }
        empty_inheritable_set()?;
        // SAFETY: PR_SET_NO_NEW_PRIVS takes integers; no memory.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Default for VmmPrivileges {
    fn default() -> Self {
        Self::new()
    }
}

/// Sets `resource`'s soft and hard limits to `value`; where raising the hard
/// limit that far is refused (a shim without CAP_SYS_RESOURCE), the soft
/// limit goes up to the hard one instead (the VMM then says if its share's
/// fds do not fit). Async-signal-safe.
fn set_limit(resource: libc::__rlimit_resource_t, value: u64) -> io::Result<()> {
    let wanted = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: `wanted` is a valid rlimit the kernel only reads.
    if unsafe { libc::setrlimit(resource, &wanted) } == 0 {
        return Ok(());
    }
    let refused = io::Error::last_os_error();
    if refused.raw_os_error() != Some(libc::EPERM) {
        return Err(refused);
    }
    let mut current = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `current` is a valid rlimit for the kernel to fill.
    if unsafe { libc::getrlimit(resource, &mut current) } != 0 {
        return Err(io::Error::last_os_error());
    }
    current.rlim_cur = current.rlim_max.min(value);
    // SAFETY: as above; a soft limit up to the hard one is always allowed.
    if unsafe { libc::setrlimit(resource, &current) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

/// `struct __user_cap_data_struct`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// `_LINUX_CAPABILITY_VERSION_3`: two `CapData`, for 64 capabilities.
const CAP_VERSION_3: u32 = 0x2008_0522;

/// Empties the calling thread's inheritable capability set.
fn empty_inheritable_set() -> io::Result<()> {
    let mut header = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: `header` and `data` are the v3 layout capget fills.
    if unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    for half in &mut data {
        half.inheritable = 0;
    }
    // SAFETY: as for capget; capset only reads them.
    if unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests;
