//! Sandbox-wide mounts (CreateSandbox): mount(8)-style options turned into
//! mount(2) flags and data, targets checked before anything is mounted, and
//! undone in reverse order.

use std::fs;
use std::path::{Component, Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use protocol::agent::Mount;

use crate::error::{AgentError, Result};

/// A checked mount, ready to be performed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountPlan {
    /// Device, tag or path to mount (for a bind: the path).
    pub source: String,
    /// Where it goes: the request's target under the sandbox's mount root.
    pub target: PathBuf,
    /// File system type; None for a bind mount.
    pub fstype: Option<String>,
    /// mount(2) flags of the first call.
    pub flags: MsFlags,
    /// Propagation flags (MS_SHARED, MS_PRIVATE, ...), set by a second call.
    pub propagation: MsFlags,
    /// Options mount(2) does not know, passed on to the file system.
    pub data: String,
}

impl MountPlan {
    /// Checks `mount` and places its target under `root` (`/` in the guest).
    /// The target must be absolute without `..`; a mount needs a type unless
    /// it is a bind (`fstype` "bind", or option `bind`/`rbind`).
    pub fn new(mount: &Mount, root: &Path) -> Result<Self> {
        let target = Path::new(&mount.target);
        let invalid = |why: &str| {
            AgentError::InvalidArgument(format!("mount target {:?}: {why}", mount.target))
        };
        if !target.is_absolute() {
            return Err(invalid("not absolute"));
        }
        if target.components().any(|c| c == Component::ParentDir) {
            return Err(invalid("contains .."));
        }
        if mount.target.contains('\0') || mount.source.contains('\0') {
            return Err(invalid("contains a NUL byte"));
        }
        let (mut flags, propagation, data) = parse_options(&mount.options);
        let fstype = match mount.fstype.as_str() {
            "bind" => {
                flags |= MsFlags::MS_BIND;
                None
            }
            _ if flags.contains(MsFlags::MS_BIND) => None,
            "" => return Err(invalid("no file system type")),
            fstype => Some(fstype.to_string()),
        };
        let source = match (&fstype, mount.source.as_str()) {
            (None, "") => return Err(invalid("a bind mount needs a source")),
            (None, source) if !Path::new(source).is_absolute() => {
                return Err(invalid("the bind source is not absolute"))
            }
            (Some(fstype), "") => fstype.clone(),
            (_, source) => source.to_string(),
        };
        let relative: PathBuf = target
            .components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .collect();
        Ok(Self {
            source,
            target: root.join(relative),
            fstype,
            flags,
            propagation,
            data: data.join(","),
        })
    }

    fn is_bind(&self) -> bool {
        self.fstype.is_none()
    }

    /// Creates the mount point and mounts.
    pub fn perform(&self) -> Result<()> {
        let step = |what: &str| {
            format!(
                "{what} {} on {}",
                self.fstype.as_deref().unwrap_or("bind"),
                self.target.display()
            )
        };
        // A bind of a file needs a file to mount on; everything else a directory.
        if self.is_bind() && Path::new(&self.source).is_file() {
            if let Some(parent) = self.target.parent() {
                fs::create_dir_all(parent)
                    .map_err(AgentError::io(format!("create {}", parent.display())))?;
            }
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.target)
                .map_err(AgentError::io(format!("create {}", self.target.display())))?;
        } else {
            fs::create_dir_all(&self.target)
                .map_err(AgentError::io(format!("create {}", self.target.display())))?;
        }
        let data = (!self.data.is_empty()).then_some(self.data.as_str());
        let errno = |what: &str| {
            let step = step(what);
            move |e: nix::Error| AgentError::io(step)(e.into())
        };
        mount(
            Some(self.source.as_str()),
            &self.target,
            self.fstype.as_deref(),
            self.flags,
            data,
        )
        .map_err(errno("mount"))?;
        // A bind ignores the other flags on the first call (ro, nosuid, ...):
        // they take a remount of the bind.
        let rest = self.flags - (MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT);
        let done = if self.is_bind() && !rest.is_empty() {
            mount(
                None::<&str>,
                &self.target,
                None::<&str>,
                rest | MsFlags::MS_BIND | MsFlags::MS_REMOUNT,
                None::<&str>,
            )
            .map_err(errno("remount read-only/nosuid/... of"))
        } else {
            Ok(())
        };
        let done = done.and_then(|()| {
            if self.propagation.is_empty() {
                return Ok(());
            }
            mount(
                None::<&str>,
                &self.target,
                None::<&str>,
                self.propagation,
                None::<&str>,
            )
            .map_err(errno("set the propagation of"))
        });
        if done.is_err() {
            let _ = umount2(&self.target, MntFlags::MNT_DETACH);
        }
        done
    }
}

