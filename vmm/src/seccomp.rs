//! Seccomp filters, one per kind of VMM thread.
//!
//! Every thread installs the filter of its kind before it touches anything the
//! guest drives: a vCPU before its first `KVM_RUN`, a device thread when the
//! device is built (long before the driver activates it), the API server
//! before it accepts, the event loop before the vCPUs run. A filter only
//! narrows what a thread's creator allowed, so each thread is started before
//! anything is installed in its creator, or by a creator whose filter covers
//! it (the API thread's ttrpc workers).
//!
//! A syscall a thread's list does not name kills the whole process
//! (`SECCOMP_RET_KILL_PROCESS`): the shim sees the VMM end by `SIGSYS`. The
//! lists below say why each entry is there; what is not listed is not needed.

use seccompiler::{
    apply_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};
use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;

/// What a filter does with a syscall its thread's list does not name
/// (part of the VM's configuration, shared with the shim).
pub use protocol::vm_config::SeccompMode;

/// The kinds of thread in the VMM, each with a filter of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ThreadKind {
    /// The main thread's event loop and the teardown after it.
    EventLoop,
    /// The control API and ttrpc's threads under it.
    Api,
    /// A vCPU: `KVM_RUN`, its exits, and device activation (MMIO writes).
    Vcpu,
    /// virtio-net: frames between the tap and the queues.
    Net,
    /// virtio-blk: reads and writes on the disk image.
    Block,
    /// virtio-fs: the passthrough file system on the share.
    Fs,
    /// virtio-vsock: the hybrid vsock's Unix sockets.
    Vsock,
    /// virtio-rng: host entropy.
    Rng,
    /// virtio-balloon: free page reports.
    Balloon,
}

const KINDS: [ThreadKind; 9] = [
    ThreadKind::EventLoop,
    ThreadKind::Api,
    ThreadKind::Vcpu,
    ThreadKind::Net,
    ThreadKind::Block,
    ThreadKind::Fs,
    ThreadKind::Vsock,
    ThreadKind::Rng,
    ThreadKind::Balloon,
];

/// Errors compiling or installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The rules do not compile (a bug in the lists).
    #[error("cannot compile the {kind:?} seccomp filter: {source}")]
    Compile {
        kind: ThreadKind,
        source: seccompiler::BackendError,
    },
    /// The kernel refused the filter.
    #[error("cannot install the {kind:?} seccomp filter: {source}")]
    Install {
        kind: ThreadKind,
        source: seccompiler::Error,
    },
    /// glibc refused to keep every thread in its main arena.
    #[error("cannot limit glibc's malloc to one arena (M_ARENA_MAX)")]
    Arena,
    /// The filters were already prepared.
    #[error("the seccomp filters were prepared twice")]
    Twice,
}

