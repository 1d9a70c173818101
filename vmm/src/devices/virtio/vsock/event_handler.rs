//! The virtio-vsock device's thread: hands the guest's packets and the host
//! sockets' events to the [`Muxer`], then fills the receive queue.

use super::muxer::{GuestQueues, Muxer};
use crate::devices::virtio::device_thread::DeviceEventHandler;
use std::io;
use std::time::Instant;
use vmm_sys_util::epoll::EventSet;

/// Index of the transmit queue.
const TX_QUEUE: usize = 1;

/// Serves one active device.
pub(super) struct VsockHandler {
    muxer: Muxer,
    queues: GuestQueues,
    /// In this round: transmit buffers were used.
    tx_used: bool,
}

impl VsockHandler {
    /// A handler carrying packets between `queues` and `muxer`'s sockets.
    pub(super) fn new(muxer: Muxer, queues: GuestQueues) -> Self {
        Self {
            muxer,
            queues,
            tx_used: false,
        }
    }
}

impl DeviceEventHandler for VsockHandler {
    fn start(&mut self) -> io::Result<()> {
        self.muxer.watch_listener()
    }

    /// Receive and event queue notifications only matter for the round's
    /// end, when the receive queue is filled anyway.
    fn queue_event(&mut self, index: usize) -> io::Result<()> {
        if index == TX_QUEUE {
            self.tx_used |= self.muxer.process_tx(&mut self.queues);
        }
        Ok(())
    }

    fn fd_event(&mut self, token: u64, events: EventSet) -> io::Result<()> {
        self.muxer.fd_event(token, events);
        Ok(())
    }

    fn events_done(&mut self) -> io::Result<()> {
        self.muxer.expire(Instant::now());
        let rx_used = self.muxer.fill_rx(&mut self.queues);
        if std::mem::take(&mut self.tx_used) || rx_used {
            if let Err(err) = self.queues.interrupt.signal_used_queue() {
                log::error!("virtio-vsock: cannot interrupt the guest: {err}");
            }
        }
        Ok(())
    }

    fn deadline(&self) -> Option<Instant> {
        self.muxer.next_deadline()
    }
}
