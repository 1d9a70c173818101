//! virtio devices and their MMIO transport.
//!
//! A device implements [`VirtioDevice`]; [`mmio::MmioTransport`] carries it on
//! the MMIO bus, with queue notifications through ioeventfds and interrupts
//! through an irqfd ([`mmio::register_notifiers`]), announced to the guest with
//! `virtio_mmio.device=` on the kernel command line.

pub mod balloon;
pub mod block;
pub(crate) mod device_thread;
pub mod fs;
pub(crate) mod iovec;
pub mod mmio;
pub mod net;
pub(crate) mod rng;
#[cfg(test)]
pub(crate) mod test_utils;
pub mod vsock;

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// Feature bit every modern (virtio 1.x) device offers.
pub use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
/// Interrupt status bits: a used ring changed; the configuration changed.
pub use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};
/// Feature bit `VIRTIO_RING_F_INDIRECT_DESC`: descriptors may point to a
/// table of descriptors (virtio 1.1, 2.6.5.3); virtio-queue's descriptor
/// chains follow them, so a device that reads its requests through them may
/// offer it. `VIRTIO_RING_F_EVENT_IDX`: notification suppression through
/// `used_event` / `avail_event` (virtio 1.1, 2.6.7 and 2.6.10); a device offers
/// it only if it serves its queues with `disable_notification` /
/// `enable_notification` and interrupts only when `needs_notification` says so.
pub use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

/// Copies the bytes of a device's configuration space `config` at `offset`
/// into `data`; bytes past its end read as zero.
pub fn read_config_space(config: &[u8], offset: u64, data: &mut [u8]) {
    let start = usize::try_from(offset).unwrap_or(usize::MAX);
    for (i, byte) in data.iter_mut().enumerate() {
        *byte = start
            .checked_add(i)
            .and_then(|at| config.get(at))
            .copied()
            .unwrap_or(0);
    }
}

/// A queue handed to an activated device, with the eventfd the guest's
/// notifications for it arrive on.
pub struct ActiveQueue {
    /// The queue as the driver set it up.
    pub queue: Queue,
    /// Signalled when the driver notifies the queue.
    pub notify: EventFd,
}

impl ActiveQueue {
    /// A queue for a device that runs with `acked_features`: ring features the
    /// driver acked (event index) are switched on in the queue.
    pub fn new(mut queue: Queue, notify: EventFd, acked_features: u64) -> Self {
        queue.set_event_idx(acked_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0);
        Self { queue, notify }
    }
}

