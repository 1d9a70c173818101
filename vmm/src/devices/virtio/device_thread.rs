//! A device's own thread, the one way devices serve their queues.
//!
//! The thread starts when the device is built, confines itself with its
//! kind's seccomp filter and waits. Each activation hands it a
//! [`DeviceEventHandler`]: the thread waits on the queues' notification
//! eventfds, a stop eventfd and any host fd the handler registers in its
//! [`EventRegistry`] (a tap, Unix sockets), and calls the handler for each.
//! The stop eventfd is signalled at reset; the thread ends with the device.

use crate::seccomp::{self, ThreadKind};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

/// How long stopping a device waits for the request in progress: one blocked
/// in the host kernel (a FIFO in a share, a hung network file system) leaves
/// the thread to finish on its own, with the device unable to restart.
const STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// Tokens from here on are the loop's own (queue notifications, stop);
/// handlers register their fds with tokens below it.
pub const RESERVED_TOKENS: u64 = 1 << 63;
/// Token of the stop eventfd.
const STOP_TOKEN: u64 = u64::MAX;
/// Events taken from one wait.
const EVENTS_PER_WAIT: usize = 64;

/// What a device does when its thread wakes up. Every method runs on the
/// device's thread; an error ends the serving loop (it is logged, and the
/// thread waits for the next activation).
pub trait DeviceEventHandler {
    /// Runs once before the first wait: what the driver made available
    /// before the thread started.
    fn start(&mut self) -> io::Result<()> {
        Ok(())
    }

    /// The driver notified queue `index` (its eventfd is already read).
    fn queue_event(&mut self, index: usize) -> io::Result<()>;

    /// A host fd the handler registered with `token` is ready for `events`.
    fn fd_event(&mut self, _token: u64, _events: EventSet) -> io::Result<()> {
        Ok(())
    }

    /// Runs after each round of events, and when [`Self::deadline`] passed:
    /// for work batched over a round (one interrupt for many completions).
    fn events_done(&mut self) -> io::Result<()> {
        Ok(())
    }

    /// When the thread must wake up without any event, if ever.
    fn deadline(&self) -> Option<Instant> {
        None
    }
}

/// The set of fds a device's thread waits on, shared between the loop and
/// its handler, which adds, changes and removes its host fds there.
#[derive(Clone)]
pub struct EventRegistry(Arc<Epoll>);

impl EventRegistry {
    /// An empty set.
    pub fn new() -> io::Result<Self> {
        Ok(Self(Arc::new(Epoll::new()?)))
    }

    /// Starts waiting on `fd` for `events`, reported with `token` (below
    /// [`RESERVED_TOKENS`]).
    pub fn add(&self, fd: RawFd, token: u64, events: EventSet) -> io::Result<()> {
        Self::check(token)?;
        self.ctl(ControlOperation::Add, fd, EpollEvent::new(events, token))
    }

    /// Waits on `fd`, added before, for `events` instead.
    pub fn modify(&self, fd: RawFd, token: u64, events: EventSet) -> io::Result<()> {
        Self::check(token)?;
        self.ctl(ControlOperation::Modify, fd, EpollEvent::new(events, token))
    }

    /// Stops waiting on `fd`.
    pub fn remove(&self, fd: RawFd) -> io::Result<()> {
        self.ctl(ControlOperation::Delete, fd, EpollEvent::default())
    }

    fn check(token: u64) -> io::Result<()> {
        if token >= RESERVED_TOKENS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a device's fd token is in the loop's range",
            ));
        }
        Ok(())
    }

    fn ctl(&self, op: ControlOperation, fd: RawFd, event: EpollEvent) -> io::Result<()> {
        self.0.ctl(op, fd, event)
    }

    /// Adds one of the loop's own fds.
    fn add_reserved(&self, fd: RawFd, token: u64) -> io::Result<()> {
        self.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN, token),
        )
    }

    fn wait(&self, timeout_ms: i32, events: &mut [EpollEvent]) -> io::Result<usize> {
        self.0.wait(timeout_ms, events)
    }
}

/// Milliseconds until `deadline` (rounded up), -1 for none.
fn timeout_ms(deadline: Option<Instant>) -> i32 {
    deadline.map_or(-1, |deadline| {
        let left = deadline.saturating_duration_since(Instant::now());
        left.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32
    })
}

