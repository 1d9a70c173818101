//! VM exit counters and the VMM's own memory figures.

use std::sync::atomic::{AtomicU64, Ordering};

/// Kinds of VM exit the VMM counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    /// Port I/O read.
    IoIn,
    /// Port I/O write.
    IoOut,
    /// MMIO read.
    MmioRead,
    /// MMIO write.
    MmioWrite,
    /// Triple fault.
    Shutdown,
    /// KVM system event (reset, shutdown, crash).
    SystemEvent,
    /// `KVM_RUN` interrupted by a kick.
    Kick,
    /// Anything else.
    Other,
}

impl ExitKind {
    const ALL: [ExitKind; 8] = [
        ExitKind::IoIn,
        ExitKind::IoOut,
        ExitKind::MmioRead,
        ExitKind::MmioWrite,
        ExitKind::Shutdown,
        ExitKind::SystemEvent,
        ExitKind::Kick,
        ExitKind::Other,
    ];

    /// Name used in metrics.
    pub fn name(self) -> &'static str {
        match self {
            ExitKind::IoIn => "io_in",
            ExitKind::IoOut => "io_out",
            ExitKind::MmioRead => "mmio_read",
            ExitKind::MmioWrite => "mmio_write",
            ExitKind::Shutdown => "shutdown",
            ExitKind::SystemEvent => "system_event",
            ExitKind::Kick => "kick",
            ExitKind::Other => "other",
        }
    }
}

/// Exit counts by kind, updated by the vCPU threads.
#[derive(Default)]
pub struct ExitCounters([AtomicU64; 8]);

impl ExitCounters {
    /// Counts one exit of `kind`.
    pub fn count(&self, kind: ExitKind) {
        self.0[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Every kind with its count.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        ExitKind::ALL
            .iter()
            .map(|kind| (kind.name(), self.0[*kind as usize].load(Ordering::Relaxed)))
            .collect()
    }
}

/// Resident set size of this process in bytes (`VmRSS`), 0 if unknown.
pub fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_kind() {
        let counters = ExitCounters::default();
        counters.count(ExitKind::IoOut);
        counters.count(ExitKind::IoOut);
        counters.count(ExitKind::Kick);
        let snap = counters.snapshot();
        assert!(snap.contains(&("io_out", 2)));
        assert!(snap.contains(&("kick", 1)));
        assert!(snap.contains(&("io_in", 0)));
        assert!(resident_bytes() > 0);
    }
}
