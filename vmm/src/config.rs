//! VM configuration: from the command line or a JSON file with the same fields,
//! validated once before anything is built.

use crate::arch::x86_64::mptable::MAX_VCPUS;
pub use crate::seccomp::SeccompMode;
use protocol::mac::parse_mac;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Smallest guest the VMM boots: kernel, initrd and agent need this much.
pub const MIN_MEMORY_MIB: u64 = 64;
/// Largest guest memory accepted.
pub const MAX_MEMORY_MIB: u64 = 1 << 20;
/// Default vCPU count.
pub const DEFAULT_CPUS: u8 = 1;
/// Default guest memory.
pub const DEFAULT_MEMORY_MIB: u64 = 128;

/// Errors in the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file cannot be read.
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The config file is not valid JSON of the expected shape.
    #[error("config file {path}: {source}")]
    ParseFile {
        path: PathBuf,
        source: serde_json::Error,
    },
    /// A command-line flag is unknown or malformed.
    #[error("{0}")]
    Usage(String),
    /// No kernel given.
    #[error("no kernel: give --kernel PATH (or \"kernel\" in the config file)")]
    NoKernel,
    /// vCPU count out of range.
    #[error("--cpus must be between 1 and {MAX_VCPUS}, not {0}")]
    Cpus(u64),
    /// Memory out of range.
    #[error("--memory-mib must be between {MIN_MEMORY_MIB} and {MAX_MEMORY_MIB}, not {0}")]
    Memory(u64),
    /// A file the VM needs is missing or unreadable.
    #[error("{what} {path}: {source}")]
    File {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The initrd cannot fit in guest memory.
    #[error("initrd {path} ({size_mib} MiB) does not fit in {memory_mib} MiB of guest memory")]
    InitrdTooLarge {
        path: PathBuf,
        size_mib: u64,
        memory_mib: u64,
    },
    /// The API socket path is taken.
    #[error("api socket {0} already exists (another VMM, or a stale file to remove)")]
    ApiSocketInUse(PathBuf),
    /// The vsock socket path is taken.
    #[error("vsock socket {0} already exists (another VMM, or a stale file to remove)")]
    VsockSocketInUse(PathBuf),
    /// A virtio-fs share is not valid.
    #[error("--fs tag={tag}: {why}")]
    Fs { tag: String, why: String },
    /// The directory for a socket or console file does not exist.
    #[error("{what} {path}: its directory does not exist")]
    NoParentDir { what: &'static str, path: PathBuf },
}

/// Where the guest's serial console goes.
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
    type Error = String;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        match value.as_str() {
            "stdout" => Ok(ConsoleConfig::Stdout),
            "off" => Ok(ConsoleConfig::Off),
            "" => Err("console must be stdout, off or a file path".into()),
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

/// A virtio-blk disk: `path=FILE[,readonly][,id=S]` on the command line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// Raw image file.
    pub path: PathBuf,
    /// Refuse guest writes.
    #[serde(default)]
    pub readonly: bool,
    /// What GET_ID answers (at most 20 bytes; default `disk<N>`).
    #[serde(default)]
    pub id: Option<String>,
}

impl std::str::FromStr for DiskConfig {
    type Err = ConfigError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let usage = |why: String| {
            ConfigError::Usage(format!(
                "--disk {value}: {why} (path=FILE[,readonly][,id=S])"
            ))
        };
        let mut path = None;
        let mut readonly = false;
        let mut id = None;
        for option in value.split(',') {
            match option.split_once('=') {
                Some(("path", p)) if !p.is_empty() => path = Some(PathBuf::from(p)),
                Some(("id", i)) if i.len() <= 20 => id = Some(i.to_owned()),
                Some(("id", _)) => return Err(usage("id is longer than 20 bytes".into())),
                None if option == "readonly" => readonly = true,
                _ => return Err(usage(format!("unknown option '{option}'"))),
            }
        }
        Ok(DiskConfig {
            path: path.ok_or_else(|| usage("no path".into()))?,
            readonly,
            id,
        })
    }
}

/// Lowest context id a guest may have (0-2 are reserved: hypervisor, local,
/// host).
pub const MIN_GUEST_CID: u64 = 3;

