//! The one check of a [`VmConfig`]: ranges, names and addresses, without
//! looking at the host (the VMM checks its files itself).

use super::{
    DiskConfig, FsConfig, NetConfig, VmConfig, VsockConfig, FS_MAX_FDS_RANGE, FS_TAG_LEN,
    MAX_DISK_ID_LEN, MAX_GUEST_CID, MAX_MEMORY_MIB, MAX_TAP_NAME_LEN, MAX_VCPUS, MIN_GUEST_CID,
    MIN_MEMORY_MIB,
};
use crate::mac::{parse_mac, InvalidMac};

/// A field of a [`VmConfig`] out of its range or malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VmConfigError {
    /// No kernel given.
    #[error("no kernel: give --kernel PATH (or \"kernel\" in the config)")]
    NoKernel,
    /// vCPU count out of range.
    #[error("--cpus must be between 1 and {MAX_VCPUS}, not {0}")]
    Cpus(u64),
    /// Memory out of range.
    #[error("--memory-mib must be between {MIN_MEMORY_MIB} and {MAX_MEMORY_MIB}, not {0}")]
    Memory(u64),
    /// An empty console destination.
    #[error("--console must be stdout, off or a file path, not empty")]
    EmptyConsole,
    /// An unknown seccomp mode.
    #[error("--seccomp: unknown mode '{0}' (enforce|log|off)")]
    Seccomp(String),
    /// A disk with an empty path.
    #[error("--disk: no path")]
    DiskPath,
    /// A disk id too long for GET_ID.
    #[error("--disk id '{0}' is longer than {MAX_DISK_ID_LEN} bytes")]
    DiskId(String),
    /// A vsock context id out of range.
    #[error("--vsock cid must be between {MIN_GUEST_CID} and {MAX_GUEST_CID}, not {0}")]
    VsockCid(u64),
    /// A vsock socket with an empty path.
    #[error("--vsock: no uds")]
    VsockUds,
    /// A card given both a tap name and a tap fd.
    #[error("--net: give tap or fd, not both")]
    NetTapAndFd,
    /// A card given neither a tap name nor a tap fd, in a VM that makes no
    /// snapshot or is restored from one (only a VM template's card may wait
    /// for its tap).
    #[error(
        "--net: no tap or fd (a card without one is only for a VM template: with --snapshot-dir, \
         without --restore-from)"
    )]
    NetNoTap,
    /// A tap name the kernel would refuse.
    #[error("--net: tap name '{0}' must be 1 to {MAX_TAP_NAME_LEN} bytes")]
    NetTapName(String),
    /// A tap fd that cannot be an inherited descriptor.
    #[error("--net: fd {0} is not an inherited descriptor (3 or more)")]
    NetFd(i32),
    /// A malformed or non-unicast MAC.
    #[error("--net: {0}")]
    NetMac(#[from] InvalidMac),
    /// A virtio-fs tag that does not fit the config space.
    #[error("--fs tag={0}: the tag must be 1 to {FS_TAG_LEN} bytes")]
    FsTag(String),
    /// Two shares with one tag.
    #[error("--fs tag={0}: the tag is used twice")]
    FsTagTwice(String),
    /// A share's fd limit out of range.
    #[error(
        "--fs tag={tag}: max-fds must be between {} and {}, not {max_fds}",
        FS_MAX_FDS_RANGE.start(),
        FS_MAX_FDS_RANGE.end()
    )]
    FsMaxFds {
        /// The share's tag.
        tag: String,
        /// The limit given.
        max_fds: u64,
    },
}

impl VmConfig {
    /// Checks every field's range and form (not whether files exist).
    pub fn validate(&self) -> Result<(), VmConfigError> {
        if self.kernel.as_os_str().is_empty() {
            return Err(VmConfigError::NoKernel);
        }
        if !(1..=MAX_VCPUS).contains(&self.cpus) {
            return Err(VmConfigError::Cpus(u64::from(self.cpus)));
        }
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&self.memory_mib) {
            return Err(VmConfigError::Memory(self.memory_mib));
        }
        self.disks.iter().try_for_each(DiskConfig::validate)?;
        if let Some(vsock) = &self.vsock {
            vsock.validate()?;
        }
        for (index, share) in self.fs.iter().enumerate() {
            share.validate()?;
            if self.fs[..index].iter().any(|s| s.tag == share.tag) {
                return Err(VmConfigError::FsTagTwice(share.tag.clone()));
            }
        }
        for net in &self.net {
            net.validate()?;
            let makes_template = self.snapshot_dir.is_some() && self.restore_from.is_none();
            if net.is_detached() && !makes_template {
                return Err(VmConfigError::NetNoTap);
            }
        }
        Ok(())
    }
}

impl DiskConfig {
    /// A path, and an id that fits GET_ID.
    pub fn validate(&self) -> Result<(), VmConfigError> {
        if self.path.as_os_str().is_empty() {
            return Err(VmConfigError::DiskPath);
        }
        match &self.id {
            Some(id) if id.len() > MAX_DISK_ID_LEN => Err(VmConfigError::DiskId(id.clone())),
            _ => Ok(()),
        }
    }
}

impl VsockConfig {
    /// A guest context id and a socket path.
    pub fn validate(&self) -> Result<(), VmConfigError> {
        if !(MIN_GUEST_CID..=MAX_GUEST_CID).contains(&self.cid) {
            return Err(VmConfigError::VsockCid(self.cid));
        }
        if self.uds.as_os_str().is_empty() {
            return Err(VmConfigError::VsockUds);
        }
        Ok(())
    }
}

impl FsConfig {
    /// A tag that fits the config space and an fd limit in range.
    pub fn validate(&self) -> Result<(), VmConfigError> {
        if self.tag.is_empty() || self.tag.len() > FS_TAG_LEN || self.tag.contains('\0') {
            return Err(VmConfigError::FsTag(self.tag.clone()));
        }
        if !FS_MAX_FDS_RANGE.contains(&self.max_fds) {
            return Err(VmConfigError::FsMaxFds {
                tag: self.tag.clone(),
                max_fds: self.max_fds,
            });
        }
        Ok(())
    }
}

impl NetConfig {
    /// At most one of tap and fd, a valid name, fd and MAC. A card with
    /// neither is detached; only a VM that makes a snapshot may have one
    /// ([`VmConfig::validate`]).
    pub fn validate(&self) -> Result<(), VmConfigError> {
        match (&self.tap, self.fd) {
            (Some(_), Some(_)) => return Err(VmConfigError::NetTapAndFd),
            (None, None) => {}
            (Some(name), None) => {
                if name.is_empty() || name.len() > MAX_TAP_NAME_LEN || name.contains(['\0', '/']) {
                    return Err(VmConfigError::NetTapName(name.clone()));
                }
            }
            (None, Some(fd)) if fd < 3 => return Err(VmConfigError::NetFd(fd)),
            (None, Some(_)) => {}
        }
        if let Some(mac) = &self.mac {
            parse_mac(mac)?;
        }
        Ok(())
    }
}
