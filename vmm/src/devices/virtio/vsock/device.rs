//! The virtio-vsock device: its configuration space and queues, served by a
//! [`Muxer`] on the device's thread once the driver is ready.

use super::event_handler::VsockHandler;
use super::muxer::{GuestQueues, Muxer};
use crate::devices::virtio::device_thread::{DeviceThread, DeviceWorker};
use crate::devices::virtio::{
    read_config_space, ActivateError, ActiveQueue, VirtioDevice, VirtioInterrupt,
};
use crate::seccomp::ThreadKind;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vm_memory::GuestMemoryMmap;

/// virtio device type of a socket device.
const TYPE_VSOCK: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;
/// Queue size of the receive, transmit and event queues.
const QUEUE_SIZES: [u16; 3] = [256; 3];

/// Errors creating the device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The Unix socket cannot be bound.
    #[error("cannot listen on vsock socket {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The device's thread.
    #[error("cannot start the virtio-vsock thread: {0}")]
    Thread(std::io::Error),
}

/// A vsock device for guest `cid`, its host side at a Unix socket.
pub struct Vsock {
    cid: u64,
    uds_path: PathBuf,
    listener: Option<UnixListener>,
    /// The serving loop while active; stopped before `thread` ends.
    backend: Option<DeviceThread>,
    thread: DeviceWorker,
}

impl Vsock {
    /// Binds `uds_path` (which must not exist) for guest context id `cid`.
    pub fn new(cid: u64, uds_path: &Path) -> Result<Self, VsockError> {
        let thread =
            DeviceWorker::start("virtio-vsock", ThreadKind::Vsock).map_err(VsockError::Thread)?;
        let listener = UnixListener::bind(uds_path).map_err(|source| VsockError::Bind {
            path: uds_path.to_owned(),
            source,
        })?;
        Ok(Self {
            cid,
            uds_path: uds_path.to_owned(),
            listener: Some(listener),
            backend: None,
            thread,
        })
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        0 // stream sockets only
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_vsock_config { le64 guest_cid; }
        read_config_space(&self.cid.to_le_bytes(), offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        _acked_features: u64,
        queues: Vec<ActiveQueue>,
        interrupt: Arc<VirtioInterrupt>,
    ) -> Result<(), ActivateError> {
        let got = queues.len();
        let [rx, tx, event]: [ActiveQueue; 3] =
            queues.try_into().map_err(|_| ActivateError::QueueCount {
                device: "virtio-vsock",
                expected: 3,
                got,
            })?;
        let listener = self.listener.take().ok_or(ActivateError::AlreadyActive {
            device: "virtio-vsock",
        })?;
        let muxer = Muxer::new(self.cid, &self.uds_path, listener)?;
        let registry = muxer.registry().clone();
        let queues = GuestQueues {
            mem,
            rx: rx.queue,
            tx: tx.queue,
            interrupt,
        };
        let handler = VsockHandler::new(muxer, queues);
        let notifies = vec![rx.notify, tx.notify, event.notify];
        let thread = self
            .thread
            .serve_events(registry, notifies, move || Ok(handler))?;
        self.backend = Some(thread);
        Ok(())
    }

    /// Stops the serving loop: its connections end with it (a snapshot is
    /// taken with none open). The device cannot start again in this VMM: its
    /// listener went with the loop.
    fn quiesce(&mut self) -> bool {
        self.backend = None;
        true
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        // Stops the serving loop (and waits for it) before its socket goes.
        self.backend.take();
        let _ = std::fs::remove_file(&self.uds_path);
    }
}