/// Errors a device can report on activation.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver made a queue ready that is not valid (rings outside guest
    /// memory, a size that is no power of two).
    #[error("the driver set up an invalid queue")]
    InvalidQueue,
    /// A queue's state could not be taken over.
    #[error("cannot take over a queue: {0:?}")]
    QueueState(virtio_queue::Error),
    /// The device got another number of queues than it serves.
    #[error("{device} needs {expected} queues, got {got}")]
    QueueCount {
        device: &'static str,
        expected: usize,
        got: usize,
    },
    /// The driver did not ack a feature the device needs.
    #[error("{device} needs feature {feature}")]
    MissingFeature {
        device: &'static str,
        feature: &'static str,
    },
    /// The device was activated before and cannot be again.
    #[error("{device} is already active")]
    AlreadyActive { device: &'static str },
    /// The tap refused the offloads the driver acked.
    #[error("cannot set the tap's offloads: {0}")]
    TapOffload(#[source] net::TapError),
    /// An eventfd could not be made or duplicated, or the device's thread
    /// cannot take the activation.
    #[error("virtio device activation failed: {0}")]
    Io(#[from] io::Error),
}

/// The interrupt line of one virtio device: status bits plus an irqfd.
pub struct VirtioInterrupt {
    status: AtomicU32,
    irq: EventFd,
}

impl VirtioInterrupt {
    /// An interrupt raised through `irq` (registered as an irqfd).
    pub fn new(irq: EventFd) -> Self {
        Self {
            status: AtomicU32::new(0),
            irq,
        }
    }

    /// Tells the driver a used ring changed.
    pub fn signal_used_queue(&self) -> io::Result<()> {
        self.raise(VIRTIO_MMIO_INT_VRING)
    }

    /// Tells the driver the configuration space changed.
    pub fn signal_config_change(&self) -> io::Result<()> {
        self.raise(VIRTIO_MMIO_INT_CONFIG)
    }

    /// Sets `bits` in the status and raises the interrupt.
    pub fn raise(&self, bits: u32) -> io::Result<()> {
        self.status.fetch_or(bits, Ordering::SeqCst);
        self.irq.write(1)
    }

    /// Pending interrupt status bits.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// The irqfd, for registration with KVM.
    pub fn irq(&self) -> &EventFd {
        &self.irq
    }
}

/// What a one-queue device holds once active: guest memory, its queue and its
/// interrupt.
pub struct SingleQueue {
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// The request queue.
    pub queue: Queue,
    /// The device's interrupt.
    pub interrupt: Arc<VirtioInterrupt>,
}

impl SingleQueue {
    /// Takes the first queue of an activation; `device` names it in errors.
    pub fn activate(
        device: &'static str,
        mem: GuestMemoryMmap,
        queues: Vec<ActiveQueue>,
        interrupt: Arc<VirtioInterrupt>,
    ) -> Result<Self, ActivateError> {
        let got = queues.len();
        let queue = queues
            .into_iter()
            .next()
            .ok_or(ActivateError::QueueCount {
                device,
                expected: 1,
                got,
            })?
            .queue;
        Ok(Self {
            mem,
            queue,
            interrupt,
        })
    }

    /// Tells the guest that requests completed.
    pub fn signal_used(&self, device: &str) {
        if let Err(err) = self.interrupt.signal_used_queue() {
            log::error!("{device}: cannot interrupt the guest: {err}");
        }
    }

    /// Tells the guest that requests completed, unless the driver suppressed
    /// the interrupt (its `used_event`, with `VIRTIO_RING_F_EVENT_IDX`).
    pub fn signal_used_if_needed(&mut self, device: &str) {
        if needs_interrupt(&mut self.queue, &self.mem, device) {
            self.signal_used(device);
        }
    }
}

/// What [`drain_queue`] did.
pub struct Drained {
    /// Some chain was completed: the driver may have to be interrupted.
    pub completed: bool,
    /// The rings turned out broken (an index out of range, a ring outside
    /// guest memory): the queue can serve nothing more.
    pub broken: Option<virtio_queue::Error>,
}

impl Drained {
    /// Logs (rate-limited) that the rings of `queue` broke, if they did,
    /// naming it as "virtio-blk: the request queue"; whether they did.
    pub fn log_if_broken(&self, queue: &str) -> bool {
        if let Some(err) = &self.broken {
            protocol::log_limited!(log::Level::Error, "{queue} is broken: {err}");
        }
        self.broken.is_some()
    }
}

/// Completes every chain the driver made available on `queue`, each answered
/// by `handle` with the number of bytes it wrote to the guest. The driver's
/// notifications are off meanwhile and back on at the end (with
/// `VIRTIO_RING_F_EVENT_IDX`, `avail_event` follows what was taken); a chain
/// made available in between is served before returning.
pub fn drain_queue<'a>(
    queue: &mut Queue,
    mem: &'a GuestMemoryMmap,
    mut handle: impl FnMut(DescriptorChain<&'a GuestMemoryMmap>) -> u32,
) -> Drained {
    let mut completed = false;
    // Rounds in a row that found nothing: a second one means the ring's index
    // is invalid (pop refuses it), not that chains raced in.
    let mut empty_rounds = 0;
    let broken = loop {
        if let Err(err) = queue.disable_notification(mem) {
            break Some(err);
        }
        let mut popped = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            popped = true;
            let head = chain.head_index();
            let len = handle(chain);
            if let Err(err) = queue.add_used(mem, head, len) {
                let _ = queue.enable_notification(mem);
                return Drained {
                    completed,
                    broken: Some(err),
                };
            }
            completed = true;
        }
        empty_rounds = if popped { 0 } else { empty_rounds + 1 };
        match queue.enable_notification(mem) {
            Ok(true) if empty_rounds < 2 => continue,
            Ok(_) => break None,
            Err(err) => break Some(err),
        }
    };
    Drained { completed, broken }
}

/// Whether the driver wants an interrupt for what `queue` completed (always
/// without `VIRTIO_RING_F_EVENT_IDX`; also when its ring cannot be read, rather
/// than stall it).
pub fn needs_interrupt(queue: &mut Queue, mem: &GuestMemoryMmap, device: &str) -> bool {
    queue.needs_notification(mem).unwrap_or_else(|err| {
        protocol::log_limited!(
            log::Level::Warn,
            "{device}: cannot read the used event: {err}"
        );
        true
    })
}

/// A virtio device, independent of its transport.
pub trait VirtioDevice: Send {
    /// virtio device type (1 = net, 2 = block, 4 = rng, 5 = balloon, 19 = vsock,
    /// 26 = fs).
    fn device_type(&self) -> u32;
    /// Largest size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Features the device offers (the transport adds `VIRTIO_F_VERSION_1`).
    fn avail_features(&self) -> u64;
    /// Reads the device configuration space at `offset`.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device configuration space at `offset`.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts the device once the driver is ready, with the features it acked.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        acked_features: u64,
        queues: Vec<ActiveQueue>,
        interrupt: Arc<VirtioInterrupt>,
    ) -> Result<(), ActivateError>;
    /// Stops an active device on a driver reset; false if it cannot.
    fn reset(&mut self) -> bool {
        false
    }
    /// Stops an active device for a snapshot, leaving its rings as they are
    /// (chains taken and not used are taken again after a restore); false if
    /// it cannot. A device that can reset can do this.
    fn quiesce(&mut self) -> bool {
        self.reset()
    }
}
