//! OOM events, as the kernel notifies them: one watcher thread sleeps in
//! `epoll_wait` on an inotify instance that watches every container's
//! memory.events (cgroup v2: the kernel reports the file modified whenever a
//! count changes; the event is queued when `oom_kill` grew), and on one eventfd
//! per container registered with its memory.oom_control through
//! cgroup.event_control (cgroup v1: the kernel signals it as an OOM begins,
//! also for an OOM of an ancestor cgroup, as runc sees it; signals that arrive
//! before the watcher reads the eventfd make one event). GetOOMEvent takes the
//! next event (a long poll).

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};

use crate::cgroup::OomSource;
use crate::error::{AgentError, Result};

/// The epoll token of the inotify instance; eventfds get the ones above it.
const INOTIFY_TOKEN: u64 = 0;

/// The queue of OOM events and the counters seen so far.
#[derive(Default)]
pub struct OomEvents {
    state: Mutex<OomState>,
    ready: Condvar,
}

#[derive(Default)]
struct OomState {
    queue: VecDeque<String>,
    /// OOM kills already reported, by container.
    seen: HashMap<String, u64>,
}

impl OomEvents {
    /// Records `oom_kills` for container `id`; queues an event if it grew.
    pub fn observe(&self, id: &str, oom_kills: u64) {
        let mut state = self.lock();
        let seen = state.seen.entry(id.to_string()).or_insert(0);
        if oom_kills > *seen {
            *seen = oom_kills;
            self.push(state, id);
        }
    }

    /// Queues one event for `count` OOM notifications of container `id` (v1),
    /// which announce kills the counter, `oom_kills` now, may not show yet: they
    /// count as seen, so that a later look at the counter reports them once.
    pub fn notified(&self, id: &str, count: u64, oom_kills: u64) {
        let mut state = self.lock();
        let seen = state.seen.entry(id.to_string()).or_insert(0);
        *seen = seen.saturating_add(count).max(oom_kills);
        self.push(state, id);
    }

    /// Drops the counter of a removed container (its queued events stay).
    pub fn forget(&self, id: &str) {
        self.lock().seen.remove(id);
    }

