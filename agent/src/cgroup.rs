//! A container's cgroup through libcgroups: its pids, figures and resource
//! updates, on cgroup v2 (the guest) and v1 or hybrid (tier-3 hosts).

use std::fs;
use std::path::{Path, PathBuf};

use libcgroups::common::{
    create_cgroup_manager, get_cgroup_setup, AnyCgroupManager, CgroupConfig, CgroupManager,
    CgroupSetup, ControllerOpt,
};
use libcgroups::stats::Stats;
use oci_spec::runtime::LinuxResources;
use protocol::agent as api;

use crate::error::{AgentError, Result};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// cpuacct.stat counts USER_HZ (100 Hz) ticks.
const USEC_PER_TICK: u64 = 10_000;
/// cgroup v1 reports "no limit" as a huge page-aligned number.
const NO_LIMIT: u64 = 1 << 62;

/// The cgroup of one container.
pub struct Cgroup {
    manager: AnyCgroupManager,
    /// Path relative to the hierarchy root(s).
    path: PathBuf,
    unified: bool,
}

impl Cgroup {
    /// The cgroup at `path` (as libcontainer placed it) of container `id`.
    pub fn open(id: &str, path: &Path) -> Result<Self> {
        let step = format!("open the cgroup of {id}");
        let setup = get_cgroup_setup().map_err(|e| cgroup_error(&step, &e))?;
        let unified = matches!(setup, CgroupSetup::Unified);
        let manager = create_cgroup_manager(CgroupConfig {
            cgroup_path: path.to_path_buf(),
            systemd_cgroup: false,
            container_name: id.to_string(),
        })
        .map_err(|e| cgroup_error(&step, &e))?;
        Ok(Self {
            manager,
            path: path.to_path_buf(),
            unified,
        })
    }

    /// Pids of every process in the cgroup.
    pub fn pids(&self) -> Result<Vec<u32>> {
        let pids = self
            .manager
            .get_all_pids()
            .map_err(|e| cgroup_error("list the cgroup's pids", &e))?;
        Ok(pids
            .into_iter()
            .map(|p| p.as_raw().unsigned_abs())
            .collect())
    }

    /// Applies `resources`.
    pub fn update(&self, resources: &LinuxResources) -> Result<()> {
        let opt = ControllerOpt {
            resources,
            disable_oom_killer: false,
            oom_score_adj: None,
            freezer_state: None,
        };
        self.manager
            .apply(&opt)
            .map_err(|e| cgroup_error("apply linux.resources", &e))
    }

    /// The cgroup's figures, in the shape of containerd's cgroups v2 metrics.
    pub fn stats(&self) -> Result<api::StatsContainerResponse> {
        let stats = self
            .manager
            .stats()
            .map_err(|e| cgroup_error("read the cgroup's figures", &e))?;
        let mut response = api::StatsContainerResponse::new();
        response.pids = Some(api::PidsStats {
            current: stats.pids.current,
            limit: stats.pids.limit,
            ..Default::default()
        })
        .into();
        response.cpu = Some(self.cpu(&stats)).into();
        response.memory = Some(memory(&stats)).into();
        response.memory_events = Some(self.memory_events()).into();
        Ok(response)
    }

    fn cpu(&self, stats: &Stats) -> api::CpuStats {
        let (usage, throttling) = (&stats.cpu.usage, &stats.cpu.throttling);
        let mut cpu = api::CpuStats::new();
        if self.unified {
            cpu.usage_usec = usage.usage_total;
            cpu.user_usec = usage.usage_user;
            cpu.system_usec = usage.usage_kernel;
            cpu.throttled_usec = throttling.throttled_time;
        } else {
            // v1: cpuacct.usage in ns, cpuacct.stat in ticks, throttled_time in ns.
            cpu.usage_usec = usage.usage_total / 1000;
            cpu.user_usec = usage.usage_user * USEC_PER_TICK;
            cpu.system_usec = usage.usage_kernel * USEC_PER_TICK;
            cpu.throttled_usec = throttling.throttled_time / 1000;
        }
        cpu.nr_periods = throttling.periods;
        cpu.nr_throttled = throttling.throttled_periods;
        cpu
    }

    /// How many processes the OOM killer killed in this cgroup.
    pub fn oom_kills(&self) -> u64 {
        self.memory_events().oom_kill
    }

    /// memory.events (v2), or the OOM counters of memory.oom_control (v1).
    fn memory_events(&self) -> api::MemoryEvents {
        let relative = self.path.strip_prefix("/").unwrap_or(&self.path);
        let mut events = api::MemoryEvents::new();
        if self.unified {
            let table = read_keyed(&Path::new(CGROUP_ROOT).join(relative).join("memory.events"));
            events.low = table("low");
            events.high = table("high");
            events.max = table("max");
            events.oom = table("oom");
            events.oom_kill = table("oom_kill");
        } else {
            let file = Path::new(CGROUP_ROOT)
                .join("memory")
                .join(relative)
                .join("memory.oom_control");
            let table = read_keyed(&file);
            events.oom_kill = table("oom_kill");
            events.oom = events.oom_kill;
        }
        events
    }
}

fn memory(stats: &Stats) -> api::MemoryStats {
    let memory = &stats.memory;
    let stat = |key: &str| memory.stats.get(key).copied().unwrap_or(0);
    let limit = |value: u64| if value >= NO_LIMIT { 0 } else { value };
    api::MemoryStats {
        usage: memory.memory.usage,
        usage_limit: limit(memory.memory.limit),
        swap_usage: memory.memswap.usage.saturating_sub(memory.memory.usage),
        swap_limit: limit(memory.memswap.limit),
        anon: stat("anon").max(stat("rss")),
        file: stat("file").max(stat("cache")),
        kernel_stack: stat("kernel_stack"),
        slab: stat("slab"),
        sock: stat("sock"),
        shmem: stat("shmem"),
        pgfault: stat("pgfault"),
        pgmajfault: stat("pgmajfault"),
        ..Default::default()
    }
}

/// A "key value" per line file as a lookup (0 for a missing key or file).
fn read_keyed(path: &Path) -> impl Fn(&str) -> u64 {
    let text = fs::read_to_string(path).unwrap_or_default();
    move |key| {
        text.lines()
            .filter_map(|line| line.split_once(' '))
            .find(|(k, _)| *k == key)
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0)
    }
}

fn cgroup_error(step: &str, err: &dyn std::fmt::Display) -> AgentError {
    AgentError::io(step)(std::io::Error::other(err.to_string()))
}
