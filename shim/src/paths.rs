//! The host and guest paths of one pod (see ARCHITECTURE.md, "Host paths").

use protocol::GUEST_SHARED_DIR;
use std::path::{Path, PathBuf};

/// Parent of every pod's directory.
pub const RUN_ROOT: &str = "/run/runv";

/// Where VM templates live (tmpfs: their memory is host memory, shared by
/// every pod started from them).
pub const TEMPLATES_ROOT: &str = "/run/runv-templates";

/// Guest context id of every pod VM (each VM has its own vsock device).
pub const GUEST_CID: u32 = 3;

/// `/run/runv/<sandbox-id>/` and the files in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxDir {
    root: PathBuf,
}

impl SandboxDir {
    /// The directory of sandbox `id` under [`RUN_ROOT`] (`id` must pass [`protocol::id::check_id`]).
    pub fn new(id: &str) -> Self {
        Self::under(Path::new(RUN_ROOT), id)
    }

    /// The directory of sandbox `id` under `run_root`.
    pub fn under(run_root: &Path, id: &str) -> Self {
        Self {
            root: run_root.join(id),
        }
    }

    /// The directory itself.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// `vm/`: the one directory of the sandbox the VMM may write (its
    /// sockets and console); the shim's own files stay out of its reach.
    pub fn vm_dir(&self) -> PathBuf {
        self.root.join("vm")
    }

    /// Makes `vm/` and `jail/` (mode 0700), the VMM's directories; an
    /// existing directory (not a symlink) is kept.
    pub fn create_vmm_dirs(&self) -> std::io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        for dir in [self.vm_dir(), self.jail_root()] {
            let made = std::fs::DirBuilder::new().mode(0o700).create(&dir);
            let kept = || std::fs::symlink_metadata(&dir).is_ok_and(|meta| meta.is_dir());
            match made {
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists && kept() => {}
                Err(err) => {
                    return Err(std::io::Error::new(
                        err.kind(),
                        format!("{}: {err}", dir.display()),
                    ))
                }
                Ok(()) => {}
            }
        }
        Ok(())
    }

    /// `jail/`: where the VMM's jail root is mounted, in its own mount
    /// namespace only (see `jail`).
    pub fn jail_root(&self) -> PathBuf {
        self.root.join("jail")
    }

    /// The VMM's control socket.
    pub fn api_sock(&self) -> PathBuf {
        self.vm_dir().join("api.sock")
    }

    /// The VMM's hybrid vsock socket.
    pub fn vsock_sock(&self) -> PathBuf {
        self.vm_dir().join("vsock.sock")
    }

    /// The guest's serial console (with `debug_console`).
    pub fn console_log(&self) -> PathBuf {
        self.vm_dir().join("console.log")
    }

    /// The VMM's own stderr.
    pub fn vmm_log(&self) -> PathBuf {
        self.root.join("vmm.log")
    }

    /// The VMM's pid, for the cleanup after a dead shim.
    pub fn vmm_pid_file(&self) -> PathBuf {
        self.root.join("vmm.pid")
    }

    /// `start-phases.json`: the pod's start timeline (see
    /// [`crate::start_phases`]), for `runv metrics` and `runv trace`.
    pub fn start_phases_file(&self) -> PathBuf {
        self.root.join("start-phases.json")
    }

    /// `netns`: the path of the pod's network namespace, for the cleanup of
    /// what the shim added there.
    pub fn netns_record(&self) -> PathBuf {
        self.root.join("netns")
    }

    /// `cgroups`: the pod cgroup's leaf directories, one a line, for their
    /// removal after the VMM.
    pub fn cgroup_record(&self) -> PathBuf {
        self.root.join("cgroups")
    }

    /// The host-only directory where the shim builds every container's rootfs
    /// and volumes (a tmpfs of the shim's mount namespace).
    pub fn mounts(&self) -> PathBuf {
        self.root.join("mounts")
    }

    /// The directory the VMM serves to the guest by virtio-fs: a read-only view
    /// of [`Self::mounts`] that sees the mounts made there.
    pub fn shared(&self) -> PathBuf {
        self.root.join("shared")
    }
}

/// One entry of a container's directory in the share: where the shim mounts it
/// (relative to [`SandboxDir::mounts`]) and where the guest sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedPath {
    /// `<container-id>/<name>`, below the host-only mounts directory.
    pub rel: PathBuf,
    /// Where the guest sees it.
    pub guest: String,
}

impl SharedPath {
    /// Entry `name` (a relative path of plain components) of container `cid`
    /// (an id that passed [`protocol::id::check_id`]).
    pub fn new(container_id: &str, name: &str) -> Self {
        Self {
            rel: Path::new(container_id).join(name),
            guest: format!("{GUEST_SHARED_DIR}/{container_id}/{name}"),
        }
    }
}

#[cfg(test)]
mod tests;
