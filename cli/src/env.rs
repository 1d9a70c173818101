//! `runv env`: what is installed and in effect on this host, for bug
//! reports: runv's parts with their paths and versions, the config, and
//! host facts.

use crate::cgroup::{self, Layout};
use crate::command::{self, VERSION_TIMEOUT};
use crate::containerd;
use crate::cpu;
use crate::files;
use containerd_shim_runv_v2::config::RunvConfig;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Bytes of the guest kernel searched for its version string.
const MAX_KERNEL_SCAN: u64 = 512 << 20;
/// Bytes of the initrd hashed.
const MAX_INITRD_HASH: u64 = 1 << 30;
/// Longest kernel version string kept.
const MAX_KERNEL_VERSION: u64 = 256;
/// Where the host kernel's release is read.
const OSRELEASE: &str = "/proc/sys/kernel/osrelease";

/// Everything `runv env` reports.
#[derive(Debug, Serialize)]
pub struct Env {
    /// This tool's version.
    pub runv: String,
    /// The config in effect.
    pub config: ConfigInfo,
    /// The shim containerd runs (on PATH).
    pub shim: Part,
    /// The VMM the config names.
    pub vmm: Part,
    /// The guest kernel the config names.
    pub kernel: Part,
    /// The initrd the config names, which holds runv-agent as /init.
    pub initrd: Part,
    /// The host.
    pub host: Host,
}

/// The config file and the values in effect.
#[derive(Debug, Serialize)]
pub struct ConfigInfo {
    /// The file read.
    pub path: PathBuf,
    /// `file`, `built-in defaults` (no file at the default path) or the
    /// error that kept it from loading (the defaults are shown then).
    pub source: String,
    /// The values in effect.
    pub values: RunvConfig,
}

