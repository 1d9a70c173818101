//! The virtio-net device's thread: carries frames between the guest's queues
//! and the tap, woken by the queues' notifications and the tap.

use super::rx::{self, RxBuffers, RxOutcome, MAX_RX_LEN};
use super::tap::Tap;
use super::tx::process_tx;
use crate::devices::virtio::device_thread::{DeviceEventHandler, EventRegistry};
use crate::devices::virtio::{needs_interrupt, VirtioInterrupt};
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

/// Index of the receive queue, then of the transmit queue.
const RX_QUEUE: usize = 0;
const TX_QUEUE: usize = 1;
/// The tap's token in the device thread's registry.
const TOKEN_TAP: u64 = 0;
/// Times one receive round asks the guest for buffers and tries again: a guest
/// that keeps moving its available index would otherwise hold the thread;
/// past it the round ends with a notification of its own, so the event loop
/// (and its stop event) comes first.
const MAX_ASKS_PER_ROUND: usize = 8;

/// The device's queues once the driver set them up.
pub struct NetQueues {
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// Receive queue (tap → guest).
    pub rx: Queue,
    /// Transmit queue (guest → tap).
    pub tx: Queue,
    /// Notifications of the receive queue, for the device to notify itself.
    pub rx_notify: EventFd,
    /// The device's interrupt.
    pub interrupt: Arc<VirtioInterrupt>,
}

/// Moves frames for one device.
pub struct NetHandler {
    tap: Tap,
    queues: NetQueues,
    /// Where the tap is watched.
    registry: EventRegistry,
    /// The receive chains held for the next frames.
    rx_buffers: RxBuffers,
    /// Whether the tap is in the registry (not while the guest has too few
    /// receive buffers, so that a readable tap does not spin the loop).
    tap_polled: bool,
    tap_failed: bool,
    /// The receive queue's used index when it was last checked for an
    /// interrupt.
    rx_checked: u16,
    /// In this round: frames may wait in the tap, or receive buffers came.
    try_rx: bool,
    /// In this round: the guest must be interrupted.
    interrupt: bool,
}

impl NetHandler {
    /// A handler for `tap` and the guest's `queues`, watching the tap in
    /// `registry`.
    pub fn new(tap: Tap, queues: NetQueues, registry: EventRegistry) -> Self {
        Self {
            tap,
            queues,
            registry,
            rx_buffers: RxBuffers::new(),
            tap_polled: false,
            tap_failed: false,
            rx_checked: 0,
            try_rx: false,
            interrupt: false,
        }
    }

    fn poll_tap(&mut self, on: bool) -> io::Result<()> {
        if on == self.tap_polled || (on && self.tap_failed) {
            return Ok(());
        }
        let fd = self.tap.file().as_raw_fd();
        if on {
            self.registry.add(fd, TOKEN_TAP, EventSet::IN)?;
        } else {
            self.registry.remove(fd)?;
        }
        self.tap_polled = on;
        Ok(())
    }

    /// Moves frames from the tap to the guest while both have some; true if
    /// any receive buffer was used.
    ///
    /// A frame is read only into buffers that can take the longest one (or
    /// all the guest can give, see [`RxBuffers::at_limit`]): a tap read
    /// cannot be undone, and a frame cut short would be lost.
    fn receive(&mut self) -> io::Result<bool> {
        let mut used = false;
        // The available index at which the device last asked for a kick.
        let mut asked = None;
        let mut asks = 0;
        loop {
            let q = &mut self.queues;
            used |= self
                .rx_buffers
                .fill(&mut q.rx, &q.mem, MAX_RX_LEN)
                .map_err(|err| {
                    io::Error::other(format!("the receive used ring is broken: {err}"))
                })?;
            if self.rx_buffers.capacity() < MAX_RX_LEN && !self.rx_buffers.at_limit(&q.rx) {
                // The guest's next receive notification brings buffers. With
                // EVENT_IDX it kicks only for one posted past where the
                // device asked: what it posted before that is taken first,
                // waiting only when it posted nothing since the last ask.
                match rx::ask_for_buffers(&q.rx, &q.mem) {
                    Ok(Some(seen)) if asked != Some(seen) => {
                        asked = Some(seen);
                        asks += 1;
                        if asks <= MAX_ASKS_PER_ROUND {
                            continue;
                        }
                        q.rx_notify.write(1)?;
                    }
                    Ok(_) => {}
                    Err(err) => {
                        return Err(io::Error::other(format!(
                            "the receive queue is broken: {err}"
                        )))
                    }
                }
                self.poll_tap(false)?;
                return Ok(used);
            }
            match self.rx_buffers.receive(&mut q.rx, &q.mem, &mut self.tap) {
                Ok(RxOutcome::Delivered(_)) => used = true,
                Ok(RxOutcome::Dropped | RxOutcome::NoBuffers) => {}
                Ok(RxOutcome::Broken) => {
                    return Err(io::Error::other(
                        "the receive used ring is outside guest memory",
                    ))
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    self.poll_tap(true)?;
                    return Ok(used);
                }
                Err(err) => {
                    log::error!(
                        "virtio-net: cannot read tap {}: {err}; receive stops",
                        self.tap.name()
                    );
                    self.poll_tap(false)?;
                    self.tap_failed = true;
                    return Ok(used);
                }
            }
        }
    }
}

impl DeviceEventHandler for NetHandler {
    fn start(&mut self) -> io::Result<()> {
        self.poll_tap(true)
    }

