//! A device's own thread, for devices that poll their queues and host fds
//! themselves. The thread starts when the device is built, confines itself
//! with its kind's seccomp filter and waits; each activation hands it the
//! serving loop, which is told to stop through an eventfd at reset, and the
//! thread ends with the device.

use crate::seccomp::{self, ThreadKind};
use std::io;
use std::os::fd::AsRawFd;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::time::Duration;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

/// How long stopping a device waits for the request in progress: one blocked
/// in the host kernel (a FIFO in a share, a hung network file system) leaves
/// the thread to finish on its own, with the device unable to restart.
const STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// A serving loop handed to the thread.
type Job = Box<dyn FnOnce() + Send>;

/// A device's thread, confined and idle until the device is activated.
pub struct DeviceWorker {
    name: &'static str,
    jobs: SyncSender<Job>,
}

impl DeviceWorker {
    /// Starts the thread called `name` and waits until it has installed the
    /// seccomp filter of `kind`.
    pub fn start(name: &'static str, kind: ThreadKind) -> io::Result<Self> {
        // One job at a time: a second activation waits for none.
        let (jobs, queue) = mpsc::sync_channel::<Job>(1);
        let (confined, ready) = mpsc::channel();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let outcome = seccomp::confine(kind);
                let ok = outcome.is_ok();
                let _ = confined.send(outcome);
                if ok {
                    // Ends when the device, and with it `jobs`, is dropped.
                    for job in queue {
                        job();
                    }
                }
            })?;
        match ready.recv() {
            Ok(Ok(())) => Ok(Self { name, jobs }),
            Ok(Err(err)) => Err(io::Error::other(err)),
            Err(_) => Err(io::Error::other(format!(
                "the {name} thread ended at start"
            ))),
        }
    }

    /// Runs `serve` on the thread. `serve` gets the eventfd that is signalled
    /// when it must end, and returns then.
    pub fn serve<F>(&self, serve: F) -> io::Result<DeviceThread>
    where
        F: FnOnce(&EventFd) -> io::Result<()> + Send + 'static,
    {
        let stop = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?;
        let thread_stop = stop.try_clone()?;
        let (ending, ended) = mpsc::channel::<()>();
        let name = self.name;
        let job: Job = Box::new(move || {
            // Dropped when the loop ends, which `DeviceThread::drop` waits for.
            let _ending = ending;
            if let Err(err) = serve(&thread_stop) {
                eprintln!("runv-vmm: {name} stopped: {err}");
            }
        });
        self.jobs.try_send(job).map_err(|_| {
            io::Error::other(format!(
                "the {name} thread is still busy with an earlier activation"
            ))
        })?;
        Ok(DeviceThread { name, stop, ended })
    }
}

/// A serving loop running on a device's thread; stopped on drop.
pub struct DeviceThread {
    name: &'static str,
    stop: EventFd,
    /// Disconnected when the loop ends.
    ended: Receiver<()>,
}

impl Drop for DeviceThread {
    fn drop(&mut self) {
        if let Err(err) = self.stop.write(1) {
            eprintln!("runv-vmm: cannot stop the {} thread: {err}", self.name);
            return;
        }
        match self.ended.recv_timeout(STOP_TIMEOUT) {
            Err(RecvTimeoutError::Disconnected) | Ok(()) => {}
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

    fn worker(name: &'static str) -> DeviceWorker {
        DeviceWorker::start(name, ThreadKind::Rng).unwrap()
    }

    #[test]
    fn the_thread_runs_until_dropped() {
        let ended = Arc::new(AtomicBool::new(false));
        let seen = ended.clone();
        let thread = worker("test-device")
            .serve(move |stop| {
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
    fn one_thread_serves_each_activation_in_turn() {
        let worker = worker("reactivated-device");
        let thread_of = |worker: &DeviceWorker| {
            let (tx, rx) = mpsc::channel();
            let running = worker
                .serve(move |_stop| {
                    tx.send(std::thread::current().id()).unwrap();
                    Ok(())
                })
                .unwrap();
            let id = rx.recv_timeout(Duration::from_secs(10)).unwrap();
            drop(running);
            id
        };
        let first = thread_of(&worker);
        assert_eq!(
            thread_of(&worker),
            first,
            "a second activation, same thread"
        );
        assert_ne!(first, std::thread::current().id());
    }

    #[test]
    fn a_thread_stuck_in_a_request_is_left_after_the_timeout() {
        let thread = worker("stuck-device")
            .serve(|_stop| {
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
        let thread = worker("notified-device")
            .serve(move |stop| {
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
