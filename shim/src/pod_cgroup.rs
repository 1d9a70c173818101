//! The pod's cgroup on the host: the VMM joins it between fork and exec, so
//! that its vCPUs, guest RAM, device threads and heap are charged to the pod
//! (its parent carries the pod's limits, as kubelet sets them) from its first
//! instruction, not to containerd.
//!
//! The sandbox spec's `linux.cgroupsPath` names it, in either of the forms
//! runc takes: a path (`/kubepods/besteffort/pod<uid>/<id>`, cgroupfs
//! driver) or `slice:prefix:name` (systemd driver), which is expanded the way
//! systemd lays out slices and scopes. The shim creates the leaf in each
//! hierarchy the VMM is charged in (cgroup v2: the unified one; v1: memory,
//! cpu, cpuacct, pids and blkio, where mounted), records the leaves in the
//! sandbox directory, and removes them once the VMM is gone, also from the
//! `delete` after a dead shim. Parents are created as needed and left.

use crate::paths::SandboxDir;
use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

/// Where the host's cgroup file systems are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// cgroup v1 controllers whose hierarchies the VMM joins, by mount point
/// name (cpu and cpuacct are often one hierarchy, linked under both names).
const V1_CONTROLLERS: [&str; 5] = ["memory", "cpu", "cpuacct", "pids", "blkio"];
/// How long the removal of the leaves waits for the VMM's last threads.
const REMOVE_WAIT: Duration = Duration::from_secs(5);
/// Longest `cgroupsPath` taken from a spec.
const MAX_PATH_LEN: usize = 1024;

/// Errors of checking `cgroupsPath` or making the pod's cgroup.
#[derive(Debug, thiserror::Error)]
pub enum PodCgroupError {
    /// `linux.cgroupsPath` is not a path runv takes.
    #[error("linux.cgroupsPath '{path}': {why}")]
    BadPath { path: String, why: BadPath },
    /// A leaf could not be created.
    #[error("pod cgroup {path}: {source}")]
    CreateLeaf { path: PathBuf, source: io::Error },
    /// The record of the leaves could not be written.
    #[error("pod cgroup {path}: {source}")]
    Record { path: PathBuf, source: io::Error },
    /// A leaf's `cgroup.procs` could not be opened.
    #[error("{path}: {source}")]
    OpenProcs { path: PathBuf, source: io::Error },
}

/// Why a `cgroupsPath` is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadPath {
    /// Too long, or it holds a NUL.
    #[error("longer than {MAX_PATH_LEN} bytes or holds a NUL")]
    TooLongOrNul,
    /// Has colons but not the systemd form.
    #[error("not slice:prefix:name")]
    NotSystemd,
    /// A `.`, `..` or empty name.
    #[error("only plain names may make it up (no '.', '..' or empty name)")]
    NotPlain,
}

/// The pod's cgroup: a leaf directory in each hierarchy.
#[derive(Debug)]
pub struct PodCgroup {
    leaves: Vec<PathBuf>,
}

impl PodCgroup {
    /// Creates the leaf `cgroups_path` names in every hierarchy of this host
    /// and records it in `dir`.
    pub fn create(dir: &SandboxDir, cgroups_path: &str) -> Result<Self, PodCgroupError> {
        let relative = relative_path(cgroups_path)?;
        let mut leaves = Vec::new();
        for hierarchy in hierarchies(Path::new(CGROUP_ROOT)) {
            let leaf = hierarchy.join(&relative);
            fs::create_dir_all(&leaf).map_err(|source| PodCgroupError::CreateLeaf {
                path: leaf.clone(),
                source,
            })?;
            if hierarchy.join("cgroup.controllers").exists() {
                enable_controllers(&hierarchy, &relative);
            }
            leaves.push(leaf);
        }
        let cgroup = Self { leaves };
        let record: Vec<u8> = cgroup
            .leaves
            .iter()
            .flat_map(|leaf| leaf.as_os_str().as_bytes().iter().copied().chain([b'\n']))
            .collect();
        if let Err(source) = fs::write(dir.cgroup_record(), record) {
            cgroup.remove();
            return Err(PodCgroupError::Record {
                path: dir.cgroup_record(),
                source,
            });
        }
        Ok(cgroup)
    }

    /// Each leaf's `cgroup.procs`, open for writing: the VMM's child writes
    /// "0" to each before its exec, which moves it there.
    pub fn procs_files(&self) -> Result<Vec<File>, PodCgroupError> {
        self.leaves
            .iter()
            .map(|leaf| {
                let procs = leaf.join("cgroup.procs");
                OpenOptions::new()
                    .write(true)
                    .open(&procs)
                    .map_err(|source| PodCgroupError::OpenProcs {
                        path: procs.clone(),
                        source,
                    })
            })
            .collect()
    }

    /// Removes the leaves (empty once the VMM is gone).
    pub fn remove(&self) {
        remove_leaves(&self.leaves);
    }
}