/// A syscall and why a thread needs it.
type Entry = (i64, &'static str);

/// What every thread does: its allocator, its own end, the log (stderr), eventfds.
const EVERY_THREAD: &[Entry] = &[
    (
        libc::SYS_read,
        "eventfds, the signalfd, files and sockets it serves",
    ),
    (libc::SYS_write, "eventfds, irqfds, the log on stderr"),
    (libc::SYS_close, "fds it is done with"),
    (libc::SYS_fcntl, "F_DUPFD_CLOEXEC copies, O_NONBLOCK"),
    (libc::SYS_dup, "EventFd::try_clone"),
    (libc::SYS_futex, "locks, channels, joins"),
    (libc::SYS_brk, "the allocator"),
    (libc::SYS_mmap, "the allocator"),
    (libc::SYS_munmap, "the allocator"),
    (libc::SYS_mremap, "the allocator"),
    (
        libc::SYS_madvise,
        "the allocator, a thread's stack at its end",
    ),
    (libc::SYS_mprotect, "the allocator's arenas"),
    (
        libc::SYS_rt_sigprocmask,
        "glibc around a thread's end and abort()",
    ),
    (libc::SYS_rt_sigreturn, "return from the vCPU kick handler"),
    (
        libc::SYS_sigaltstack,
        "Rust's stack-overflow guard, torn down at a thread's end",
    ),
    (libc::SYS_exit, "a thread's end"),
    (libc::SYS_exit_group, "the process's end, abort()"),
    (libc::SYS_getpid, "abort(), Describe's pid"),
    (libc::SYS_gettid, "abort()"),
    (libc::SYS_getrandom, "HashMap's per-thread keys"),
    (
        libc::SYS_clock_gettime,
        "Instant::now where the vDSO falls back",
    ),
    (libc::SYS_clock_nanosleep, "sleeps, timed waits"),
    (libc::SYS_nanosleep, "sleeps"),
    (libc::SYS_sched_yield, "spinning waits in std"),
    (libc::SYS_epoll_create1, "a device loop's epoll"),
    (libc::SYS_epoll_ctl, "a device loop's epoll"),
    (libc::SYS_epoll_wait, "a device loop's epoll"),
    (
        libc::SYS_epoll_pwait,
        "a device loop's epoll (glibc's epoll_wait)",
    ),
];

/// Creating threads: the new thread runs its first steps under its creator's
/// filter.
const SPAWNS_THREADS: &[Entry] = &[
    (libc::SYS_clone, "pthread_create"),
    (libc::SYS_clone3, "pthread_create"),
    (
        libc::SYS_set_robust_list,
        "a new thread's first step in glibc",
    ),
    (libc::SYS_rseq, "a new thread's first step in glibc"),
    (libc::SYS_sched_getaffinity, "glibc's thread attributes"),
];

const EVENT_LOOP: &[Entry] = &[
    (libc::SYS_eventfd2, "the API's wake-up"),
    (
        libc::SYS_unlink,
        "the API and vsock sockets, removed at the end",
    ),
    (
        libc::SYS_unlinkat,
        "the API and vsock sockets, removed at the end",
    ),
    (
        libc::SYS_shutdown,
        "ttrpc's shutdown of the API's connections",
    ),
    (libc::SYS_poll, "ttrpc's shutdown"),
];

const API: &[Entry] = &[
    (libc::SYS_socket, "the API socket"),
    (libc::SYS_bind, "the API socket"),
    (libc::SYS_listen, "the API socket"),
    (libc::SYS_accept4, "API connections"),
    (libc::SYS_recvfrom, "ttrpc messages"),
    (libc::SYS_recvmsg, "ttrpc messages"),
    (libc::SYS_sendto, "ttrpc messages"),
    (libc::SYS_sendmsg, "ttrpc messages"),
    (libc::SYS_shutdown, "ttrpc's connections at their end"),
    (libc::SYS_poll, "ttrpc's listener"),
    (libc::SYS_ppoll, "ttrpc's listener"),
    (libc::SYS_pipe2, "ttrpc's listener wake-up"),
    (libc::SYS_unlink, "a stale API socket"),
    (libc::SYS_unlinkat, "a stale API socket"),
    (libc::SYS_eventfd2, "ttrpc's wake-ups"),
    (libc::SYS_openat, "Metrics reads /proc/self/statm"),
    (libc::SYS_statx, "std's read_to_string sizes its buffer"),
    (libc::SYS_fstat, "std's read_to_string sizes its buffer"),
    (
        libc::SYS_newfstatat,
        "std's read_to_string sizes its buffer",
    ),
    (libc::SYS_lseek, "std's read_to_string sizes its buffer"),
    (libc::SYS_ftruncate, "Snapshot sizes the memory file"),
    (libc::SYS_pwrite64, "Snapshot writes memory and state"),
    (libc::SYS_fsync, "Snapshot syncs its files"),
    (libc::SYS_rename, "Snapshot's state file into place"),
    (libc::SYS_renameat, "Snapshot's state file into place"),
    (libc::SYS_renameat2, "Snapshot's state file into place"),
];

const VCPU: &[Entry] = &[(
    libc::SYS_eventfd2,
    "a device's stop event, made at activation",
)];

const NET: &[Entry] = &[
    (libc::SYS_readv, "frames from the tap"),
    (libc::SYS_writev, "frames to the tap"),
];

const BLOCK: &[Entry] = &[
    (libc::SYS_pread64, "disk reads"),
    (libc::SYS_pwrite64, "disk writes"),
    (libc::SYS_preadv, "disk reads into guest buffers"),
    (libc::SYS_pwritev, "disk writes from guest buffers"),
    (libc::SYS_fsync, "flush"),
    (libc::SYS_fdatasync, "flush"),
    (libc::SYS_fallocate, "discard and write-zeroes"),
    (libc::SYS_lseek, "the disk's size"),
    (libc::SYS_fstat, "the disk's size"),
    (libc::SYS_statx, "the disk's size"),
];

const FS: &[Entry] = &[
    (
        libc::SYS_openat,
        "lookups and opens, fd-relative below the share",
    ),
    (libc::SYS_openat2, "lookups confined with RESOLVE_BENEATH"),
    (libc::SYS_open_by_handle_at, "inodes by handle"),
    (libc::SYS_name_to_handle_at, "inodes by handle"),
    (libc::SYS_newfstatat, "getattr and lookup"),
    (libc::SYS_fstat, "getattr"),
    (libc::SYS_statx, "getattr and lookup"),
    (libc::SYS_fstatfs, "statfs"),
    (libc::SYS_statfs, "statfs"),
    (libc::SYS_readlinkat, "readlink"),
    (libc::SYS_getdents64, "readdir"),
    (libc::SYS_lseek, "readdir offsets, lseek"),
    (libc::SYS_fchown, "setattr"),
    (libc::SYS_fchownat, "setattr"),
    (libc::SYS_fchmod, "setattr"),
    (libc::SYS_fchmodat, "setattr"),
    (libc::SYS_ftruncate, "setattr size"),
    (libc::SYS_utimensat, "setattr times"),
    (libc::SYS_mkdirat, "mkdir"),
    (libc::SYS_mknodat, "mknod"),
    (libc::SYS_symlinkat, "symlink"),
    (libc::SYS_linkat, "link"),
    (libc::SYS_renameat, "rename"),
    (libc::SYS_renameat2, "rename with flags"),
    (libc::SYS_unlinkat, "unlink and rmdir"),
    (libc::SYS_fsync, "fsync"),
    (libc::SYS_fdatasync, "fsync"),
    (libc::SYS_fallocate, "fallocate"),
    (libc::SYS_copy_file_range, "copy_file_range"),
    (libc::SYS_flock, "flock"),
    (libc::SYS_pread64, "read"),
    (libc::SYS_pwrite64, "write"),
    (libc::SYS_preadv, "read into guest buffers"),
    (libc::SYS_pwritev, "write from guest buffers"),
    (libc::SYS_preadv2, "read into guest buffers"),
    (libc::SYS_pwritev2, "write from guest buffers"),
    (libc::SYS_readv, "read"),
    (libc::SYS_writev, "write"),
    (libc::SYS_getxattr, "xattrs through /proc/self/fd"),
    (libc::SYS_lgetxattr, "xattrs"),
    (libc::SYS_fgetxattr, "xattrs"),
    (libc::SYS_setxattr, "xattrs through /proc/self/fd"),
    (libc::SYS_lsetxattr, "xattrs"),
    (libc::SYS_fsetxattr, "xattrs"),
    (libc::SYS_listxattr, "xattrs through /proc/self/fd"),
    (libc::SYS_llistxattr, "xattrs"),
    (libc::SYS_flistxattr, "xattrs"),
    (libc::SYS_removexattr, "xattrs through /proc/self/fd"),
    (libc::SYS_lremovexattr, "xattrs"),
    (libc::SYS_fremovexattr, "xattrs"),
    (
        libc::SYS_setresuid,
        "create as the caller's uid (per thread)",
    ),
    (
        libc::SYS_setresgid,
        "create as the caller's gid (per thread)",
    ),
    (libc::SYS_setfsuid, "create as the caller's uid"),
    (libc::SYS_setfsgid, "create as the caller's gid"),
    (libc::SYS_capget, "dropping CAP_FSETID around a write"),
    (libc::SYS_capset, "dropping CAP_FSETID around a write"),
    (libc::SYS_umask, "create with the caller's umask"),
    (libc::SYS_dup3, "fd juggling in the passthrough"),
    (libc::SYS_getrlimit, "the fd limit"),
    (libc::SYS_prlimit64, "the fd limit"),
    (
        libc::SYS_ioctl,
        "FS_IOC_GETFLAGS and the like on the share's files",
    ),
];

const VSOCK: &[Entry] = &[
    (libc::SYS_socket, "connections to the host's listeners"),
    (libc::SYS_connect, "connections to the host's listeners"),
    (libc::SYS_accept4, "host connections to the guest"),
    (libc::SYS_recvfrom, "stream data"),
    (libc::SYS_sendto, "stream data"),
    (libc::SYS_recvmsg, "stream data"),
    (libc::SYS_sendmsg, "stream data"),
    (libc::SYS_shutdown, "half-closes"),
    (libc::SYS_getsockopt, "SO_ERROR of a connect"),
];

/// Nothing beyond the common list: the rate limiter waits on the device
/// loop's epoll deadline, and the bytes come from `getrandom`.
const RNG: &[Entry] = &[];

/// Nothing beyond the common list: reported pages go back with `madvise`,
/// which the allocator already needs.
const BALLOON: &[Entry] = &[];

fn list(kind: ThreadKind) -> [&'static [Entry]; 2] {
    match kind {
        ThreadKind::EventLoop => [EVENT_LOOP, &[]],
        ThreadKind::Api => [API, SPAWNS_THREADS],
        ThreadKind::Vcpu => [VCPU, &[]],
        ThreadKind::Net => [NET, &[]],
        ThreadKind::Block => [BLOCK, &[]],
        ThreadKind::Fs => [FS, &[]],
        ThreadKind::Vsock => [VSOCK, &[]],
        ThreadKind::Rng => [RNG, &[]],
        ThreadKind::Balloon => [BALLOON, &[]],
    }
}

/// The KVM requests a snapshot makes (`vmm-sys-util`'s encoding, as
/// kvm-ioctls declares them).
mod snapshot_requests {
    use kvm_bindings::{
        kvm_clock_data, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_msrs,
        kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, KVMIO,
    };
    use vmm_sys_util::{ioctl_ior_nr, ioctl_iowr_nr};

    ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_regs);
    ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_sregs);
    ioctl_iowr_nr!(KVM_GET_MSRS, KVMIO, 0x88, kvm_msrs);
    ioctl_ior_nr!(KVM_GET_LAPIC, KVMIO, 0x8e, kvm_lapic_state);
    ioctl_ior_nr!(KVM_GET_MP_STATE, KVMIO, 0x98, kvm_mp_state);
    ioctl_ior_nr!(KVM_GET_VCPU_EVENTS, KVMIO, 0x9f, kvm_vcpu_events);
    ioctl_ior_nr!(KVM_GET_DEBUGREGS, KVMIO, 0xa1, kvm_debugregs);
    ioctl_ior_nr!(KVM_GET_XSAVE, KVMIO, 0xa4, kvm_xsave);
    ioctl_ior_nr!(KVM_GET_XCRS, KVMIO, 0xa6, kvm_xcrs);
    ioctl_iowr_nr!(KVM_GET_IRQCHIP, KVMIO, 0x62, kvm_irqchip);
    ioctl_ior_nr!(KVM_GET_CLOCK, KVMIO, 0x7c, kvm_clock_data);
    ioctl_ior_nr!(KVM_GET_PIT2, KVMIO, 0x9f, kvm_pit_state2);

    /// What a parked vCPU reads of itself for a snapshot.
    pub fn vcpu() -> Vec<u64> {
        [
            KVM_GET_REGS(),
            KVM_GET_SREGS(),
            KVM_GET_MSRS(),
            KVM_GET_LAPIC(),
            KVM_GET_MP_STATE(),
            KVM_GET_VCPU_EVENTS(),
            KVM_GET_DEBUGREGS(),
            KVM_GET_XSAVE(),
            KVM_GET_XCRS(),
        ]
        .map(u64::from)
        .to_vec()
    }

    /// What the API's Snapshot reads of the VM.
    pub fn vm() -> Vec<u64> {
        [KVM_GET_IRQCHIP(), KVM_GET_CLOCK(), KVM_GET_PIT2()]
            .map(u64::from)
            .to_vec()
    }
}

