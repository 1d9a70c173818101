//! Reading a bundle's OCI spec and what the shim takes from it (the task's
//! role in its pod, the pod's network, size and place on the host); the spec
//! the guest agent runs is made in `guest`.

mod guest;

pub use guest::{guest_spec, GuestSpec, ShareBind};

use crate::config::RunvConfig;
use crate::pod_cgroup::PodCgroupError;
use serde_json::Value;
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

/// CRI annotation: `sandbox` for a pod's sandbox, `container` for the others.
pub const CONTAINER_TYPE_ANNOTATION: &str = "io.kubernetes.cri.container-type";
/// CRI annotation: the id of the pod sandbox a container belongs to.
pub const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";

const MIB: u64 = 1 << 20;

/// Most bind mounts one container may ask for (each is a mount point the shim
/// makes on the host; a tenant's spec must not make it make millions).
pub const MAX_SHARE_BINDS: usize = 512;

/// Namespaces a pod's containers share in the guest: a spec that asks to join
/// the pod's (host) namespace by path joins the guest's own instead.
const POD_NAMESPACES: &[&str] = &["network", "ipc", "uts"];

/// A spec, or its annotations, that runv cannot run; each names the field.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// `config.json` could not be read.
    #[error("{path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    /// `config.json` is not JSON.
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    /// `config.json` is JSON but not an object.
    #[error("{path}: not a JSON object")]
    NotObject { path: PathBuf },
    /// A CRI container without the id of its sandbox.
    #[error("annotation {CONTAINER_TYPE_ANNOTATION}=container without {SANDBOX_ID_ANNOTATION}")]
    NoSandboxId,
    /// A container type CRI does not define.
    #[error("annotation {CONTAINER_TYPE_ANNOTATION}={0:?}: expected sandbox or container")]
    ContainerType(String),
    /// `process.oomScoreAdj` out of bounds or not an integer.
    #[error("process.oomScoreAdj {0} is not an integer in [-1000, 1000]")]
    OomScoreAdj(Value),
    /// `linux.cgroupsPath` is not a string.
    #[error("linux.cgroupsPath {0} is not a string")]
    CgroupsPathType(Value),
    /// `linux.cgroupsPath` is not a path runv takes.
    #[error(transparent)]
    CgroupsPath(#[from] PodCgroupError),
    /// No network namespace entry: the host's network.
    #[error(
        "the spec asks for the host's network (no linux.namespaces entry of \
         type network): runv pods need a network namespace of their own"
    )]
    HostNetwork,
    /// A network namespace path that is not absolute.
    #[error("linux.namespaces: network namespace path {0:?} is not absolute")]
    RelativeNetns(String),
    /// Host namespaces asked for (by leaving their entries out).
    #[error(
        "the spec asks for the host's {kinds} namespace{plural} ({fields}: no linux.namespaces \
         entry of that type): a runv pod runs in a VM and cannot share the host's namespaces",
        plural = if .kinds.contains(',') { "s" } else { "" }
    )]
    HostNamespaces {
        /// The namespace types, comma-separated.
        kinds: String,
        /// The Kubernetes fields that ask for them.
        fields: String,
    },
    /// The spec is not a JSON object.
    #[error("the OCI spec is not a JSON object")]
    SpecNotObject,
    /// More bind mounts than [`MAX_SHARE_BINDS`].
    #[error("more than {MAX_SHARE_BINDS} bind mounts in one container")]
    TooManyBinds,
    /// A bind mount's source is not an absolute host path.
    #[error("bind mount on {destination}: the source must be an absolute host path")]
    BindSource { destination: String },
}

/// Reads `<bundle>/config.json`.
pub fn read_spec(bundle: &Path) -> Result<Value, SpecError> {
    let path = bundle.join("config.json");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(source) => return Err(SpecError::Read { path, source }),
    };
    let spec: Value = match serde_json::from_str(&text) {
        Ok(spec) => spec,
        Err(source) => return Err(SpecError::Parse { path, source }),
    };
    if !spec.is_object() {
        return Err(SpecError::NotObject { path });
    }
    Ok(spec)
}

