//! The VMM's configuration: what the shim hands runv-vmm as `--config JSON`
//! and what runv-vmm's flags are parsed into. Plain data with serde,
//! checked once by [`VmConfig::validate`].

#[cfg(test)]
mod tests;
mod validate;

pub use validate::VmConfigError;

use crate::mac::parse_mac;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Most vCPUs a guest may have (the VMM's MP table holds this many).
pub const MAX_VCPUS: u8 = 32;
/// Smallest guest the VMM boots: kernel, initrd and agent need this much.
pub const MIN_MEMORY_MIB: u64 = 64;
/// Largest guest memory accepted.
pub const MAX_MEMORY_MIB: u64 = 1 << 20;
/// Default vCPU count.
pub const DEFAULT_CPUS: u8 = 1;
/// Default guest memory.
pub const DEFAULT_MEMORY_MIB: u64 = 128;
/// Longest disk id (what virtio-blk's GET_ID answers).
pub const MAX_DISK_ID_LEN: usize = 20;
/// Lowest context id a guest may have (0-2 are reserved: hypervisor, local,
/// host).
pub const MIN_GUEST_CID: u64 = 3;
/// Highest context id a guest may have (`u32::MAX` means any).
pub const MAX_GUEST_CID: u64 = u32::MAX as u64 - 1;
/// Longest tap interface name (`IFNAMSIZ` less its NUL).
pub const MAX_TAP_NAME_LEN: usize = 15;
/// Longest virtio-fs tag (the size of its config-space field).
pub const FS_TAG_LEN: usize = 36;
/// Host fds a share may hold by default.
pub const DEFAULT_FS_MAX_FDS: u64 = crate::SHARE_MAX_FDS;
/// Smallest and largest `max_fds` accepted.
pub const FS_MAX_FDS_RANGE: std::ops::RangeInclusive<u64> = 64..=1 << 20;

/// The state file of a snapshot directory (`snapshot_dir`, `restore_from`),
/// written last: a directory with one holds a whole snapshot.
pub const SNAPSHOT_STATE_FILE: &str = "state.json";
/// The guest memory file of a snapshot directory.
pub const SNAPSHOT_MEMORY_FILE: &str = "memory";

/// The files of the snapshot in `dir`, which a VM restored from it reads.
pub fn snapshot_files(dir: &Path) -> Vec<PathBuf> {
    [SNAPSHOT_STATE_FILE, SNAPSHOT_MEMORY_FILE]
        .map(|name| dir.join(name))
        .to_vec()
}

/// A file as a snapshot or template records what it was made from: its
/// path, size and modification time (or that it is missing).
pub fn file_identity(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(path) {
        Ok(meta) => format!(
            "{} {} {}.{}",
            path.display(),
            meta.len(),
            meta.mtime(),
            meta.mtime_nsec()
        ),
        Err(_) => format!("{} missing", path.display()),
    }
}

/// A whole VM: every field has a default but the kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VmConfig {
    /// Guest kernel (ELF vmlinux or bzImage); empty means none given.
    pub kernel: PathBuf,
    /// Initrd.
    pub initrd: Option<PathBuf>,
    /// vCPU count (1 to [`MAX_VCPUS`]).
    pub cpus: u8,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// Extra kernel command line, appended to the VMM's.
    pub cmdline: Option<String>,
    /// Serial console destination.
    pub console: ConsoleConfig,
    /// API socket path.
    pub api_sock: Option<PathBuf>,
    /// Attach a virtio-rng device (host entropy).
    pub rng: bool,
    /// Attach a virtio-balloon device that only takes free page reports:
    /// memory the guest frees goes back to the host.
    pub free_page_reporting: bool,
    /// virtio-blk disks, in order (`/dev/vda`, `/dev/vdb`, ...).
    pub disks: Vec<DiskConfig>,
    /// The vsock device.
    pub vsock: Option<VsockConfig>,
    /// virtio-fs shares.
    pub fs: Vec<FsConfig>,
    /// virtio-net cards, in order (`eth0`, `eth1`, ...).
    pub net: Vec<NetConfig>,
    /// Seccomp filters of the VMM's threads (enforced unless asked).
    pub seccomp: SeccompMode,
    /// Directory the API's Snapshot writes into (an existing directory).
    pub snapshot_dir: Option<PathBuf>,
    /// Start from the snapshot in this directory instead of booting: made
    /// by a VM of the same kernel, initrd, command line, vCPUs and memory.
    pub restore_from: Option<PathBuf>,
}

impl Default for VmConfig {
    fn default() -> Self {
        Self {
            kernel: PathBuf::new(),
            initrd: None,
            cpus: DEFAULT_CPUS,
            memory_mib: DEFAULT_MEMORY_MIB,
            cmdline: None,
            console: ConsoleConfig::default(),
            api_sock: None,
            rng: false,
            free_page_reporting: false,
            disks: Vec::new(),
            vsock: None,
            fs: Vec::new(),
            net: Vec::new(),
            seccomp: SeccompMode::default(),
            snapshot_dir: None,
            restore_from: None,
        }
    }
}