/// Removes the pod cgroup recorded in `dir`, if any (the VMM must be gone).
pub fn remove_recorded(dir: &SandboxDir) {
    let record = dir.cgroup_record();
    let text = match fs::read(&record) {
        Ok(text) => text,
        Err(err) if err.kind() == ErrorKind::NotFound => return,
        Err(err) => return log::warn!("cleanup: {}: {err}", record.display()),
    };
    let leaves: Vec<PathBuf> = text
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| PathBuf::from(std::ffi::OsStr::from_bytes(line)))
        // The record is the shim's own, but only leaves below the cgroup
        // file systems are ever removed.
        .filter(|leaf| leaf.starts_with(CGROUP_ROOT) && relative_path_ok(leaf))
        .collect();
    if remove_leaves(&leaves) {
        let _ = fs::remove_file(&record);
    }
}

/// True when every leaf is gone. A killed VMM's threads may still be
/// leaving a leaf after its main thread shows as a zombie (EBUSY): each
/// removal is retried for up to [`REMOVE_WAIT`].
fn remove_leaves(leaves: &[PathBuf]) -> bool {
    let deadline = Instant::now() + REMOVE_WAIT;
    let mut all = true;
    for leaf in leaves {
        let removed = loop {
            match fs::remove_dir(leaf) {
                Ok(()) => break Ok(()),
                Err(err) if err.kind() == ErrorKind::NotFound => break Ok(()),
                Err(err)
                    if err.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(err) => break Err(err),
            }
        };
        if let Err(err) = removed {
            all = false;
            log::warn!("cleanup: pod cgroup {}: {err}", leaf.display());
        }
    }
    all
}

fn relative_path_ok(path: &Path) -> bool {
    path.components()
        .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
}

/// The hierarchies the VMM joins: the unified one on a cgroup v2 host, the
/// listed v1 controllers' (each once) otherwise.
fn hierarchies(root: &Path) -> Vec<PathBuf> {
    if root.join("cgroup.controllers").exists() {
        return vec![root.to_owned()];
    }
    let mut seen = BTreeSet::new();
    V1_CONTROLLERS
        .iter()
        .map(|name| root.join(name))
        .filter(|path| path.join("cgroup.procs").exists())
        .filter(|path| seen.insert(fs::canonicalize(path).unwrap_or_else(|_| path.clone())))
        .collect()
}

/// cgroup v2: lets the memory, cpu and pids controllers reach the leaf,
/// enabling each in every ancestor's `cgroup.subtree_control` (best effort:
/// a parent with processes of its own refuses, and then the leaf goes
/// without that controller, as it would under runc).
fn enable_controllers(root: &Path, relative: &Path) {
    let mut dir = root.to_owned();
    for component in relative.components() {
        for controller in ["+memory", "+cpu", "+pids"] {
            let _ = fs::write(dir.join("cgroup.subtree_control"), controller);
        }
        dir.push(component);
    }
}

/// `cgroupsPath` as a path below a hierarchy's root, checked: no `.` or
/// `..`, no empty name, bounded length.
pub fn relative_path(cgroups_path: &str) -> Result<PathBuf, PodCgroupError> {
    let bad = |why| {
        Err(PodCgroupError::BadPath {
            path: cgroups_path.to_string(),
            why,
        })
    };
    if cgroups_path.len() > MAX_PATH_LEN || cgroups_path.contains('\0') {
        return bad(BadPath::TooLongOrNul);
    }
    let path = if cgroups_path.starts_with('/') || !cgroups_path.contains(':') {
        PathBuf::from(cgroups_path.trim_start_matches('/'))
    } else {
        match systemd_path(cgroups_path) {
            Some(path) => path,
            None => return bad(BadPath::NotSystemd),
        }
    };
    let plain = |name: &str| !matches!(name, "" | "." | "..");
    let names: Vec<&str> = path.to_str().unwrap_or_default().split('/').collect();
    if !names.iter().all(|name| plain(name)) {
        return bad(BadPath::NotPlain);
    }
    Ok(path)
}

/// `slice:prefix:name` as systemd lays it out: `a-b.slice` nests in
/// `a.slice`, and the unit is the scope `prefix-name.scope`.
fn systemd_path(spec: &str) -> Option<PathBuf> {
    let [slice, prefix, name] = spec.split(':').collect::<Vec<_>>()[..] else {
        return None;
    };
    if name.is_empty() || name.contains('/') || prefix.contains('/') || slice.contains('/') {
        return None;
    }
    let slice = if slice.is_empty() {
        "system.slice"
    } else {
        slice
    };
    let stem = slice.strip_suffix(".slice")?;
    let mut path = PathBuf::new();
    if stem != "-" {
        let parts: Vec<&str> = stem.split('-').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return None;
        }
        for end in 1..=parts.len() {
            path.push(format!("{}.slice", parts[..end].join("-")));
        }
    }
    let unit = if prefix.is_empty() {
        format!("{name}.scope")
    } else {
        format!("{prefix}-{name}.scope")
    };
    path.push(unit);
    Some(path)
}

#[cfg(test)]
mod tests;