/// The spec's annotations (non-string values are ignored).
pub fn annotations(spec: &Value) -> HashMap<String, String> {
    spec.get("annotations")
        .and_then(Value::as_object)
        .map(|map| {
            map.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// What a task is to its pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodRole {
    /// A CRI pod sandbox: its task stands for the VM, no container runs for it.
    Sandbox,
    /// A CRI container of pod `sandbox_id`, in that pod's VM.
    Container { sandbox_id: String },
    /// A container without a pod (`ctr run`): a pod of one.
    Standalone,
}

impl PodRole {
    /// The role the annotations give task `id`.
    pub fn of(annotations: &HashMap<String, String>) -> Result<Self, SpecError> {
        match annotations
            .get(CONTAINER_TYPE_ANNOTATION)
            .map(String::as_str)
        {
            None => Ok(Self::Standalone),
            Some("sandbox") => Ok(Self::Sandbox),
            Some("container") => match annotations.get(SANDBOX_ID_ANNOTATION) {
                Some(id) if !id.is_empty() => Ok(Self::Container {
                    sandbox_id: id.clone(),
                }),
                _ => Err(SpecError::NoSandboxId),
            },
            Some(other) => Err(SpecError::ContainerType(other.to_string())),
        }
    }
}

/// The pod's network, as the sandbox's spec asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodNetworkRequest {
    /// A namespace the runtime would create (`ctr run`): the guest gets no
    /// network card, only its loopback.
    Isolated,
    /// A namespace made beforehand, with the CNI's interfaces in it (CRI).
    Namespace(PathBuf),
}

/// Bounds of `process.oomScoreAdj` (the kernel's `oom_score_adj`).
const OOM_SCORE_ADJ_RANGE: std::ops::RangeInclusive<i64> = -1000..=1000;

/// The OOM score adjustment the spec gives its process (CRI gives a pod's
/// sandbox -998), which the pod's VMM takes on the host; none keeps the
/// shim's. A value outside [-1000, 1000] is an error naming it.
pub fn oom_score_adj(spec: &Value) -> Result<Option<i32>, SpecError> {
    let Some(value) = spec.pointer("/process/oomScoreAdj") else {
        return Ok(None);
    };
    value
        .as_i64()
        .filter(|adj| OOM_SCORE_ADJ_RANGE.contains(adj))
        .and_then(|adj| i32::try_from(adj).ok())
        .map(Some)
        .ok_or_else(|| SpecError::OomScoreAdj(value.clone()))
}

/// Where the spec puts the pod's VMM on the host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostPlacement {
    /// `process.oomScoreAdj` (see [`oom_score_adj`]).
    pub oom_score_adj: Option<i32>,
    /// `linux.cgroupsPath`: the pod's cgroup, none to stay in the shim's.
    pub cgroups_path: Option<String>,
}

/// The VMM's place on the host from the spec that boots the pod.
pub fn host_placement(spec: &Value) -> Result<HostPlacement, SpecError> {
    let cgroups_path = match spec.pointer("/linux/cgroupsPath") {
        None | Some(Value::Null) => None,
        Some(Value::String(path)) if path.is_empty() => None,
        Some(Value::String(path)) => {
            crate::pod_cgroup::relative_path(path)?;
            Some(path.clone())
        }
        Some(other) => return Err(SpecError::CgroupsPathType(other.clone())),
    };
    Ok(HostPlacement {
        oom_score_adj: oom_score_adj(spec)?,
        cgroups_path,
    })
}

/// The network the spec gives the pod: the `linux.namespaces` entry of type
/// `network`. A spec without one asks for the host's network, which a VM
/// cannot share: that is an error naming it.
pub fn pod_network(spec: &Value) -> Result<PodNetworkRequest, SpecError> {
    let entry = spec
        .pointer("/linux/namespaces")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|ns| ns.get("type").and_then(Value::as_str) == Some("network"));
    let Some(entry) = entry else {
        return Err(SpecError::HostNetwork);
    };
    match entry.get("path").and_then(Value::as_str) {
        None | Some("") => Ok(PodNetworkRequest::Isolated),
        Some(path) if Path::new(path).is_absolute() => {
            Ok(PodNetworkRequest::Namespace(PathBuf::from(path)))
        }
        Some(path) => Err(SpecError::RelativeNetns(path.to_string())),
    }
}

