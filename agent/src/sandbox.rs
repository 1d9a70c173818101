//! The sandbox's state: its containers by id, and the checks on requests that
//! name them.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use oci_spec::runtime::Spec;
use protocol::agent::{CreateContainerRequest, CreateSandboxRequest};

use crate::container::{Container, StatePaths};
use crate::error::{AgentError, Result};
use crate::oom::OomEvents;
use crate::reaper::Reaper;

/// Longest container or exec id accepted.
const MAX_ID_LEN: usize = 128;

/// Every container of the pod.
pub struct Sandbox {
    containers: Mutex<HashMap<String, Arc<Container>>>,
    /// Where every rootfs and bind source must lie (CreateSandbox); None = anywhere.
    shared_dir: Mutex<Option<PathBuf>>,
    /// Ids being created: taken, but not yet in `containers`.
    creating: Mutex<HashSet<String>>,
    paths: StatePaths,
    reaper: Arc<Reaper>,
    /// OOM kills seen in the containers' cgroups.
    pub oom: OomEvents,
}

impl Sandbox {
    /// An empty sandbox keeping its state under `paths`.
    pub fn new(paths: StatePaths, reaper: Arc<Reaper>) -> Self {
        Self {
            containers: Mutex::new(HashMap::new()),
            creating: Mutex::new(HashSet::new()),
            shared_dir: Mutex::new(None),
            paths,
            reaper,
            oom: OomEvents::default(),
        }
    }

    /// Sets up the sandbox. Only the shared dir is applied so far; the guest-wide
    /// settings (hostname, DNS, hosts, mounts) are refused as not implemented.
    pub fn create(&self, req: &CreateSandboxRequest) -> Result<()> {
        if !req.hostname.is_empty()
            || !req.dns.is_empty()
            || !req.hosts.is_empty()
            || !req.mounts.is_empty()
        {
            return Err(AgentError::Unimplemented(
                "CreateSandbox with hostname, DNS, hosts or mounts",
            ));
        }
        let shared_dir = match req.shared_dir.as_str() {
            "" => None,
            dir => Some(
                Path::new(dir)
                    .canonicalize()
                    .map_err(|e| AgentError::InvalidArgument(format!("shared_dir {dir}: {e}")))?,
            ),
        };
        *self.shared_dir.lock().unwrap_or_else(|e| e.into_inner()) = shared_dir;
        Ok(())
    }

    /// Creates a container from the request.
    pub fn create_container(&self, req: &CreateContainerRequest) -> Result<()> {
        check_id("container_id", &req.container_id)?;
        let spec = load_spec(req)?;
        let shared_dir = self
            .shared_dir
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(shared) = shared_dir {
            check_confined(&spec, &shared)?;
        }
        // Reserve the id, so that a duplicate cannot race; the map stays free for
        // calls on other containers while this one is made.
        {
            let containers = self.lock();
            let mut creating = self.lock_creating();
            if containers.contains_key(&req.container_id)
                || !creating.insert(req.container_id.clone())
            {
                return Err(AgentError::AlreadyExists {
                    kind: "container",
                    id: req.container_id.clone(),
                });
            }
        }
        let stdio = req.stdio.clone().unwrap_or_default();
        let created =
            Container::create(&req.container_id, &spec, &stdio, &self.paths, &self.reaper);
        let mut containers = self.lock();
        self.lock_creating().remove(&req.container_id);
        containers.insert(req.container_id.clone(), created?);
        Ok(())
    }

    /// The container `id`.
    pub fn container(&self, id: &str) -> Result<Arc<Container>> {
        self.lock()
            .get(id)
            .cloned()
            .ok_or_else(|| AgentError::no_container(id))
    }

    /// Removes the container `id` (see [`Container::remove`]).
    pub fn remove_container(&self, id: &str, force: bool) -> Result<()> {
        let container = self.container(id)?;
        // A last look at the OOM counter before the cgroup goes.
        if let Ok(cgroup) = container.cgroup() {
            self.oom.observe(id, cgroup.oom_kills());
        }
        container.remove(force)?;
        self.lock().remove(id);
        self.oom.forget(id);
        Ok(())
    }

    /// Samples every container's OOM-kill counter every `period`, on a thread.
    pub fn start_oom_monitor(self: &Arc<Self>, period: Duration) -> std::io::Result<()> {
        let sandbox = Arc::clone(self);
        std::thread::Builder::new()
            .name("oom-monitor".into())
            .spawn(move || loop {
                let containers: Vec<Arc<Container>> = sandbox.lock().values().cloned().collect();
                for container in containers {
                    if let Ok(cgroup) = container.cgroup() {
                        sandbox.oom.observe(&container.id, cgroup.oom_kills());
                    }
                }
                std::thread::sleep(period);
            })
            .map(drop)
    }