/// One of runv's files: where it is and what version it says it is.
#[derive(Debug, Default, Serialize)]
pub struct Part {
    /// Its path, if found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Its version, or another fingerprint of it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Why it or its version could not be found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Why a part's version could not be read.
#[derive(Debug, thiserror::Error)]
pub enum VersionError {
    /// Its `--version` did not run.
    #[error(transparent)]
    Command(#[from] crate::command::CommandError),
    /// Reading it failed.
    #[error(transparent)]
    Read(#[from] std::io::Error),
    /// The kernel holds no `Linux version` string.
    #[error("no \"Linux version\" string in it")]
    NoKernelVersion,
}

impl Part {
    /// A part at `path` whose version `version` gives.
    fn at(path: &Path, version: Result<String, VersionError>) -> Self {
        let (version, error) = match version {
            Ok(version) => (Some(version), None),
            Err(err) => (None, Some(err.to_string())),
        };
        Self {
            path: Some(path.to_path_buf()),
            version,
            error,
        }
    }

    fn missing(why: impl Into<String>) -> Self {
        Self {
            error: Some(why.into()),
            ..Self::default()
        }
    }

    /// `path (version)` or what is missing.
    fn text(&self) -> String {
        let path = self
            .path
            .as_ref()
            .map(|path| path.display().to_string())
            .unwrap_or_else(|| "-".into());
        match (&self.version, &self.error) {
            (Some(version), _) => format!("{path} ({version})"),
            (None, Some(error)) => format!("{path} ({error})"),
            (None, None) => path,
        }
    }
}

/// Facts about the host.
#[derive(Debug, Serialize)]
pub struct Host {
    /// `uname -r`.
    pub kernel_release: String,
    /// The first CPU's model name.
    pub cpu_model: String,
    /// The KVM back-end modules loaded.
    pub kvm_modules: Vec<&'static str>,
    /// v2, v1, hybrid or none.
    pub cgroup_layout: &'static str,
    /// The v1 controllers mounted (empty on v2).
    pub cgroup_v1_controllers: Vec<String>,
    /// containerd on PATH and its version.
    pub containerd: Part,
}

/// Gathers the report, with runv's config at `config_path`.
pub fn collect(config_path: &Path) -> Env {
    let (config, source) = load_config(config_path);
    let shim = match command::find_on_path(containerd::SHIM_BINARY) {
        Some(path) => Part::at(&path, shim_version(&path)),
        None => Part::missing(format!("{} is not on PATH", containerd::SHIM_BINARY)),
    };
    let vmm = Part::at(
        &config.vmm,
        command::output_of(&config.vmm, &["--version"], VERSION_TIMEOUT)
            .map_err(VersionError::from),
    );
    let kernel = Part::at(&config.kernel, kernel_version(&config.kernel));
    let initrd = Part::at(&config.initrd, fingerprint(&config.initrd));
    Env {
        runv: env!("CARGO_PKG_VERSION").into(),
        config: ConfigInfo {
            path: config_path.into(),
            source,
            values: config,
        },
        shim,
        vmm,
        kernel,
        initrd,
        host: host(),
    }
}

/// The config at `path` and where its values came from; the defaults if it
/// does not load.
fn load_config(path: &Path) -> (RunvConfig, String) {
    let exists = path.symlink_metadata().is_ok();
    match RunvConfig::load(path) {
        Ok(config) if exists => (config, "file".into()),
        Ok(config) => (config, "built-in defaults (no file)".into()),
        Err(err) => {
            log::warn!("{err}; showing the built-in defaults");
            (RunvConfig::default(), format!("built-in defaults ({err})"))
        }
    }
}

/// The shim's `--version`: its `Version:` line's value.
fn shim_version(path: &Path) -> Result<String, VersionError> {
    let text = command::output_of(path, &["--version"], VERSION_TIMEOUT)?;
    Ok(version_line(&text))
}

/// The value of a `Version: X` line, else the first line.
fn version_line(text: &str) -> String {
    text.lines()
        .find_map(|line| line.trim().strip_prefix("Version:"))
        .or_else(|| text.lines().next())
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The `Linux version ...` string in an uncompressed kernel, up to its
/// first NUL or newline.
fn kernel_version(path: &Path) -> Result<String, VersionError> {
    const NEEDLE: &[u8] = b"Linux version ";
    let found = files::find_in_file(path, NEEDLE, MAX_KERNEL_SCAN)?;
    let Some((offset, mut file)) = found else {
        return Err(VersionError::NoKernelVersion);
    };
    file.seek(SeekFrom::Start(offset))?;
    let mut bytes = Vec::new();
    file.take(MAX_KERNEL_VERSION).read_to_end(&mut bytes)?;
    Ok(kernel_version_text(&bytes))
}

/// The version string at the start of `bytes`, without its `Linux version `
/// prefix: `6.1.192 (root@vm) ...`.
fn kernel_version_text(bytes: &[u8]) -> String {
    let end = bytes
        .iter()
        .position(|b| *b == 0 || *b == b'\n')
        .unwrap_or(bytes.len());
    let text = String::from_utf8_lossy(&bytes[..end]);
    text.strip_prefix("Linux version ")
        .unwrap_or(&text)
        .trim()
        .to_string()
}

/// `<size> bytes, sha256 <hex>` of `path` (the initrd has no version of its
/// own: the hash tells builds apart).
fn fingerprint(path: &Path) -> Result<String, VersionError> {
    let file = files::open_no_follow(path)?;
    let mut hasher = Sha256::new();
    let mut reader = file.take(MAX_INITRD_HASH);
    let size = std::io::copy(&mut reader, &mut hasher)?;
    let hex: String = hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    Ok(format!("{size} bytes, sha256 {hex}"))
}

fn host() -> Host {
    let read = |path: &str, max| {
        files::read_bounded(Path::new(path), max).unwrap_or_else(|err| {
            log::warn!("cannot read {path}: {err}");
            String::new()
        })
    };
    let cpuinfo = read(cpu::CPUINFO, cpu::MAX_CPUINFO);
    let layout = cgroup::layout();
    let controllers = match &layout {
        Layout::V1 { controllers } | Layout::Hybrid { controllers } => controllers.clone(),
        Layout::V2 | Layout::None => Vec::new(),
    };
    let containerd = match containerd::binary() {
        Some(path) => Part::at(
            &path,
            containerd::version(&path).map_err(VersionError::from),
        ),
        None => Part::missing("containerd is not on PATH"),
    };
    Host {
        kernel_release: read(OSRELEASE, 256).trim().to_string(),
        cpu_model: cpu::model_name(&cpuinfo).unwrap_or("unknown").to_string(),
        kvm_modules: cpu::kvm_modules(),
        cgroup_layout: layout.name(),
        cgroup_v1_controllers: controllers,
        containerd,
    }
}

/// The report as `key: value` lines or JSON.
pub fn render(env: &Env, json: bool) -> Result<String, serde_json::Error> {
    if json {
        return serde_json::to_string_pretty(env).map(|text| text + "\n");
    }
    let values = serde_json::to_string(&env.config.values)?;
    let host = &env.host;
    let controllers = if host.cgroup_v1_controllers.is_empty() {
        String::new()
    } else {
        format!(" ({})", host.cgroup_v1_controllers.join(" "))
    };
    let lines = [
        format!("runv:            {}", env.runv),
        format!(
            "config:          {} ({})",
            env.config.path.display(),
            env.config.source
        ),
        format!("config values:   {values}"),
        format!("shim:            {}", env.shim.text()),
        format!("vmm:             {}", env.vmm.text()),
        format!("kernel:          {}", env.kernel.text()),
        format!("initrd (agent):  {}", env.initrd.text()),
        format!("host kernel:     {}", host.kernel_release),
        format!("host cpu:        {}", host.cpu_model),
        format!("host kvm:        {}", host.kvm_modules.join(" ")),
        format!("host cgroup:     {}{controllers}", host.cgroup_layout),
        format!("containerd:      {}", host.containerd.text()),
    ];
    Ok(lines.map(|line| line + "\n").concat())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_versions_from_their_texts() {
        let shim = "containerd-shim-runv-v2:\n  Runtime: io.pouch.runv.v2\n  Version: 0.1.0\n";
        assert_eq!(version_line(shim), "0.1.0");
        assert_eq!(version_line("runv-vmm 0.1.0\n"), "runv-vmm 0.1.0");
        assert_eq!(version_line(""), "");
        assert_eq!(
            kernel_version_text(b"Linux version 6.1.192 (root@vm) (gcc 12) #1 SMP\n\0rest"),
            "6.1.192 (root@vm) (gcc 12) #1 SMP"
        );
    }

    #[test]
    fn finds_the_kernel_version_and_hashes_the_initrd() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinux");
        std::fs::write(&kernel, b"\x7fELF....Linux version 6.1.192 (root@vm)\0more").unwrap();
        assert_eq!(kernel_version(&kernel).unwrap(), "6.1.192 (root@vm)");
        let initrd = dir.path().join("initrd.img");
        std::fs::write(&initrd, b"abc").unwrap();
        assert_eq!(
            fingerprint(&initrd).unwrap(),
            "3 bytes, sha256 ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(fingerprint(&dir.path().join("none")).is_err());
    }
}
