//! The virtio-net device: features, configuration space (MAC, link up) and
//! activation, which hands a [`NetHandler`] to the device's thread.

use super::event_handler::{NetHandler, NetQueues};
use super::tap::{Tap, TapError, TUN_OFFLOADS};
use crate::devices::virtio::device_thread::{DeviceThread, DeviceWorker, EventRegistry};
use crate::devices::virtio::{
    ActivateError, ActiveQueue, VirtioDevice, VirtioInterrupt, VIRTIO_RING_F_EVENT_IDX,
};
use crate::seccomp::ThreadKind;
use std::sync::Arc;
use vm_memory::GuestMemoryMmap;

/// virtio device type of a network card.
const TYPE_NET: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_NET;
/// Receive and transmit queue sizes.
const QUEUE_SIZES: [u16; 2] = [256; 2];

/// Feature bits (virtio 1.2, 5.1.3).
pub mod features {
    use virtio_bindings::virtio_net;
    /// The device takes frames with a partial checksum.
    pub const CSUM: u32 = virtio_net::VIRTIO_NET_F_CSUM;
    /// The driver takes frames with a partial checksum.
    pub const GUEST_CSUM: u32 = virtio_net::VIRTIO_NET_F_GUEST_CSUM;
    /// The configuration space holds the MAC.
    pub const MAC: u32 = virtio_net::VIRTIO_NET_F_MAC;
    /// The driver takes TCPv4 / TCPv6 segmentation offload frames.
    pub const GUEST_TSO4: u32 = virtio_net::VIRTIO_NET_F_GUEST_TSO4;
    /// See `GUEST_TSO4`.
    pub const GUEST_TSO6: u32 = virtio_net::VIRTIO_NET_F_GUEST_TSO6;
    /// The device takes TCPv4 / TCPv6 segmentation offload frames.
    pub const HOST_TSO4: u32 = virtio_net::VIRTIO_NET_F_HOST_TSO4;
    /// See `HOST_TSO4`.
    pub const HOST_TSO6: u32 = virtio_net::VIRTIO_NET_F_HOST_TSO6;
    /// Receive frames may span several buffers.
    pub const MRG_RXBUF: u32 = virtio_net::VIRTIO_NET_F_MRG_RXBUF;
    /// The configuration space holds the link status.
    pub const STATUS: u32 = virtio_net::VIRTIO_NET_F_STATUS;
}
use features::*;

/// Link status bit in the configuration space.
const LINK_UP: u16 = virtio_bindings::virtio_net::VIRTIO_NET_S_LINK_UP as u16;

fn bit(feature: u32) -> u64 {
    1 << feature
}

/// Errors creating the device.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The tap.
    #[error(transparent)]
    Tap(#[from] TapError),
    /// The device's thread.
    #[error("cannot start the virtio-net thread: {0}")]
    Thread(std::io::Error),
}

/// A network card on a tap, or detached (a VM template's).
pub struct Net {
    /// The tap, until activation hands it to the serving loop.
    tap: Option<Tap>,
    /// A card with no tap: activation starts no serving loop.
    detached: bool,
    mac: [u8; 6],
    avail_features: u64,
    /// The serving loop while active; stopped before `thread` ends.
    backend: Option<DeviceThread>,
    thread: DeviceWorker,
}

impl Net {
    /// A card with address `mac` on `tap`.
    ///
    /// Offered: the MAC and link status, mergeable receive buffers,
    /// notification suppression (event index), and checksum and TCP
    /// segmentation offload both ways. A tap with a vnet
    /// header takes partial checksums and TSO frames from the guest whatever
    /// its offload setting; frames the other way carry them only if the tap
    /// accepts `TUNSETOFFLOAD`, so the guest-side offloads are offered only
    /// then, and switched on as the driver acks them.
    pub fn new(tap: Tap, mac: [u8; 6]) -> Result<Self, NetError> {
        let guest_offloads = tap.set_offload(TUN_OFFLOADS).is_ok();
        tap.set_offload(0)?;
        Self::with(Some(tap), mac, offered_features(guest_offloads))
    }