/// The host namespaces a pod or container may ask for, which a VM cannot share:
/// the `linux.namespaces` type and the Kubernetes field that leaves it out.
const HOST_NAMESPACES: &[(&str, &str)] = &[
    ("network", "hostNetwork"),
    ("pid", "hostPID"),
    ("ipc", "hostIPC"),
];

/// Refuses a spec that asks for one of the host's namespaces (it has no
/// `linux.namespaces` entry of that type): the guest's processes cannot join the
/// host's, and giving them the guest's own instead would hand a container the
/// agent's, so the error names what was asked for.
pub fn refuse_host_namespaces(spec: &Value) -> Result<(), SpecError> {
    let kinds: Vec<&str> = spec
        .pointer("/linux/namespaces")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|ns| ns.get("type").and_then(Value::as_str))
        .collect();
    let asked: Vec<&(&'static str, &'static str)> = HOST_NAMESPACES
        .iter()
        .filter(|(kind, _)| !kinds.contains(kind))
        .collect();
    if asked.is_empty() {
        return Ok(());
    }
    let list = |pick: fn(&(&'static str, &'static str)) -> &'static str| {
        asked
            .iter()
            .map(|entry| pick(entry))
            .collect::<Vec<_>>()
            .join(", ")
    };
    Err(SpecError::HostNamespaces {
        kinds: list(|(kind, _)| kind),
        fields: list(|(_, field)| field),
    })
}

/// The pod (and so the shim and VM) task `task_id` belongs to.
pub fn sandbox_id(task_id: &str, annotations: &HashMap<String, String>) -> String {
    match annotations.get(SANDBOX_ID_ANNOTATION) {
        Some(id) if !id.is_empty() => id.clone(),
        _ => task_id.to_string(),
    }
}

/// The CPUs this host gives the shim (at least 1): no pod gets more vCPUs.
pub fn host_cpus() -> u32 {
    std::thread::available_parallelism()
        .map(|n| u32::try_from(n.get()).unwrap_or(1))
        .unwrap_or(1)
}

/// vCPUs and memory of a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmSize {
    pub vcpus: u32,
    pub memory_mib: u32,
}

impl VmSize {
    /// The size for a pod whose container sets `resources` (OCI
    /// `linux.resources`; none for a CRI sandbox): the container's memory limit
    /// plus the guest's overhead, and enough vCPUs for its CPU quota; the
    /// configured defaults where it sets no limit.
    pub fn for_pod(config: &RunvConfig, resources: Option<&Value>) -> Self {
        let limit = resources
            .and_then(|r| r.pointer("/memory/limit"))
            .and_then(Value::as_i64)
            .filter(|limit| *limit > 0)
            .map(|limit| u64::try_from(limit).unwrap_or(0).div_ceil(MIB));
        let memory_mib = match limit {
            // The pod's limits come from the scheduler's view: clamped, as
            // max_vcpus is below (an annotation above its maximum is an error).
            Some(mib) => u32::try_from(mib)
                .unwrap_or(u32::MAX)
                .saturating_add(config.overhead_memory_mib)
                .min(config.max_memory_mib),
            None => config.default_memory_mib,
        };
        let quota = resources
            .and_then(|r| r.pointer("/cpu/quota"))
            .and_then(Value::as_i64)
            .filter(|q| *q > 0);
        let period = resources
            .and_then(|r| r.pointer("/cpu/period"))
            .and_then(Value::as_u64)
            .filter(|p| *p > 0);
        let host_cpus = host_cpus();
        let cpus = match (quota, period) {
            (Some(quota), Some(period)) => {
                let needed = u64::try_from(quota).unwrap_or(0).div_ceil(period);
                u32::try_from(needed).unwrap_or(u32::MAX)
            }
            _ => config.default_vcpus,
        };
        let vcpus = cpus
            .max(config.default_vcpus)
            .min(config.max_vcpus)
            .min(host_cpus.max(1));
        Self { vcpus, memory_mib }
    }
}

#[cfg(test)]
mod tests;
