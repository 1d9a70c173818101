//! The passthrough file system that serves one shared directory.
//!
//! fuse-backend-rs's `PassthroughFs` holds an `O_PATH` fd per inode and reaches
//! every name with `openat(parent_fd, name, O_NOFOLLOW)`, so a guest path is
//! resolved one component at a time below the root fd and never follows a
//! symlink on the host: a symlink in the share is returned to the guest, which
//! resolves it in its own namespace. Names with `/` and, for creating
//! operations, `.` and `..` are refused by the crate; lookups of `.` and `..`
//! are refused by [`super::request`].
//!
//! `PassthroughFs` sets the process umask to 0 when the guest mounts the share
//! (FUSE_INIT), so that files get exactly the mode the guest asks for (the
//! guest's own umask arrives with each create).

use crate::config::FsCache;
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::passthrough::{CachePolicy, Config, PassthroughFs};
use std::path::Path;
use std::time::Duration;

/// The FUSE server of one share.
pub type FsServer = Server<PassthroughFs>;

/// How long the guest may cache entries and attributes under each policy (the
/// values virtiofsd uses).
fn policy(cache: FsCache) -> (CachePolicy, Duration) {
    match cache {
        FsCache::Never => (CachePolicy::Never, Duration::ZERO),
        FsCache::Auto => (CachePolicy::Auto, Duration::from_secs(1)),
        FsCache::Always => (CachePolicy::Always, Duration::from_secs(86_400)),
    }
}

/// A FUSE server for `root` (an absolute path to a directory, symlinks
/// resolved), read-write, with extended attributes.
pub fn server(root: &Path, cache: FsCache) -> std::io::Result<FsServer> {
    let root_dir = root
        .to_str()
        .ok_or_else(|| std::io::Error::other("the path is not valid UTF-8"))?
        .to_owned();
    let (cache_policy, timeout) = policy(cache);
    let config = Config {
        root_dir,
        cache_policy,
        entry_timeout: timeout,
        attr_timeout: timeout,
        // Container images carry security.capability and other xattrs.
        xattr: true,
        // The root inode is opened on FUSE_INIT; names are validated by the
        // crate only in this mode.
        do_import: true,
        // Host files may change behind the guest's back.
        writeback: false,
        // Inodes as O_PATH fds: needs no CAP_DAC_READ_SEARCH.
        inode_file_handles: false,
        ..Config::default()
    };
    raise_fd_limit();
    Ok(Server::new(PassthroughFs::new(config)?))
}

/// Raises the soft limit on open files to the hard one: the passthrough file
/// system keeps an fd per inode the guest knows.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit for the kernel to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    // The passthrough file system keeps one fd per inode the guest knows: a
    // container root file system has tens of thousands. A privileged VMM may
    // go up to the kernel's per-process maximum.
    let ceiling = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|text| text.trim().parse::<libc::rlim_t>().ok())
        .unwrap_or(limit.rlim_max);
    let raised = libc::rlimit {
        rlim_cur: ceiling.max(limit.rlim_cur),
        rlim_max: ceiling.max(limit.rlim_max),
    };
    // SAFETY: `raised` is a valid rlimit; a refusal (no CAP_SYS_RESOURCE)
    // leaves the old limit, which is then raised to its hard limit below.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        return;
    }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: `limit` is a valid rlimit; a failure leaves the old limit.
        let _ = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    }
}