/// Performs `plans` in order; on a failure undoes those done and reports it.
/// Returns the targets mounted, for [`unmount_all`].
pub fn mount_all(plans: &[MountPlan]) -> Result<Vec<PathBuf>> {
    let mut done = Vec::new();
    for plan in plans {
        if let Err(err) = plan.perform() {
            unmount_all(&done);
            return Err(err);
        }
        done.push(plan.target.clone());
    }
    Ok(done)
}

/// Detaches `targets` in reverse order, as far as possible.
pub fn unmount_all(targets: &[PathBuf]) {
    for target in targets.iter().rev() {
        if let Err(err) = umount2(target, MntFlags::MNT_DETACH) {
            // A pod spec's mounts: as many as the tenant asks for.
            protocol::log_limited!(log::Level::Warn, "unmount {}: {err}", target.display());
        }
    }
}

/// Splits mount(8)-style options into mount(2) flags, propagation flags and
/// the file system's own options (what mount(2) does not know: `size=64m`).
fn parse_options(options: &[String]) -> (MsFlags, MsFlags, Vec<String>) {
    let (mut flags, mut propagation, mut data) = (MsFlags::empty(), MsFlags::empty(), Vec::new());
    for option in options {
        let (set, clear, propagate) = match option.as_str() {
            "defaults" => (MsFlags::empty(), MsFlags::empty(), MsFlags::empty()),
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty(), MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY, MsFlags::empty()),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty(), MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID, MsFlags::empty()),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty(), MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV, MsFlags::empty()),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty(), MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC, MsFlags::empty()),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty(), MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty(), MsFlags::empty()),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty(), MsFlags::empty()),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME, MsFlags::empty()),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty(), MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty(), MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME, MsFlags::empty()),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty(), MsFlags::empty()),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty(), MsFlags::empty()),
            "rbind" => (
                MsFlags::MS_BIND | MsFlags::MS_REC,
                MsFlags::empty(),
                MsFlags::empty(),
            ),
            "private" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_PRIVATE),
            "rprivate" => (
                MsFlags::empty(),
                MsFlags::empty(),
                MsFlags::MS_PRIVATE | MsFlags::MS_REC,
            ),
            "shared" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_SHARED),
            "rshared" => (
                MsFlags::empty(),
                MsFlags::empty(),
                MsFlags::MS_SHARED | MsFlags::MS_REC,
            ),
            "slave" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_SLAVE),
            "rslave" => (
                MsFlags::empty(),
                MsFlags::empty(),
                MsFlags::MS_SLAVE | MsFlags::MS_REC,
            ),
            "unbindable" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_UNBINDABLE),
            "runbindable" => (
                MsFlags::empty(),
                MsFlags::empty(),
                MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
            ),
            other => {
                data.push(other.to_string());
                continue;
            }
        };
        flags = (flags | set) - clear;
        propagation |= propagate;
    }
    (flags, propagation, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(source: &str, target: &str, fstype: &str, options: &[&str]) -> Mount {
        Mount {
            source: source.into(),
            target: target.into(),
            fstype: fstype.into(),
            options: options.iter().map(|o| o.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn options_become_flags_propagation_and_data() {
        let options: Vec<String> = ["nosuid", "ro", "rw", "size=64m", "rshared", "mode=1777"]
            .iter()
            .map(|o| o.to_string())
            .collect();
        let (flags, propagation, data) = parse_options(&options);
        assert_eq!(flags, MsFlags::MS_NOSUID);
        assert_eq!(propagation, MsFlags::MS_SHARED | MsFlags::MS_REC);
        assert_eq!(data, ["size=64m", "mode=1777"]);
    }

    #[test]
    fn targets_go_under_the_root_and_binds_need_no_type() {
        let root = Path::new("/state/sandbox/mounts");
        let plan =
            MountPlan::new(&request("", "/run/shm/", "tmpfs", &["size=1m"]), root).expect("tmpfs");
        assert_eq!(plan.target, Path::new("/state/sandbox/mounts/run/shm"));
        assert_eq!(plan.source, "tmpfs");
        assert_eq!(plan.data, "size=1m");
        let plan = MountPlan::new(
            &request("/src", "/data", "", &["rbind", "ro"]),
            Path::new("/"),
        )
        .expect("bind");
        assert_eq!(plan.target, Path::new("/data"));
        assert!(plan.is_bind());
        assert!(plan
            .flags
            .contains(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY));
    }

    #[test]
    fn bad_mounts_are_invalid_arguments() {
        for bad in [
            request("", "run/x", "tmpfs", &[]),
            request("", "/run/../etc", "tmpfs", &[]),
            request("", "/run/x", "", &[]),
            request("", "/run/x", "bind", &[]),
            request("relative", "/run/x", "", &["bind"]),
        ] {
            let err = MountPlan::new(&bad, Path::new("/")).unwrap_err();
            assert_eq!(err.code(), ttrpc::Code::INVALID_ARGUMENT, "{bad:?}: {err}");
        }
    }
}
