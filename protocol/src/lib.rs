//! What the runv shim, VMM and guest agent agree on (see `ARCHITECTURE.md`).

#[macro_use]
mod generated;

pub mod agent;
pub mod hybrid_vsock;
pub mod id;
pub mod logger;
pub mod mac;
#[cfg(feature = "netlink")]
pub mod netlink;
pub mod random;
pub mod stdio;
pub mod vm_config;
pub mod vmm;
pub mod vsock;

/// vsock port on which the agent serves the shim's ttrpc connection.
pub const AGENT_VSOCK_PORT: u32 = 1024;

/// virtio-fs tag of the pod's shared directory (`<sandbox dir>/shared` on the host).
pub const SHARED_FS_TAG: &str = "runv";

/// Host fds runv-vmm may hold besides its shares' (KVM, vCPUs, eventfds,
/// disks, taps, up to 1024 vsock connections, API clients).
pub const VMM_BASE_FDS: u64 = 4096;

/// Host fds one virtio-fs share may hold by default (one per inode the guest
/// knows, one per file it has open). The shim gives its VMM an open-file limit
/// of [`VMM_BASE_FDS`] plus this, which the VMM may raise its soft limit to
/// without any capability.
pub const SHARE_MAX_FDS: u64 = 65536;

/// Where the agent mounts the shared directory in the guest.
pub const GUEST_SHARED_DIR: &str = "/run/runv/shared";

/// Line the agent writes to the console once it runs as the guest's init.
///
/// Boot tests and benchmarks wait for it on the serial console.
pub const BOOT_MARKER: &str = "runv-agent: init started";

/// I/O port the agent writes boot progress to (the PC debug port; the guest
/// kernel runs with `io_delay=none`, so nothing else writes it).
pub const BOOT_TIMER_PORT: u16 = 0x80;

/// Value written to [`BOOT_TIMER_PORT`] once the agent runs as init.
pub const BOOT_TIMER_INIT_STARTED: u8 = 0x60;
