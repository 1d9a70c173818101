//! The host's cgroup layout: v2 (unified), v1 or hybrid (v1 controllers
//! with the v2 hierarchy beside them at `unified/`).

use std::path::Path;

/// Where the cgroup file systems are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// Where the mounts are listed.
const MOUNTS: &str = "/proc/self/mounts";
/// Bytes of the mount table read.
const MAX_MOUNTS: u64 = 1 << 20;
/// The v1 controllers the shim charges the VMM to (see the shim's pod_cgroup).
pub const V1_CONTROLLERS: [&str; 5] = ["memory", "cpu", "cpuacct", "pids", "blkio"];

/// How cgroups are mounted on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// The unified hierarchy at `/sys/fs/cgroup`.
    V2,
    /// v1 controllers only; the ones mounted.
    V1 { controllers: Vec<String> },
    /// v1 controllers (these) and the unified hierarchy at `unified/`.
    Hybrid { controllers: Vec<String> },
    /// No cgroup file system under `/sys/fs/cgroup`.
    None,
}

impl Layout {
    /// The layout's name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::V2 => "v2",
            Self::V1 { .. } => "v1",
            Self::Hybrid { .. } => "hybrid",
            Self::None => "none",
        }
    }

    /// The shim's v1 controllers that are not mounted (empty on v2).
    pub fn missing_controllers(&self) -> Vec<&'static str> {
        match self {
            Self::V1 { controllers } | Self::Hybrid { controllers } => V1_CONTROLLERS
                .into_iter()
                .filter(|want| !controllers.iter().any(|have| have == want))
                .collect(),
            Self::V2 | Self::None => Vec::new(),
        }
    }
}

/// This host's layout: the file system type of `/sys/fs/cgroup` (statfs),
/// then the mount table for v1 and hybrid.
pub fn layout() -> Layout {
    let root_is_v2 = nix::sys::statfs::statfs(CGROUP_ROOT)
        .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC);
    if root_is_v2 {
        return Layout::V2;
    }
    match crate::files::read_bounded(Path::new(MOUNTS), MAX_MOUNTS) {
        Ok(mounts) => layout_from_mounts(&mounts),
        Err(err) => {
            log::warn!("cannot read {MOUNTS}: {err}");
            Layout::None
        }
    }
}

/// The layout a mount table (`/proc/mounts` text) describes.
pub fn layout_from_mounts(mounts: &str) -> Layout {
    let mut controllers = Vec::new();
    let mut unified = false;
    for line in mounts.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [_, mount_point, fs_type, options, ..] = fields[..] else {
            continue;
        };
        match fs_type {
            "cgroup2" if mount_point == CGROUP_ROOT => return Layout::V2,
            "cgroup2" if mount_point.starts_with(CGROUP_ROOT) => unified = true,
            "cgroup" if mount_point.starts_with(CGROUP_ROOT) => {
                controllers.extend(
                    options
                        .split(',')
                        .filter(|opt| V1_CONTROLLERS.contains(opt) || is_other_controller(opt))
                        .map(String::from),
                );
            }
            _ => {}
        }
    }
    controllers.sort();
    controllers.dedup();
    match (controllers.is_empty(), unified) {
        (true, false) => Layout::None,
        (_, true) => Layout::Hybrid { controllers },
        (false, false) => Layout::V1 { controllers },
    }
}

/// v1 controllers other than the shim's (listed for the operator).
fn is_other_controller(option: &str) -> bool {
    matches!(
        option,
        "cpuset"
            | "devices"
            | "freezer"
            | "net_cls"
            | "net_prio"
            | "perf_event"
            | "hugetlb"
            | "rdma"
            | "misc"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/cpuacct cgroup rw,relatime,cpuacct 0 0
cgroup /sys/fs/cgroup/cpuset cgroup rw,relatime,cpuset 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup /sys/fs/cgroup/pids cgroup rw,relatime,pids 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,name=systemd 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
";
    const V2: &str = "\
proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0
cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate 0 0
";
    const V1: &str = "\
cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,nosuid,cpu,cpuacct 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,nosuid,memory 0 0
cgroup /sys/fs/cgroup/blkio cgroup rw,nosuid,blkio 0 0
cgroup /sys/fs/cgroup/pids cgroup rw,nosuid,pids 0 0
";

    #[test]
    fn tells_the_layouts_apart() {
        assert_eq!(layout_from_mounts(V2), Layout::V2);
        let hybrid = layout_from_mounts(HYBRID);
        assert_eq!(hybrid.name(), "hybrid");
        assert_eq!(hybrid.missing_controllers(), ["blkio"]);
        let v1 = layout_from_mounts(V1);
        assert_eq!(
            v1,
            Layout::V1 {
                controllers: ["blkio", "cpu", "cpuacct", "memory", "pids"]
                    .map(String::from)
                    .into()
            }
        );
        assert!(v1.missing_controllers().is_empty());
        assert_eq!(layout_from_mounts("proc /proc proc rw 0 0\n"), Layout::None);
    }
}
