//! runv's configuration file (`/etc/runv/config.toml`) and the pod annotations that
//! may override it.

use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Where the configuration is read from unless the runtime option `ConfigPath`
/// names another file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/runv/config.toml";

/// Prefix of the pod annotations that override configuration values.
pub const ANNOTATION_PREFIX: &str = "io.pouch.runv.";

/// Largest `boot_timeout_secs`: a create that boots a VM ends within 10 minutes
/// (the emulated test host boots in 10-20 s), and the deadline it gives stays
/// far from `Instant`'s range.
pub const MAX_BOOT_TIMEOUT_SECS: u64 = 600;
/// How errors name [`MAX_BOOT_TIMEOUT_SECS`].
const BOOT_TIMEOUT_LIMIT: &str = "runv's maximum";

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
    #[error("runv config {path}: {message}")]
    Invalid { path: PathBuf, message: String },
    /// A pod annotation is unknown, not overridable or has a bad value.
    #[error("annotation {key}={value:?}: {message}")]
    Annotation {
        key: String,
        value: String,
        message: String,
    },
}

/// The runtime's settings: which VMM, kernel and initrd, and how big a VM is.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
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
    pub vmm_seccomp: VmmSeccomp,
    /// Start the VMM in its jail (own mount and pid namespaces, a root that
    /// holds only its VM's files; `jail`). Needs a static runv-vmm. Never
    /// overridable.
    pub vmm_jail: bool,
}

/// `vmm_seccomp`: runv-vmm's `--seccomp` mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmmSeccomp {
    /// A syscall outside a thread's list kills the VMM.
    #[default]
    Enforce,
    /// Logged, not refused.
    Log,
    /// No filters.
    Off,
}

impl VmmSeccomp {
    /// The value of runv-vmm's `--seccomp`.
    pub fn flag(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::Log => "log",
            Self::Off => "off",
        }
    }
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
            vmm_seccomp: VmmSeccomp::Enforce,
            vmm_jail: true,
        }
    }
}

/// Keys an annotation may override, when `enable_annotations` lists them.
const OVERRIDABLE: &[&str] = &[
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
            message: err.message().to_string(),
        })?;
        config.validate().map_err(|message| ConfigError::Invalid {
            path: path.into(),
            message,
        })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        if !(1..=MAX_VCPUS_LIMIT).contains(&self.max_vcpus) {
            return Err(format!(
                "max_vcpus {} is not in 1..={MAX_VCPUS_LIMIT}",
                self.max_vcpus
            ));
        }
        check_range(
            "default_vcpus",
            self.default_vcpus,
            1,
            self.max_vcpus,
            "max_vcpus",
        )?;
        if self.max_memory_mib < MIN_MEMORY_MIB {
            return Err(format!(
                "max_memory_mib {} is below {MIN_MEMORY_MIB}",
                self.max_memory_mib
            ));
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
            return Err(format!(
                "log_level {:?} is not one of {}",
                self.log_level,
                LOG_LEVELS.join(", ")
            ));
        }
        if let Some(key) = self
            .enable_annotations
            .iter()
            .find(|key| !OVERRIDABLE.contains(&key.as_str()))
        {
            return Err(format!(
                "enable_annotations: {key:?} cannot be overridden (one of {})",
                OVERRIDABLE.join(", ")
            ));
        }
        Ok(())
    }

    /// This configuration with the pod's `io.pouch.runv.*` annotations applied.
    pub fn with_annotations(
        &self,
        annotations: &HashMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let mut config = self.clone();
        let mut keys: Vec<_> = annotations
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix(ANNOTATION_PREFIX)?, k, v)))
            .collect();
        keys.sort();
        for (key, full_key, value) in keys {
            let fail = |message: String| ConfigError::Annotation {
                key: full_key.clone(),
                value: value.clone(),
                message,
            };
            if !OVERRIDABLE.contains(&key) {
                return Err(fail(format!(
                    "unknown runv annotation (known: {})",
                    OVERRIDABLE.join(", ")
                )));
            }
            if !config.enable_annotations.iter().any(|k| k == key) {
                return Err(fail(format!(
                    "{key} is not listed in the config's enable_annotations"
                )));
            }
            // Maxima are never overridable: a tenant cannot raise them.
            let (max_vcpus, max_memory) = (config.max_vcpus, config.max_memory_mib);
            let memory = || at_most(value, max_memory, "max_memory_mib").map_err(fail);
            match key {
                "default_vcpus" => {
                    config.default_vcpus = at_most(value, max_vcpus, "max_vcpus").map_err(fail)?
                }
                "default_memory_mib" => config.default_memory_mib = memory()?,
                "overhead_memory_mib" => config.overhead_memory_mib = memory()?,
                "boot_timeout_secs" => {
                    config.boot_timeout_secs =
                        at_most(value, MAX_BOOT_TIMEOUT_SECS, BOOT_TIMEOUT_LIMIT).map_err(fail)?
                }
                "debug_console" => {
                    config.debug_console = value
                        .parse()
                        .map_err(|_| fail("not true or false".into()))?
                }
                _ => unreachable!("OVERRIDABLE lists only the keys matched here"),
            }
            config.validate().map_err(fail)?;
        }
        Ok(config)
    }

    /// Checks that the files the VM needs exist, naming the one that does not.
    pub fn check_files(&self) -> Result<(), String> {
        for (what, path) in [
            ("vmm", &self.vmm),
            ("kernel", &self.kernel),
            ("initrd", &self.initrd),
        ] {
            if !path.is_file() {
                return Err(format!(
                    "runv config: {what} {} does not exist or is not a file",
                    path.display()
                ));
            }
        }
        Ok(())
    }
}

