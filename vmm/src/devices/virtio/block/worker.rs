//! The thread that serves a virtio-blk device's queue: it waits on the queue's
//! notification eventfd itself, so that disk I/O runs outside the event loop
//! and outside the transport's lock (a vCPU reading the interrupt status is
//! not held up by a request in progress).

use super::device::Served;
use std::io;
use std::os::fd::AsRawFd;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

const TOKEN_NOTIFY: u64 = 0;
const TOKEN_STOP: u64 = 1;

/// Serves `served` each time the driver notifies `notify`, until `stop`.
pub fn run(served: &Served, notify: &EventFd, stop: &EventFd) -> io::Result<()> {
    let epoll = Epoll::new()?;
    for (fd, token) in [
        (notify.as_raw_fd(), TOKEN_NOTIFY),
        (stop.as_raw_fd(), TOKEN_STOP),
    ] {
        epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN, token),
        )?;
    }
    // Requests the driver made available before the thread started.
    served.process();
    let mut events = [EpollEvent::default(); 2];
    loop {
        let ready = match epoll.wait(-1, &mut events) {
            Ok(ready) => ready,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        for event in &events[..ready] {
            if event.data() == TOKEN_STOP {
                return Ok(());
            }
            // Non-blocking: a count already read by a previous round is fine.
            let _ = notify.read();
            served.process();
        }
    }
}
