//! `runv ps`: the pods on this host, from the shim's sandbox directories
//! (`/run/runv/<pod>/`): each one's VMM pid (`vmm.pid`), its uptime (from
//! `/proc/<pid>/stat`) and what the VMM's API (`vm/api.sock`) says of the VM.
//!
//! The directories are written by the shim and the VMM: no symlink in them
//! is followed, and every read is bounded.

use crate::files;
use containerd_shim_runv_v2::paths::SandboxDir;
use containerd_shim_runv_v2::vmm_api::{VmmApi, VmmApiError};
use protocol::vmm::{VmInfo, VmState};
use serde::Serialize;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Sandbox directories looked at, at most.
const MAX_PODS: usize = 4096;
/// Bytes of a pid file read.
const MAX_PID_FILE: u64 = 32;
/// Bytes of a `/proc/<pid>/cmdline` or `stat` read.
pub const MAX_PROC_FILE: u64 = 64 * 1024;
/// How long one VMM may take to answer a call, connect included.
const API_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the pods could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum PsError {
    /// The runtime root is not a directory (a symlink is refused).
    #[error("{0} is not a directory")]
    NotDirectory(PathBuf),
    /// The runtime root could not be read.
    #[error("cannot list {path}: {source}")]
    ReadRoot { path: PathBuf, source: io::Error },
}

/// Why the VMM's API did not answer.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// `vm/` is missing or not a directory.
    #[error("{0} is not a directory")]
    VmDir(PathBuf),
    /// The socket could not be reached, or the call failed or timed out.
    #[error(transparent)]
    Call(#[from] VmmApiError),
}

/// One pod as `runv ps` shows it.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct Pod {
    /// The sandbox id.
    pub id: String,
    /// The VMM's pid, if it runs.
    pub vmm_pid: Option<i32>,
    /// running, paused or shutting-down, as the VMM says.
    pub state: Option<String>,
    /// The VM's vCPUs.
    pub vcpus: Option<u32>,
    /// The VM's memory (MiB).
    pub memory_mib: Option<u64>,
    /// Seconds since the VMM started.
    pub uptime_secs: Option<u64>,
    /// What could not be found out.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

/// The pods under `run_root`, sorted by id.
pub fn list(run_root: &Path) -> Result<Vec<Pod>, PsError> {
    Ok(sandbox_ids(run_root)?
        .into_iter()
        .map(|id| pod(run_root, id))
        .collect())
}

/// The ids of the sandbox directories under `run_root` (not symlinks, valid
/// ids, at most [`MAX_PODS`]), sorted.
pub fn sandbox_ids(run_root: &Path) -> Result<Vec<String>, PsError> {
    match run_root.symlink_metadata() {
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(PsError::ReadRoot {
                path: run_root.into(),
                source,
            })
        }
        Ok(meta) if !meta.is_dir() => return Err(PsError::NotDirectory(run_root.into())),
        Ok(_) => {}
    }
    let entries = std::fs::read_dir(run_root).map_err(|source| PsError::ReadRoot {
        path: run_root.into(),
        source,
    })?;
    let mut ids = Vec::new();
    for entry in entries.take(MAX_PODS) {
        let entry = match entry {
            Ok(entry) => entry,
            Err(err) => {
                log::warn!("reading {}: {err}", run_root.display());
                continue;
            }
        };
        // The entry's own type: a symlink is not a directory here.
        if !entry.file_type().is_ok_and(|kind| kind.is_dir()) {
            continue;
        }
        let Some(id) = entry.file_name().to_str().map(String::from) else {
            continue;
        };
        if protocol::id::check_id("sandbox", &id).is_err() {
            log::debug!("skipping {}: not a sandbox id", entry.path().display());
            continue;
        }
        ids.push(id);
    }
    ids.sort();
    Ok(ids)
}

/// What can be found out about pod `id`.
fn pod(run_root: &Path, id: String) -> Pod {
    let dir = SandboxDir::under(run_root, &id);
    let mut pod = Pod {
        id,
        ..Pod::default()
    };
    match vmm_pid(&dir) {
        Ok(pid) => {
            pod.vmm_pid = Some(pid);
            match uptime(pid) {
                Ok(secs) => pod.uptime_secs = Some(secs),
                Err(err) => pod.problems.push(format!("uptime: {err}")),
            }
        }
        Err(err) => pod.problems.push(err.to_string()),
    }
    match describe(&dir) {
        Ok(info) => {
            pod.state = Some(state_name(info.state()).into());
            pod.vcpus = Some(info.vcpus);
            pod.memory_mib = Some(info.memory_mib);
        }
        Err(err) => pod.problems.push(err.to_string()),
    }
    pod
}

/// Why a pod's VMM pid or uptime could not be found out.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The pid file holds no pid.
    #[error("{0}: no pid in it")]
    NoPid(PathBuf),
    /// No process has the recorded pid.
    #[error("VMM {0} is not running")]
    NotRunning(i32),
    /// The recorded pid now belongs to another process.
    #[error("pid {0} is no longer this pod's VMM")]
    NotThisPodsVmm(i32),
    /// A `/proc` file lacks the field looked for.
    #[error("no {field} in {file}")]
    NoField {
        /// The field.
        field: &'static str,
        /// The file.
        file: &'static str,
    },
    /// `sysconf(_SC_CLK_TCK)` gave nothing usable.
    #[error("no clock tick rate")]
    NoClockTicks,
}