/// Serves `handler` until `stop` is signalled: waits on `registry`, where
/// the queues' `notifies` and `stop` are added, and calls the handler for
/// each event.
pub fn run_handler<H: DeviceEventHandler + ?Sized>(
    handler: &mut H,
    registry: &EventRegistry,
    notifies: &[EventFd],
    stop: &EventFd,
) -> io::Result<()> {
    for (index, notify) in notifies.iter().enumerate() {
        registry.add_reserved(notify.as_raw_fd(), RESERVED_TOKENS + index as u64)?;
    }
    registry.add_reserved(stop.as_raw_fd(), STOP_TOKEN)?;
    handler.start()?;
    let mut events = vec![EpollEvent::default(); EVENTS_PER_WAIT];
    loop {
        let ready = match registry.wait(timeout_ms(handler.deadline()), &mut events) {
            Ok(ready) => ready,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        for event in &events[..ready] {
            match event.data() {
                STOP_TOKEN => return Ok(()),
                token if token >= RESERVED_TOKENS => {
                    let index = usize::try_from(token - RESERVED_TOKENS).unwrap_or(usize::MAX);
                    if let Some(notify) = notifies.get(index) {
                        // Non-blocking: a count an earlier round took is fine.
                        let _ = notify.read();
                        handler.queue_event(index)?;
                    }
                }
                token => handler.fd_event(token, event.event_set())?,
            }
        }
        handler.events_done()?;
    }
}

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

    /// Serves the device on its thread until it is stopped: `make` builds the
    /// handler there (for what only the thread's filter allows), then the
    /// thread waits on `registry` with the queues' `notifies`.
    pub fn serve_events<H, F>(
        &self,
        registry: EventRegistry,
        notifies: Vec<EventFd>,
        make: F,
    ) -> io::Result<DeviceThread>
    where
        H: DeviceEventHandler,
        F: FnOnce() -> io::Result<H> + Send + 'static,
    {
        self.serve(move |stop| {
            let mut handler = make()?;
            run_handler(&mut handler, &registry, &notifies, stop)
        })
    }

    /// Runs `serve` on the thread. `serve` gets the eventfd that is signalled
    /// when it must end, and returns then.
    fn serve<F>(&self, serve: F) -> io::Result<DeviceThread>
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
                protocol::log_limited!(log::Level::Error, "{name} stopped: {err}");
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
            log::error!("cannot stop the {} thread: {err}", self.name);
            return;
        }
        match self.ended.recv_timeout(STOP_TIMEOUT) {
            Err(RecvTimeoutError::Disconnected) | Ok(()) => {}
            Err(RecvTimeoutError::Timeout) => {
                protocol::log_limited!(
                    log::Level::Warn,
                    "{}: a request is still running; not waiting for it",
                    self.name
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;

    fn worker(name: &'static str) -> DeviceWorker {
        DeviceWorker::start(name, ThreadKind::Rng).unwrap()
    }

    fn eventfd() -> EventFd {
        EventFd::new(libc::EFD_NONBLOCK).unwrap()
    }

    #[test]
    fn the_thread_runs_until_dropped() {
        let ended = Arc::new(AtomicBool::new(false));
        let seen = ended.clone();
        let thread = worker("test-device")
            .serve(move |stop| {
                // Blocks until the drop signals the eventfd.
                let epoll = Epoll::new()?;
                epoll.ctl(
                    ControlOperation::Add,
                    stop.as_raw_fd(),
                    EpollEvent::new(EventSet::IN, 0),
                )?;
                let mut events = [EpollEvent::default()];
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
        let started = Instant::now();
        drop(thread);
        assert!(
            started.elapsed() < STOP_TIMEOUT * 2,
            "drop waited for the stuck thread"
        );
    }

    /// What a [`Recorder`] was called with, in order.
    #[derive(Debug, Clone, PartialEq)]
    enum Call {
        Start,
        Queue(usize),
        Fd(u64, bool),
        Done,
    }

    /// A handler that records its calls; it watches `extra` with token 7,
    /// and wakes up at `deadline`, once.
    struct Recorder {
        calls: Arc<Mutex<Vec<Call>>>,
        registry: EventRegistry,
        extra: EventFd,
        deadline: Option<Instant>,
    }

    impl DeviceEventHandler for Recorder {
        fn start(&mut self) -> io::Result<()> {
            self.registry.add(self.extra.as_raw_fd(), 7, EventSet::IN)?;
            self.calls.lock().unwrap().push(Call::Start);
            Ok(())
        }

        fn queue_event(&mut self, index: usize) -> io::Result<()> {
            self.calls.lock().unwrap().push(Call::Queue(index));
            Ok(())
        }

        fn fd_event(&mut self, token: u64, events: EventSet) -> io::Result<()> {
            let _ = self.extra.read();
            let readable = events.contains(EventSet::IN);
            self.calls.lock().unwrap().push(Call::Fd(token, readable));
            Ok(())
        }

        fn events_done(&mut self) -> io::Result<()> {
            if self.deadline.is_some_and(|d| d <= Instant::now()) {
                self.deadline = None;
            }
            self.calls.lock().unwrap().push(Call::Done);
            Ok(())
        }

        fn deadline(&self) -> Option<Instant> {
            self.deadline
        }
    }

    /// Waits up to 10 s until `calls` holds `n` entries; returns them.
    fn calls_after(calls: &Mutex<Vec<Call>>, n: usize) -> Vec<Call> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let seen = calls.lock().unwrap().clone();
            if seen.len() >= n {
                return seen;
            }
            assert!(Instant::now() < deadline, "only {seen:?}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn recorder(deadline: Option<Instant>) -> (Recorder, Arc<Mutex<Vec<Call>>>, EventFd) {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let extra = eventfd();
        let ours = extra.try_clone().unwrap();
        let handler = Recorder {
            calls: calls.clone(),
            registry: EventRegistry::new().unwrap(),
            extra,
            deadline,
        };
        (handler, calls, ours)
    }

    #[test]
    fn queue_and_extra_fd_events_reach_the_handler_until_stopped() {
        let (handler, calls, extra) = recorder(None);
        let registry = handler.registry.clone();
        let notifies = vec![eventfd(), eventfd()];
        let ours: Vec<EventFd> = notifies.iter().map(|n| n.try_clone().unwrap()).collect();
        let thread = worker("handled-device")
            .serve_events(registry, notifies, move || Ok(handler))
            .unwrap();
        assert_eq!(calls_after(&calls, 1), [Call::Start]);
        ours[1].write(1).unwrap();
        assert_eq!(calls_after(&calls, 3)[1..], [Call::Queue(1), Call::Done]);
        assert_eq!(ours[1].read().ok(), None, "the loop read the notification");
        extra.write(1).unwrap();
        assert_eq!(calls_after(&calls, 5)[3..], [Call::Fd(7, true), Call::Done]);
        ours[0].write(1).unwrap();
        assert_eq!(calls_after(&calls, 7)[5..], [Call::Queue(0), Call::Done]);

        drop(thread);
        ours[0].write(1).unwrap();
        extra.write(1).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(calls.lock().unwrap().len(), 7, "served after the stop");
    }

    #[test]
    fn the_handler_is_woken_at_its_deadline() {
        let (handler, calls, _extra) = recorder(Some(Instant::now() + Duration::from_millis(30)));
        let registry = handler.registry.clone();
        let started = Instant::now();
        let _thread = worker("timed-device")
            .serve_events(registry, vec![eventfd()], move || Ok(handler))
            .unwrap();
        assert_eq!(calls_after(&calls, 2), [Call::Start, Call::Done]);
        assert!(started.elapsed() >= Duration::from_millis(30));
    }

    #[test]
    fn a_handler_error_ends_the_loop() {
        struct Failing(Arc<AtomicBool>);
        impl DeviceEventHandler for Failing {
            fn queue_event(&mut self, _index: usize) -> io::Result<()> {
                Err(io::Error::other("broken rings"))
            }
        }
        impl Drop for Failing {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let dropped = Arc::new(AtomicBool::new(false));
        let handler = Failing(dropped.clone());
        let notify = eventfd();
        notify.write(1).unwrap();
        let _thread = worker("failing-device")
            .serve_events(EventRegistry::new().unwrap(), vec![notify], move || {
                Ok(handler)
            })
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !dropped.load(Ordering::SeqCst) {
            assert!(Instant::now() < deadline, "the loop goes on");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn handlers_cannot_take_the_loops_tokens() {
        let registry = EventRegistry::new().unwrap();
        let fd = eventfd();
        let err = registry
            .add(fd.as_raw_fd(), RESERVED_TOKENS, EventSet::IN)
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
