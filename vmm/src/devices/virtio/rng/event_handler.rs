//! The virtio-rng device's thread: serves the queue on the driver's
//! notifications, and wakes up again when the token bucket can pay for a
//! request left waiting.

use super::device::{process, Progress, State};
use crate::devices::virtio::device_thread::DeviceEventHandler;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Serves the queue of one active device.
pub(super) struct RngHandler {
    state: Arc<Mutex<State>>,
    /// The queue was notified in this round.
    notified: bool,
    /// When the bucket pays for the request left waiting.
    wake_at: Option<Instant>,
    /// False once the used ring is broken: nothing more is served.
    healthy: bool,
}

impl RngHandler {
    /// A handler serving the device with `state`.
    pub(super) fn new(state: Arc<Mutex<State>>) -> Self {
        Self {
            state,
            notified: false,
            wake_at: None,
            healthy: true,
        }
    }

    fn serve(&mut self) {
        self.wake_at = None;
        match process(&self.state) {
            Progress::Drained => {}
            Progress::Short(time) => self.wake_at = Some(Instant::now() + time),
            Progress::Broken => self.healthy = false,
        }
    }
}

impl DeviceEventHandler for RngHandler {
    fn start(&mut self) -> io::Result<()> {
        self.serve();
        Ok(())
    }

    fn queue_event(&mut self, _index: usize) -> io::Result<()> {
        self.notified = true;
        Ok(())
    }

    fn events_done(&mut self) -> io::Result<()> {
        let notified = std::mem::take(&mut self.notified);
        // A request waiting for the bucket is served first: until then a
        // notification has nothing to add.
        let due = match self.wake_at {
            Some(at) => at <= Instant::now(),
            None => notified,
        };
        if due && self.healthy {
            self.serve();
        }
        Ok(())
    }

    fn deadline(&self) -> Option<Instant> {
        self.wake_at
    }
}
