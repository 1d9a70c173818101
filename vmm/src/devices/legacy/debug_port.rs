//! The debug port (0x80): the agent writes [`protocol::BOOT_TIMER_INIT_STARTED`]
//! there once it runs as init, which times the guest's boot, as Cloud
//! Hypervisor's debug port and Firecracker's boot timer do. The guest kernel runs
//! with `io_delay=none`, so nothing else writes to it.

use crate::devices::bus::BusDevice;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// Boot timing shared by the vCPUs, the debug port and the API.
#[derive(Default)]
pub struct BootTimer {
    first_run: OnceLock<Instant>,
    setup_us: AtomicU64,
    boot_time_us: AtomicU64,
}

impl BootTimer {
    /// Marks the first KVM_RUN; the first time, returns the microseconds since
    /// `process_start` (the VMM's setup time).
    pub fn mark_first_run(&self, process_start: Instant) -> Option<u64> {
        let now = Instant::now();
        self.first_run.set(now).ok()?;
        let us = now.duration_since(process_start).as_micros() as u64;
        self.setup_us.store(us, Ordering::Relaxed);
        Some(us)
    }

    /// Microseconds from process start to the first KVM_RUN, 0 until then.
    pub fn setup_us(&self) -> u64 {
        self.setup_us.load(Ordering::Relaxed)
    }

    /// Microseconds from the first KVM_RUN to the agent's signal, 0 until then.
    pub fn boot_time_us(&self) -> u64 {
        self.boot_time_us.load(Ordering::Relaxed)
    }

    fn mark_init_started(&self) -> Option<u64> {
        let started = self.first_run.get()?;
        let us = started.elapsed().as_micros().max(1) as u64;
        self.boot_time_us
            .compare_exchange(0, us, Ordering::Relaxed, Ordering::Relaxed)
            .ok()
            .map(|_| us)
    }
}

/// The debug port as a port I/O bus device.
pub struct DebugPort(pub Arc<BootTimer>);

impl BusDevice for DebugPort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if data.first() == Some(&protocol::BOOT_TIMER_INIT_STARTED) {
            if let Some(us) = self.0.mark_init_started() {
                log::info!("guest-boot-time-us={us}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_first_init_signal_counts() {
        let timer = Arc::new(BootTimer::default());
        let mut port = DebugPort(timer.clone());
        port.write(0, &[protocol::BOOT_TIMER_INIT_STARTED]);
        assert_eq!(timer.boot_time_us(), 0, "no KVM_RUN yet");
        let start = Instant::now();
        assert!(timer.mark_first_run(start).is_some());
        assert!(timer.mark_first_run(start).is_none());
        port.write(0, &[0x12]);
        assert_eq!(timer.boot_time_us(), 0);
        port.write(0, &[protocol::BOOT_TIMER_INIT_STARTED]);
        let first = timer.boot_time_us();
        assert!(first > 0);
        port.write(0, &[protocol::BOOT_TIMER_INIT_STARTED]);
        assert_eq!(timer.boot_time_us(), first);
    }
}