/// The vsock device: `cid=N,uds=PATH` on the command line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// The guest's context id (3 to 2^32 - 2).
    pub cid: u64,
    /// Unix socket of the host side; guest connections to host port P go to
    /// `<uds>_P`.
    pub uds: PathBuf,
}

impl std::str::FromStr for VsockConfig {
    type Err = ConfigError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let usage =
            |why: String| ConfigError::Usage(format!("--vsock {value}: {why} (cid=N,uds=PATH)"));
        let mut cid = None;
        let mut uds = None;
        for option in value.split(',') {
            match option.split_once('=') {
                Some(("cid", n)) => {
                    let n = n
                        .parse()
                        .map_err(|_| usage(format!("cid '{n}' is not a whole number")))?;
                    cid = Some(n);
                }
                Some(("uds", p)) if !p.is_empty() => uds = Some(PathBuf::from(p)),
                _ => return Err(usage(format!("unknown option '{option}'"))),
            }
        }
        Ok(VsockConfig {
            cid: cid.ok_or_else(|| usage("no cid".into()))?,
            uds: uds.ok_or_else(|| usage("no uds".into()))?,
        })
    }
}

/// A virtio-net card: `tap=NAME[,mac=M]` or `fd=N[,mac=M]` on the command
/// line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

impl std::str::FromStr for NetConfig {
    type Err = ConfigError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let usage = |why: String| {
            ConfigError::Usage(format!("--net {value}: {why} (tap=NAME|fd=N[,mac=M])"))
        };
        let mut net = NetConfig {
            tap: None,
            fd: None,
            mac: None,
        };
        for option in value.split(',') {
            match option.split_once('=') {
                Some(("tap", t)) => net.tap = Some(t.to_owned()),
                Some(("fd", n)) => {
                    let fd = n
                        .parse()
                        .map_err(|_| usage(format!("fd '{n}' is not a whole number")))?;
                    net.fd = Some(fd);
                }
                Some(("mac", m)) => net.mac = Some(m.to_owned()),
                _ => return Err(usage(format!("unknown option '{option}'"))),
            }
        }
        net.check().map_err(usage)?;
        Ok(net)
    }
}

impl NetConfig {
    /// One of tap and fd, a valid name, fd and MAC.
    fn check(&self) -> Result<(), String> {
        match (&self.tap, self.fd) {
            (Some(_), Some(_)) => return Err("give tap or fd, not both".into()),
            (None, None) => return Err("no tap or fd".into()),
            (Some(name), None) => {
                let max = crate::devices::virtio::net::tap::MAX_NAME_LEN;
                if name.is_empty() || name.len() > max || name.contains(['\0', '/']) {
                    return Err(format!("tap name '{name}' must be 1 to {max} bytes"));
                }
            }
            (None, Some(fd)) if fd < 3 => {
                return Err(format!(
                    "fd {fd} is not an inherited descriptor (3 or more)"
                ))
            }
            (None, Some(_)) => {}
        }
        if let Some(mac) = &self.mac {
            parse_mac(mac).map_err(|err| err.to_string())?;
        }
        Ok(())
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

/// Host fds a share may hold by default.
pub const DEFAULT_FS_MAX_FDS: u64 = protocol::SHARE_MAX_FDS;
/// Smallest and largest `max-fds` accepted.
pub const FS_MAX_FDS_RANGE: std::ops::RangeInclusive<u64> = 64..=1 << 20;

fn default_fs_max_fds() -> u64 {
    DEFAULT_FS_MAX_FDS
}

/// A virtio-fs share:
/// `tag=T,path=DIR[,cache=never|auto|always][,privileged][,max-fds=N]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsConfig {
    /// What the guest mounts (`mount -t virtiofs TAG DIR`), 1 to 36 bytes.
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

impl std::str::FromStr for FsConfig {
    type Err = ConfigError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let usage = |why: String| {
            ConfigError::Usage(format!(
                "--fs {value}: {why} \
                 (tag=T,path=DIR[,cache=never|auto|always][,privileged][,max-fds=N])"
            ))
        };
        let (mut tag, mut path) = (None, None);
        let mut share = FsConfig::new("", Path::new(""));
        for option in value.split(',') {
            match option.split_once('=') {
                Some(("tag", t)) => tag = Some(t.to_owned()),
                Some(("path", p)) if !p.is_empty() => path = Some(PathBuf::from(p)),
                Some(("cache", "never")) => share.cache = FsCache::Never,
                Some(("cache", "auto")) => share.cache = FsCache::Auto,
                Some(("cache", "always")) => share.cache = FsCache::Always,
                Some(("cache", c)) => return Err(usage(format!("unknown cache '{c}'"))),
                Some(("max-fds", n)) => {
                    share.max_fds = n
                        .parse()
                        .map_err(|_| usage(format!("max-fds '{n}' is not a whole number")))?;
                }
                None if option == "privileged" => share.privileged = true,
                _ => return Err(usage(format!("unknown option '{option}'"))),
            }
        }
        share.tag = tag.ok_or_else(|| usage("no tag".into()))?;
        share.path = path.ok_or_else(|| usage("no path".into()))?;
        Ok(share)
    }
}

/// Configuration as given: every field optional, so that a file and the
/// command line can be layered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialConfig {
    /// Guest kernel (ELF vmlinux or bzImage).
    pub kernel: Option<PathBuf>,
    /// Initrd.
    pub initrd: Option<PathBuf>,
    /// vCPU count.
    pub cpus: Option<u64>,
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
    /// virtio-blk disks.
    pub disks: Option<Vec<DiskConfig>>,
    /// The vsock device.
    pub vsock: Option<VsockConfig>,
    /// virtio-fs shares.
    pub fs: Option<Vec<FsConfig>>,
    /// virtio-net cards.
    pub net: Option<Vec<NetConfig>>,
    /// Seccomp filters of the VMM's threads.
    pub seccomp: Option<SeccompMode>,
}

