//! The virtio-balloon device's thread: serves a queue when the driver
//! notifies it (a few times a second at most: each report waits for the
//! last one's answer).

use super::device::{Queues, QUEUE_COUNT};
use crate::devices::virtio::device_thread::DeviceEventHandler;
use std::io;

/// Serves the queues of one active device.
pub(super) struct BalloonHandler(Queues);

impl BalloonHandler {
    /// A handler serving `queues`.
    pub(super) fn new(queues: Queues) -> Self {
        Self(queues)
    }
}

impl DeviceEventHandler for BalloonHandler {
    fn start(&mut self) -> io::Result<()> {
        (0..QUEUE_COUNT).for_each(|index| self.0.serve(index));
        Ok(())
    }

    fn queue_event(&mut self, index: usize) -> io::Result<()> {
        self.0.serve(index);
        Ok(())
    }
}