/// Where the guest's serial console goes: `stdout`, `off` or a file path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ConsoleConfig {
    /// The VMM's stdout.
    Stdout,
    /// Discarded (the VMM still watches it for a guest panic).
    #[default]
    Off,
    /// Appended to a file.
    File(PathBuf),
}

impl TryFrom<String> for ConsoleConfig {
    type Error = VmConfigError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        match value.as_str() {
            "stdout" => Ok(ConsoleConfig::Stdout),
            "off" => Ok(ConsoleConfig::Off),
            "" => Err(VmConfigError::EmptyConsole),
            path => Ok(ConsoleConfig::File(PathBuf::from(path))),
        }
    }
}

impl From<ConsoleConfig> for String {
    fn from(value: ConsoleConfig) -> Self {
        match value {
            ConsoleConfig::Stdout => "stdout".into(),
            ConsoleConfig::Off => "off".into(),
            ConsoleConfig::File(path) => path.display().to_string(),
        }
    }
}

/// A virtio-blk disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// Raw image file.
    pub path: PathBuf,
    /// Refuse guest writes.
    #[serde(default)]
    pub readonly: bool,
    /// What GET_ID answers (at most [`MAX_DISK_ID_LEN`] bytes; default
    /// `disk<N>`).
    #[serde(default)]
    pub id: Option<String>,
}

/// The vsock device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// The guest's context id (3 to 2^32 - 2).
    pub cid: u64,
    /// Unix socket of the host side; guest connections to host port P go to
    /// `<uds>_P`.
    pub uds: PathBuf,
}

/// A virtio-net card: on a tap by name or on an inherited tap fd; with
/// neither, detached (a VM template's card, which gets the tap of each VM
/// restored from the template).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// Existing tap interface to attach to.
    #[serde(default)]
    pub tap: Option<String>,
    /// Inherited file descriptor of an already attached tap (with
    /// `IFF_TAP|IFF_NO_PI|IFF_VNET_HDR`), owned by the VMM from then on.
    #[serde(default)]
    pub fd: Option<i32>,
    /// The guest's MAC (`aa:bb:cc:dd:ee:ff`, unicast); a random locally
    /// administered one if absent.
    #[serde(default)]
    pub mac: Option<String>,
}

impl NetConfig {
    /// A card with no tap yet: a VM template's.
    pub fn is_detached(&self) -> bool {
        self.tap.is_none() && self.fd.is_none()
    }

    /// The MAC, or None for a random one.
    pub fn mac_bytes(&self) -> Option<[u8; 6]> {
        self.mac.as_deref().and_then(|m| parse_mac(m).ok())
    }
}

/// How much the guest may cache of a virtio-fs share.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsCache {
    /// Nothing: every access goes to the host (the host may change files).
    Never,
    /// Close-to-open consistency, metadata for a second.
    #[default]
    Auto,
    /// Everything, for a day (only the guest changes the files).
    Always,
}

fn default_fs_max_fds() -> u64 {
    DEFAULT_FS_MAX_FDS
}

/// A virtio-fs share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsConfig {
    /// What the guest mounts (`mount -t virtiofs TAG DIR`), 1 to
    /// [`FS_TAG_LEN`] bytes.
    pub tag: String,
    /// Host directory to share.
    pub path: PathBuf,
    /// Guest caching.
    #[serde(default)]
    pub cache: FsCache,
    /// The guest may make setuid/setgid files and set `security.capability`
    /// (off: those bits and that attribute are dropped or refused).
    #[serde(default)]
    pub privileged: bool,
    /// Host fds the share may hold; past it the guest gets ENFILE.
    #[serde(default = "default_fs_max_fds")]
    pub max_fds: u64,
}

impl FsConfig {
    /// A share of `path` as `tag` with every other option at its default.
    pub fn new(tag: &str, path: &Path) -> Self {
        Self {
            tag: tag.to_owned(),
            path: path.to_owned(),
            cache: FsCache::default(),
            privileged: false,
            max_fds: DEFAULT_FS_MAX_FDS,
        }
    }
}

/// What a seccomp filter does with a syscall its thread's list does not name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SeccompMode {
    /// Kill the process (the default).
    #[default]
    Enforce,
    /// Allow it and log it to the kernel's audit log (to find a list's gaps).
    Log,
    /// Install no filter (for debugging by hand).
    Off,
}

impl std::str::FromStr for SeccompMode {
    type Err = VmConfigError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "enforce" => Ok(Self::Enforce),
            "log" => Ok(Self::Log),
            "off" => Ok(Self::Off),
            other => Err(VmConfigError::Seccomp(other.to_owned())),
        }
    }
}
