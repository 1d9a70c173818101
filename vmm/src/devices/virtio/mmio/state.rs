//! A virtio-mmio transport in a snapshot: its registers, how the driver set
//! up its queues, and the interrupt bits not yet acknowledged. The rings'
//! positions are not saved: at restore each queue goes on from its used
//! ring's index in guest memory, as every device here uses chains in the
//! order it takes them (or puts them back), so that what it had taken and
//! not used is taken again. The device behind a restored transport is the
//! new VM's own (its sockets, share, tap): it must offer what the driver
//! acked.

use super::{MmioTransport, STATUS_DRIVER_OK};
use crate::devices::virtio::ActivateError;
use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering;
use virtio_queue::{Queue, QueueState, QueueT};

/// Errors while restoring a transport.
#[derive(Debug, thiserror::Error)]
pub enum TransportStateError {
    /// The snapshot's device in this slot is another kind.
    #[error("the snapshot has virtio device type {snapshot} here, the VM {config}")]
    DeviceType { snapshot: u32, config: u32 },
    /// The snapshot's device has another number of queues.
    #[error("the snapshot's virtio device {device} has {snapshot} queues, the VM's {config}")]
    QueueCount {
        device: u32,
        snapshot: usize,
        config: usize,
    },
    /// The driver acked features this VM's device does not offer (a tap
    /// without the offloads the template's had).
    #[error("virtio device {device}: the snapshot's driver acked features {acked:#x}, the VM's device offers {offered:#x}")]
    Features {
        device: u32,
        acked: u64,
        offered: u64,
    },
    /// A queue's setup is not one the device takes.
    #[error("virtio device {device}, queue {index}: {source:?}")]
    Queue {
        device: u32,
        index: usize,
        source: virtio_queue::Error,
    },
    /// The device could not start on the restored queues.
    #[error("virtio device {device}: {source}")]
    Activate { device: u32, source: ActivateError },
}

/// One queue as the driver set it up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct QueueSetup {
    size: u16,
    ready: bool,
    desc_table: u64,
    avail_ring: u64,
    used_ring: u64,
}

/// A transport's registers and queue setup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportState {
    /// The virtio device type (1 net, 2 block, 4 rng, 5 balloon, 19 vsock,
    /// 26 fs).
    pub device_type: u32,
    status: u32,
    queue_select: u32,
    features_select: u32,
    acked_features_select: u32,
    acked_features: u64,
    config_generation: u32,
    interrupt_status: u32,
    queues: Vec<QueueSetup>,
}

impl MmioTransport {
    /// Stops the device's serving for a snapshot, its rings as they are;
    /// false if the device cannot stop (it then serves on).
    pub fn quiesce(&mut self) -> bool {
        if self.active && !self.device.quiesce() {
            return false;
        }
        self.active = false;
        true
    }

    /// The transport's state, for a snapshot (after [`Self::quiesce`]).
    pub fn save(&self) -> TransportState {
        TransportState {
            device_type: self.device.device_type(),
            status: self.status,
            queue_select: self.queue_select,
            features_select: self.features_select,
            acked_features_select: self.acked_features_select,
            acked_features: self.acked_features,
            config_generation: self.config_generation,
            interrupt_status: self.interrupt.status(),
            queues: self
                .queues
                .iter()
                .map(|queue| QueueSetup {
                    size: queue.size(),
                    ready: queue.ready(),
                    desc_table: queue.desc_table(),
                    avail_ring: queue.avail_ring(),
                    used_ring: queue.used_ring(),
                })
                .collect(),
        }
    }

    /// Takes a snapshot's state into this new transport and, if the driver
    /// had started the device, starts it on the restored queues.
    pub fn restore(&mut self, state: &TransportState) -> Result<(), TransportStateError> {
        let device = self.device.device_type();
        if state.device_type != device {
            return Err(TransportStateError::DeviceType {
                snapshot: state.device_type,
                config: device,
            });
        }
        if state.queues.len() != self.queues.len() {
            return Err(TransportStateError::QueueCount {
                device,
                snapshot: state.queues.len(),
                config: self.queues.len(),
            });
        }
        let offered = self.device_features();
        if state.acked_features & !offered != 0 {
            return Err(TransportStateError::Features {
                device,
                acked: state.acked_features,
                offered,
            });
        }
        let started = state.status & STATUS_DRIVER_OK != 0;
        for (index, (queue, setup)) in self.queues.iter_mut().zip(&state.queues).enumerate() {
            let queue_err = |source| TransportStateError::Queue {
                device,
                index,
                source,
            };
            let mut restored = Queue::try_from(QueueState {
                max_size: queue.max_size(),
                next_avail: 0,
                next_used: 0,
                event_idx_enabled: false,
                size: setup.size,
                ready: setup.ready,
                desc_table: setup.desc_table,
                avail_ring: setup.avail_ring,
                used_ring: setup.used_ring,
            })
            .map_err(queue_err)?;
            if started && setup.ready {
                let used = restored
                    .used_idx(&self.mem, Ordering::Acquire)
                    .map_err(queue_err)?
                    .0;
                restored.set_next_avail(used);
                restored.set_next_used(used);
            }
            *queue = restored;
        }
        self.status = state.status;
        self.queue_select = state.queue_select;
        self.features_select = state.features_select;
        self.acked_features_select = state.acked_features_select;
        self.acked_features = state.acked_features;
        self.config_generation = state.config_generation;
        if started {
            self.activate_device()
                .map_err(|source| TransportStateError::Activate { device, source })?;
            self.active = true;
        }
        if state.interrupt_status != 0 {
            // The driver had not acknowledged these yet: raise them again.
            let _ = self.interrupt.raise(state.interrupt_status);
        }
        Ok(())
    }
}
