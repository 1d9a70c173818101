//! A container's cgroup through libcgroups: its pids, figures and resource
//! updates, on cgroup v2 (the guest) and v1 or hybrid (tier-3 hosts).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use libcgroups::common::{
    create_cgroup_manager, get_cgroup_setup, AnyCgroupManager, CgroupConfig, CgroupManager,
    CgroupSetup, ControllerOpt,
};
use libcgroups::stats::{BlkioStats, Stats};
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
        if self.unified {
            let mut response = unified_stats(&self.unified_dir());
            response.memory_events = Some(self.memory_events()).into();
            return Ok(response);
        }
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
        response.io = blkio(&stats.blkio);
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

    /// The cgroup's directory on a unified (v2) hierarchy.
    fn unified_dir(&self) -> PathBuf {
        let relative = self.path.strip_prefix("/").unwrap_or(&self.path);
        Path::new(CGROUP_ROOT).join(relative)
    }

    /// Where the cgroup's OOM kills show, for the OOM monitor.
    pub fn oom_source(&self) -> OomSource {
        if self.unified {
            return OomSource::Events(self.unified_dir().join("memory.events"));
        }
        let relative = self.path.strip_prefix("/").unwrap_or(&self.path);
        let dir = Path::new(CGROUP_ROOT).join("memory").join(relative);
        OomSource::OomControl {
            oom_control: dir.join("memory.oom_control"),
            event_control: dir.join("cgroup.event_control"),
        }
    }

    /// memory.events (v2), or the OOM counters of memory.oom_control (v1).
    fn memory_events(&self) -> api::MemoryEvents {
        let mut events = api::MemoryEvents::new();
        match self.oom_source() {
            OomSource::Events(file) => {
                let table = read_keyed(&file);
                events.low = table("low");
                events.high = table("high");
                events.max = table("max");
                events.oom = table("oom");
                events.oom_kill = table("oom_kill");
            }
            OomSource::OomControl { oom_control, .. } => {
                events.oom_kill = read_keyed(&oom_control)("oom_kill");
                events.oom = events.oom_kill;
            }
        }
        events
    }
}

/// The files through which the kernel tells of a cgroup's OOM kills.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OomSource {
    /// v2: memory.events, which the kernel reports modified (inotify
    /// `IN_MODIFY`) whenever one of its counts changes.
    Events(PathBuf),
    /// v1: memory.oom_control, whose OOMs an eventfd registered through
    /// cgroup.event_control is told of (as the OOM begins, before the kill).
    OomControl {
        /// memory.oom_control, with the `oom_kill` count.
        oom_control: PathBuf,
        /// cgroup.event_control, where `<eventfd> <oom_control fd>` registers.
        event_control: PathBuf,
    },
}

