//! The virtio-balloon device: three queues (inflate, deflate, reporting) on a
//! thread of its own, and a configuration space whose target is always zero
//! pages.

use super::discard::discard;
use super::event_handler::BalloonHandler;
use crate::devices::virtio::device_thread::{DeviceThread, DeviceWorker, EventRegistry};
use crate::devices::virtio::{
    drain_queue, needs_interrupt, read_config_space, ActivateError, ActiveQueue, VirtioDevice,
    VirtioInterrupt,
};
use crate::seccomp::ThreadKind;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use virtio_queue::{DescriptorChain, Queue};
use vm_memory::GuestMemoryMmap;

/// virtio device type of a memory balloon.
const TYPE_BALLOON: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_BALLOON;
/// Feature bit `VIRTIO_BALLOON_F_REPORTING`: the guest reports free pages on
/// a queue of their own (virtio 1.2, 5.5.3).
pub(super) const F_REPORTING: u32 = 5;
/// Largest size of each queue. Linux reports up to 32 ranges at once and
/// refuses a reporting queue smaller than that.
const QUEUE_SIZE: u16 = 32;
/// Queues: inflate, deflate and reporting, the order in which the driver
/// sets them up when only `VIRTIO_BALLOON_F_REPORTING` is acked.
pub const QUEUE_COUNT: usize = 3;
const QUEUE_SIZES: [u16; QUEUE_COUNT] = [QUEUE_SIZE; QUEUE_COUNT];
/// The queues' names in logs.
const QUEUE_NAMES: [&str; QUEUE_COUNT] = [
    "virtio-balloon: the inflate queue",
    "virtio-balloon: the deflate queue",
    "virtio-balloon: the reporting queue",
];
/// Index of the reporting queue.
pub const REPORTING_QUEUE: usize = 2;
/// Bytes of the configuration space: `num_pages`, `actual`,
/// `free_page_hint_cmd_id` and `poison_val`, each a little-endian u32.
const CONFIG_SIZE: usize = 16;
/// Where the driver writes `actual`, the pages it holds in the balloon.
const ACTUAL: std::ops::Range<usize> = 4..8;

/// The balloon device.
pub struct Balloon {
    /// The configuration space; only `actual` is ever written.
    config: [u8; CONFIG_SIZE],
    /// Bytes of guest memory given back to the host, for the VMM's metrics.
    returned: Arc<AtomicU64>,
    /// The serving loop while active; stopped before `thread` ends.
    worker: Option<DeviceThread>,
    thread: DeviceWorker,
}

impl Balloon {
    /// A new, inactive device, its thread started; what it gives back is
    /// added to `returned`.
    pub fn new(returned: Arc<AtomicU64>) -> std::io::Result<Self> {
        Ok(Self {
            config: [0; CONFIG_SIZE],
            returned,
            worker: None,
            thread: DeviceWorker::start("virtio-balloon", ThreadKind::Balloon)?,
        })
    }
}

/// What the device's thread serves: guest memory, the three queues and the
/// interrupt.
pub struct Queues {
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    interrupt: Arc<VirtioInterrupt>,
    returned: Arc<AtomicU64>,
    /// False once a used ring is broken: nothing more is served.
    healthy: bool,
}

impl Queues {
    /// Serves `queues` (inflate, deflate, reporting) in `mem`, interrupting
    /// through `interrupt`; what is given back is added to `returned`.
    pub fn new(
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<VirtioInterrupt>,
        returned: Arc<AtomicU64>,
    ) -> Self {
        Self {
            mem,
            queues,
            interrupt,
            returned,
            healthy: true,
        }
    }

    /// Completes what the driver made available on queue `index`: reported
    /// ranges are given back to the host first; inflate and deflate requests
    /// are only acknowledged (the device never asked for them).
    pub fn serve(&mut self, index: usize) {
        let Some(queue) = self.queues.get_mut(index).filter(|_| self.healthy) else {
            return;
        };
        let mem = &self.mem;
        let returned = &self.returned;
        let drained = drain_queue(queue, mem, |chain| {
            if index == REPORTING_QUEUE {
                returned.fetch_add(give_back(mem, chain), Ordering::Relaxed);
            }
            0
        });
        let name = QUEUE_NAMES.get(index).unwrap_or(&"virtio-balloon: a queue");
        if drained.log_if_broken(name) {
            self.healthy = false;
        }
        if drained.completed && needs_interrupt(queue, mem, "virtio-balloon") {
            if let Err(err) = self.interrupt.signal_used_queue() {
                log::error!("virtio-balloon: cannot interrupt the guest: {err}");
            }
        }
    }
}

/// Gives every range of a reporting chain back to the host; the bytes given
/// back. A range outside guest RAM is skipped (logged): the guest gets its
/// buffer back either way.
fn give_back(mem: &GuestMemoryMmap, chain: DescriptorChain<&GuestMemoryMmap>) -> u64 {
    chain
        .map(|desc| {
            discard(mem, desc.addr().0, u64::from(desc.len())).unwrap_or_else(|err| {
                protocol::log_limited!(log::Level::Warn, "virtio-balloon: {err}");
                0
            })
        })
        .sum()
}

impl VirtioDevice for Balloon {
    fn device_type(&self) -> u32 {
        TYPE_BALLOON
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        1 << F_REPORTING
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_space(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only `actual` is the driver's to write; the rest is ignored.
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        for (i, byte) in data.iter().enumerate() {
            let at = start.saturating_add(i);
            if ACTUAL.contains(&at) {
                self.config[at] = *byte;
            }
        }
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        acked_features: u64,
        queues: Vec<ActiveQueue>,
        interrupt: Arc<VirtioInterrupt>,
    ) -> Result<(), ActivateError> {
        if acked_features & (1 << F_REPORTING) == 0 {
            return Err(ActivateError::MissingFeature {
                device: "virtio-balloon",
                feature: "VIRTIO_BALLOON_F_REPORTING",
            });
        }
        if queues.len() != QUEUE_SIZES.len() {
            return Err(ActivateError::QueueCount {
                device: "virtio-balloon",
                expected: QUEUE_SIZES.len(),
                got: queues.len(),
            });
        }
        // A second activation (only tests do that) first stops the first thread.
        self.worker = None;
        let (queues, notifies): (Vec<_>, Vec<_>) =
            queues.into_iter().map(|q| (q.queue, q.notify)).unzip();
        let served = Queues::new(mem, queues, interrupt, self.returned.clone());
        let handler = BalloonHandler::new(served);
        self.worker = Some(self.thread.serve_events(
            EventRegistry::new()?,
            notifies,
            move || Ok(handler),
        )?);
        Ok(())
    }

    fn reset(&mut self) -> bool {
        // Dropping the loop stops it and waits for its end.
        self.worker = None;
        self.config = [0; CONFIG_SIZE];
        true
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