    /// Force-removes every container; reports the first failure.
    pub fn remove_all(&self) -> Result<()> {
        let ids: Vec<String> = self.lock().keys().cloned().collect();
        let mut first_error = None;
        for id in ids {
            if let Err(err) = self.remove_container(&id, true) {
                first_error.get_or_insert(err);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn lock_creating(&self) -> MutexGuard<'_, HashSet<String>> {
        self.creating.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<Container>>> {
        self.containers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Checks a container or exec id: non-empty `[A-Za-z0-9_.-]`, not `.` or `..`.
pub fn check_id(field: &str, id: &str) -> Result<()> {
    let valid = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(AgentError::InvalidArgument(format!(
            "{field} {id:?} must be 1-{MAX_ID_LEN} characters of [A-Za-z0-9_.-]"
        )))
    }
}

/// Checks that the rootfs and every bind-mount source resolve under `shared`.
fn check_confined(spec: &Spec, shared: &Path) -> Result<()> {
    let escapes = |what, path: &Path| AgentError::Escapes {
        what,
        path: path.display().to_string(),
        shared: shared.display().to_string(),
    };
    let inside = |path: &Path| path.canonicalize().is_ok_and(|p| p.starts_with(shared));
    if let Some(root) = spec.root() {
        if !inside(root.path()) {
            return Err(escapes("rootfs", root.path()));
        }
    }
    for mount in spec.mounts().iter().flatten() {
        let bind = mount.typ().as_deref() == Some("bind")
            || mount
                .options()
                .iter()
                .flatten()
                .any(|o| o == "bind" || o == "rbind");
        if let (true, Some(source)) = (bind, mount.source()) {
            if !inside(source) {
                return Err(escapes("bind mount source", source));
            }
        }
    }
    Ok(())
}

/// The request's spec with an absolute, existing root path.
fn load_spec(req: &CreateContainerRequest) -> Result<Spec> {
    let bundle = Path::new(&req.bundle);
    let mut spec: Spec = if req.oci_spec.is_empty() {
        if req.bundle.is_empty() {
            return Err(AgentError::InvalidArgument(
                "neither oci_spec nor bundle is given".into(),
            ));
        }
        let config = bundle.join("config.json");
        let json = std::fs::read(&config).map_err(|e| {
            AgentError::InvalidArgument(format!("cannot read {}: {e}", config.display()))
        })?;
        parse_spec(&json)?
    } else {
        parse_spec(req.oci_spec.as_bytes())?
    };
    let root_path = if req.rootfs.is_empty() {
        let root = spec
            .root()
            .as_ref()
            .ok_or_else(|| AgentError::InvalidArgument("the spec has no root".into()))?;
        bundle.join(root.path())
    } else {
        PathBuf::from(&req.rootfs)
    };
    if !root_path.is_absolute() || !root_path.is_dir() {
        return Err(AgentError::InvalidArgument(format!(
            "rootfs {} is not an existing absolute directory",
            root_path.display()
        )));
    }
    let mut root = spec.root().clone().unwrap_or_default();
    root.set_path(root_path);
    spec.set_root(Some(root));
    if spec.process().is_none() {
        return Err(AgentError::InvalidArgument(
            "the spec has no process".into(),
        ));
    }
    Ok(spec)
}

fn parse_spec(json: &[u8]) -> Result<Spec> {
    serde_json::from_slice(json).map_err(|e| AgentError::InvalidArgument(format!("OCI spec: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        for good in ["c1", "a.b_c-d", &"x".repeat(MAX_ID_LEN)] {
            assert!(check_id("id", good).is_ok(), "{good:?} refused");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a b",
            "é",
            &"x".repeat(MAX_ID_LEN + 1),
        ] {
            assert!(check_id("id", bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn malformed_specs_are_invalid_arguments() {
        let mut req = CreateContainerRequest::new();
        req.container_id = "c".into();
        for spec in ["", "{", r#"{"ociVersion": 1}"#] {
            req.oci_spec = spec.into();
            let err = load_spec(&req).unwrap_err();
            assert_eq!(err.code(), ttrpc::Code::INVALID_ARGUMENT, "{spec:?}: {err}");
        }
        req.oci_spec = r#"{"ociVersion": "1.0.2", "root": {"path": "/nonexistent"}}"#.into();
        req.rootfs = String::new();
        let err = load_spec(&req).unwrap_err();
        assert!(err.to_string().contains("/nonexistent"), "{err}");
    }
}