/// Checks `min <= value <= max`, naming `key` and, above, the maximum's name.
fn check_range<T>(key: &str, value: T, min: T, max: T, max_name: &str) -> Result<(), String>
where
    T: PartialOrd + std::fmt::Display,
{
    if value < min {
        return Err(format!("{key} {value} is below {min}"));
    }
    if value > max {
        return Err(format!("{key} {value} is above {max_name} = {max}"));
    }
    Ok(())
}

/// An annotation's `value` as a number no larger than `max` (called `max_name`
/// in the error); the lower bounds are [`RunvConfig::validate`]'s.
fn at_most<T>(value: &str, max: T, max_name: &str) -> Result<T, String>
where
    T: Copy + Into<u64> + TryFrom<u64> + std::fmt::Display,
{
    let above = || format!("above {max_name} = {max}");
    let number: u64 = match value.parse() {
        Ok(number) => number,
        // All digits but too long for a u64: above any maximum.
        Err(_) if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
            return Err(above())
        }
        Err(_) => return Err("not a non-negative integer".into()),
    };
    if number > max.into() {
        return Err(above());
    }
    T::try_from(number).map_err(|_| above())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn load_text(text: &str) -> Result<RunvConfig, ConfigError> {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        RunvConfig::load(file.path())
    }

    #[test]
    fn reads_every_key() {
        let config = load_text(
            r#"
            vmm = "/v"
            kernel = "/k"
            initrd = "/i"
            default_vcpus = 2
            default_memory_mib = 512
            overhead_memory_mib = 96
            max_vcpus = 4
            max_memory_mib = 1024
            boot_timeout_secs = 9
            log_level = "debug"
            debug_console = true
            enable_annotations = ["default_vcpus"]
            vmm_seccomp = "log"
            vmm_jail = false
            "#,
        )
        .unwrap();
        assert_eq!(config.vmm_seccomp, VmmSeccomp::Log);
        assert!(!config.vmm_jail);
        assert_eq!(config.kernel, PathBuf::from("/k"));
        assert_eq!(config.default_vcpus, 2);
        assert_eq!(config.default_memory_mib, 512);
        assert_eq!(config.overhead_memory_mib, 96);
        assert_eq!(config.max_memory_mib, 1024);
        assert_eq!(config.boot_timeout_secs, 9);
        assert!(config.debug_console);
    }

    #[test]
    fn a_partial_file_keeps_the_defaults() {
        let config = load_text("kernel = \"/k\"\n").unwrap();
        assert_eq!(config.default_memory_mib, 256);
        assert_eq!(config.vmm, RunvConfig::default().vmm);
    }

    #[test]
    fn bad_files_name_the_problem() {
        let unknown = load_text("kernal = \"/k\"\n").unwrap_err().to_string();
        assert!(unknown.contains("kernal"), "{unknown}");
        let syntax = load_text("kernel = \n").unwrap_err().to_string();
        assert!(syntax.contains("runv config"), "{syntax}");
        let range = load_text("default_vcpus = 0\n").unwrap_err().to_string();
        assert!(range.contains("default_vcpus"), "{range}");
        let memory = load_text("default_memory_mib = 20000\n")
            .unwrap_err()
            .to_string();
        assert!(memory.contains("above max_memory_mib = 16384"), "{memory}");
        let max = load_text("max_memory_mib = 128\n").unwrap_err().to_string();
        assert!(max.contains("default_memory_mib 256"), "{max}");
        let timeout = load_text("boot_timeout_secs = 18446744073709551615\n")
            .unwrap_err()
            .to_string();
        assert!(timeout.contains("above runv's maximum = 600"), "{timeout}");
        let level = load_text("log_level = \"loud\"\n").unwrap_err().to_string();
        assert!(level.contains("log_level"), "{level}");
        let missing = RunvConfig::load(Path::new("/nonexistent/runv.toml")).unwrap_err();
        assert!(missing.to_string().contains("/nonexistent/runv.toml"));
    }

    #[test]
    fn annotations_stay_within_the_maxima() {
        let config = RunvConfig {
            enable_annotations: OVERRIDABLE.iter().map(|k| k.to_string()).collect(),
            ..RunvConfig::default()
        };
        let set = |k: &str, v: &str| HashMap::from([(format!("{ANNOTATION_PREFIX}{k}"), v.into())]);
        let err = config
            .with_annotations(&set("default_memory_mib", "1048576"))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "annotation io.pouch.runv.default_memory_mib=\"1048576\": \
             above max_memory_mib = 16384"
        );
        for (key, value, max) in [
            (
                "default_memory_mib",
                "99999999999999999999999",
                "max_memory_mib = 16384",
            ),
            (
                "overhead_memory_mib",
                "4294967295",
                "max_memory_mib = 16384",
            ),
            ("default_vcpus", "4294967296", "max_vcpus = 8"),
            (
                "boot_timeout_secs",
                "18446744073709551615",
                "runv's maximum = 600",
            ),
        ] {
            let err = config.with_annotations(&set(key, value)).unwrap_err();
            let text = err.to_string();
            assert!(
                text.contains(&format!("{ANNOTATION_PREFIX}{key}")) && text.contains(max),
                "{text}"
            );
        }
        let most = config
            .with_annotations(&HashMap::from([
                (
                    format!("{ANNOTATION_PREFIX}default_memory_mib"),
                    "16384".into(),
                ),
                (
                    format!("{ANNOTATION_PREFIX}boot_timeout_secs"),
                    "600".into(),
                ),
            ]))
            .unwrap();
        assert_eq!(most.default_memory_mib, 16384);
        // The longest boot deadline is an ordinary Instant.
        let deadline = std::time::Instant::now()
            .checked_add(std::time::Duration::from_secs(most.boot_timeout_secs));
        assert!(deadline.is_some());
        let err = config
            .with_annotations(&set("boot_timeout_secs", "0"))
            .unwrap_err();
        assert!(err.to_string().contains("below 1"), "{err}");
        let err = config
            .with_annotations(&set("default_memory_mib", "-1"))
            .unwrap_err();
        assert!(
            err.to_string().contains("not a non-negative integer"),
            "{err}"
        );
    }

    #[test]
    fn annotations_override_only_enabled_keys() {
        let config = RunvConfig::default();
        let set = |k: &str, v: &str| HashMap::from([(format!("{ANNOTATION_PREFIX}{k}"), v.into())]);
        let bigger = config
            .with_annotations(&set("default_memory_mib", "512"))
            .unwrap();
        assert_eq!(bigger.default_memory_mib, 512);
        let err = config
            .with_annotations(&set("default_vcpus", "many"))
            .unwrap_err();
        assert!(
            err.to_string().contains("io.pouch.runv.default_vcpus"),
            "{err}"
        );
        let err = config
            .with_annotations(&set("kernel", "/evil"))
            .unwrap_err();
        assert!(err.to_string().contains("unknown runv annotation"), "{err}");
        let err = config
            .with_annotations(&set("boot_timeout_secs", "5"))
            .unwrap_err();
        assert!(err.to_string().contains("enable_annotations"), "{err}");
        let err = config
            .with_annotations(&set("default_vcpus", "0"))
            .unwrap_err();
        assert!(err.to_string().contains("default_vcpus"), "{err}");
        let err = config
            .with_annotations(&set("default_vcpus", "9"))
            .unwrap_err();
        assert!(err.to_string().ends_with("above max_vcpus = 8"), "{err}");
        let other = HashMap::from([("io.kubernetes.cri.sandbox-id".into(), "x".into())]);
        assert_eq!(config.with_annotations(&other).unwrap(), config);
    }
}