/// `path`, read within `max` bytes.
fn read_proc(path: &Path, max: u64) -> Result<String, ProcError> {
    files::read_bounded(path, max).map_err(|source| ProcError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// The pid in `vmm.pid`, if that process still runs this sandbox's VMM.
pub fn vmm_pid(dir: &SandboxDir) -> Result<i32, ProcError> {
    let path = dir.vmm_pid_file();
    let text = read_proc(&path, MAX_PID_FILE)?;
    let pid = parse_pid(&text).ok_or_else(|| ProcError::NoPid(path.clone()))?;
    let cmdline = files::read_bounded(Path::new(&format!("/proc/{pid}/cmdline")), MAX_PROC_FILE)
        .map_err(|_| ProcError::NotRunning(pid))?;
    if !names_dir(cmdline.as_bytes(), dir.path()) {
        return Err(ProcError::NotThisPodsVmm(pid));
    }
    Ok(pid)
}

/// A positive pid on its own (surrounding whitespace allowed).
fn parse_pid(text: &str) -> Option<i32> {
    text.trim().parse::<i32>().ok().filter(|pid| *pid > 0)
}

/// Whether a NUL-separated command line names a path in `dir` (so a
/// recycled pid is not taken for the VMM; the VMM's `--config` names its
/// sockets there).
fn names_dir(cmdline: &[u8], dir: &Path) -> bool {
    let mut needle = dir.as_os_str().as_encoded_bytes().to_vec();
    needle.push(b'/');
    cmdline
        .split(|b| *b == 0)
        .any(|arg| arg.windows(needle.len()).any(|w| w == needle))
}

/// Seconds since process `pid` started.
fn uptime(pid: i32) -> Result<u64, ProcError> {
    let stat = read_proc(Path::new(&format!("/proc/{pid}/stat")), MAX_PROC_FILE)?;
    let start_ticks = start_time_ticks(&stat).ok_or(ProcError::NoField {
        field: "start time",
        file: "/proc/<pid>/stat",
    })?;
    let boot = read_proc(Path::new("/proc/uptime"), 128)?;
    let since_boot = parse_uptime(&boot).ok_or(ProcError::NoField {
        field: "uptime",
        file: "/proc/uptime",
    })?;
    let ticks_per_sec = clock_ticks().ok_or(ProcError::NoClockTicks)?;
    Ok(since_boot.saturating_sub(start_ticks / ticks_per_sec))
}

/// The clock ticks per second `/proc/<pid>/stat` counts in (`CLK_TCK`).
pub fn clock_ticks() -> Option<u64> {
    // SAFETY: sysconf reads a constant of the system and touches no memory.
    let ticks_per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks_per_sec).ok().filter(|ticks| *ticks > 0)
}

/// Field 22 of `/proc/<pid>/stat` (start time in clock ticks since boot),
/// counted after the command name, which may hold spaces and parentheses.
fn start_time_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    // `rest` starts at field 3 (state): field 22 is the 20th.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whole seconds since boot, from `/proc/uptime`.
fn parse_uptime(text: &str) -> Option<u64> {
    let first = text.split_whitespace().next()?;
    let whole = first.split('.').next()?;
    whole.parse().ok()
}

/// Asks the VMM's API to describe the VM, within [`API_TIMEOUT`].
fn describe(dir: &SandboxDir) -> Result<VmInfo, ApiError> {
    Ok(vmm_api(dir)?.describe()?)
}

/// The client of the sandbox's VMM API, each call within [`API_TIMEOUT`]
/// (connect included); no symlink is followed to the socket.
pub fn vmm_api(dir: &SandboxDir) -> Result<VmmApi, ApiError> {
    let vm_dir = dir.vm_dir();
    // The client refuses a symlink as the socket; `vm/` itself must be a
    // directory, not a symlink to one elsewhere.
    if !vm_dir.symlink_metadata().is_ok_and(|meta| meta.is_dir()) {
        return Err(ApiError::VmDir(vm_dir));
    }
    Ok(VmmApi::with_timeout(&dir.api_sock(), API_TIMEOUT))
}

fn state_name(state: VmState) -> &'static str {
    match state {
        VmState::RUNNING => "running",
        VmState::PAUSED => "paused",
        VmState::SHUTTING_DOWN => "shutting-down",
    }
}

/// `1d02h`, `3h04m`, `5m06s` or `7s`.
fn human_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s:02}s"),
        (0, _, _) => format!("{h}h{m:02}m"),
        _ => format!("{d}d{h:02}h"),
    }
}

/// One text line per pod under a header.
fn lines(pods: &[Pod]) -> Vec<String> {
    let dash = || "-".to_string();
    let mut out = vec![format!(
        "{:<24} {:>8} {:<13} {:>5} {:>8} {:>8}",
        "POD", "VMM PID", "STATE", "VCPUS", "MEMORY", "UPTIME"
    )];
    for pod in pods {
        out.push(format!(
            "{:<24} {:>8} {:<13} {:>5} {:>8} {:>8}",
            pod.id,
            pod.vmm_pid.map_or_else(dash, |pid| pid.to_string()),
            pod.state.clone().unwrap_or_else(dash),
            pod.vcpus.map_or_else(dash, |n| n.to_string()),
            pod.memory_mib.map_or_else(dash, |mib| format!("{mib}M")),
            pod.uptime_secs.map_or_else(dash, human_duration),
        ));
    }
    out
}

/// The pods as a table or a JSON array.
pub fn render(pods: &[Pod], json: bool) -> Result<String, serde_json::Error> {
    if json {
        return serde_json::to_string_pretty(pods).map(|text| text + "\n");
    }
    Ok(lines(pods).into_iter().map(|line| line + "\n").collect())
}

/// Logs what could not be found out about each pod.
pub fn log_problems(pods: &[Pod]) {
    for pod in pods {
        for problem in &pod.problems {
            log::warn!("pod {}: {problem}", pod.id);
        }
    }
}

#[cfg(test)]
mod tests;
