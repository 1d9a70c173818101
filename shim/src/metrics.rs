//! The agent's cgroup figures and the VMM's counters as containerd's cgroups
//! v2 `Metrics`, the type `ctr task metrics` and CRI's ContainerStats decode.

use crate::text::{bounded_text, MAX_GUEST_TEXT};
use containerd_shim::protos::cgroups_v2::metrics::{
    CPUStat, IOEntry, IOStat, MemoryEvents, MemoryStat, Metrics, PidsStat,
};
use protobuf::well_known_types::any::Any;
use protobuf::{Message, MessageFull};
use protocol::agent::StatsContainerResponse;
use protocol::vmm::VmMetrics;

/// `stats` packed as an `io.containerd.cgroups.v2.Metrics` Any. The type URL is
/// the bare message name, as containerd 1.6's typeurl looks proto types up.
pub fn to_any(stats: &StatsContainerResponse) -> Result<Any, protobuf::Error> {
    pack(&to_metrics(stats))
}

/// `metrics` as the Any containerd decodes, under [`type_url`].
fn pack(metrics: &Metrics) -> Result<Any, protobuf::Error> {
    Ok(Any {
        type_url: type_url(),
        value: metrics.write_to_bytes()?,
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

/// The VM's memory as containerd's cgroups v2 `Metrics` (the type CRI and
/// `ctr task metrics` decode for a task): the VMM's RSS as usage, the guest's
/// memory size as the limit. The VMM counts no CPU time, pids or io.
pub fn vm_to_any(vm: &VmMetrics) -> Result<Any, protobuf::Error> {
    let memory = MemoryStat {
        usage: vm.vmm_rss_bytes,
        usage_limit: vm.guest_memory_bytes,
        ..Default::default()
    };
    pack(&Metrics {
        memory: Some(memory).into(),
        ..Default::default()
    })
}

/// The VM's exits by reason as one line, sorted, at most [`MAX_GUEST_TEXT`]
/// bytes (for a debug log: containerd's metrics have no place for them).
pub fn exits_summary(vm: &VmMetrics) -> String {
    let mut exits: Vec<(&String, &u64)> = vm.exits_by_reason.iter().collect();
    exits.sort();
    let line = exits
        .iter()
        .map(|(reason, count)| format!("{reason}={count}"))
        .collect::<Vec<_>>()
        .join(" ");
    bounded_text(&line, MAX_GUEST_TEXT)
}

/// The type URL containerd knows cgroups v2 metrics by.
pub fn type_url() -> String {
    Metrics::descriptor().full_name().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::agent::{CpuStats, MemoryStats};
    use std::collections::HashMap;

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

    #[test]
    fn vm_metrics_decode_as_cgroups_v2_memory() {
        let mut vm = VmMetrics::new();
        vm.set_vmm_rss_bytes(48 << 20);
        vm.set_guest_memory_bytes(256 << 20);
        vm.exits_by_reason = HashMap::from([("mmio".to_string(), 5), ("hlt".to_string(), 9)]);
        let any = vm_to_any(&vm).unwrap();
        assert_eq!(any.type_url, "io.containerd.cgroups.v2.Metrics");
        let metrics = Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!(metrics.memory.usage, 48 << 20);
        assert_eq!(metrics.memory.usage_limit, 256 << 20);
        assert!(metrics.cpu.is_none() && metrics.pids.is_none());
        assert_eq!(exits_summary(&vm), "hlt=9 mmio=5");
    }
}
