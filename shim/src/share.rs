//! The pod's share: what the guest sees of the host through virtio-fs.
//!
//! The shim builds every container's rootfs and volumes in `<sandbox>/mounts/`,
//! a small tmpfs of the shim's own mount namespace that the VMM does not serve.
//! The VMM serves `<sandbox>/shared/`, a read-only bind of it with propagation
//! slave: the mounts the shim makes under `mounts/` appear there with their own
//! flags (a writable rootfs or volume stays writable inside itself), and
//! nothing else of the share takes a write from the guest. Every create, mount
//! and unmount below the sandbox directory is fd-relative with no symlink
//! followed (see `mounts`).

use crate::mounts::{self, MountAttrs, MountError};
use crate::paths::{SandboxDir, SharedPath};
use crate::spec::ShareBind;
use containerd_shim::protos::api::Mount;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use nix::sys::stat::Mode;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::path::Path;

/// Options of the host-only tmpfs: only the shim writes there (directories and
/// empty mount-point files), so it is small; `nr_inodes` bounds the mount
/// points a pod may have.
const MOUNTS_TMPFS_OPTIONS: &str = "mode=0700,size=1m,nr_inodes=65536";

/// Names of the two directories in the sandbox directory.
const MOUNTS_DIR: &str = "mounts";
const SHARED_DIR: &str = "shared";
/// The file the per-container tree of mount points is rooted in.
const CONTAINER_MOUNTS: &str = "mounts";

/// Errors of building or tearing down the share.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error("pod share {step}: {source}")]
    Mount {
        step: &'static str,
        source: MountError,
    },
    #[error("container {cid}'s {what}: {source}")]
    Container {
        cid: String,
        what: String,
        source: MountError,
    },
    #[error("cannot enter a mount namespace of the shim's own: {0}")]
    Namespace(Errno),
}

/// Moves the calling process into a mount namespace of its own whose mounts
/// receive the host's (slave) but never reach it: the pods' mounts are
/// invisible to the host and vanish with the shim and its VMM. Call while the
/// process has one thread (a mount namespace is per thread).
pub fn enter_own_mount_namespace() -> Result<(), ShareError> {
    nix::sched::unshare(CloneFlags::CLONE_NEWNS).map_err(ShareError::Namespace)?;
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .map_err(ShareError::Namespace)
}

/// The share of one pod, open as fds of its directories.
pub struct PodShare {
    /// `<sandbox>/mounts/`, the host-only tmpfs's root.
    mounts: OwnedFd,
}

impl PodShare {
    /// Builds the share in `dir` (which must exist and be the shim's own):
    /// the host-only tmpfs on `mounts/`, made a shared mount, and its read-only
    /// slave view on `shared/`.
    pub fn create(dir: &SandboxDir) -> Result<Self, ShareError> {
        let step = |step| move |source| ShareError::Mount { step, source };
        let sandbox = open_sandbox_dir(dir).map_err(step("open the sandbox directory"))?;
        let mounts_point = mounts::make_dir_beneath(sandbox.as_fd(), Path::new(MOUNTS_DIR))
            .map_err(step("make mounts/"))?;
        mounts::mount_new(
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            MOUNTS_TMPFS_OPTIONS,
            mounts_point.as_fd(),
            &dir.mounts(),
        )
        .map_err(step("mount the tmpfs"))?;
        // The tmpfs's root, not the directory under it.
        let mounts = mounts::open_beneath(
            sandbox.as_fd(),
            Path::new(MOUNTS_DIR),
            OFlag::O_PATH | OFlag::O_DIRECTORY,
            false,
        )
        .map_err(step("open mounts/"))?;
        mounts::set_propagation(mounts.as_fd(), MsFlags::MS_SHARED, &dir.mounts())
            .map_err(step("share mounts/"))?;
        let shared_point = mounts::make_dir_beneath(sandbox.as_fd(), Path::new(SHARED_DIR))
            .map_err(step("make shared/"))?;
        let view = mounts::clone_tree(&mounts::fd_path(mounts.as_fd()), false)
            .map_err(step("clone mounts/"))?;
        let read_only = MountAttrs {
            readonly: true,
            nosuid: true,
            nodev: true,
            noexec: false,
        };
        mounts::set_attrs(
            view.as_fd(),
            read_only,
            Some(MsFlags::MS_SLAVE),
            &dir.shared(),
        )
        .map_err(step("make the view read-only"))?;
        mounts::attach(view.as_fd(), shared_point.as_fd(), &dir.shared())
            .map_err(step("attach the view"))?;
        Ok(Self { mounts })
    }

    /// Mounts container `cid`'s rootfs on `rootfs`: containerd's snapshot
    /// `snapshot` (overlay, bind, ...) when it gave some, else a bind of the
    /// bundle's rootfs.
    pub fn mount_rootfs(
        &self,
        rootfs: &SharedPath,
        snapshot: &[Mount],
        bundle_rootfs: &Path,
    ) -> Result<(), ShareError> {
        let failed = |source| container_error(rootfs, "rootfs", source);
        let target = mounts::make_dir_beneath(self.mounts.as_fd(), &rootfs.rel).map_err(failed)?;
        if snapshot.is_empty() {
            let tree = mounts::clone_tree(bundle_rootfs, true).map_err(failed)?;
            return mounts::attach(tree.as_fd(), target.as_fd(), &rootfs.rel).map_err(failed);
        }
        for m in snapshot {
            mounts::mount_snapshot(&m.type_, &m.source, &m.options, target.as_fd(), &rootfs.rel)
                .map_err(failed)?;
        }
        Ok(())
    }