impl PartialConfig {
    /// Reads a JSON config file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            path: path.to_owned(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| ConfigError::ParseFile {
            path: path.to_owned(),
            source,
        })
    }

    /// `self` with every field set in `top` replaced by `top`'s.
    pub fn overlay(self, top: PartialConfig) -> PartialConfig {
        PartialConfig {
            kernel: top.kernel.or(self.kernel),
            initrd: top.initrd.or(self.initrd),
            cpus: top.cpus.or(self.cpus),
            memory_mib: top.memory_mib.or(self.memory_mib),
            cmdline: top.cmdline.or(self.cmdline),
            console: top.console.or(self.console),
            api_sock: top.api_sock.or(self.api_sock),
            rng: top.rng.or(self.rng),
            disks: top.disks.or(self.disks),
            vsock: top.vsock.or(self.vsock),
            fs: top.fs.or(self.fs),
            net: top.net.or(self.net),
            seccomp: top.seccomp.or(self.seccomp),
        }
    }

    /// Fills defaults and validates.
    pub fn finish(self) -> Result<VmConfig, ConfigError> {
        let config = VmConfig {
            kernel: self.kernel.ok_or(ConfigError::NoKernel)?,
            initrd: self.initrd,
            cpus: match self.cpus.unwrap_or(u64::from(DEFAULT_CPUS)) {
                n @ 1.. if n <= u64::from(MAX_VCPUS) => n as u8,
                n => return Err(ConfigError::Cpus(n)),
            },
            memory_mib: self.memory_mib.unwrap_or(DEFAULT_MEMORY_MIB),
            cmdline: self.cmdline,
            console: self.console.unwrap_or_default(),
            api_sock: self.api_sock,
            rng: self.rng.unwrap_or(false),
            disks: self.disks.unwrap_or_default(),
            vsock: self.vsock,
            fs: self.fs.unwrap_or_default(),
            net: self.net.unwrap_or_default(),
            seccomp: self.seccomp.unwrap_or_default(),
        };
        config.validate()?;
        Ok(config)
    }
}

/// A validated VM configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    /// Guest kernel (ELF vmlinux or bzImage).
    pub kernel: PathBuf,
    /// Initrd.
    pub initrd: Option<PathBuf>,
    /// vCPU count (1..=32).
    pub cpus: u8,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// Extra kernel command line.
    pub cmdline: Option<String>,
    /// Serial console destination.
    pub console: ConsoleConfig,
    /// API socket path.
    pub api_sock: Option<PathBuf>,
    /// Attach a virtio-rng device (host entropy).
    pub rng: bool,
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
}

