//! The virtio-blk device's thread: serves the request queue on each of the
//! driver's notifications.

use super::device::BlockBackend;
use crate::devices::virtio::device_thread::DeviceEventHandler;
use std::io;
use std::sync::Arc;

/// Serves the queue of one active device.
pub(super) struct BlockHandler {
    backend: Arc<BlockBackend>,
}

impl BlockHandler {
    /// A handler serving `backend`'s queue.
    pub(super) fn new(backend: Arc<BlockBackend>) -> Self {
        Self { backend }
    }
}

impl DeviceEventHandler for BlockHandler {
    fn start(&mut self) -> io::Result<()> {
        self.backend.process();
        Ok(())
    }

    fn queue_event(&mut self, _index: usize) -> io::Result<()> {
        self.backend.process();
        Ok(())
    }
}