impl OomSource {
    /// How many processes the OOM killer killed in the cgroup (0 if unreadable).
    pub fn oom_kills(&self) -> u64 {
        let file = match self {
            Self::Events(file) => file,
            Self::OomControl { oom_control, .. } => oom_control,
        };
        read_keyed(file)("oom_kill")
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

/// The figures of the v2 cgroup in `dir`, read from its interface files.
///
/// libcgroups' v2 stats also require the pressure, hugetlb and swap files, which
/// a guest kernel without PSI, HUGETLBFS or SWAP lacks; a missing file or key
/// here reads as 0 instead.
fn unified_stats(dir: &Path) -> api::StatsContainerResponse {
    let cpu_stat = read_keyed(&dir.join("cpu.stat"));
    let memory_stat = read_keyed(&dir.join("memory.stat"));
    let value = |file: &str| read_single(&dir.join(file));
    let mut response = api::StatsContainerResponse::new();
    response.cpu = Some(api::CpuStats {
        usage_usec: cpu_stat("usage_usec"),
        user_usec: cpu_stat("user_usec"),
        system_usec: cpu_stat("system_usec"),
        nr_periods: cpu_stat("nr_periods"),
        nr_throttled: cpu_stat("nr_throttled"),
        throttled_usec: cpu_stat("throttled_usec"),
        ..Default::default()
    })
    .into();
    response.memory = Some(api::MemoryStats {
        usage: value("memory.current"),
        usage_limit: value("memory.max"),
        swap_usage: value("memory.swap.current"),
        swap_limit: value("memory.swap.max"),
        anon: memory_stat("anon"),
        file: memory_stat("file"),
        kernel_stack: memory_stat("kernel_stack"),
        slab: memory_stat("slab"),
        sock: memory_stat("sock"),
        shmem: memory_stat("shmem"),
        pgfault: memory_stat("pgfault"),
        pgmajfault: memory_stat("pgmajfault"),
        ..Default::default()
    })
    .into();
    response.pids = Some(api::PidsStats {
        current: value("pids.current"),
        limit: value("pids.max"),
        ..Default::default()
    })
    .into();
    response.io = read_io_stat(&dir.join("io.stat"));
    response
}

/// io.stat (v2): one `MAJ:MIN rbytes=N wbytes=N rios=N wios=N dbytes=N dios=N`
/// line per device. A missing file reads as no device; a line without a
/// device number is skipped, a missing or malformed key reads as 0.
fn read_io_stat(path: &Path) -> Vec<api::IoEntry> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(io_stat_line)
        .collect()
}

fn io_stat_line(line: &str) -> Option<api::IoEntry> {
    let mut fields = line.split_whitespace();
    let (major, minor) = fields.next()?.split_once(':')?;
    let mut entry = api::IoEntry {
        major: major.parse().ok()?,
        minor: minor.parse().ok()?,
        ..Default::default()
    };
    for (key, value) in fields.filter_map(|field| field.split_once('=')) {
        let slot = match key {
            "rbytes" => &mut entry.rbytes,
            "wbytes" => &mut entry.wbytes,
            "rios" => &mut entry.rios,
            "wios" => &mut entry.wios,
            _ => continue,
        };
        *slot = value.parse().unwrap_or(0);
    }
    Some(entry)
}

/// v1 blkio figures per device, in io.stat's terms: the `Read` and `Write`
/// lines of blkio.throttle.io_service_bytes (bytes) and io_serviced (I/Os),
/// summed per device (ordered by device number).
fn blkio(stats: &BlkioStats) -> Vec<api::IoEntry> {
    let mut devices = BTreeMap::new();
    for (list, bytes) in [(&stats.service_bytes, true), (&stats.serviced, false)] {
        for stat in list {
            let read = match stat.op_type.as_deref() {
                Some("Read") => true,
                Some("Write") => false,
                _ => continue,
            };
            let entry = devices
                .entry((stat.major, stat.minor))
                .or_insert_with(|| api::IoEntry {
                    major: stat.major,
                    minor: stat.minor,
                    ..Default::default()
                });
            let slot = match (bytes, read) {
                (true, true) => &mut entry.rbytes,
                (true, false) => &mut entry.wbytes,
                (false, true) => &mut entry.rios,
                (false, false) => &mut entry.wios,
            };
            *slot = slot.saturating_add(stat.value);
        }
    }
    devices.into_values().collect()
}

/// A one-value cgroup file: its number, or 0 for `max`, a missing file or junk.
fn read_single(path: &Path) -> u64 {
    fs::read_to_string(path)
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(0)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unified_stats_read_the_v2_files_and_take_missing_ones_as_zero() {
        let dir = tempfile::tempdir().unwrap();
        let files = [
            ("cpu.stat", "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 4\nnr_throttled 1\nthrottled_usec 20\n"),
            ("memory.current", "4096\n"),
            ("memory.max", "max\n"),
            ("memory.stat", "anon 1024\nfile 2048\npgfault 7\n"),
            ("pids.current", "3\n"),
            ("pids.max", "64\n"),
        ];
        for (name, text) in files {
            fs::write(dir.path().join(name), text).unwrap();
        }
        let stats = unified_stats(dir.path());
        let (cpu, memory, pids) = (
            stats.cpu.unwrap(),
            stats.memory.unwrap(),
            stats.pids.unwrap(),
        );
        assert_eq!(
            (cpu.usage_usec, cpu.user_usec, cpu.system_usec),
            (1500, 1000, 500)
        );
        assert_eq!(
            (cpu.nr_periods, cpu.nr_throttled, cpu.throttled_usec),
            (4, 1, 20)
        );
        assert_eq!(
            (memory.usage, memory.usage_limit, memory.swap_usage),
            (4096, 0, 0)
        );
        assert_eq!(
            (memory.anon, memory.file, memory.pgfault, memory.slab),
            (1024, 2048, 7, 0)
        );
        assert_eq!((pids.current, pids.limit), (3, 64));
        assert!(stats.io.is_empty(), "no io.stat: {:?}", stats.io);
    }

    fn io(major: u64, minor: u64, figures: [u64; 4]) -> api::IoEntry {
        let [rbytes, wbytes, rios, wios] = figures;
        api::IoEntry {
            major,
            minor,
            rbytes,
            wbytes,
            rios,
            wios,
            ..Default::default()
        }
    }

    #[test]
    fn io_stat_is_read_per_device_and_junk_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let sample = "254:0 rbytes=8388608 wbytes=16777216 rios=8 wios=16 dbytes=0 dios=0\n\
                      253:16 rbytes=512 wbytes=0 rios=1 wios=0 dbytes=4096 dios=1 cost.usage=3\n\
                      junk line\n\
                      \n\
                      8:x rbytes=1\n\
                      7:1 rbytes=oops wbytes=4096 flag\n";
        fs::write(dir.path().join("io.stat"), sample).unwrap();
        let stats = unified_stats(dir.path());
        assert_eq!(
            stats.io,
            [
                io(254, 0, [8 << 20, 16 << 20, 8, 16]),
                io(253, 16, [512, 0, 1, 0]),
                io(7, 1, [0, 4096, 0, 0]),
            ]
        );
        assert!(read_io_stat(&dir.path().join("missing")).is_empty());
    }

    #[test]
    fn v1_blkio_sums_reads_and_writes_per_device() {
        use libcgroups::stats::BlkioDeviceStat;
        let stat = |major, minor, op: &str, value| BlkioDeviceStat {
            major,
            minor,
            op_type: Some(op.to_string()),
            value,
        };
        let stats = BlkioStats {
            service_bytes: vec![
                stat(254, 0, "Read", 4096),
                stat(254, 0, "Write", 8 << 20),
                stat(254, 0, "Sync", 1),
                stat(254, 0, "Total", 2),
                stat(8, 0, "Write", 512),
                stat(254, 0, "Write", 4096),
            ],
            serviced: vec![
                stat(254, 0, "Read", 1),
                stat(254, 0, "Write", 8),
                stat(8, 0, "Write", 1),
                stat(8, 0, "Total", 1),
            ],
            ..Default::default()
        };
        assert_eq!(
            blkio(&stats),
            [
                io(8, 0, [0, 512, 0, 1]),
                io(254, 0, [4096, (8 << 20) + 4096, 1, 8])
            ]
        );
    }
}