    /// A card with address `mac` and no tap: a VM template's. Its driver
    /// comes up, but nothing is sent or received until a VM restored from
    /// the template puts its own tap behind the card. It offers what a card
    /// on a tap that takes offloads does (the shim's taps all do), so the
    /// restored card can take on the features its driver acked. It never
    /// uses a chain: a frame the guest queued would go out of the restored
    /// card on the pod's tap, so a template's guest keeps its interfaces
    /// down (the agent brings them up for the pod).
    pub fn detached(mac: [u8; 6]) -> Result<Self, NetError> {
        Self::with(None, mac, offered_features(true))
    }

    fn with(tap: Option<Tap>, mac: [u8; 6], avail_features: u64) -> Result<Self, NetError> {
        Ok(Self {
            detached: tap.is_none(),
            tap,
            mac,
            avail_features,
            backend: None,
            thread: DeviceWorker::start("virtio-net", ThreadKind::Net).map_err(NetError::Thread)?,
        })
    }

    fn config_bytes(&self) -> [u8; 8] {
        // struct virtio_net_config { u8 mac[6]; le16 status; ... }
        let mut config = [0u8; 8];
        config[..6].copy_from_slice(&self.mac);
        config[6..].copy_from_slice(&LINK_UP.to_le_bytes());
        config
    }
}

/// The features a card offers, with the guest-side offloads or without.
fn offered_features(guest_offloads: bool) -> u64 {
    let mut features = bit(MAC)
        | bit(STATUS)
        | bit(MRG_RXBUF)
        | bit(VIRTIO_RING_F_EVENT_IDX)
        | bit(CSUM)
        | bit(HOST_TSO4)
        | bit(HOST_TSO6);
    if guest_offloads {
        features |= bit(GUEST_CSUM) | bit(GUEST_TSO4) | bit(GUEST_TSO6);
    }
    features
}

/// The tap offloads (`TUN_F_*`) matching the driver's acked features.
pub fn tap_offloads(acked: u64) -> libc::c_uint {
    if acked & bit(GUEST_CSUM) == 0 {
        return 0;
    }
    let mut flags = libc::TUN_F_CSUM;
    if acked & bit(GUEST_TSO4) != 0 {
        flags |= libc::TUN_F_TSO4;
    }
    if acked & bit(GUEST_TSO6) != 0 {
        flags |= libc::TUN_F_TSO6;
    }
    flags
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.config_bytes();
        for (i, byte) in data.iter_mut().enumerate() {
            let at = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .saturating_add(i);
            *byte = config.get(at).copied().unwrap_or(0);
        }
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        acked_features: u64,
        queues: Vec<ActiveQueue>,
        interrupt: Arc<VirtioInterrupt>,
    ) -> Result<(), ActivateError> {
        if acked_features & bit(MRG_RXBUF) == 0 {
            // Without it every receive chain would have to hold a whole
            // (possibly 64 KiB) frame; Linux always acks it.
            return Err(ActivateError::MissingFeature {
                device: "virtio-net",
                feature: "VIRTIO_NET_F_MRG_RXBUF",
            });
        }
        let got = queues.len();
        let [rx, tx]: [ActiveQueue; 2] =
            queues.try_into().map_err(|_| ActivateError::QueueCount {
                device: "virtio-net",
                expected: 2,
                got,
            })?;
        if self.detached {
            // Its queues wait, as the driver left them, for the tap of a VM
            // restored from this one's snapshot.
            return Ok(());
        }
        let tap = self.tap.take().ok_or(ActivateError::AlreadyActive {
            device: "virtio-net",
        })?;
        tap.set_offload(tap_offloads(acked_features & self.avail_features))
            .map_err(ActivateError::TapOffload)?;
        let registry = EventRegistry::new()?;
        let handler = NetHandler::new(
            tap,
            NetQueues {
                mem,
                rx: rx.queue,
                tx: tx.queue,
                rx_notify: rx.notify.try_clone()?,
                interrupt,
            },
            registry.clone(),
        );
        let thread = self
            .thread
            .serve_events(registry, vec![rx.notify, tx.notify], move || Ok(handler))?;
        self.backend = Some(thread);
        Ok(())
    }

    /// Stops the serving loop, the tap with it: the device cannot start
    /// again in this VMM (a snapshot's VM is only shut down).
    fn quiesce(&mut self) -> bool {
        self.backend = None;
        true
    }
}
