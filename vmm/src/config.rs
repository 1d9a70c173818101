//! VM configuration: `--config`'s JSON ([`protocol::vm_config`], what the
//! shim passes) with the command line's flags laid over it, checked once
//! before anything is built.

mod host;
#[cfg(test)]
mod tests;

pub use crate::seccomp::SeccompMode;
pub use protocol::vm_config::{
    ConsoleConfig, DiskConfig, FsCache, FsConfig, NetConfig, VmConfig, VmConfigError, VsockConfig,
    DEFAULT_CPUS, DEFAULT_FS_MAX_FDS, DEFAULT_MEMORY_MIB, FS_MAX_FDS_RANGE, MAX_MEMORY_MIB,
    MIN_GUEST_CID, MIN_MEMORY_MIB,
};
use std::path::PathBuf;

// The limits the shim checks against are the devices' own.
const _: () = assert!(protocol::vm_config::MAX_VCPUS == crate::arch::x86_64::mptable::MAX_VCPUS);
const _: () = assert!(protocol::vm_config::FS_TAG_LEN == crate::devices::virtio::fs::TAG_LEN);
const _: () = assert!(
    protocol::vm_config::MAX_TAP_NAME_LEN == crate::devices::virtio::net::tap::MAX_NAME_LEN
);

/// Errors in the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file cannot be read.
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The config file is not valid JSON of the expected shape.
    #[error("config file {path}: {source}")]
    ParseFile {
        /// The file.
        path: PathBuf,
        /// Where and why.
        source: serde_json::Error,
    },
    /// The inline `--config` JSON is not of the expected shape.
    #[error("--config: {0}")]
    ParseJson(serde_json::Error),
    /// A field out of its range or malformed.
    #[error(transparent)]
    Invalid(#[from] VmConfigError),
    /// A file the VM needs is missing or unreadable.
    #[error("{what} {path}: {source}")]
    File {
        /// What the file is for.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file the VM needs is not a regular file.
    #[error("{what} {path}: not a regular file")]
    NotAFile {
        /// What the file is for.
        what: &'static str,
        /// The path.
        path: PathBuf,
    },
    /// A directory the config names is not one.
    #[error("{what} {path}: not a directory")]
    NotADir {
        /// What the directory is for.
        what: &'static str,
        /// The path.
        path: PathBuf,
    },
    /// The kernel file is empty.
    #[error("kernel {0}: file is empty")]
    EmptyKernel(PathBuf),
    /// The initrd cannot fit in guest memory.
    #[error("initrd {path} ({size_mib} MiB) does not fit in {memory_mib} MiB of guest memory")]
    InitrdTooLarge {
        /// The initrd.
        path: PathBuf,
        /// Its size.
        size_mib: u64,
        /// The guest's memory.
        memory_mib: u64,
    },
    /// The API socket path is taken.
    #[error("api socket {0} already exists (another VMM, or a stale file to remove)")]
    ApiSocketInUse(PathBuf),
    /// The vsock socket path is taken.
    #[error("vsock socket {0} already exists (another VMM, or a stale file to remove)")]
    VsockSocketInUse(PathBuf),
    /// A virtio-fs share's directory cannot be looked at.
    #[error("--fs tag={tag}: {path}: {source}")]
    FsPath {
        /// The share's tag.
        tag: String,
        /// Its directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A virtio-fs share's path is not a directory.
    #[error("--fs tag={tag}: {path} is not a directory")]
    FsNotDir {
        /// The share's tag.
        tag: String,
        /// Its path.
        path: PathBuf,
    },
    /// The directory for a socket or console file does not exist.
    #[error("{what} {path}: its directory does not exist")]
    NoParentDir {
        /// What the file is for.
        what: &'static str,
        /// The file.
        path: PathBuf,
    },
}

/// The fields the command line's flags set, to lay over `--config`'s.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartialConfig {
    /// Guest kernel (ELF vmlinux or bzImage).
    pub kernel: Option<PathBuf>,
    /// Initrd.
    pub initrd: Option<PathBuf>,
    /// vCPU count.
    pub cpus: Option<u8>,
    /// Guest memory in MiB.
    pub memory_mib: Option<u64>,
    /// Extra kernel command line, appended to the VMM's.
    pub cmdline: Option<String>,
    /// Serial console destination.
    pub console: Option<ConsoleConfig>,
    /// API socket path.
    pub api_sock: Option<PathBuf>,
    /// Attach a virtio-rng device.
    pub rng: Option<bool>,
    /// Attach a virtio-balloon device for free page reporting.
    pub free_page_reporting: Option<bool>,
    /// virtio-blk disks (replace the config's if any).
    pub disks: Vec<DiskConfig>,
    /// The vsock device.
    pub vsock: Option<VsockConfig>,
    /// virtio-fs shares (replace the config's if any).
    pub fs: Vec<FsConfig>,
    /// virtio-net cards (replace the config's if any).
    pub net: Vec<NetConfig>,
    /// Seccomp filters of the VMM's threads.
    pub seccomp: Option<SeccompMode>,
    /// Directory the API's Snapshot writes into.
    pub snapshot_dir: Option<PathBuf>,
    /// Snapshot directory to start from.
    pub restore_from: Option<PathBuf>,
}

/// `list` unless it is empty, else `base`.
fn or_base<T>(list: Vec<T>, base: Vec<T>) -> Vec<T> {
    if list.is_empty() {
        base
    } else {
        list
    }
}

impl PartialConfig {
    /// `base` with every field these flags set replaced (not checked).
    pub fn over(self, base: VmConfig) -> VmConfig {
        VmConfig {
            kernel: self.kernel.unwrap_or(base.kernel),
            initrd: self.initrd.or(base.initrd),
            cpus: self.cpus.unwrap_or(base.cpus),
            memory_mib: self.memory_mib.unwrap_or(base.memory_mib),
            cmdline: self.cmdline.or(base.cmdline),
            console: self.console.unwrap_or(base.console),
            api_sock: self.api_sock.or(base.api_sock),
            rng: self.rng.unwrap_or(base.rng),
            free_page_reporting: self.free_page_reporting.unwrap_or(base.free_page_reporting),
            disks: or_base(self.disks, base.disks),
            vsock: self.vsock.or(base.vsock),
            fs: or_base(self.fs, base.fs),
            net: or_base(self.net, base.net),
            seccomp: self.seccomp.unwrap_or(base.seccomp),
            snapshot_dir: self.snapshot_dir.or(base.snapshot_dir),
            restore_from: self.restore_from.or(base.restore_from),
        }
    }

    /// These flags over the defaults, checked.
    pub fn finish(self) -> Result<VmConfig, ConfigError> {
        load(None, self)
    }
}

/// `--config`'s value: inline JSON (it starts with `{`), else the path of a
/// JSON file.
pub fn parse_config_arg(arg: &str) -> Result<VmConfig, ConfigError> {
    if arg.trim_start().starts_with('{') {
        return serde_json::from_str(arg).map_err(ConfigError::ParseJson);
    }
    let path = PathBuf::from(arg);
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::ReadFile {
        path: path.clone(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| ConfigError::ParseFile { path, source })
}

/// The VM the command line asks for: `config` (`--config`'s value) with
/// `flags` over it, checked.
pub fn load(config: Option<&str>, flags: PartialConfig) -> Result<VmConfig, ConfigError> {
    let base = match config {
        Some(arg) => parse_config_arg(arg)?,
        None => VmConfig::default(),
    };
    let config = flags.over(base);
    check(&config)?;
    Ok(config)
}

/// Checks ranges and forms, then the host's files and sockets, without
/// building anything.
pub fn check(config: &VmConfig) -> Result<(), ConfigError> {
    config.validate()?;
    host::check(config)
}