    /// Bind-mounts a volume's host source on its place in the share, with its
    /// attributes set on the whole tree before the guest can see it.
    pub fn bind(&self, bind: &ShareBind) -> Result<(), ShareError> {
        let what = format!("volume {}", bind.source.display());
        let failed = |source| container_error(&bind.target, &what, source);
        let tree = mounts::clone_tree(&bind.source, bind.recursive).map_err(failed)?;
        mounts::set_attrs(
            tree.as_fd(),
            bind.attrs,
            Some(MsFlags::MS_PRIVATE),
            &bind.source,
        )
        .map_err(failed)?;
        let is_dir = nix::sys::stat::fstat(std::os::fd::AsRawFd::as_raw_fd(&tree))
            .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
            .map_err(|source| MountError::Sys {
                step: "stat",
                path: bind.source.clone(),
                source,
            })
            .map_err(failed)?;
        let target = if is_dir {
            mounts::make_dir_beneath(self.mounts.as_fd(), &bind.target.rel)
        } else {
            mounts::make_file_beneath(self.mounts.as_fd(), &bind.target.rel)
        }
        .map_err(failed)?;
        mounts::attach(tree.as_fd(), target.as_fd(), &bind.target.rel).map_err(failed)
    }

    /// Unmounts container `cid`'s rootfs and volumes and removes its mount
    /// points (never anything below them).
    pub fn remove_container(&self, cid: &str) -> Result<(), ShareError> {
        remove_container_in(self.mounts.as_fd(), cid)
    }
}

fn container_error(entry: &SharedPath, what: &str, source: MountError) -> ShareError {
    let cid = entry
        .rel
        .components()
        .next()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .unwrap_or_default();
    ShareError::Container {
        cid,
        what: what.to_string(),
        source,
    }
}

fn open_sandbox_dir(dir: &SandboxDir) -> Result<OwnedFd, MountError> {
    let fd = nix::fcntl::open(
        dir.path(),
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|source| MountError::Sys {
        step: "open",
        path: dir.path().into(),
        source,
    })?;
    // SAFETY: the kernel just returned this fd to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `Ok(None)` where `opened` failed only because the entry does not exist.
fn unless_missing(opened: Result<OwnedFd, MountError>) -> Result<Option<OwnedFd>, MountError> {
    match opened {
        Ok(fd) => Ok(Some(fd)),
        Err(MountError::Sys {
            source: Errno::ENOENT,
            ..
        }) => Ok(None),
        Err(err) => Err(err),
    }
}

/// Unmounts and removes container `cid`'s tree below the mounts root `root`.
fn remove_container_in(root: std::os::fd::BorrowedFd, cid: &str) -> Result<(), ShareError> {
    let failed = |what: &str| {
        let what = what.to_string();
        move |source| ShareError::Container {
            cid: cid.to_string(),
            what,
            source,
        }
    };
    let Some(container) = unless_missing(mounts::open_dir_beneath(root, Path::new(cid)))
        .map_err(failed("directory"))?
    else {
        return Ok(());
    };
    let volumes = Path::new(CONTAINER_MOUNTS);
    let volume_dir = unless_missing(mounts::open_dir_beneath(container.as_fd(), volumes))
        .map_err(failed("volumes"))?;
    if let Some(dir) = volume_dir {
        for name in mounts::list_dir(dir.as_fd(), volumes).map_err(failed("volumes"))? {
            mounts::detach_all(dir.as_fd(), &name).map_err(failed("volume"))?;
            mounts::remove_entry(dir.as_fd(), &name).map_err(failed("volume"))?;
        }
    }
    for name in mounts::list_dir(container.as_fd(), Path::new(cid)).map_err(failed("directory"))? {
        mounts::detach_all(container.as_fd(), &name).map_err(failed("rootfs"))?;
        mounts::remove_entry(container.as_fd(), &name).map_err(failed("directory"))?;
    }
    drop(container);
    mounts::remove_entry(root, Path::new(cid)).map_err(failed("directory"))
}

/// Removes container `cid`'s part of the share of the pod in `dir` without a
/// [`PodShare`] (the shim's `delete` for a pod whose shim lives on): nothing
/// happens unless `mounts/` is the tmpfs (this process is in the pod's mount
/// namespace).
pub fn remove_container_of(dir: &SandboxDir, cid: &str) -> Result<(), ShareError> {
    let step = |step| move |source| ShareError::Mount { step, source };
    let sandbox = open_sandbox_dir(dir).map_err(step("open the sandbox directory"))?;
    let root = mounts::open_beneath(
        sandbox.as_fd(),
        Path::new(MOUNTS_DIR),
        OFlag::O_PATH | OFlag::O_DIRECTORY,
        false,
    )
    .map_err(step("open mounts/"))?;
    remove_container_in(root.as_fd(), cid)
}

/// Detaches the pod's view and tmpfs (with every mount below them) in `dir`;
/// harmless where they are plain directories (another mount namespace).
pub fn teardown(dir: &SandboxDir) -> Result<(), ShareError> {
    let step = |step| move |source| ShareError::Mount { step, source };
    let Some(sandbox) =
        unless_missing(open_sandbox_dir(dir)).map_err(step("open the sandbox directory"))?
    else {
        return Ok(());
    };
    for name in [SHARED_DIR, MOUNTS_DIR] {
        mounts::detach_all(sandbox.as_fd(), Path::new(name)).map_err(step("unmount"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
