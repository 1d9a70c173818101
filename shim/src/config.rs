//! runv's configuration file (`/etc/runv/config.toml`) and the pod annotations that
//! may override it.

mod annotations;

pub use annotations::AnnotationProblem;

pub use protocol::vm_config::SeccompMode;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Where the configuration is read from unless the runtime option `ConfigPath`
/// names another file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/runv/config.toml";

/// Largest `boot_timeout_secs`: a create that boots a VM ends within 10 minutes
/// (the emulated test host boots in 10-20 s), and the deadline it gives stays
/// far from `Instant`'s range.
pub const MAX_BOOT_TIMEOUT_SECS: u64 = 600;
/// How errors name [`MAX_BOOT_TIMEOUT_SECS`].
pub(super) const BOOT_TIMEOUT_LIMIT: &str = "runv's maximum";

/// Largest vCPU count a VM may have (x86 APIC ids of one byte).
const MAX_VCPUS_LIMIT: u32 = 255;

/// Smallest guest memory (MiB) in which the guest kernel and agent run.
const MIN_MEMORY_MIB: u32 = 64;

/// Errors of reading or applying the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("runv config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown keys or wrong types.
    #[error("runv config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// A value is out of its range.
    #[error("runv config {path}: {problem}")]
    Invalid {
        path: PathBuf,
        problem: InvalidValue,
    },
    /// A pod annotation is unknown, not overridable or has a bad value.
    #[error("annotation {key}={value:?}: {problem}")]
    Annotation {
        key: String,
        value: String,
        problem: AnnotationProblem,
    },
    /// A file the VM needs is missing.
    #[error("runv config: {what} {path} does not exist or is not a file")]
    MissingFile { what: &'static str, path: PathBuf },
}

/// A configured value out of its range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidValue {
    /// `max_vcpus` is 0 or above what x86 addresses.
    #[error("max_vcpus {0} is not in 1..={MAX_VCPUS_LIMIT}")]
    MaxVcpus(u32),
    /// `max_memory_mib` is too small for the guest.
    #[error("max_memory_mib {0} is below {MIN_MEMORY_MIB}")]
    MaxMemory(u32),
    /// A value below its minimum.
    #[error("{key} {value} is below {min}")]
    Below {
        key: &'static str,
        value: u64,
        min: u64,
    },
    /// A value above its maximum, called `max_name`.
    #[error("{key} {value} is above {max_name} = {max}")]
    Above {
        key: &'static str,
        value: u64,
        max_name: &'static str,
        max: u64,
    },
    /// An unknown log level.
    #[error("log_level {0:?} is not one of {levels}", levels = LOG_LEVELS.join(", "))]
    LogLevel(String),
    /// `enable_annotations` lists a key no annotation may override.
    #[error(
        "enable_annotations: {0:?} cannot be overridden (one of {keys})",
        keys = OVERRIDABLE.join(", ")
    )]
    NotOverridable(String),
}

/// The runtime's settings: which VMM, kernel and initrd, and how big a VM is.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunvConfig {
    /// The `runv-vmm` binary.
    pub vmm: PathBuf,
    /// The guest kernel (uncompressed vmlinux).
    pub kernel: PathBuf,
    /// The guest initrd, with runv-agent as /init.
    pub initrd: PathBuf,
    /// vCPUs of a VM whose containers set no CPU limit.
    pub default_vcpus: u32,
    /// Guest memory (MiB) of a VM whose containers set no memory limit.
    pub default_memory_mib: u32,
    /// Guest memory (MiB) for the guest kernel and agent, added to the containers'
    /// memory limits when they set some.
    pub overhead_memory_mib: u32,
    /// Upper bound of vCPUs one VM may get, from its containers' limits or an
    /// annotation.
    pub max_vcpus: u32,
    /// Upper bound of one VM's guest memory (MiB), from its containers' limits or
    /// an annotation.
    pub max_memory_mib: u32,
    /// How long the guest agent may take to answer after the VMM started
    /// (1..=[`MAX_BOOT_TIMEOUT_SECS`]).
    pub boot_timeout_secs: u64,
    /// Log level of the shim: error, warn, info, debug or trace.
    pub log_level: String,
    /// Write the guest's serial console to `<sandbox dir>/console.log`.
    pub debug_console: bool,
    /// Keys of this file that pod annotations `io.pouch.runv.<key>` may override.
    pub enable_annotations: Vec<String>,
    /// The VMM's seccomp filters: `enforce` (a forbidden syscall kills it),
    /// `log` (the host's audit log names it) or `off`. Never overridable.
    pub vmm_seccomp: SeccompMode,
    /// Start the VMM in its jail (own mount and pid namespaces, a root that
    /// holds only its VM's files; `jail`). Needs a static runv-vmm. Never
    /// overridable.
    pub vmm_jail: bool,
    /// Give memory the guest frees back to the host (virtio-balloon free
    /// page reporting): an idle pod then holds only what its guest uses, at
    /// the cost of a fault when the guest reuses a page given back.
    pub free_page_reporting: bool,
    /// Start pods without a network card from a VM template: a snapshot of
    /// a guest booted to its agent, one per VM shape, made by the first pod
    /// of that shape (see `sandbox::template`). Never overridable.
    pub vm_templates: bool,
}

