//! Helpers for device unit tests: descriptors and activation on mock queues.

use super::{ActiveQueue, VirtioDevice, VirtioInterrupt};
use std::sync::Arc;
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// Descriptor flag: the chain goes on.
pub const VRING_DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the device writes this buffer.
pub const VRING_DESC_F_WRITE: u16 = 2;

/// A split-queue descriptor (the mock queue fills in `next`).
pub fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
    RawDescriptor::from(Descriptor::new(addr, len, flags, 0))
}

/// Activates `device` on `queue` and returns its interrupt.
pub fn activate_on(
    device: &mut dyn VirtioDevice,
    mem: &GuestMemoryMmap,
    queue: &MockSplitQueue<'_, GuestMemoryMmap>,
) -> Arc<VirtioInterrupt> {
    activate_with(device, mem, queue, 0)
}

/// Activates `device` on `queue` as the transport does when the driver acked
/// `acked_features`, and returns its interrupt.
pub fn activate_with(
    device: &mut dyn VirtioDevice,
    mem: &GuestMemoryMmap,
    queue: &MockSplitQueue<'_, GuestMemoryMmap>,
    acked_features: u64,
) -> Arc<VirtioInterrupt> {
    activate_notifying(device, mem, queue, acked_features).0
}

/// [`activate_with`], also returning the eventfd the driver notifies the
/// queue through (for devices that wait on it themselves).
pub fn activate_notifying(
    device: &mut dyn VirtioDevice,
    mem: &GuestMemoryMmap,
    queue: &MockSplitQueue<'_, GuestMemoryMmap>,
    acked_features: u64,
) -> (Arc<VirtioInterrupt>, EventFd) {
    let interrupt = Arc::new(VirtioInterrupt::new(
        EventFd::new(libc::EFD_NONBLOCK).unwrap(),
    ));
    let notify = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let active = ActiveQueue::new(
        queue.create_queue().unwrap(),
        notify.try_clone().unwrap(),
        acked_features,
    );
    device
        .activate(mem.clone(), acked_features, vec![active], interrupt.clone())
        .unwrap();
    (interrupt, notify)
}

/// Whether `interrupt` was raised since the last call (reads its irqfd).
pub fn interrupted(interrupt: &VirtioInterrupt) -> bool {
    interrupt.irq().read().is_ok()
}
