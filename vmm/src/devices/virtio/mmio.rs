//! The virtio-mmio transport (virtio 1.2, section 4.2.2, version 2 registers):
//! the driver's view of a device as registers on the MMIO bus.

pub mod state;

use super::{ActivateError, ActiveQueue, VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1};
use crate::devices::bus::BusDevice;
use kvm_ioctls::{IoEventAddress, VmFd};
use std::sync::Arc;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// Size of one device's MMIO window.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;

const MAGIC_VALUE: u32 = 0x7472_6976; // "virt"
const MMIO_VERSION: u32 = 2;
const VENDOR_ID: u32 = 0;

const REG_MAGIC: u64 = 0x000;
const REG_VERSION: u64 = 0x004;
const REG_DEVICE_ID: u64 = 0x008;
const REG_VENDOR_ID: u64 = 0x00c;
const REG_DEVICE_FEATURES: u64 = 0x010;
const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
const REG_DRIVER_FEATURES: u64 = 0x020;
const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
const REG_QUEUE_SEL: u64 = 0x030;
const REG_QUEUE_NUM_MAX: u64 = 0x034;
const REG_QUEUE_NUM: u64 = 0x038;
const REG_QUEUE_READY: u64 = 0x044;
/// Queue notification register; an ioeventfd per queue catches writes to it.
pub const REG_QUEUE_NOTIFY: u64 = 0x050;
const REG_INTERRUPT_STATUS: u64 = 0x060;
const REG_INTERRUPT_ACK: u64 = 0x064;
const REG_STATUS: u64 = 0x070;
const REG_QUEUE_DESC_LOW: u64 = 0x080;
const REG_QUEUE_DESC_HIGH: u64 = 0x084;
const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
const REG_QUEUE_DRIVER_HIGH: u64 = 0x094;
const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
const REG_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const REG_CONFIG_GENERATION: u64 = 0x0fc;
const CONFIG_SPACE: u64 = 0x100;

const STATUS_ACKNOWLEDGE: u32 = 1;
const STATUS_DRIVER: u32 = 2;
const STATUS_DRIVER_OK: u32 = 4;
const STATUS_FEATURES_OK: u32 = 8;
const STATUS_DEVICE_NEEDS_RESET: u32 = 64;
const STATUS_FAILED: u32 = 128;

/// Errors while wiring a transport to KVM.
#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    /// An eventfd could not be created.
    #[error("cannot create a virtio eventfd: {0}")]
    EventFd(std::io::Error),
    /// KVM refused an irqfd or ioeventfd.
    #[error("cannot register the virtio {what} with KVM: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
}

/// A virtio device on the MMIO bus.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    interrupt: Arc<VirtioInterrupt>,
    queues: Vec<Queue>,
    queue_notify: Vec<EventFd>,
    queue_select: u32,
    features_select: u32,
    acked_features_select: u32,
    acked_features: u64,
    status: u32,
    config_generation: u32,
    active: bool,
}

fn eventfd() -> Result<EventFd, MmioError> {
    EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(MmioError::EventFd)
}

impl MmioTransport {
    /// Wraps `device`, creating its queues, notification eventfds and interrupt.
    pub fn new(device: Box<dyn VirtioDevice>, mem: GuestMemoryMmap) -> Result<Self, MmioError> {
        let mut queues = Vec::new();
        let mut queue_notify = Vec::new();
        for max_size in device.queue_max_sizes() {
            // virtio-queue accepts only power-of-two sizes; devices declare such.
            let queue = Queue::new(*max_size).map_err(|err| {
                MmioError::EventFd(std::io::Error::other(format!(
                    "queue of size {max_size}: {err:?}"
                )))
            })?;
            queues.push(queue);
            queue_notify.push(eventfd()?);
        }
        Ok(Self {
            device,
            mem,
            interrupt: Arc::new(VirtioInterrupt::new(eventfd()?)),
            queues,
            queue_notify,
            queue_select: 0,
            features_select: 0,
            acked_features_select: 0,
            acked_features: 0,
            status: 0,
            config_generation: 0,
            active: false,
        })
    }

