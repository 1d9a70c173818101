//! Reading a bundle's OCI spec, and turning it into the spec the guest agent runs:
//! rootfs and bind sources moved into the pod's share, host-only parts dropped.

use crate::config::RunvConfig;
use crate::mounts::MountAttrs;
use crate::paths::SharedPath;
use serde_json::{Map, Value};
use std::collections::HashMap;
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

/// Reads `<bundle>/config.json`.
pub fn read_spec(bundle: &Path) -> Result<Value, String> {
    let path = bundle.join("config.json");
    let text =
        std::fs::read_to_string(&path).map_err(|err| format!("{}: {err}", path.display()))?;
    let spec: Value =
        serde_json::from_str(&text).map_err(|err| format!("{}: {err}", path.display()))?;
    if !spec.is_object() {
        return Err(format!("{}: not a JSON object", path.display()));
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
    pub fn of(annotations: &HashMap<String, String>) -> Result<Self, String> {
        match annotations.get(CONTAINER_TYPE_ANNOTATION).map(String::as_str) {
            None => Ok(Self::Standalone),
            Some("sandbox") => Ok(Self::Sandbox),
            Some("container") => match annotations.get(SANDBOX_ID_ANNOTATION) {
                Some(id) if !id.is_empty() => Ok(Self::Container {
                    sandbox_id: id.clone(),
                }),
                _ => Err(format!(
                    "annotation {CONTAINER_TYPE_ANNOTATION}=container without {SANDBOX_ID_ANNOTATION}"
                )),
            },
            Some(other) => Err(format!(
                "annotation {CONTAINER_TYPE_ANNOTATION}={other:?}: expected sandbox or container"
            )),
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
pub fn oom_score_adj(spec: &Value) -> Result<Option<i32>, String> {
    let Some(value) = spec.pointer("/process/oomScoreAdj") else {
        return Ok(None);
    };
    value
        .as_i64()
        .filter(|adj| OOM_SCORE_ADJ_RANGE.contains(adj))
        .and_then(|adj| i32::try_from(adj).ok())
        .map(Some)
        .ok_or_else(|| format!("process.oomScoreAdj {value} is not an integer in [-1000, 1000]"))
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
pub fn host_placement(spec: &Value) -> Result<HostPlacement, String> {
    let cgroups_path = match spec.pointer("/linux/cgroupsPath") {
        None | Some(Value::Null) => None,
        Some(Value::String(path)) if path.is_empty() => None,
        Some(Value::String(path)) => {
            crate::pod_cgroup::relative_path(path)?;
            Some(path.clone())
        }
        Some(other) => return Err(format!("linux.cgroupsPath {other} is not a string")),
    };
    Ok(HostPlacement {
        oom_score_adj: oom_score_adj(spec)?,
        cgroups_path,
    })
}

/// The network the spec gives the pod: the `linux.namespaces` entry of type
/// `network`. A spec without one asks for the host's network, which a VM
/// cannot share: that is an error naming it.
pub fn pod_network(spec: &Value) -> Result<PodNetworkRequest, String> {
    let entry = spec
        .pointer("/linux/namespaces")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|ns| ns.get("type").and_then(Value::as_str) == Some("network"));
    let Some(entry) = entry else {
        return Err(
            "the spec asks for the host's network (no linux.namespaces entry of \
             type network): runv pods need a network namespace of their own"
                .into(),
        );
    };
    match entry.get("path").and_then(Value::as_str) {
        None | Some("") => Ok(PodNetworkRequest::Isolated),
        Some(path) if Path::new(path).is_absolute() => {
            Ok(PodNetworkRequest::Namespace(PathBuf::from(path)))
        }
        Some(path) => Err(format!(
            "linux.namespaces: network namespace path {path:?} is not absolute"
        )),
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
pub fn refuse_host_namespaces(spec: &Value) -> Result<(), String> {
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
    Err(format!(
        "the spec asks for the host's {} namespace{} ({}: no linux.namespaces entry of \
         that type): a runv pod runs in a VM and cannot share the host's namespaces",
        list(|(kind, _)| kind),
        if asked.len() > 1 { "s" } else { "" },
        list(|(_, field)| field),
    ))
}

/// The pod (and so the shim and VM) task `task_id` belongs to.
pub fn sandbox_id(task_id: &str, annotations: &HashMap<String, String>) -> String {
    match annotations.get(SANDBOX_ID_ANNOTATION) {
        Some(id) if !id.is_empty() => id.clone(),
        _ => task_id.to_string(),
    }
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
        let host_cpus = std::thread::available_parallelism()
            .map(|n| u32::try_from(n.get()).unwrap_or(1))
            .unwrap_or(1);
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

/// A host path the shim bind-mounts into the share for the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareBind {
    /// The host file or directory.
    pub source: PathBuf,
    /// Where it goes in the share.
    pub target: SharedPath,
    /// With the mounts below `source` (`rbind`), or only the one (`bind`).
    pub recursive: bool,
    /// `ro`/`rro`, `nosuid`, `nodev`, `noexec`, applied on the host to the
    /// whole tree (read-only means read-only throughout).
    pub attrs: MountAttrs,
}

/// The spec the agent gets, and the binds the share needs for it.
#[derive(Debug, Clone)]
pub struct GuestSpec {
    /// The rewritten spec.
    pub spec: Value,
    /// Host paths to bind into the share first.
    pub binds: Vec<ShareBind>,
    /// Whether the container joins the pod's PID namespace (its spec joined the
    /// sandbox's by path: Kubernetes' shareProcessNamespace); the agent then
    /// fills in the guest's.
    pub sandbox_pidns: bool,
}

/// Rewrites `spec` of container `cid` for the guest: its root becomes
/// `rootfs.guest`, bind sources move into the share, host hooks go, joins of
/// the pod's host namespaces become the guest's own, and a join of the pod's
/// PID namespace becomes a join of the pod's in the guest.
pub fn guest_spec(spec: &Value, cid: &str, rootfs: &SharedPath) -> Result<GuestSpec, String> {
    refuse_host_namespaces(spec)?;
    let mut spec = spec.clone();
    let top = spec
        .as_object_mut()
        .ok_or_else(|| "the OCI spec is not a JSON object".to_string())?;
    let readonly = top
        .get("root")
        .and_then(|r| r.get("readonly"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut root = Map::new();
    root.insert("path".into(), rootfs.guest.clone().into());
    root.insert("readonly".into(), readonly.into());
    top.insert("root".into(), Value::Object(root));
    top.remove("hooks");

    let mut binds = Vec::new();
    let mut sandbox_pidns = false;
    if let Some(mounts) = top.get_mut("mounts").and_then(Value::as_array_mut) {
        for (index, mount) in mounts.iter_mut().enumerate() {
            if let Some(bind) = share_bind(mount, cid, index)? {
                if binds.len() == MAX_SHARE_BINDS {
                    return Err(format!(
                        "more than {MAX_SHARE_BINDS} bind mounts in one container"
                    ));
                }
                mount["source"] = bind.target.guest.clone().into();
                binds.push(bind);
            }
        }
    }
    if let Some(linux) = top.get_mut("linux").and_then(Value::as_object_mut) {
        if let Some(namespaces) = linux.get_mut("namespaces").and_then(Value::as_array_mut) {
            namespaces.retain(|ns| {
                let kind = ns.get("type").and_then(Value::as_str).unwrap_or_default();
                sandbox_pidns |= kind == "pid" && ns.get("path").is_some();
                !(ns.get("path").is_some() && POD_NAMESPACES.contains(&kind))
            });
            for ns in namespaces.iter_mut().filter_map(Value::as_object_mut) {
                ns.remove("path");
            }
        }
        let systemd_style = linux
            .get("cgroupsPath")
            .and_then(Value::as_str)
            .is_some_and(|p| p.contains(':'));
        if systemd_style {
            linux.insert("cgroupsPath".into(), format!("/runv/{cid}").into());
        }
    }
    Ok(GuestSpec {
        spec,
        binds,
        sandbox_pidns,
    })
}

/// The share bind for mount number `index` of the spec, if it is a bind mount.
fn share_bind(mount: &Value, cid: &str, index: usize) -> Result<Option<ShareBind>, String> {
    let options: Vec<&str> = mount
        .get("options")
        .and_then(Value::as_array)
        .map(|o| o.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let is_bind = mount.get("type").and_then(Value::as_str) == Some("bind")
        || options.iter().any(|o| *o == "bind" || *o == "rbind");
    if !is_bind {
        return Ok(None);
    }
    let destination = mount
        .get("destination")
        .and_then(Value::as_str)
        .unwrap_or("?");
    let source = mount
        .get("source")
        .and_then(Value::as_str)
        .filter(|s| Path::new(s).is_absolute())
        .ok_or_else(|| {
            format!("bind mount on {destination}: the source must be an absolute host path")
        })?;
    let has = |option: &str| options.contains(&option);
    Ok(Some(ShareBind {
        source: source.into(),
        target: SharedPath::new(cid, &format!("mounts/{index}")),
        recursive: has("rbind"),
        attrs: MountAttrs {
            readonly: has("ro") || has("rro"),
            nosuid: has("nosuid"),
            nodev: has("nodev"),
            noexec: has("noexec"),
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config() -> RunvConfig {
        RunvConfig {
            default_vcpus: 1,
            default_memory_mib: 256,
            overhead_memory_mib: 128,
            max_vcpus: 1,
            ..RunvConfig::default()
        }
    }

    #[test]
    fn roles_follow_the_cri_annotations() {
        let ann = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(PodRole::of(&ann(&[])).unwrap(), PodRole::Standalone);
        assert_eq!(
            PodRole::of(&ann(&[(CONTAINER_TYPE_ANNOTATION, "sandbox")])).unwrap(),
            PodRole::Sandbox
        );
        let member = ann(&[
            (CONTAINER_TYPE_ANNOTATION, "container"),
            (SANDBOX_ID_ANNOTATION, "pod1"),
        ]);
        assert_eq!(
            PodRole::of(&member).unwrap(),
            PodRole::Container {
                sandbox_id: "pod1".into()
            }
        );
        assert_eq!(sandbox_id("c1", &member), "pod1");
        assert_eq!(sandbox_id("c1", &ann(&[])), "c1");
        assert!(PodRole::of(&ann(&[(CONTAINER_TYPE_ANNOTATION, "container")])).is_err());
        assert!(PodRole::of(&ann(&[(CONTAINER_TYPE_ANNOTATION, "vm")])).is_err());
    }

    #[test]
    fn vm_size_follows_the_limits() {
        let config = config();
        assert_eq!(
            VmSize::for_pod(&config, None),
            VmSize {
                vcpus: 1,
                memory_mib: 256
            }
        );
        let limited =
            json!({"memory": {"limit": 32 * MIB + 1}, "cpu": {"quota": 150000, "period": 100000}});
        let size = VmSize::for_pod(&config, Some(&limited));
        assert_eq!(size.memory_mib, 128 + 33);
        assert_eq!(size.vcpus, 1, "capped by max_vcpus");
        let huge = json!({"memory": {"limit": 1i64 << 50}});
        let size = VmSize::for_pod(&config, Some(&huge));
        assert_eq!(
            size.memory_mib, config.max_memory_mib,
            "capped by max_memory_mib"
        );
    }

    #[test]
    fn the_oom_score_adjustment_is_bounded() {
        assert_eq!(oom_score_adj(&json!({})), Ok(None));
        let with = |adj: Value| json!({"process": {"oomScoreAdj": adj}});
        assert_eq!(oom_score_adj(&with(json!(-998))), Ok(Some(-998)));
        assert_eq!(oom_score_adj(&with(json!(1000))), Ok(Some(1000)));
        for bad in [json!(-1001), json!(1_i64 << 40), json!("5"), json!(1.5)] {
            let err = oom_score_adj(&with(bad)).unwrap_err();
            assert!(err.contains("process.oomScoreAdj"), "{err}");
        }
    }

    #[test]
    fn the_pods_cgroup_is_taken_from_the_spec_and_checked() {
        let with = |path: Value| json!({"linux": {"cgroupsPath": path}});
        let placement = host_placement(&with(json!("/kubepods/pod1/abc"))).unwrap();
        assert_eq!(
            placement.cgroups_path.as_deref(),
            Some("/kubepods/pod1/abc")
        );
        assert_eq!(
            host_placement(&json!({})).unwrap(),
            HostPlacement::default()
        );
        assert_eq!(host_placement(&with(json!(""))).unwrap().cgroups_path, None);
        for bad in [json!("/a/../../etc"), json!(5)] {
            let err = host_placement(&with(bad)).unwrap_err();
            assert!(err.contains("linux.cgroupsPath"), "{err}");
        }
    }

    #[test]
    fn a_join_of_the_pods_pid_namespace_becomes_the_guests_pod_one() {
        let rootfs = SharedPath::new("c1", "rootfs");
        let spec = json!({"linux": {"namespaces": [
            {"type": "pid", "path": "/proc/42/ns/pid"},
            {"type": "network", "path": "/var/run/netns/cni-1"},
            {"type": "ipc", "path": "/proc/42/ns/ipc"}
        ]}});
        let out = guest_spec(&spec, "c1", &rootfs).unwrap();
        assert!(out.sandbox_pidns);
        assert_eq!(out.spec["linux"]["namespaces"], json!([{"type": "pid"}]));
    }

    #[test]
    fn guest_spec_moves_root_and_binds_into_the_share() {
        let rootfs = SharedPath::new("c1", "rootfs");
        let spec = json!({
            "root": {"path": "rootfs", "readonly": true},
            "hooks": {"prestart": [{"path": "/usr/bin/evil"}]},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/data", "type": "bind", "source": "/srv/data", "options": ["rbind", "ro"]},
                {"destination": "/etc/hosts", "source": "/var/lib/x/hosts", "options": ["bind"]}
            ],
            "linux": {
                "cgroupsPath": "kubepods-besteffort.slice:cri-containerd:c1",
                "namespaces": [
                    {"type": "pid"},
                    {"type": "network", "path": "/var/run/netns/cni-1"},
                    {"type": "ipc", "path": "/proc/42/ns/ipc"},
                    {"type": "mount"}
                ]
            }
        });
        let out = guest_spec(&spec, "c1", &rootfs).unwrap();
        assert_eq!(
            out.spec["root"],
            json!({"path": "/run/runv/shared/c1/rootfs", "readonly": true})
        );
        assert!(out.spec.get("hooks").is_none());
        assert_eq!(out.spec["mounts"][0]["source"], "proc");
        assert_eq!(
            out.spec["mounts"][1]["source"],
            "/run/runv/shared/c1/mounts/1"
        );
        assert_eq!(
            out.spec["mounts"][2]["source"],
            "/run/runv/shared/c1/mounts/2"
        );
        assert_eq!(out.binds.len(), 2);
        assert_eq!(out.binds[0].source, PathBuf::from("/srv/data"));
        assert!(out.binds[0].recursive);
        assert_eq!(
            out.binds[0].attrs,
            MountAttrs {
                readonly: true,
                ..MountAttrs::default()
            }
        );
        assert!(!out.binds[1].recursive);
        assert_eq!(out.binds[1].target.rel, PathBuf::from("c1/mounts/2"));
        assert_eq!(
            out.spec["linux"]["namespaces"],
            json!([{"type": "pid"}, {"type": "mount"}])
        );
        assert!(!out.sandbox_pidns, "a pid namespace of its own");
        assert_eq!(out.spec["linux"]["cgroupsPath"], "/runv/c1");
    }

    #[test]
    fn the_pod_network_comes_from_the_network_namespace_entry() {
        let spec = json!({"linux": {"namespaces": [
            {"type": "pid"},
            {"type": "network", "path": "/var/run/netns/cni-1"}
        ]}});
        assert_eq!(
            pod_network(&spec).unwrap(),
            PodNetworkRequest::Namespace(PathBuf::from("/var/run/netns/cni-1"))
        );
        let spec = json!({"linux": {"namespaces": [{"type": "network"}]}});
        assert_eq!(pod_network(&spec).unwrap(), PodNetworkRequest::Isolated);
        let err = pod_network(&json!({"linux": {"namespaces": [{"type": "pid"}]}})).unwrap_err();
        assert!(err.contains("host's network"), "{err}");
        let spec = json!({"linux": {"namespaces": [{"type": "network", "path": "netns/x"}]}});
        assert!(pod_network(&spec).unwrap_err().contains("netns/x"));
    }

    #[test]
    fn host_namespaces_are_refused_by_name() {
        let with = |kinds: &[&str]| {
            let namespaces: Vec<Value> = kinds.iter().map(|k| json!({"type": k})).collect();
            json!({"linux": {"namespaces": namespaces}})
        };
        refuse_host_namespaces(&with(&["pid", "network", "ipc", "uts", "mount"])).unwrap();
        let err = refuse_host_namespaces(&with(&["network", "ipc", "mount"])).unwrap_err();
        assert!(err.contains("host's pid namespace (hostPID"), "{err}");
        let err = refuse_host_namespaces(&with(&["pid", "network", "mount"])).unwrap_err();
        assert!(err.contains("host's ipc namespace (hostIPC"), "{err}");
        let err = refuse_host_namespaces(&with(&["mount"])).unwrap_err();
        assert!(
            err.contains("network, pid, ipc namespaces (hostNetwork, hostPID, hostIPC"),
            "{err}"
        );
        assert!(refuse_host_namespaces(&json!({})).is_err());
        let rootfs = SharedPath::new("c1", "rootfs");
        let err = guest_spec(&with(&["network", "ipc"]), "c1", &rootfs).unwrap_err();
        assert!(err.contains("hostPID"), "{err}");
    }

    #[test]
    fn a_relative_bind_source_is_refused() {
        let rootfs = SharedPath::new("c1", "rootfs");
        let spec = json!({
            "mounts": [{"destination": "/d", "type": "bind", "source": "../../etc"}],
            "linux": {"namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}]}
        });
        let err = guest_spec(&spec, "c1", &rootfs).unwrap_err();
        assert!(err.contains("/d"), "{err}");
    }
}