impl Default for RunvConfig {
    fn default() -> Self {
        Self {
            vmm: "/usr/local/bin/runv-vmm".into(),
            kernel: "/usr/share/runv/vmlinux".into(),
            initrd: "/usr/share/runv/initrd.img".into(),
            default_vcpus: 1,
            default_memory_mib: 256,
            overhead_memory_mib: 128,
            max_vcpus: 8,
            max_memory_mib: 16384,
            boot_timeout_secs: 30,
            log_level: "info".into(),
            debug_console: false,
            enable_annotations: vec!["default_vcpus".into(), "default_memory_mib".into()],
            vmm_seccomp: SeccompMode::Enforce,
            vmm_jail: true,
            free_page_reporting: true,
            vm_templates: false,
        }
    }
}

/// Most characters of the offending line a parse error quotes.
const QUOTED_LINE_CHARS: usize = 120;

/// `err` with the line of `text` it is about, so that a wrong type names its
/// key: "line 3 (`vmm_jail = "yes"`): invalid type: ...".
fn parse_error_text(text: &str, err: &toml::de::Error) -> String {
    let Some(start) = err
        .span()
        .map(|span| span.start)
        .filter(|at| *at <= text.len())
    else {
        return err.message().to_string();
    };
    let before = text.get(..start).unwrap_or_default();
    let number = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |at| at + 1);
    let line = text
        .get(line_start..)
        .and_then(|rest| rest.lines().next())
        .unwrap_or_default();
    let quoted: String = line.trim().chars().take(QUOTED_LINE_CHARS).collect();
    format!("line {number} (`{quoted}`): {}", err.message())
}

/// Keys an annotation may override, when `enable_annotations` lists them.
pub(super) const OVERRIDABLE: &[&str] = &[
    "default_vcpus",
    "default_memory_mib",
    "overhead_memory_mib",
    "boot_timeout_secs",
    "debug_console",
];

const LOG_LEVELS: &[&str] = &["error", "warn", "info", "debug", "trace"];

impl RunvConfig {
    /// Reads and checks the configuration at `path`. A missing file at the default
    /// path gives the built-in defaults; a missing file named explicitly is an error.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err)
                if err.kind() == std::io::ErrorKind::NotFound
                    && path == Path::new(DEFAULT_CONFIG_PATH) =>
            {
                return Ok(Self::default());
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.into(),
                    source,
                })
            }
        };
        let config: Self = toml::from_str(&text).map_err(|err| ConfigError::Parse {
            path: path.into(),
            message: parse_error_text(&text, &err),
        })?;
        config.validate().map_err(|problem| ConfigError::Invalid {
            path: path.into(),
            problem,
        })?;
        Ok(config)
    }

    pub(super) fn validate(&self) -> Result<(), InvalidValue> {
        if !(1..=MAX_VCPUS_LIMIT).contains(&self.max_vcpus) {
            return Err(InvalidValue::MaxVcpus(self.max_vcpus));
        }
        check_range(
            "default_vcpus",
            self.default_vcpus,
            1,
            self.max_vcpus,
            "max_vcpus",
        )?;
        if self.max_memory_mib < MIN_MEMORY_MIB {
            return Err(InvalidValue::MaxMemory(self.max_memory_mib));
        }
        for (key, value) in [
            ("default_memory_mib", self.default_memory_mib),
            ("overhead_memory_mib", self.overhead_memory_mib),
        ] {
            check_range(
                key,
                value,
                MIN_MEMORY_MIB,
                self.max_memory_mib,
                "max_memory_mib",
            )?;
        }
        check_range(
            "boot_timeout_secs",
            self.boot_timeout_secs,
            1,
            MAX_BOOT_TIMEOUT_SECS,
            BOOT_TIMEOUT_LIMIT,
        )?;
        if !LOG_LEVELS.contains(&self.log_level.as_str()) {
            return Err(InvalidValue::LogLevel(self.log_level.clone()));
        }
        if let Some(key) = self
            .enable_annotations
            .iter()
            .find(|key| !OVERRIDABLE.contains(&key.as_str()))
        {
            return Err(InvalidValue::NotOverridable(key.clone()));
        }
        Ok(())
    }

    /// Checks that the files the VM needs exist, naming the one that does not.
    pub fn check_files(&self) -> Result<(), ConfigError> {
        for (what, path) in [
            ("vmm", &self.vmm),
            ("kernel", &self.kernel),
            ("initrd", &self.initrd),
        ] {
            if !path.is_file() {
                return Err(ConfigError::MissingFile {
                    what,
                    path: path.clone(),
                });
            }
        }
        Ok(())
    }
}

/// Checks `min <= value <= max`, naming `key` and, above, the maximum's name.
fn check_range<T>(
    key: &'static str,
    value: T,
    min: T,
    max: T,
    max_name: &'static str,
) -> Result<(), InvalidValue>
where
    T: Into<u64>,
{
    let (value, min, max) = (value.into(), min.into(), max.into());
    if value < min {
        return Err(InvalidValue::Below { key, value, min });
    }
    if value > max {
        return Err(InvalidValue::Above {
            key,
            value,
            max_name,
            max,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