    /// The eventfds the driver's notifications for each queue arrive on.
    pub fn queue_notify_fds(&self) -> &[EventFd] {
        &self.queue_notify
    }

    /// The device's interrupt.
    pub fn interrupt(&self) -> &Arc<VirtioInterrupt> {
        &self.interrupt
    }

    fn device_features(&self) -> u64 {
        self.device.avail_features() | (1 << VIRTIO_F_VERSION_1)
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_select as usize)
    }

    /// Queue registers may change only before the driver is done.
    fn queue_setup_allowed(&self) -> bool {
        self.status & (STATUS_FEATURES_OK | STATUS_DRIVER_OK | STATUS_FAILED) == STATUS_FEATURES_OK
    }

    fn update_queue(&mut self, update: impl FnOnce(&mut Queue)) {
        if self.queue_setup_allowed() {
            if let Some(queue) = self.selected_queue() {
                update(queue);
            }
        }
    }

    /// Records a 32-bit half of the driver's features, while it may set them.
    fn ack_features(&mut self, value: u32) {
        if self.status & (STATUS_DRIVER | STATUS_FEATURES_OK) != STATUS_DRIVER {
            return;
        }
        let value = u64::from(value);
        self.acked_features = match self.acked_features_select {
            0 => (self.acked_features & !0xffff_ffff) | value,
            1 => (self.acked_features & 0xffff_ffff) | (value << 32),
            _ => self.acked_features,
        };
    }

    fn write_status(&mut self, status: u32) {
        if status == 0 {
            self.reset();
            return;
        }
        // The driver may only add bits, in the order the spec sets them.
        if status & self.status != self.status {
            return;
        }
        let new = status & !self.status;
        if new & STATUS_FEATURES_OK != 0 && !self.features_acceptable() {
            self.status = status & !STATUS_FEATURES_OK;
            return;
        }
        self.status = status;
        if new & STATUS_DRIVER_OK != 0 {
            self.activate();
        }
    }

    /// The driver acked only offered features, VERSION_1 among them.
    fn features_acceptable(&self) -> bool {
        self.acked_features & !self.device_features() == 0
            && self.acked_features & (1 << VIRTIO_F_VERSION_1) != 0
    }

    fn activate(&mut self) {
        let needed = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        if self.active || self.status & needed != needed {
            return;
        }
        match self.activate_device() {
            Ok(()) => self.active = true,
            Err(err) => {
                protocol::log_limited!(
                    log::Level::Warn,
                    "virtio device {}: {err}",
                    self.device.device_type()
                );
                self.status |= STATUS_DEVICE_NEEDS_RESET;
            }
        }
    }

    /// Hands the device its queues as the driver set them up.
    fn activate_device(&mut self) -> Result<(), ActivateError> {
        let queues_valid = self
            .queues
            .iter()
            .all(|q| q.ready() && q.is_valid(&self.mem));
        if !queues_valid {
            return Err(ActivateError::InvalidQueue);
        }
        let queues = self
            .queues
            .iter()
            .zip(&self.queue_notify)
            .map(|(queue, notify)| {
                Ok(ActiveQueue::new(
                    Queue::try_from(queue.state()).map_err(ActivateError::QueueState)?,
                    notify.try_clone()?,
                    self.acked_features,
                ))
            })
            .collect::<Result<Vec<_>, ActivateError>>()?;
        self.device.activate(
            self.mem.clone(),
            self.acked_features,
            queues,
            self.interrupt.clone(),
        )
    }

    fn reset(&mut self) {
        if self.active && !self.device.reset() {
            // A device that cannot stop stays as it is; the driver sees it failed.
            self.status |= STATUS_DEVICE_NEEDS_RESET;
            return;
        }
        self.active = false;
        self.status = 0;
        self.queue_select = 0;
        self.features_select = 0;
        self.acked_features_select = 0;
        self.acked_features = 0;
        self.queues.iter_mut().for_each(Queue::reset);
        self.interrupt.ack(u32::MAX);
    }

    /// One 32-bit half of a ring address (descriptor table, driver or device
    /// area) of the selected queue.
    fn set_queue_address(&mut self, offset: u64, value: u32) {
        let half = |high: bool| {
            if high {
                (None, Some(value))
            } else {
                (Some(value), None)
            }
        };
        self.update_queue(|q| match offset {
            REG_QUEUE_DESC_LOW | REG_QUEUE_DESC_HIGH => {
                let (low, high) = half(offset == REG_QUEUE_DESC_HIGH);
                q.set_desc_table_address(low, high)
            }
            REG_QUEUE_DRIVER_LOW | REG_QUEUE_DRIVER_HIGH => {
                let (low, high) = half(offset == REG_QUEUE_DRIVER_HIGH);
                q.set_avail_ring_address(low, high)
            }
            REG_QUEUE_DEVICE_LOW | REG_QUEUE_DEVICE_HIGH => {
                let (low, high) = half(offset == REG_QUEUE_DEVICE_HIGH);
                q.set_used_ring_address(low, high)
            }
            _ => {}
        });
    }

    fn read_register(&mut self, offset: u64) -> u32 {
        match offset {
            REG_MAGIC => MAGIC_VALUE,
            REG_VERSION => MMIO_VERSION,
            REG_DEVICE_ID => self.device.device_type(),
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => match self.features_select {
                0 => self.device_features() as u32,
                1 => (self.device_features() >> 32) as u32,
                _ => 0,
            },
            REG_QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            REG_QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            REG_INTERRUPT_STATUS => self.interrupt.status(),
            REG_STATUS => self.status,
            REG_CONFIG_GENERATION => self.config_generation,
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            REG_DEVICE_FEATURES_SEL => self.features_select = value,
            REG_DRIVER_FEATURES_SEL => self.acked_features_select = value,
            REG_DRIVER_FEATURES => self.ack_features(value),
            REG_QUEUE_SEL => self.queue_select = value,
            REG_QUEUE_NUM => self.update_queue(|q| q.set_size(value as u16)),
            REG_QUEUE_READY => self.update_queue(|q| q.set_ready(value == 1)),
            REG_QUEUE_NOTIFY => {
                // Normally caught by the queue's ioeventfd in KVM; this is the
                // fallback when the write reaches the VMM.
                if let Some(notify) = self.queue_notify.get(value as usize) {
                    let _ = notify.write(1);
                }
            }
            REG_INTERRUPT_ACK => self.interrupt.ack(value),
            REG_STATUS => self.write_status(value),
            REG_QUEUE_DESC_LOW..=REG_QUEUE_DEVICE_HIGH => self.set_queue_address(offset, value),
            _ => {}
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            self.device.read_config(offset - CONFIG_SPACE, data);
        } else if data.len() == 4 {
            data.copy_from_slice(&self.read_register(offset).to_le_bytes());
        } else {
            data.fill(0); // registers are 32-bit wide
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE {
            self.device.write_config(offset - CONFIG_SPACE, data);
            self.config_generation = self.config_generation.wrapping_add(1);
        } else if let Ok(bytes) = <[u8; 4]>::try_from(data) {
            self.write_register(offset, u32::from_le_bytes(bytes));
        }
    }
}

