//! The passthrough file system that serves one shared directory, behind the
//! share's [`Filtered`] policy, and the host fds the shares may hold.
//!
//! fuse-backend-rs's `PassthroughFs` holds an `O_PATH` fd per inode and reaches
//! every name with `openat(parent_fd, name, O_NOFOLLOW)`, so a guest path is
//! resolved one component at a time below the root fd and never follows a
//! symlink on the host: a symlink in the share is returned to the guest, which
//! resolves it in its own namespace. It opens files for the guest only by
//! reopening such an fd through `/proc/self/fd`, and only regular files and
//! directories. Names with `/` and, for creating operations, `.` and `..` are
//! refused by the crate; everything else a guest could abuse is refused or
//! rewritten by [`super::filter`].
//!
//! `PassthroughFs` sets the process umask to 0 when the guest mounts the share
//! (FUSE_INIT), so that files get exactly the mode the guest asks for (the
//! guest's own umask arrives with each create).

use super::filter::{Filtered, Policy};
use crate::config::FsCache;
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::passthrough::{CachePolicy, Config, PassthroughFs};
use std::io;
use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// The FUSE server of one share.
pub type FsServer = Server<Filtered<PassthroughFs>>;

/// Fds the VMM may need besides its shares'.
const BASE_FDS: u64 = protocol::VMM_BASE_FDS;

/// Host fds the live shares may hold together.
static RESERVED_FDS: Mutex<u64> = Mutex::new(0);

/// How long the guest may cache entries and attributes under each policy (the
/// values virtiofsd uses).
fn policy(cache: FsCache) -> (CachePolicy, Duration) {
    match cache {
        FsCache::Never => (CachePolicy::Never, Duration::ZERO),
        FsCache::Auto => (CachePolicy::Auto, Duration::from_secs(1)),
        FsCache::Always => (CachePolicy::Always, Duration::from_secs(86_400)),
    }
}

/// The passthrough file system of `root` (an absolute path to a directory,
/// symlinks resolved), read-write, with extended attributes.
pub fn passthrough(root: &Path, cache: FsCache) -> io::Result<PassthroughFs> {
    let root_dir = root
        .to_str()
        .ok_or_else(|| io::Error::other("the path is not valid UTF-8"))?
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
    PassthroughFs::new(config)
}

/// A FUSE server for `root` under `policy`.
pub fn server(root: &Path, cache: FsCache, policy: Policy) -> io::Result<FsServer> {
    Ok(Server::new(Filtered::new(
        passthrough(root, cache)?,
        policy,
    )))
}

/// A share's claim on the process's limit of open files, given back when
/// dropped.
#[derive(Debug)]
pub struct FdReservation(u64);

impl FdReservation {
    /// Raises RLIMIT_NOFILE so that `fds` more fit beside the VMM's own and
    /// the other live shares'; an error when the limit cannot go that high
    /// (a hard limit this process may not raise, or above `fs.nr_open`).
    pub fn new(fds: u64) -> io::Result<Self> {
        let mut reserved = RESERVED_FDS.lock().unwrap_or_else(PoisonError::into_inner);
        let needed = BASE_FDS.saturating_add(*reserved).saturating_add(fds);
        ensure_fd_limit(needed)?;
        *reserved += fds;
        Ok(Self(fds))
    }
}

impl Drop for FdReservation {
    fn drop(&mut self) {
        let mut reserved = RESERVED_FDS.lock().unwrap_or_else(PoisonError::into_inner);
        *reserved = reserved.saturating_sub(self.0);
    }
}

/// Raises the soft limit on open files to `needed`, and the hard one with it
/// if it is lower (which needs CAP_SYS_RESOURCE); never lowers either.
fn ensure_fd_limit(needed: u64) -> io::Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit for the kernel to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur >= needed {
        return Ok(());
    }
    let raised = libc::rlimit {
        rlim_cur: needed,
        rlim_max: limit.rlim_max.max(needed),
    };
    // SAFETY: `raised` is a valid rlimit; a refusal leaves the old limit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    Err(io::Error::other(format!(
        "cannot raise the open-file limit ({} soft, {} hard) to the {needed} fds \
         the shares may hold: {err} (lower max-fds or raise the limit)",
        limit.rlim_cur, limit.rlim_max
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn soft_limit() -> u64 {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `limit` is a valid rlimit for the kernel to fill.
        let ret = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
        assert_eq!(ret, 0);
        limit.rlim_cur
    }

    #[test]
    fn a_reservation_raises_the_fd_limit_and_an_impossible_one_is_refused() {
        let reservation = FdReservation::new(256).unwrap();
        assert!(soft_limit() >= BASE_FDS + 256);
        drop(reservation);
        // Past fs.nr_open's ceiling (2^30 at most): no process may go there.
        let err = FdReservation::new(1 << 40).unwrap_err().to_string();
        assert!(err.contains("lower max-fds"), "{err}");
    }
}