    /// The next event's container id; None if `deadline` passed first.
    pub fn next(&self, deadline: Option<Instant>) -> Option<String> {
        let mut state = self.lock();
        loop {
            if let Some(id) = state.queue.pop_front() {
                return Some(id);
            }
            state = match deadline {
                None => self.ready.wait(state).unwrap_or_else(|e| e.into_inner()),
                Some(deadline) => {
                    let left = deadline.checked_duration_since(Instant::now())?;
                    self.ready
                        .wait_timeout(state, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
    }

    fn push(&self, mut state: MutexGuard<'_, OomState>, id: &str) {
        state.queue.push_back(id.to_string());
        drop(state);
        self.ready.notify_one();
    }

    fn lock(&self) -> MutexGuard<'_, OomState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Watches the containers' cgroups for OOM kills, on a thread of its own.
pub struct OomMonitor {
    /// The events found.
    pub events: OomEvents,
    epoll: Epoll,
    inotify: Inotify,
    watches: Mutex<Watches>,
}

/// What is watched, by container.
#[derive(Default)]
struct Watches {
    by_id: HashMap<String, Watch>,
    /// v2 containers by inotify watch.
    /// inotify gives one watch per file: containers that share a cgroup share
    /// its watch, which goes when the last of them does.
    by_wd: HashMap<WatchDescriptor, Vec<String>>,
    /// v1 containers by epoll token.
    by_token: HashMap<u64, String>,
    last_token: u64,
}

struct Watch {
    source: OomSource,
    notifier: Notifier,
}

enum Notifier {
    /// v2: an inotify watch on memory.events.
    Inotify(WatchDescriptor),
    /// v1: an eventfd the kernel signals, in the epoll set under `token`.
    EventFd { token: u64, eventfd: EventFd },
}

impl OomMonitor {
    /// Starts the watcher thread, with nothing to watch yet.
    pub fn start() -> io::Result<Arc<Self>> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        epoll.add(
            &inotify,
            EpollEvent::new(EpollFlags::EPOLLIN, INOTIFY_TOKEN),
        )?;
        let monitor = Arc::new(Self {
            events: OomEvents::default(),
            epoll,
            inotify,
            watches: Mutex::default(),
        });
        let worker = Arc::clone(&monitor);
        std::thread::Builder::new()
            .name("oom-watcher".into())
            .spawn(move || worker.run())?;
        Ok(monitor)
    }

    /// Watches container `id`'s cgroup through `source` (see [`OomSource`]).
    pub fn watch(&self, id: &str, source: OomSource) -> Result<()> {
        let mut watches = self.lock();
        if watches.by_id.contains_key(id) {
            return Err(AgentError::AlreadyExists {
                kind: "OOM watch of container",
                id: id.to_string(),
            });
        }
        let notifier = match &source {
            OomSource::Events(events) => {
                let wd = self
                    .inotify
                    .add_watch(events, AddWatchFlags::IN_MODIFY)
                    .map_err(|e| AgentError::io(format!("watch {}", events.display()))(e.into()))?;
                watches.by_wd.entry(wd).or_default().push(id.to_string());
                Notifier::Inotify(wd)
            }
            OomSource::OomControl {
                oom_control,
                event_control,
            } => {
                let eventfd = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
                    .map_err(|e| AgentError::io("create an eventfd")(e.into()))?;
                // The kernel keeps its own references: both files may close.
                let control = File::open(oom_control)
                    .map_err(AgentError::io(format!("open {}", oom_control.display())))?;
                let line = format!("{} {}", eventfd.as_raw_fd(), control.as_raw_fd());
                fs::write(event_control, line).map_err(AgentError::io(format!(
                    "register an eventfd in {}",
                    event_control.display()
                )))?;
                watches.last_token += 1;
                let token = watches.last_token;
                self.epoll
                    .add(&eventfd, EpollEvent::new(EpollFlags::EPOLLIN, token))
                    .map_err(|e| AgentError::io("add an eventfd to the epoll set")(e.into()))?;
                watches.by_token.insert(token, id.to_string());
                Notifier::EventFd { token, eventfd }
            }
        };
        watches
            .by_id
            .insert(id.to_string(), Watch { source, notifier });
        Ok(())
    }

    /// Stops watching container `id`, once its processes are gone and before
    /// its cgroup is (v1 signals the eventfd when the cgroup goes): takes a
    /// pending notification and a last look at the counter, then forgets it.
    pub fn unwatch(&self, id: &str) {
        let (watch, last_on_file) = {
            let mut watches = self.lock();
            let watch = watches.by_id.remove(id);
            let mut last_on_file = false;
            match watch.as_ref().map(|w| &w.notifier) {
                Some(Notifier::Inotify(wd)) => {
                    if let Some(ids) = watches.by_wd.get_mut(wd) {
                        ids.retain(|other| other != id);
                        last_on_file = ids.is_empty();
                    }
                    if last_on_file {
                        watches.by_wd.remove(wd);
                    }
                }
                Some(Notifier::EventFd { token, .. }) => {
                    watches.by_token.remove(token);
                }
                None => {}
            }
            (watch, last_on_file)
        };
        if let Some(watch) = watch {
            match &watch.notifier {
                Notifier::Inotify(wd) => {
                    if last_on_file {
                        // Fails if the file is gone already; the watch then is too.
                        let _ = self.inotify.rm_watch(*wd);
                    }
                }
                Notifier::EventFd { eventfd, .. } => {
                    let _ = self.epoll.delete(eventfd);
                    self.take_notification(id, &watch);
                }
            }
            // A kill whose notification the watcher had not handled yet.
            self.events.observe(id, watch.source.oom_kills());
        }
        self.events.forget(id);
    }

    fn run(&self) {
        let mut ready = [EpollEvent::empty(); 16];
        loop {
            let count = match self.epoll.wait(&mut ready, EpollTimeout::NONE) {
                Ok(count) => count,
                Err(Errno::EINTR) => continue,
                Err(err) => {
                    log::error!("OOM watcher stopped: epoll_wait: {err}");
                    return;
                }
            };
            for event in &ready[..count] {
                self.handle(event.data());
            }
        }
    }

    /// Handles what the epoll set reported under `token`.
    fn handle(&self, token: u64) {
        if token != INOTIFY_TOKEN {
            let watches = self.lock();
            let watch = watches
                .by_token
                .get(&token)
                .and_then(|id| Some((id, watches.by_id.get(id)?)));
            if let Some((id, watch)) = watch {
                self.take_notification(id, watch);
            }
            return;
        }
        // Non-blocking: EAGAIN once the queue is empty.
        while let Ok(notes) = self.inotify.read_events() {
            let watches = self.lock();
            for note in notes {
                if note.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                    // The kernel dropped notifications: look at every counter.
                    for (id, watch) in &watches.by_id {
                        if let Notifier::Inotify(_) = watch.notifier {
                            self.events.observe(id, watch.source.oom_kills());
                        }
                    }
                    continue;
                }
                for id in watches.by_wd.get(&note.wd).into_iter().flatten() {
                    if let Some(watch) = watches.by_id.get(id) {
                        self.events.observe(id, watch.source.oom_kills());
                    }
                }
            }
        }
    }

    /// Queues the OOMs signalled on a v1 watch's eventfd, if any.
    fn take_notification(&self, id: &str, watch: &Watch) {
        if let Notifier::EventFd { eventfd, .. } = &watch.notifier {
            // Non-blocking: EAGAIN when nothing was signalled.
            if let Ok(count @ 1..) = eventfd.read() {
                self.events.notified(id, count, watch.source.oom_kills());
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Watches> {
        self.watches.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::BorrowedFd;
    use std::path::Path;
    use std::time::Duration;

    fn within(ms: u64) -> Option<Instant> {
        Some(Instant::now() + Duration::from_millis(ms))
    }

    #[test]
    fn events_are_queued_once_per_increase() {
        let events = OomEvents::default();
        events.observe("a", 0);
        events.observe("a", 1);
        events.observe("a", 1);
        events.observe("b", 2);
        assert_eq!(events.next(within(10)).as_deref(), Some("a"));
        assert_eq!(events.next(within(10)).as_deref(), Some("b"));
        assert_eq!(events.next(within(10)), None);
    }

    #[test]
    fn a_notified_kill_is_not_reported_again_by_the_counter() {
        let events = OomEvents::default();
        // Signalled before the kill: the counter still reads 0.
        events.notified("a", 1, 0);
        events.observe("a", 1);
        // Signalled after it.
        events.notified("a", 1, 2);
        events.observe("a", 2);
        assert_eq!(events.next(within(10)).as_deref(), Some("a"));
        assert_eq!(events.next(within(10)).as_deref(), Some("a"));
        assert_eq!(events.next(within(10)), None);
    }

    fn write(path: &Path, text: &str) {
        fs::write(path, text).unwrap();
    }

    #[test]
    fn a_modified_memory_events_file_is_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("memory.events");
        write(&file, "oom 0\noom_kill 0\n");
        let monitor = OomMonitor::start().unwrap();
        monitor.watch("c", OomSource::Events(file.clone())).unwrap();
        assert!(monitor.watch("c", OomSource::Events(file.clone())).is_err());
        write(&file, "max 3\noom 0\noom_kill 0\n");
        assert_eq!(monitor.events.next(within(200)), None);
        write(&file, "max 4\noom 1\noom_kill 1\n");
        assert_eq!(monitor.events.next(within(5000)).as_deref(), Some("c"));
        monitor.unwatch("c");
        write(&file, "max 4\noom 2\noom_kill 2\n");
        assert_eq!(monitor.events.next(within(200)), None);
    }

    #[test]
    fn containers_sharing_a_cgroup_share_its_watch_until_the_last_goes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("memory.events");
        write(&file, "oom_kill 0\n");
        let monitor = OomMonitor::start().unwrap();
        monitor.watch("a", OomSource::Events(file.clone())).unwrap();
        monitor.watch("b", OomSource::Events(file.clone())).unwrap();
        write(&file, "oom_kill 1\n");
        let mut got = [
            monitor.events.next(within(5000)),
            monitor.events.next(within(5000)),
        ];
        got.sort();
        assert_eq!(got, [Some("a".to_string()), Some("b".to_string())]);
        // Removing one keeps the other watched.
        monitor.unwatch("a");
        write(&file, "oom_kill 2\n");
        assert_eq!(monitor.events.next(within(5000)).as_deref(), Some("b"));
        assert_eq!(monitor.events.next(within(200)), None);
    }

    #[test]
    fn a_removed_container_gets_a_last_look_at_its_counter() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("memory.events");
        // A kill before the watch began: no notification will tell of it, and
        // nothing samples the counter.
        write(&file, "oom_kill 1\n");
        let monitor = OomMonitor::start().unwrap();
        monitor.watch("c", OomSource::Events(file.clone())).unwrap();
        assert_eq!(monitor.events.next(within(300)), None);
        monitor.unwatch("c");
        assert_eq!(monitor.events.next(within(10)).as_deref(), Some("c"));
        assert_eq!(monitor.events.next(within(10)), None);
    }

    /// The eventfd the monitor wrote into a (fake) cgroup.event_control.
    fn registered_eventfd(event_control: &Path) -> i32 {
        let line = fs::read_to_string(event_control).unwrap();
        let (eventfd, _control) = line.split_once(' ').unwrap();
        eventfd.parse().unwrap()
    }

    fn signal(eventfd: i32) {
        // SAFETY: the monitor owns this eventfd until `unwatch`, which the
        // test calls only after its last signal.
        let fd = unsafe { BorrowedFd::borrow_raw(eventfd) };
        nix::unistd::write(fd, &1u64.to_ne_bytes()).unwrap();
    }

    #[test]
    fn a_v1_oom_notification_is_an_event() {
        let dir = tempfile::tempdir().unwrap();
        let oom_control = dir.path().join("memory.oom_control");
        let event_control = dir.path().join("cgroup.event_control");
        write(
            &oom_control,
            "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
        );
        let monitor = OomMonitor::start().unwrap();
        let source = OomSource::OomControl {
            oom_control: oom_control.clone(),
            event_control: event_control.clone(),
        };
        monitor.watch("c", source).unwrap();
        let eventfd = registered_eventfd(&event_control);
        assert_eq!(monitor.events.next(within(200)), None);

        signal(eventfd);
        assert_eq!(monitor.events.next(within(5000)).as_deref(), Some("c"));
        // The kill the notification announced: no second event for it.
        write(
            &oom_control,
            "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
        );
        // Signalled, and removed before the watcher may have looked: one event.
        signal(eventfd);
        monitor.unwatch("c");
        assert_eq!(monitor.events.next(within(5000)).as_deref(), Some("c"));
        assert_eq!(monitor.events.next(within(200)), None);
    }
}
