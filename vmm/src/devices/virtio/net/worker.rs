//! The virtio-net thread: carries frames between the guest's queues and the
//! tap, woken by the queues' notifications, the tap and a stop event.

use super::rx::{self, RxBuffers, RxOutcome, MAX_RX_LEN};
use super::tap::Tap;
use super::tx::process_tx;
use crate::devices::virtio::{needs_interrupt, VirtioInterrupt};
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

const TOKEN_STOP: u64 = 0;
const TOKEN_RX: u64 = 1;
const TOKEN_TX: u64 = 2;
const TOKEN_TAP: u64 = 3;
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
    /// Notifications of the receive and transmit queues.
    pub notify: [EventFd; 2],
    /// The device's interrupt.
    pub interrupt: Arc<VirtioInterrupt>,
}

/// Moves frames for one device.
pub struct Worker {
    tap: Tap,
    queues: NetQueues,
    /// The receive chains held for the next frames.
    rx_buffers: RxBuffers,
    /// Whether the tap is in the epoll set (not while the guest has too few
    /// receive buffers, so that a readable tap does not spin the loop).
    tap_polled: bool,
    tap_failed: bool,
    /// The receive queue's used index when it was last checked for an
    /// interrupt.
    rx_checked: u16,
}

impl Worker {
    /// A worker for `tap` and the guest's `queues`.
    pub fn new(tap: Tap, queues: NetQueues) -> Self {
        Self {
            tap,
            queues,
            rx_buffers: RxBuffers::new(),
            tap_polled: false,
            tap_failed: false,
            rx_checked: 0,
        }
    }

    /// Serves the guest until `stop` is signalled.
    pub fn run(mut self, stop: &EventFd) -> io::Result<()> {
        let epoll = Epoll::new()?;
        let sources = [
            (stop.as_raw_fd(), TOKEN_STOP),
            (self.queues.notify[0].as_raw_fd(), TOKEN_RX),
            (self.queues.notify[1].as_raw_fd(), TOKEN_TX),
        ];
        for (fd, token) in sources {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )?;
        }
        self.poll_tap(&epoll, true)?;
        let mut events = vec![EpollEvent::default(); 8];
        loop {
            let ready = match epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(err),
            };
            let mut interrupt = false;
            let mut try_rx = false;
            for event in &events[..ready] {
                match event.data() {
                    TOKEN_STOP => return Ok(()),
                    TOKEN_RX => {
                        let _ = self.queues.notify[0].read();
                        try_rx = true;
                    }
                    TOKEN_TX => {
                        let _ = self.queues.notify[1].read();
                        let q = &mut self.queues;
                        if process_tx(&mut q.tx, &q.mem, &mut self.tap) {
                            interrupt |= needs_interrupt(&mut q.tx, &q.mem, "virtio-net");
                        }
                    }
                    _ => try_rx = true,
                }
            }
            if try_rx && self.receive(&epoll)? {
                let q = &self.queues;
                interrupt |= rx::needs_interrupt(&q.rx, &q.mem, self.rx_checked);
                self.rx_checked = q.rx.next_used();
            }
            if interrupt {
                if let Err(err) = self.queues.interrupt.signal_used_queue() {
                    eprintln!("runv-vmm: virtio-net: cannot interrupt the guest: {err}");
                }
            }
        }
    }

    fn poll_tap(&mut self, epoll: &Epoll, on: bool) -> io::Result<()> {
        if on == self.tap_polled || (on && self.tap_failed) {
            return Ok(());
        }
        let op = if on {
            ControlOperation::Add
        } else {
            ControlOperation::Delete
        };
        epoll.ctl(
            op,
            self.tap.file().as_raw_fd(),
            EpollEvent::new(EventSet::IN, TOKEN_TAP),
        )?;
        self.tap_polled = on;
        Ok(())
    }

    /// Moves frames from the tap to the guest while both have some; true if
    /// any receive buffer was used.
    ///
    /// A frame is read only into buffers that can take the longest one (or
    /// all the guest can give, see [`RxBuffers::at_limit`]): a tap read
    /// cannot be undone, and a frame cut short would be lost.
    fn receive(&mut self, epoll: &Epoll) -> io::Result<bool> {
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
                        q.notify[0].write(1)?;
                    }
                    Ok(_) => {}
                    Err(err) => {
                        return Err(io::Error::other(format!(
                            "the receive queue is broken: {err}"
                        )))
                    }
                }
                self.poll_tap(epoll, false)?;
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
                    self.poll_tap(epoll, true)?;
                    return Ok(used);
                }
                Err(err) => {
                    eprintln!(
                        "runv-vmm: virtio-net: cannot read tap {}: {err}; receive stops",
                        self.tap.name()
                    );
                    self.poll_tap(epoll, false)?;
                    self.tap_failed = true;
                    return Ok(used);
                }
            }
        }
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
            notify: [eventfd(), eventfd()],
            interrupt: Arc::new(VirtioInterrupt::new(eventfd())),
        };
        let mut worker = Worker::new(Tap::from_raw_for_test(ours), queues);
        let epoll = Epoll::new().unwrap();
        worker.poll_tap(&epoll, true).unwrap();
        peer.write_all(&[0u8; 100]).unwrap();
        peer.write_all(&[1u8; 200]).unwrap();

        assert!(!worker.receive(&epoll).unwrap(), "no buffer was used");
        assert!(!worker.tap_polled, "the tap is not watched meanwhile");

        // Too few for the longest frame: the frames stay in the tap.
        rx.build_multiple_desc_chains(&[
            desc(0x10_0000, 1526, WRITE),
            desc(0x11_0000, 1526, WRITE),
        ])
        .unwrap();
        assert!(!worker.receive(&epoll).unwrap(), "still nothing to fill");
        assert_eq!(worker.rx_buffers.capacity(), 2 * 1526, "held meanwhile");
        assert!(!worker.tap_polled);

        let more: Vec<_> = (0..3)
            .map(|i| desc(0x20_0000 + i * 0x1_0000, 0x6000, WRITE))
            .collect();
        rx.add_desc_chains(&more, 2).unwrap();
        assert!(worker.receive(&epoll).unwrap());
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
            notify: [eventfd(), eventfd()],
            interrupt: Arc::new(VirtioInterrupt::new(eventfd())),
        };
        let mut worker = Worker::new(Tap::from_raw_for_test(OwnedFd::from(ours)), queues);
        let epoll = Epoll::new().unwrap();
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
            assert!(!worker.receive(&epoll).unwrap(), "nothing was delivered");
            assert_eq!(worker.rx_buffers.capacity(), 0, "no buffer is held");
            if worker.queues.notify[0].read().is_ok() {
                self_notified = true;
                break;
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        guest.join().unwrap();
        assert!(self_notified, "no round ended at the bound");
    }
}