/// `ioctl` requests a thread may make (its first argument's low 32 bits):
/// None lets every request through (the share's files), an empty list none.
fn ioctls(kind: ThreadKind) -> Option<Vec<u64>> {
    const KVM_RUN: u64 = 0xae80;
    match kind {
        // Activations run on a vCPU: virtio-net's sets the tap's offloads
        // (TUNSETOFFLOAD), virtio-vsock's makes its listener non-blocking.
        // A parked vCPU reads its own state for a snapshot.
        ThreadKind::Vcpu => Some(
            [KVM_RUN, libc::TUNSETOFFLOAD, libc::FIONBIO]
                .into_iter()
                .chain(snapshot_requests::vcpu())
                .collect(),
        ),
        // FIONBIO: std's set_nonblocking on sockets. The API's Snapshot
        // reads the VM's interrupt controllers, PIT and clock.
        ThreadKind::Api => Some(
            std::iter::once(libc::FIONBIO)
                .chain(snapshot_requests::vm())
                .collect(),
        ),
        ThreadKind::Vsock => Some(vec![libc::FIONBIO]),
        ThreadKind::Fs => None,
        _ => Some(Vec::new()),
    }
}

fn condition(arg: u8, value: u64) -> Result<SeccompRule, seccompiler::BackendError> {
    SeccompRule::new(vec![SeccompCondition::new(
        arg,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        value,
    )?])
}

