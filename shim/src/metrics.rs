//! The agent's cgroup figures as containerd's cgroups v2 `Metrics`, the type
//! `ctr task metrics` and CRI's ContainerStats decode.

use containerd_shim::protos::cgroups_v2::metrics::{
    CPUStat, IOEntry, IOStat, MemoryEvents, MemoryStat, Metrics, PidsStat,
};
use protobuf::well_known_types::any::Any;
use protobuf::{Message, MessageFull};
use protocol::agent::StatsContainerResponse;

/// `stats` packed as an `io.containerd.cgroups.v2.Metrics` Any. The type URL is
/// the bare message name, as containerd 1.6's typeurl looks proto types up.
pub fn to_any(stats: &StatsContainerResponse) -> Result<Any, protobuf::Error> {
    let value = to_metrics(stats).write_to_bytes()?;
    Ok(Any {
        type_url: type_url(),
        value,
        ..Default::default()
    })
}

fn to_metrics(stats: &StatsContainerResponse) -> Metrics {
    let pids = stats.pids.as_ref().map(|p| PidsStat {
        current: p.current,
        limit: p.limit,
        ..Default::default()
    });
    let cpu = stats.cpu.as_ref().map(|c| CPUStat {
        usage_usec: c.usage_usec,
        user_usec: c.user_usec,
        system_usec: c.system_usec,
        nr_periods: c.nr_periods,
        nr_throttled: c.nr_throttled,
        throttled_usec: c.throttled_usec,
        ..Default::default()
    });
    let memory = stats.memory.as_ref().map(|m| MemoryStat {
        usage: m.usage,
        usage_limit: m.usage_limit,
        swap_usage: m.swap_usage,
        swap_limit: m.swap_limit,
        anon: m.anon,
        file: m.file,
        kernel_stack: m.kernel_stack,
        slab: m.slab,
        sock: m.sock,
        shmem: m.shmem,
        pgfault: m.pgfault,
        pgmajfault: m.pgmajfault,
        ..Default::default()
    });
    let memory_events = stats.memory_events.as_ref().map(|e| MemoryEvents {
        low: e.low,
        high: e.high,
        max: e.max,
        oom: e.oom,
        oom_kill: e.oom_kill,
        ..Default::default()
    });
    let io = (!stats.io.is_empty()).then(|| IOStat {
        usage: stats
            .io
            .iter()
            .map(|e| IOEntry {
                major: e.major,
                minor: e.minor,
                rbytes: e.rbytes,
                wbytes: e.wbytes,
                rios: e.rios,
                wios: e.wios,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    });
    Metrics {
        pids: pids.into(),
        cpu: cpu.into(),
        memory: memory.into(),
        memory_events: memory_events.into(),
        io: io.into(),
        ..Default::default()
    }
}

/// The type URL containerd knows cgroups v2 metrics by.
pub fn type_url() -> String {
    Metrics::descriptor().full_name().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::agent::{CpuStats, MemoryStats};

    #[test]
    fn figures_keep_their_values_and_type() {
        let stats = StatsContainerResponse {
            cpu: Some(CpuStats {
                usage_usec: 7,
                ..Default::default()
            })
            .into(),
            memory: Some(MemoryStats {
                usage: 4096,
                usage_limit: 1 << 25,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        let any = to_any(&stats).unwrap();
        assert_eq!(any.type_url, type_url());
        assert_eq!(any.type_url, "io.containerd.cgroups.v2.Metrics");
        let metrics = Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!(metrics.cpu.usage_usec, 7);
        assert_eq!(metrics.memory.usage_limit, 1 << 25);
        assert!(metrics.pids.is_none());
    }
}
