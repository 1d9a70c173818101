//! A device's own thread, for devices that poll their queues and host fds
//! themselves: started at activation, told to stop through an eventfd, and
//! joined when the device is dropped.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

/// How long stopping a device waits for the request in progress: one blocked
/// in the host kernel (a FIFO in a share, a hung network file system) leaves
/// the thread detached instead, to end with the process.
const STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// A running device thread; stopped and joined on drop.
pub struct DeviceThread {
    name: &'static str,
    stop: EventFd,
    /// Disconnected when the thread ends.
    ended: Receiver<()>,
    thread: Option<JoinHandle<()>>,
}

impl DeviceThread {
    /// Runs `serve` on a thread called `name`. `serve` gets the eventfd that
    /// is signalled when the thread must end, and returns then.
    pub fn spawn<F>(name: &'static str, serve: F) -> io::Result<Self>
    where
        F: FnOnce(&EventFd) -> io::Result<()> + Send + 'static,
    {
        let stop = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?;
        let thread_stop = stop.try_clone()?;
        let (ending, ended) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                // Dropped when the thread ends, which `drop` waits for.
                let _ending = ending;
                if let Err(err) = serve(&thread_stop) {
                    eprintln!("runv-vmm: {name} stopped: {err}");
                }
            })?;
        Ok(Self {
            name,
            stop,
            ended,
            thread: Some(thread),
        })
    }
}

impl Drop for DeviceThread {
    fn drop(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        if let Err(err) = self.stop.write(1) {
            eprintln!("runv-vmm: cannot stop the {} thread: {err}", self.name);
            return;
        }
        match self.ended.recv_timeout(STOP_TIMEOUT) {
            Err(RecvTimeoutError::Disconnected) | Ok(()) => {
                if thread.join().is_err() {
                    eprintln!("runv-vmm: the {} thread panicked", self.name);
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                eprintln!(
                    "runv-vmm: {}: a request is still running; not waiting for it",
                    self.name
                );
            }
        }
    }
}

/// The loop of a device thread that serves queues: calls `serve` once, then
/// again each time the driver notifies one of `notifies`, until `stop` is
/// signalled. `serve` returns false once the device failed; it is not called
/// again, and the thread only waits for `stop`.
pub fn serve_notified(
    notifies: &[EventFd],
    stop: &EventFd,
    mut serve: impl FnMut() -> bool,
) -> io::Result<()> {
    let epoll = Epoll::new()?;
    let stop_token = notifies.len() as u64;
    for (token, fd) in notifies.iter().chain([stop]).enumerate() {
        epoll.ctl(
            ControlOperation::Add,
            fd.as_raw_fd(),
            EpollEvent::new(EventSet::IN, token as u64),
        )?;
    }
    // What the driver made available before the thread started.
    let mut healthy = serve();
    let mut events = vec![EpollEvent::default(); notifies.len() + 1];
    loop {
        let ready = match epoll.wait(-1, &mut events) {
            Ok(ready) => ready,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        let mut notified = false;
        for event in &events[..ready] {
            match usize::try_from(event.data()) {
                Ok(index) if index < notifies.len() => {
                    // Non-blocking: a count an earlier round took is fine.
                    let _ = notifies[index].read();
                    notified = true;
                }
                _ if event.data() == stop_token => return Ok(()),
                _ => {}
            }
        }
        if notified && healthy {
            healthy = serve();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[test]
    fn the_thread_runs_until_dropped() {
        let ended = Arc::new(AtomicBool::new(false));
        let seen = ended.clone();
        let thread = DeviceThread::spawn("test-device", move |stop| {
            // Blocks until the drop signals the eventfd.
            let epoll = vmm_sys_util::epoll::Epoll::new()?;
            epoll.ctl(
                vmm_sys_util::epoll::ControlOperation::Add,
                std::os::fd::AsRawFd::as_raw_fd(stop),
                vmm_sys_util::epoll::EpollEvent::new(vmm_sys_util::epoll::EventSet::IN, 0),
            )?;
            let mut events = [vmm_sys_util::epoll::EpollEvent::default()];
            epoll.wait(-1, &mut events)?;
            seen.store(true, Ordering::SeqCst);
            Ok(())
        })
        .unwrap();
        assert!(!ended.load(Ordering::SeqCst));
        drop(thread);
        assert!(ended.load(Ordering::SeqCst));
    }

    #[test]
    fn a_thread_stuck_in_a_request_is_left_after_the_timeout() {
        let thread = DeviceThread::spawn("stuck-device", |_stop| {
            // Never looks at `stop`, like a read blocked on a host FIFO.
            std::thread::sleep(STOP_TIMEOUT * 5);
            Ok(())
        })
        .unwrap();
        let started = std::time::Instant::now();
        drop(thread);
        assert!(
            started.elapsed() < STOP_TIMEOUT * 2,
            "drop waited for the stuck thread"
        );
    }

    #[test]
    fn queues_are_served_on_each_notification_until_stopped() {
        let notifies = [
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        ];
        let ours: Vec<EventFd> = notifies.iter().map(|n| n.try_clone().unwrap()).collect();
        let rounds = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = rounds.clone();
        let thread = DeviceThread::spawn("notified-device", move |stop| {
            serve_notified(&notifies, stop, || {
                counted.fetch_add(1, Ordering::SeqCst);
                true
            })
        })
        .unwrap();
        let reached = |n: usize| {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while rounds.load(Ordering::SeqCst) < n {
                assert!(std::time::Instant::now() < deadline, "not served {n} times");
                std::thread::sleep(Duration::from_millis(1));
            }
        };
        reached(1); // at start
        ours[0].write(1).unwrap();
        reached(2);
        ours[1].write(1).unwrap();
        reached(3);
        drop(thread);
        ours[0].write(1).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(rounds.load(Ordering::SeqCst), 3, "served after the stop");
    }
}