fn rules(kind: ThreadKind) -> Result<BTreeMap<i64, Vec<SeccompRule>>, seccompiler::BackendError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (syscall, _why) in EVERY_THREAD.iter().chain(list(kind).into_iter().flatten()) {
        rules.insert(*syscall, Vec::new());
    }
    match ioctls(kind) {
        None => {
            rules.insert(libc::SYS_ioctl, Vec::new());
        }
        Some(requests) if requests.is_empty() => {}
        Some(requests) => {
            let allowed = requests
                .iter()
                .map(|request| condition(1, *request))
                .collect::<Result<_, _>>()?;
            rules.insert(libc::SYS_ioctl, allowed);
        }
    }
    // Signals only to this process's own threads: the vCPU kick, abort().
    rules.insert(
        libc::SYS_tgkill,
        vec![condition(0, u64::from(std::process::id()))?],
    );
    // Naming a new thread (it runs under its creator's filter).
    if kind == ThreadKind::Api {
        rules.insert(
            libc::SYS_prctl,
            vec![condition(0, libc::PR_SET_NAME as u64)?],
        );
    }
    Ok(rules)
}

fn compile(kind: ThreadKind, mode: SeccompMode) -> Result<BpfProgram, SeccompError> {
    let compile_err = |source| SeccompError::Compile { kind, source };
    let mismatch = match mode {
        SeccompMode::Log => SeccompAction::Log,
        _ => SeccompAction::KillProcess,
    };
    let filter = SeccompFilter::new(
        rules(kind).map_err(compile_err)?,
        mismatch,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(compile_err)?;
    BpfProgram::try_from(filter).map_err(compile_err)
}

/// The compiled filters of this process, by thread kind.
static FILTERS: OnceLock<HashMap<ThreadKind, BpfProgram>> = OnceLock::new();

/// Compiles every thread kind's filter for `mode`, once, before any thread
/// starts. With [`SeccompMode::Off`] nothing is installed later.
///
/// Every thread then allocates from glibc's main arena: a thread's own arena
/// makes glibc open `/sys/devices/system/cpu/online` when it is created and
/// `/proc/sys/vm/overcommit_memory` when it shrinks, and no thread but the
/// API's may open files.
pub fn prepare(mode: SeccompMode) -> Result<(), SeccompError> {
    let mut filters = HashMap::new();
    if mode != SeccompMode::Off {
        // SAFETY: plain integers; called before any other thread exists.
        if unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) } != 1 {
            return Err(SeccompError::Arena);
        }
        for kind in KINDS {
            filters.insert(kind, compile(kind, mode)?);
        }
    }
    FILTERS.set(filters).map_err(|_| SeccompError::Twice)
}

