//! The pod's sysctls, which CreateSandbox sets in the guest's own IPC and
//! network namespaces: the pod's containers share those, and in the guest they
//! are the agent's. containerd puts a pod's sysctls only in its sandbox's spec,
//! which the shim reads; no container of the pod carries them.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{AgentError, Result};

/// Longest sysctl value accepted (the kernel's own limit is a page).
const MAX_VALUE_LEN: usize = 4096;

/// Most sysctls one pod may set.
const MAX_SYSCTLS: usize = 256;

/// IPC sysctls that live in an IPC namespace (besides `fs.mqueue.*`).
const IPC_SYSCTLS: &[&str] = &[
    "kernel.msgmax",
    "kernel.msgmnb",
    "kernel.msgmni",
    "kernel.sem",
    "kernel.shmall",
    "kernel.shmmax",
    "kernel.shmmni",
    "kernel.shm_rmid_forced",
];

/// Where pod sysctls are written.
#[derive(Debug, Clone)]
pub struct SysctlRoot {
    /// `/proc/sys` in the guest; a plain directory in host mode.
    pub dir: PathBuf,
    /// Whether a sysctl's file may be made (host mode); in `/proc/sys` a
    /// missing file is a sysctl the kernel does not have.
    pub create: bool,
}

/// The files of `sysctls` under `root` with their values, once every one is
/// checked: a namespaced sysctl (IPC or network) with a plain name and a
/// bounded value. Nothing is written.
pub fn plan(
    root: &SysctlRoot,
    sysctls: &HashMap<String, String>,
) -> Result<Vec<(PathBuf, String)>> {
    if sysctls.len() > MAX_SYSCTLS {
        return Err(AgentError::InvalidArgument(format!(
            "sysctls: {} entries, more than {MAX_SYSCTLS}",
            sysctls.len()
        )));
    }
    let mut planned = Vec::with_capacity(sysctls.len());
    for (key, value) in sysctls {
        let path = sysctl_path(&root.dir, key)?;
        let name = key.replace('/', ".");
        if !is_ipc(&name) && !name.starts_with("net.") {
            return Err(AgentError::InvalidArgument(format!(
                "sysctls: {key} is not a namespaced sysctl (kernel.shm*, kernel.msg*, \
                 kernel.sem, fs.mqueue.*, net.*): a pod may not set it"
            )));
        }
        if value.len() > MAX_VALUE_LEN || value.contains('\0') {
            return Err(AgentError::InvalidArgument(format!(
                "sysctls: the value of {key} is longer than {MAX_VALUE_LEN} bytes or holds NUL"
            )));
        }
        planned.push((path, value.clone()));
    }
    planned.sort();
    Ok(planned)
}

/// Writes what [`plan`] made.
pub fn write_all(root: &SysctlRoot, planned: &[(PathBuf, String)]) -> Result<()> {
    for (path, value) in planned {
        write(root, path, value)?;
    }
    Ok(())
}

fn is_ipc(name: &str) -> bool {
    IPC_SYSCTLS.contains(&name) || name.starts_with("fs.mqueue.")
}

/// The file of sysctl `key` under `dir`: dot- or slash-separated names of
/// letters, digits, `_` and `-` only, so that no key leaves `dir`.
fn sysctl_path(dir: &Path, key: &str) -> Result<PathBuf> {
    let bad = || {
        AgentError::InvalidArgument(format!(
            "linux.sysctl: {key:?} is not a sysctl name (dot-separated letters, digits, _ and -)"
        ))
    };
    let mut path = dir.to_path_buf();
    for part in key.split(['.', '/']) {
        let plain = !part.is_empty()
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !plain {
            return Err(bad());
        }
        path.push(part);
    }
    Ok(path)
}

fn write(root: &SysctlRoot, path: &Path, value: &str) -> Result<()> {
    let key = path
        .strip_prefix(&root.dir)
        .unwrap_or(path)
        .display()
        .to_string()
        .replace('/', ".");
    let step = || format!("set the pod's sysctl {key} to {value:?}");
    if root.create {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(AgentError::io(step()))?;
        }
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create(root.create)
        .truncate(root.create)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => AgentError::InvalidArgument(format!(
                "sysctls: the guest's kernel has no sysctl {key}"
            )),
            _ => AgentError::io(step())(e),
        })?;
    file.write_all(value.as_bytes())
        .map_err(|e| match e.raw_os_error() {
            Some(libc::EINVAL | libc::ERANGE) => AgentError::InvalidArgument(format!(
                "sysctls: the guest's kernel refused {key} = {value:?}: {e}"
            )),
            _ => AgentError::io(step())(e),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn scratch_root() -> (tempfile::TempDir, SysctlRoot) {
        let dir = tempfile::tempdir().unwrap();
        let root = SysctlRoot {
            dir: dir.path().to_path_buf(),
            create: true,
        };
        (dir, root)
    }

    #[test]
    fn namespaced_sysctls_are_written_under_the_root() {
        let (dir, root) = scratch_root();
        let sysctls = map(&[
            ("kernel.shm_rmid_forced", "1"),
            ("fs.mqueue.msg_max", "20"),
            ("net.ipv4.ip_unprivileged_port_start", "80"),
            ("net/ipv4/ping_group_range", "0 2147483647"),
        ]);
        let planned = plan(&root, &sysctls).unwrap();
        write_all(&root, &planned).unwrap();
        let read = |rel: &str| fs::read_to_string(dir.path().join(rel)).unwrap();
        assert_eq!(read("kernel/shm_rmid_forced"), "1");
        assert_eq!(read("fs/mqueue/msg_max"), "20");
        assert_eq!(read("net/ipv4/ip_unprivileged_port_start"), "80");
        assert_eq!(read("net/ipv4/ping_group_range"), "0 2147483647");
    }

    #[test]
    fn bad_sysctls_are_refused_by_name_before_any_write() {
        let (dir, root) = scratch_root();
        for key in [
            "net..ipv4",
            "net.ipv4.../../etc",
            "net./x",
            "net.ipv4.a b",
            "net.",
            "fs.mqueue.\u{e9}",
        ] {
            let err = plan(&root, &map(&[(key, "1")])).unwrap_err();
            assert!(
                matches!(&err, AgentError::InvalidArgument(m) if m.contains("not a sysctl name")),
                "{key}: {err}"
            );
        }
        for key in ["kernel.panic", "vm.overcommit_memory", "kernel.hostname"] {
            let err = plan(&root, &map(&[(key, "1")])).unwrap_err();
            assert!(
                err.to_string().contains("not a namespaced sysctl"),
                "{key}: {err}"
            );
        }
        assert!(plan(&root, &map(&[("net.core.x", "a\u{0}b")])).is_err());
        let many: HashMap<String, String> = (0..=MAX_SYSCTLS)
            .map(|i| (format!("net.x{i}"), "1".to_string()))
            .collect();
        assert!(plan(&root, &many).is_err());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);

        // In /proc/sys a missing file is a sysctl the kernel lacks.
        let proc_like = SysctlRoot {
            dir: dir.path().to_path_buf(),
            create: false,
        };
        let planned = plan(&proc_like, &map(&[("net.ipv4.nonexistent", "1")])).unwrap();
        let err = write_all(&proc_like, &planned).unwrap_err();
        assert!(
            err.to_string()
                .contains("has no sysctl net.ipv4.nonexistent"),
            "{err}"
        );
    }
}