/// Registers the transport's interrupt as irqfd `irq` and one ioeventfd per
/// queue on its notify register at `base`, so that neither exits to the VMM.
pub fn register_notifiers(
    vm: &VmFd,
    transport: &MmioTransport,
    base: u64,
    irq: u32,
) -> Result<(), MmioError> {
    vm.register_irqfd(transport.interrupt().irq(), irq)
        .map_err(|source| MmioError::Kvm {
            what: "irqfd",
            source,
        })?;
    for (index, notify) in transport.queue_notify_fds().iter().enumerate() {
        let address = IoEventAddress::Mmio(base + REG_QUEUE_NOTIFY);
        vm.register_ioevent(notify, &address, index as u32)
            .map_err(|source| MmioError::Kvm {
                what: "queue ioeventfd",
                source,
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::{ActivateError, VIRTIO_RING_F_EVENT_IDX};
    use std::sync::Mutex;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestAddress;

    /// A unit-test double: records what the transport hands it.
    struct DummyDevice {
        config: [u8; 8],
        features: u64,
        activated: Activation,
        resettable: bool,
    }

    impl VirtioDevice for DummyDevice {
        fn device_type(&self) -> u32 {
            4
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 16]
        }
        fn avail_features(&self) -> u64 {
            self.features
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            for (i, byte) in data.iter_mut().enumerate() {
                *byte = self.config.get(offset as usize + i).copied().unwrap_or(0);
            }
        }
        fn write_config(&mut self, offset: u64, data: &[u8]) {
            if let Some(slot) = self.config.get_mut(offset as usize) {
                *slot = data[0];
            }
        }
        fn activate(
            &mut self,
            _mem: GuestMemoryMmap,
            acked: u64,
            queues: Vec<ActiveQueue>,
            _interrupt: Arc<VirtioInterrupt>,
        ) -> Result<(), ActivateError> {
            let event_idx = queues.iter().all(|q| q.queue.event_idx_enabled());
            *self.activated.lock().unwrap() = Some((acked, queues.len(), event_idx));
            Ok(())
        }
        fn reset(&mut self) -> bool {
            self.resettable
        }
    }

    /// Acked features, queue count, event index on in every queue.
    type Activation = Arc<Mutex<Option<(u64, usize, bool)>>>;

    fn transport() -> (MmioTransport, Activation, GuestMemoryMmap) {
        transport_offering(1 << 3)
    }

    fn transport_offering(features: u64) -> (MmioTransport, Activation, GuestMemoryMmap) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        transport_on(mem, features)
    }

    fn transport_on(
        mem: GuestMemoryMmap,
        features: u64,
    ) -> (MmioTransport, Activation, GuestMemoryMmap) {
        let activated = Arc::new(Mutex::new(None));
        let device = DummyDevice {
            config: *b"runvcfg!",
            features,
            activated: activated.clone(),
            resettable: true,
        };
        (
            MmioTransport::new(Box::new(device), mem.clone()).unwrap(),
            activated,
            mem,
        )
    }

    fn read(t: &mut MmioTransport, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        t.read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    fn write(t: &mut MmioTransport, offset: u64, value: u32) {
        t.write(offset, &value.to_le_bytes());
    }

    fn negotiate(t: &mut MmioTransport, features_hi: u32) {
        negotiate_features(t, 1 << 3, features_hi);
    }

    fn negotiate_features(t: &mut MmioTransport, features_lo: u32, features_hi: u32) {
        write(t, REG_STATUS, STATUS_ACKNOWLEDGE);
        write(t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        write(t, REG_DRIVER_FEATURES_SEL, 0);
        write(t, REG_DRIVER_FEATURES, features_lo);
        write(t, REG_DRIVER_FEATURES_SEL, 1);
        write(t, REG_DRIVER_FEATURES, features_hi);
        write(
            t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
    }

    fn set_up_queue(
        t: &mut MmioTransport,
        index: u32,
        queue: &MockSplitQueue<'_, GuestMemoryMmap>,
    ) {
        write(t, REG_QUEUE_SEL, index);
        write(t, REG_QUEUE_NUM, 16);
        write(t, REG_QUEUE_DESC_LOW, queue.desc_table_addr().0 as u32);
        write(t, REG_QUEUE_DRIVER_LOW, queue.avail_addr().0 as u32);
        write(t, REG_QUEUE_DEVICE_LOW, queue.used_addr().0 as u32);
        write(t, REG_QUEUE_READY, 1);
    }

    /// Sets up both queues in guest memory and sets DRIVER_OK.
    fn start_with_two_queues(t: &mut MmioTransport, mem: &GuestMemoryMmap) {
        let q0 = MockSplitQueue::create(mem, GuestAddress(0x1000), 16);
        let q1 = MockSplitQueue::create(mem, GuestAddress(0x4000), 16);
        set_up_queue(t, 0, &q0);
        set_up_queue(t, 1, &q1);
        write(
            t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        );
    }

    #[test]
    fn identifies_the_device_and_offers_version_1() {
        let (mut t, _, _) = transport();
        assert_eq!(read(&mut t, REG_MAGIC), MAGIC_VALUE);
        assert_eq!(read(&mut t, REG_VERSION), 2);
        assert_eq!(read(&mut t, REG_DEVICE_ID), 4);
        write(&mut t, REG_DEVICE_FEATURES_SEL, 0);
        assert_eq!(read(&mut t, REG_DEVICE_FEATURES), 1 << 3);
        write(&mut t, REG_DEVICE_FEATURES_SEL, 1);
        assert_eq!(read(&mut t, REG_DEVICE_FEATURES), 1);
        let mut narrow = [0xffu8; 2];
        t.read(REG_MAGIC, &mut narrow);
        assert_eq!(narrow, [0, 0], "registers are 32-bit only");
        let mut config = [0u8; 4];
        t.read(CONFIG_SPACE + 4, &mut config);
        assert_eq!(&config, b"cfg!");
    }

    #[test]
    fn activates_with_valid_queues_on_driver_ok() {
        let (mut t, activated, mem) = transport();
        negotiate(&mut t, 1);
        assert_ne!(read(&mut t, REG_STATUS) & STATUS_FEATURES_OK, 0);
        let q0 = MockSplitQueue::create(&mem, GuestAddress(0x1000), 16);
        let q1 = MockSplitQueue::create(&mem, GuestAddress(0x4000), 16);
        set_up_queue(&mut t, 0, &q0);
        set_up_queue(&mut t, 1, &q1);
        write(&mut t, REG_QUEUE_SEL, 0);
        assert_eq!(read(&mut t, REG_QUEUE_READY), 1);
        assert_eq!(read(&mut t, REG_QUEUE_NUM_MAX), 16);
        write(
            &mut t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        );
        assert_eq!(
            *activated.lock().unwrap(),
            Some(((1 << 32) | (1 << 3), 2, false))
        );

        write(&mut t, REG_QUEUE_NOTIFY, 1);
        assert_eq!(t.queue_notify_fds()[1].read().unwrap(), 1);
        t.interrupt().signal_used_queue().unwrap();
        assert_eq!(read(&mut t, REG_INTERRUPT_STATUS), 1);
        write(&mut t, REG_INTERRUPT_ACK, 1);
        assert_eq!(read(&mut t, REG_INTERRUPT_STATUS), 0);

        write(&mut t, REG_STATUS, 0);
        assert_eq!(read(&mut t, REG_STATUS), 0);
        write(&mut t, REG_QUEUE_SEL, 0);
        assert_eq!(read(&mut t, REG_QUEUE_READY), 0, "reset clears the queues");
    }

    #[test]
    fn acked_event_idx_reaches_the_queues_only_if_offered() {
        let event_idx = 1 << VIRTIO_RING_F_EVENT_IDX;
        for (offered, acked, expected) in [
            (event_idx, event_idx, true),
            (event_idx, 0, false),
            (0, event_idx, false), // not offered: FEATURES_OK refused
        ] {
            let (mut t, activated, mem) = transport_offering((1 << 3) | offered);
            negotiate_features(&mut t, (1 << 3) | acked as u32, 1);
            start_with_two_queues(&mut t, &mem);
            let got = activated.lock().unwrap().map(|(_, _, on)| on);
            assert_eq!(
                got.unwrap_or(false),
                expected,
                "offered {offered:#x}, acked {acked:#x}"
            );
        }
    }

    #[test]
    fn refuses_features_without_version_1_or_unoffered() {
        let (mut t, _, _) = transport();
        negotiate(&mut t, 0);
        assert_eq!(read(&mut t, REG_STATUS) & STATUS_FEATURES_OK, 0);
        let (mut t, _, _) = transport();
        negotiate(&mut t, 1 | (1 << 5));
        assert_eq!(read(&mut t, REG_STATUS) & STATUS_FEATURES_OK, 0);
    }

    #[test]
    fn invalid_queue_is_not_activated() {
        let (mut t, activated, _) = transport();
        negotiate(&mut t, 1);
        write(&mut t, REG_QUEUE_SEL, 0);
        write(&mut t, REG_QUEUE_NUM, 16);
        write(&mut t, REG_QUEUE_DESC_LOW, 0xffff_f000); // outside guest memory
        write(&mut t, REG_QUEUE_READY, 1);
        write(
            &mut t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        );
        assert!(activated.lock().unwrap().is_none());
        assert_ne!(read(&mut t, REG_STATUS) & STATUS_DEVICE_NEEDS_RESET, 0);
    }

    #[test]
    fn queue_registers_are_frozen_after_driver_ok_and_out_of_range_selects_ignored() {
        let (mut t, _, mem) = transport();
        negotiate(&mut t, 1);
        write(&mut t, REG_QUEUE_SEL, 7);
        write(&mut t, REG_QUEUE_NUM, 8);
        assert_eq!(read(&mut t, REG_QUEUE_NUM_MAX), 0);
        write(&mut t, REG_QUEUE_NOTIFY, 7);
        start_with_two_queues(&mut t, &mem);
        write(&mut t, REG_QUEUE_SEL, 0);
        write(&mut t, REG_QUEUE_READY, 0);
        assert_eq!(read(&mut t, REG_QUEUE_READY), 1);
    }

    #[test]
    fn a_saved_transport_restores_started_on_its_used_rings_positions() {
        use vm_memory::Bytes;
        let (mut t, activated, mem) = transport();
        negotiate(&mut t, 1);
        start_with_two_queues(&mut t, &mem);
        assert!(activated.lock().unwrap().is_some());
        // The device had used 5 chains of queue 0 (used ring at 0x1000 +
        // 16 descriptors + the avail ring, per MockSplitQueue's layout).
        let used_ring = t.queues[0].used_ring();
        mem.write_obj(5u16, GuestAddress(used_ring + 2)).unwrap();
        t.interrupt.raise(1).unwrap();
        assert!(t.quiesce());
        assert!(!t.active);
        let state = t.save();

        let (mut restored, restarted, _) = transport_on(mem.clone(), 1 << 3);
        restored.restore(&state).unwrap();
        assert_eq!(restarted.lock().unwrap().map(|a| a.1), Some(2));
        assert!(restored.active);
        assert_eq!(restored.queues[0].next_avail(), 5);
        assert_eq!(restored.queues[0].next_used(), 5);
        assert_eq!(restored.queues[1].next_avail(), 0);
        assert_eq!(read(&mut restored, REG_STATUS), read(&mut t, REG_STATUS));
        assert_eq!(
            read(&mut restored, REG_INTERRUPT_STATUS),
            1,
            "still pending"
        );

        let (mut poorer, _, _) = transport_on(mem, 0);
        let err = poorer.restore(&state).unwrap_err();
        assert!(
            matches!(err, state::TransportStateError::Features { .. }),
            "{err}"
        );
    }

    #[test]
    fn a_device_that_cannot_stop_is_not_quiesced() {
        let (_, _, mem) = transport();
        let mut stuck = transport_offering(1 << 3).0;
        // Not started: nothing to stop.
        assert!(stuck.quiesce());
        let device = DummyDevice {
            config: [0; 8],
            features: 1 << 3,
            activated: Arc::new(Mutex::new(None)),
            resettable: false,
        };
        stuck = MmioTransport::new(Box::new(device), mem.clone()).unwrap();
        negotiate(&mut stuck, 1);
        start_with_two_queues(&mut stuck, &mem);
        assert!(!stuck.quiesce());
        assert!(stuck.active, "it serves on");
    }
}