/// Confines the calling thread to `kind`'s list (setting its `no_new_privs`,
/// as an unprivileged filter needs). Does nothing where
/// [`prepare`] was not called (unit tests) or the mode is off.
pub(crate) fn confine(kind: ThreadKind) -> Result<(), SeccompError> {
    let Some(program) = FILTERS.get().and_then(|filters| filters.get(&kind)) else {
        return Ok(());
    };
    apply_filter(program).map_err(|source| SeccompError::Install { kind, source })
}

/// Makes a syscall no thread's list allows (`socket(AF_INET)` outside the
/// vsock and API threads): the filter kills the process.
#[cfg(feature = "seccomp-trigger")]
pub(crate) fn break_the_filter() {
    log::warn!("seccomp-trigger: calling socket(AF_INET) from the event loop");
    // SAFETY: plain integer arguments; a socket made anyway is closed.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    if fd >= 0 {
        // SAFETY: `fd` was just made and is owned by nobody else.
        unsafe { libc::close(fd) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_compiles_in_both_modes() {
        for kind in KINDS {
            for mode in [SeccompMode::Enforce, SeccompMode::Log] {
                let program = compile(kind, mode).unwrap();
                assert!(!program.is_empty(), "{kind:?}");
            }
        }
    }

    #[test]
    fn modes_parse_by_name_and_refuse_others() {
        assert_eq!("log".parse::<SeccompMode>(), Ok(SeccompMode::Log));
        assert_eq!("off".parse::<SeccompMode>(), Ok(SeccompMode::Off));
        let err = "lax".parse::<SeccompMode>().unwrap_err().to_string();
        assert!(err.contains("lax"), "{err}");
    }

    /// A child process confined as a device thread dies by SIGSYS on a
    /// syscall outside its list, and lives through one inside it.
    #[test]
    fn a_syscall_outside_the_list_kills_the_process_by_sigsys() {
        let program = compile(ThreadKind::Rng, SeccompMode::Enforce).unwrap();
        let run = |forbidden: bool| {
            // SAFETY: the child only makes raw syscalls and exits; it
            // allocates nothing (`program` was built before the fork).
            match unsafe { libc::fork() } {
                0 => {
                    if apply_filter(&program).is_err() {
                        // SAFETY: ends the child at once.
                        unsafe { libc::_exit(3) };
                    }
                    if forbidden {
                        // SAFETY: no arguments; socket is outside Rng's list.
                        unsafe { libc::syscall(libc::SYS_socket, libc::AF_INET, 1, 0) };
                    } else {
                        // SAFETY: no arguments.
                        unsafe { libc::syscall(libc::SYS_getpid) };
                    }
                    // SAFETY: ends the child at once.
                    unsafe { libc::_exit(0) }
                }
                pid => {
                    assert!(pid > 0, "fork failed");
                    let mut status = 0;
                    // SAFETY: `status` is a valid out-pointer.
                    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
                    status
                }
            }
        };
        let status = run(true);
        assert!(libc::WIFSIGNALED(status), "status {status:#x}");
        assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);
        let status = run(false);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    }
}