fn file_size(what: &'static str, path: &Path) -> Result<u64, ConfigError> {
    let file_err = |source| ConfigError::File {
        what,
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(file_err)?;
    if !meta.is_file() {
        return Err(file_err(std::io::Error::other("not a regular file")));
    }
    // Opening proves it is readable by this process.
    std::fs::File::open(path).map_err(file_err)?;
    Ok(meta.len())
}

fn require_parent_dir(what: &'static str, path: &Path) -> Result<(), ConfigError> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if parent.is_dir() {
        Ok(())
    } else {
        Err(ConfigError::NoParentDir {
            what,
            path: path.to_owned(),
        })
    }
}

/// Tags fit the config space and are unique; paths are directories.
fn validate_fs(shares: &[FsConfig]) -> Result<(), ConfigError> {
    for (index, share) in shares.iter().enumerate() {
        let bad = |why: String| ConfigError::Fs {
            tag: share.tag.clone(),
            why,
        };
        let tag_len = crate::devices::virtio::fs::TAG_LEN;
        if share.tag.is_empty() || share.tag.len() > tag_len || share.tag.contains('\0') {
            return Err(bad(format!("the tag must be 1 to {tag_len} bytes")));
        }
        if shares[..index].iter().any(|s| s.tag == share.tag) {
            return Err(bad("the tag is used twice".into()));
        }
        if !FS_MAX_FDS_RANGE.contains(&share.max_fds) {
            return Err(bad(format!(
                "max-fds must be between {} and {}, not {}",
                FS_MAX_FDS_RANGE.start(),
                FS_MAX_FDS_RANGE.end(),
                share.max_fds
            )));
        }
        match std::fs::metadata(&share.path) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(bad(format!("{} is not a directory", share.path.display()))),
            Err(err) => return Err(bad(format!("{}: {err}", share.path.display()))),
        }
    }
    Ok(())
}

