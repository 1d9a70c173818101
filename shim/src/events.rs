//! Publishing task events to containerd, in order, from one bounded queue.
//!
//! Every event goes through one thread, so containerd sees them in the order the
//! service queued them (create → start → exit → delete). A publish that fails is
//! retried a few times, each try bounded by a timeout, then logged and dropped:
//! containerd being slow must never block a task RPC for long.
//!
//! The queue holds at most [`QUEUE_CAPACITY`] events, so nothing can grow the
//! shim's memory through it. When it is full, a lifecycle event (create, start,
//! exit, delete, ...: one per containerd request or process, so containerd
//! bounds their number) waits for room and is never dropped; an event the guest
//! drives (TaskOOM) is dropped instead, see [`EventQueue::offer`].

use containerd_shim::publisher::RemotePublisher;
use log::{debug, warn};
use protobuf::MessageDyn;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bound of one publish call.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);
/// Tries per event.
const PUBLISH_TRIES: u32 = 3;
/// Events the queue holds: far more than the lifecycle events of a pod's burst
/// (every process of a pod exiting at once when its VM dies), and at most a few
/// hundred KiB of small protobuf messages.
const QUEUE_CAPACITY: usize = 1024;
/// How often a flush looks for room in a full queue.
const FLUSH_POLL: Duration = Duration::from_millis(10);

enum Queued {
    Event {
        topic: &'static str,
        message: Box<dyn MessageDyn>,
    },
    /// Acknowledged once every event queued before it was handled.
    Flush(mpsc::Sender<()>),
}

/// Where the service queues events; cheap to clone.
#[derive(Clone)]
pub struct EventQueue {
    tx: SyncSender<Queued>,
    /// Events [`EventQueue::offer`] dropped on a full queue.
    dropped: Arc<AtomicU64>,
}

impl EventQueue {
    /// Starts the publishing thread for containerd namespace `namespace`.
    pub fn start(publisher: RemotePublisher, namespace: String) -> Self {
        let (queue, rx) = Self::bounded(QUEUE_CAPACITY);
        std::thread::Builder::new()
            .name("events".into())
            .spawn(move || publish_all(&publisher, &namespace, rx))
            .map_err(|err| warn!("cannot start the event thread: {err}"))
            .ok();
        queue
    }

    /// A queue nobody reads, for the tests of its users.
    #[cfg(test)]
    pub fn unread() -> Self {
        Self::bounded(QUEUE_CAPACITY).0
    }

    /// A queue of `capacity` events and its receiving end.
    fn bounded(capacity: usize) -> (Self, Receiver<Queued>) {
        let (tx, rx) = mpsc::sync_channel(capacity);
        let dropped = Arc::default();
        (Self { tx, dropped }, rx)
    }

    /// Queues lifecycle event `message` on `topic`; waits while the queue is
    /// full, never drops it.
    pub fn publish(&self, topic: &'static str, message: impl MessageDyn) {
        let message = Box::new(message);
        let item = match self.tx.try_send(Queued::Event { topic, message }) {
            Ok(()) => return,
            Err(TrySendError::Full(item)) => {
                warn!("the event queue is full: event {topic} waits for containerd");
                item
            }
            Err(TrySendError::Disconnected(_)) => {
                return warn!("event {topic} dropped: the event thread is gone")
            }
        };
        if self.tx.send(item).is_err() {
            warn!("event {topic} dropped: the event thread is gone");
        }
    }

    /// Queues `message` on `topic` if there is room; false if it was dropped.
    /// For events the guest drives, which must never hold up lifecycle events
    /// or the caller.
    pub fn offer(&self, topic: &'static str, message: impl MessageDyn) -> bool {
        let message = Box::new(message);
        match self.tx.try_send(Queued::Event { topic, message }) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                // Logged at the 1st, 2nd, 4th, 8th... drop: a flood stays quiet.
                if dropped.is_power_of_two() {
                    warn!("the event queue is full: {dropped} {topic} events dropped so far");
                }
                false
            }
            Err(TrySendError::Disconnected(_)) => false,
        }
    }

    /// Waits (at most `timeout`) until every event queued so far was handled.
    pub fn flush(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let (ack, done) = mpsc::channel();
        let mut item = Queued::Flush(ack);
        loop {
            match self.tx.try_send(item) {
                Ok(()) => break,
                Err(TrySendError::Disconnected(_)) => return,
                Err(TrySendError::Full(back)) if Instant::now() < deadline => {
                    item = back;
                    std::thread::sleep(FLUSH_POLL);
                }
                Err(TrySendError::Full(_)) => {
                    return warn!("the event queue is still full after {timeout:?}")
                }
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if done.recv_timeout(left).is_err() {
            warn!("events still queued after {timeout:?}");
        }
    }
}

fn publish_all(publisher: &RemotePublisher, namespace: &str, rx: Receiver<Queued>) {
    for item in rx {
        let (topic, message) = match item {
            Queued::Event { topic, message } => (topic, message),
            Queued::Flush(ack) => {
                let _ = ack.send(());
                continue;
            }
        };
        let message: Box<dyn MessageDyn> = message;
        let mut tries = 0;
        loop {
            tries += 1;
            let ctx = ttrpc::context::with_duration(PUBLISH_TIMEOUT);
            // publish() takes the message by value: send a copy so a retry has one.
            match publisher.publish(ctx, topic, namespace, message.clone_box()) {
                Ok(()) => {
                    debug!("published {topic}");
                    break;
                }
                Err(err) if tries < PUBLISH_TRIES => {
                    debug!("publishing {topic} failed (try {tries}): {err}");
                }
                Err(err) => {
                    warn!("event {topic} dropped after {tries} tries: {err}");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim::protos::events::task::{TaskOOM, TaskStart};

    fn topic(item: Queued) -> &'static str {
        match item {
            Queued::Event { topic, .. } => topic,
            Queued::Flush(_) => "flush",
        }
    }

    #[test]
    fn a_full_queue_drops_offers_and_keeps_lifecycle_events() {
        let (queue, rx) = EventQueue::bounded(2);
        let offered = (0..100_000)
            .filter(|_| queue.offer("oom", TaskOOM::default()))
            .count();
        assert_eq!(offered, 2, "only what fits");
        assert_eq!(queue.dropped.load(Ordering::Relaxed), 99_998);
        let waiting = queue.clone();
        let start = std::thread::spawn(move || waiting.publish("start", TaskStart::default()));
        std::thread::sleep(Duration::from_millis(100));
        assert!(!start.is_finished(), "a lifecycle event waits for room");
        assert_eq!(topic(rx.recv().unwrap()), "oom");
        start.join().unwrap();
        let rest: Vec<_> = rx.try_iter().map(topic).collect();
        assert_eq!(rest, ["oom", "start"]);
    }

    #[test]
    fn a_flush_on_a_full_queue_gives_up_in_time() {
        let (queue, _rx) = EventQueue::bounded(1);
        assert!(queue.offer("oom", TaskOOM::default()));
        let started = Instant::now();
        queue.flush(Duration::from_millis(50));
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
