//! OOM events: a monitor thread samples every container's OOM-kill counter
//! (memory.events on cgroup v2, memory.oom_control on v1) and queues an event
//! when it grows; GetOOMEvent takes the next one (a long poll).

use std::collections::{HashMap, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Instant;

/// The queue of OOM events and the counters seen so far.
#[derive(Default)]
pub struct OomEvents {
    state: Mutex<OomState>,
    ready: Condvar,
}

#[derive(Default)]
struct OomState {
    queue: VecDeque<String>,
    seen: HashMap<String, u64>,
}

impl OomEvents {
    /// Records `oom_kills` for container `id`; queues an event if it grew.
    pub fn observe(&self, id: &str, oom_kills: u64) {
        let mut state = self.lock();
        let seen = state.seen.entry(id.to_string()).or_insert(0);
        if oom_kills > *seen {
            *seen = oom_kills;
            state.queue.push_back(id.to_string());
            self.ready.notify_one();
        }
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

    fn lock(&self) -> MutexGuard<'_, OomState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn events_are_queued_once_per_increase() {
        let events = OomEvents::default();
        events.observe("a", 0);
        events.observe("a", 1);
        events.observe("a", 1);
        events.observe("b", 2);
        let soon = || Some(Instant::now() + Duration::from_millis(10));
        assert_eq!(events.next(soon()).as_deref(), Some("a"));
        assert_eq!(events.next(soon()).as_deref(), Some("b"));
        assert_eq!(events.next(soon()), None);
    }
}