impl VmConfig {
    /// Checks ranges and files, without building anything.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&self.memory_mib) {
            return Err(ConfigError::Memory(self.memory_mib));
        }
        let kernel_size = file_size("kernel", &self.kernel)?;
        if kernel_size == 0 {
            return Err(ConfigError::File {
                what: "kernel",
                path: self.kernel.clone(),
                source: std::io::Error::other("file is empty"),
            });
        }
        if let Some(initrd) = &self.initrd {
            let size = file_size("initrd", initrd)?;
            if size + kernel_size >= self.memory_mib << 20 {
                return Err(ConfigError::InitrdTooLarge {
                    path: initrd.clone(),
                    size_mib: size.div_ceil(1 << 20),
                    memory_mib: self.memory_mib,
                });
            }
        }
        for disk in &self.disks {
            file_size("disk", &disk.path)?;
        }
        validate_fs(&self.fs)?;
        for net in &self.net {
            net.check()
                .map_err(|why| ConfigError::Usage(format!("net: {why}")))?;
        }
        if let Some(sock) = &self.api_sock {
            if sock.symlink_metadata().is_ok() {
                return Err(ConfigError::ApiSocketInUse(sock.clone()));
            }
            require_parent_dir("api socket", sock)?;
        }
        if let ConsoleConfig::File(path) = &self.console {
            require_parent_dir("console file", path)?;
        }
        if let Some(vsock) = &self.vsock {
            if !(MIN_GUEST_CID..u64::from(u32::MAX)).contains(&vsock.cid) {
                return Err(ConfigError::Usage(format!(
                    "--vsock cid must be between {MIN_GUEST_CID} and {}, not {}",
                    u32::MAX - 1,
                    vsock.cid
                )));
            }
            if vsock.uds.symlink_metadata().is_ok() {
                return Err(ConfigError::VsockSocketInUse(vsock.uds.clone()));
            }
            require_parent_dir("vsock socket", &vsock.uds)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn kernel_file(dir: &Path) -> PathBuf {
        let path = dir.join("vmlinux");
        std::fs::File::create(&path)
            .unwrap()
            .write_all(b"\x7fELF....")
            .unwrap();
        path
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("runv-vmm-config-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn command_line_overrides_file_and_defaults_fill_in() {
        let dir = temp_dir("overlay");
        let file: PartialConfig = serde_json::from_str(&format!(
            r#"{{"kernel": "{}", "cpus": 2, "memory_mib": 256, "console": "stdout"}}"#,
            kernel_file(&dir).display()
        ))
        .unwrap();
        let cli = PartialConfig {
            cpus: Some(4),
            ..Default::default()
        };
        let config = file.overlay(cli).finish().unwrap();
        assert_eq!((config.cpus, config.memory_mib), (4, 256));
        assert_eq!(config.console, ConsoleConfig::Stdout);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bad_values_are_named() {
        let dir = temp_dir("bad");
        let kernel = Some(kernel_file(&dir));
        let with = |f: fn(&mut PartialConfig)| {
            let mut c = PartialConfig {
                kernel: kernel.clone(),
                ..Default::default()
            };
            f(&mut c);
            c.finish().unwrap_err().to_string()
        };
        assert!(with(|c| c.cpus = Some(0)).contains("--cpus must be between 1 and 32, not 0"));
        assert!(with(|c| c.cpus = Some(33)).contains("not 33"));
        assert!(with(|c| c.memory_mib = Some(16)).contains("--memory-mib must be between 64"));
        assert!(with(|c| c.kernel = Some("/nonexistent/vmlinux".into()))
            .contains("kernel /nonexistent/vmlinux"));
        assert!(
            with(|c| c.api_sock = Some("/nonexistent/dir/api.sock".into()))
                .contains("directory does not exist")
        );
        assert!(PartialConfig::default()
            .finish()
            .unwrap_err()
            .to_string()
            .contains("no kernel"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn initrd_larger_than_memory_and_taken_socket_are_refused() {
        let dir = temp_dir("initrd");
        let initrd = dir.join("initrd.img");
        std::fs::File::create(&initrd)
            .unwrap()
            .set_len(65 << 20)
            .unwrap();
        let taken = dir.join("api.sock");
        std::fs::File::create(&taken).unwrap();
        let base = PartialConfig {
            kernel: Some(kernel_file(&dir)),
            memory_mib: Some(64),
            ..Default::default()
        };
        let err = base
            .clone()
            .overlay(PartialConfig {
                initrd: Some(initrd),
                ..Default::default()
            })
            .finish();
        assert!(matches!(
            err,
            Err(ConfigError::InitrdTooLarge { size_mib: 65, .. })
        ));
        let err = base
            .overlay(PartialConfig {
                api_sock: Some(taken),
                ..Default::default()
            })
            .finish();
        assert!(matches!(err, Err(ConfigError::ApiSocketInUse(_))));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn disk_options_parse_and_bad_ones_are_named() {
        let disk: DiskConfig = "path=/img,readonly,id=root".parse().unwrap();
        assert_eq!(
            disk,
            DiskConfig {
                path: "/img".into(),
                readonly: true,
                id: Some("root".into())
            }
        );
        assert!("readonly"
            .parse::<DiskConfig>()
            .unwrap_err()
            .to_string()
            .contains("no path"));
        assert!("path=/i,rw"
            .parse::<DiskConfig>()
            .unwrap_err()
            .to_string()
            .contains("unknown option 'rw'"));
    }

    #[test]
    fn fs_options_parse_and_bad_ones_are_named() {
        let fs: FsConfig = "tag=runv,path=/srv,cache=never".parse().unwrap();
        assert_eq!(
            fs,
            FsConfig {
                tag: "runv".into(),
                path: "/srv".into(),
                cache: FsCache::Never,
                privileged: false,
                max_fds: DEFAULT_FS_MAX_FDS,
            }
        );
        let fs: FsConfig = "privileged,tag=t,path=/srv,max-fds=128".parse().unwrap();
        assert_eq!((fs.privileged, fs.max_fds), (true, 128));
        let err = |value: &str| value.parse::<FsConfig>().unwrap_err().to_string();
        assert!(err("path=/srv").contains("no tag"));
        assert!(err("tag=t").contains("no path"));
        assert!(err("tag=t,path=/srv,cache=sometimes").contains("unknown cache 'sometimes'"));
        assert!(err("tag=t,path=/srv,ro").contains("unknown option 'ro'"));
        assert!(err("tag=t,path=/srv,privileged=yes").contains("unknown option 'privileged=yes'"));
        assert!(err("tag=t,path=/srv,max-fds=many").contains("max-fds 'many'"));
        let from_file: PartialConfig =
            serde_json::from_str(r#"{"fs": [{"tag": "t", "path": "/srv", "cache": "always"}]}"#)
                .unwrap();
        let share = &from_file.fs.unwrap()[0];
        assert_eq!(
            (share.cache, share.privileged, share.max_fds),
            (FsCache::Always, false, DEFAULT_FS_MAX_FDS)
        );
        let from_file: PartialConfig = serde_json::from_str(
            r#"{"fs": [{"tag": "t", "path": "/srv", "privileged": true, "max_fds": 100}]}"#,
        )
        .unwrap();
        let share = &from_file.fs.unwrap()[0];
        assert_eq!((share.privileged, share.max_fds), (true, 100));
    }

    #[test]
    fn fs_shares_are_validated() {
        let dir = temp_dir("fs");
        let kernel = kernel_file(&dir);
        let with = |shares: Vec<(&str, PathBuf)>| {
            PartialConfig {
                kernel: Some(kernel.clone()),
                fs: Some(
                    shares
                        .into_iter()
                        .map(|(tag, path)| FsConfig::new(tag, &path))
                        .collect(),
                ),
                ..Default::default()
            }
            .finish()
        };
        assert!(with(vec![("a", dir.clone()), ("b", dir.clone())]).is_ok());
        let err = |shares| with(shares).unwrap_err().to_string();
        assert!(err(vec![("a", kernel.clone())]).contains("is not a directory"));
        assert!(err(vec![("a", dir.join("missing"))]).contains("--fs tag=a"));
        assert!(err(vec![("a", dir.clone()), ("a", dir.clone())]).contains("used twice"));
        let long = "x".repeat(37);
        assert!(err(vec![(&long, dir.clone())]).contains("1 to 36 bytes"));
        assert!(err(vec![("", dir.clone())]).contains("1 to 36 bytes"));
        for max_fds in [63, (1 << 20) + 1] {
            let mut share = FsConfig::new("a", &dir);
            share.max_fds = max_fds;
            let err = PartialConfig {
                kernel: Some(kernel.clone()),
                fs: Some(vec![share]),
                ..Default::default()
            }
            .finish()
            .unwrap_err()
            .to_string();
            assert!(err.contains(&format!("not {max_fds}")), "{err}");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn net_options_parse_and_bad_ones_are_named() {
        let net: NetConfig = "tap=runvtap0,mac=02:00:0a:d5:00:02".parse().unwrap();
        assert_eq!(net.tap.as_deref(), Some("runvtap0"));
        assert_eq!(net.mac_bytes(), Some([2, 0, 0x0a, 0xd5, 0, 2]));
        let net: NetConfig = "fd=7".parse().unwrap();
        assert_eq!((net.fd, net.mac), (Some(7), None));
        let err = |value: &str| value.parse::<NetConfig>().unwrap_err().to_string();
        assert!(err("mac=02:00:00:00:00:01").contains("no tap or fd"));
        assert!(err("tap=a,fd=3").contains("not both"));
        assert!(err("tap=").contains("1 to 15 bytes"));
        assert!(err("tap=abcdefghijklmnop").contains("1 to 15 bytes"));
        assert!(err("fd=1").contains("3 or more"));
        assert!(err("fd=x").contains("not a whole number"));
        assert!(err("tap=t,mac=01:00:00:00:00:01").contains("multicast"));
        assert!(err("tap=t,mac=02:00:00:00:00").contains("not six bytes"));
        assert!(err("tap=t,mac=02:00:00:00:00:zz").contains("not hexadecimal"));
        assert!(err("tap=t,queues=2").contains("unknown option 'queues=2'"));
    }

    #[test]
    fn unknown_file_fields_are_rejected() {
        let err =
            serde_json::from_str::<PartialConfig>(r#"{"kernel": "k", "vcpus": 2}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `vcpus`"));
    }
}