    fn queue_event(&mut self, index: usize) -> io::Result<()> {
        match index {
            RX_QUEUE => self.try_rx = true,
            TX_QUEUE => {
                let q = &mut self.queues;
                if process_tx(&mut q.tx, &q.mem, &mut self.tap) {
                    self.interrupt |= needs_interrupt(&mut q.tx, &q.mem, "virtio-net");
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn fd_event(&mut self, _token: u64, _events: EventSet) -> io::Result<()> {
        self.try_rx = true;
        Ok(())
    }

    fn events_done(&mut self) -> io::Result<()> {
        if std::mem::take(&mut self.try_rx) && self.receive()? {
            let q = &self.queues;
            self.interrupt |= rx::needs_interrupt(&q.rx, &q.mem, self.rx_checked);
            self.rx_checked = q.rx.next_used();
        }
        if std::mem::take(&mut self.interrupt) {
            if let Err(err) = self.queues.interrupt.signal_used_queue() {
                log::error!("virtio-net: cannot interrupt the guest: {err}");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::{desc, VRING_DESC_F_WRITE as WRITE};
    use std::io::Write;
    use std::os::fd::{FromRawFd, OwnedFd};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn the_tap_is_left_alone_until_the_guest_posts_buffers_for_the_longest_frame() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap();
        let rx = MockSplitQueue::create(&mem, GuestAddress(0), 16);
        let tx = MockSplitQueue::create(&mem, GuestAddress(0x8000), 16);
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors socketpair writes.
        let ret = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        assert_eq!(ret, 0);
        // SAFETY: socketpair succeeded; each fd is open and owned by nobody else.
        let (ours, peer) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let mut peer = std::fs::File::from(peer);
        let eventfd = || EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let queues = NetQueues {
            mem: mem.clone(),
            rx: rx.create_queue().unwrap(),
            tx: tx.create_queue().unwrap(),
            rx_notify: eventfd(),
            interrupt: Arc::new(VirtioInterrupt::new(eventfd())),
        };
        let registry = EventRegistry::new().unwrap();
        let mut worker = NetHandler::new(Tap::from_raw_for_test(ours), queues, registry);
        worker.poll_tap(true).unwrap();
        peer.write_all(&[0u8; 100]).unwrap();
        peer.write_all(&[1u8; 200]).unwrap();

        assert!(!worker.receive().unwrap(), "no buffer was used");
        assert!(!worker.tap_polled, "the tap is not watched meanwhile");

        // Too few for the longest frame: the frames stay in the tap.
        rx.build_multiple_desc_chains(&[
            desc(0x10_0000, 1526, WRITE),
            desc(0x11_0000, 1526, WRITE),
        ])
        .unwrap();
        assert!(!worker.receive().unwrap(), "still nothing to fill");
        assert_eq!(worker.rx_buffers.capacity(), 2 * 1526, "held meanwhile");
        assert!(!worker.tap_polled);

        let more: Vec<_> = (0..3)
            .map(|i| desc(0x20_0000 + i * 0x1_0000, 0x6000, WRITE))
            .collect();
        rx.add_desc_chains(&more, 2).unwrap();
        assert!(worker.receive().unwrap());
        assert_eq!(rx.used().idx().load(), 2, "both frames, in order");
        let used: Vec<_> = (0..2)
            .map(|i| {
                let elem = rx.used().ring().ref_at(i).unwrap().load();
                (elem.id(), elem.len())
            })
            .collect();
        assert_eq!(used, [(0, 100), (1, 200)], "each in its own buffer");
        assert_eq!(mem.read_obj::<u16>(GuestAddress(0x10_000a)).unwrap(), 1);
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(0x11_0000 + 199)).unwrap(),
            1
        );
        assert!(worker.tap_polled, "the tap is watched again once drained");
        assert_eq!(worker.rx_buffers.capacity(), 3 * 0x6000);
    }

    #[test]
    fn a_guest_that_keeps_moving_its_available_index_cannot_hold_the_thread() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap();
        let rx = MockSplitQueue::create(&mem, GuestAddress(0), 16);
        let tx = MockSplitQueue::create(&mem, GuestAddress(0x8000), 16);
        let (ours, peer) = std::os::unix::net::UnixDatagram::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let eventfd = || EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut rx_queue: Queue = rx.create_queue().unwrap();
        rx_queue.set_event_idx(true);
        let queues = NetQueues {
            mem: mem.clone(),
            rx: rx_queue,
            tx: tx.create_queue().unwrap(),
            rx_notify: eventfd(),
            interrupt: Arc::new(VirtioInterrupt::new(eventfd())),
        };
        let registry = EventRegistry::new().unwrap();
        let mut worker = NetHandler::new(
            Tap::from_raw_for_test(OwnedFd::from(ours)),
            queues,
            registry,
        );
        peer.send(&[0u8; 100]).unwrap();
        // The "guest" moves its available index on and on, always out of
        // range, so that no buffer is ever usable and every ask sees a new one.
        let avail_idx = GuestAddress(rx.avail_addr().0 + 2);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let guest = {
            let (mem, stop) = (mem.clone(), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut idx = 1000u16;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    idx = idx.wrapping_add(1) | 0x100;
                    mem.write_obj(idx, avail_idx).unwrap();
                }
            })
        };
        // A round may also end because two asks met the same index (the
        // "guest" thread was not scheduled in between); one that hit the
        // bound ends with a notification of its own.
        while mem.read_obj::<u16>(avail_idx).unwrap() == 0 {
            std::thread::yield_now();
        }
        let mut self_notified = false;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            assert!(!worker.receive().unwrap(), "nothing was delivered");
            assert_eq!(worker.rx_buffers.capacity(), 0, "no buffer is held");
            if worker.queues.rx_notify.read().is_ok() {
                self_notified = true;
                break;
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        guest.join().unwrap();
        assert!(self_notified, "no round ended at the bound");
    }
}
