//! The spec the guest agent runs: rootfs and bind sources moved into the
//! pod's share, host-only parts dropped.

use super::{refuse_host_namespaces, SpecError, MAX_SHARE_BINDS, POD_NAMESPACES};
use crate::mounts::MountAttrs;
use crate::paths::SharedPath;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

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
pub fn guest_spec(spec: &Value, cid: &str, rootfs: &SharedPath) -> Result<GuestSpec, SpecError> {
    refuse_host_namespaces(spec)?;
    let mut spec = spec.clone();
    let top = spec.as_object_mut().ok_or(SpecError::SpecNotObject)?;
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
                    return Err(SpecError::TooManyBinds);
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
fn share_bind(mount: &Value, cid: &str, index: usize) -> Result<Option<ShareBind>, SpecError> {
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
        .ok_or_else(|| SpecError::BindSource {
            destination: destination.to_string(),
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
