//! Publishing task events to containerd, in order, from one queue.
//!
//! Every event goes through one thread, so containerd sees them in the order the
//! service queued them (create → start → exit → delete). A publish that fails is
//! retried a few times, each try bounded by a timeout, then logged and dropped:
//! containerd being slow must never block a task RPC.

use containerd_shim::publisher::RemotePublisher;
use log::{debug, warn};
use protobuf::MessageDyn;
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::Duration;

/// Bound of one publish call.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);
/// Tries per event.
const PUBLISH_TRIES: u32 = 3;

enum Queued {
    Event {
        topic: &'static str,
        message: Box<dyn MessageDyn>,
    },
    /// Acknowledged once every event queued before it was handled.
    Flush(Sender<()>),
}

/// Where the service queues events; cheap to clone.
#[derive(Clone)]
pub struct EventQueue {
    tx: Sender<Queued>,
}

impl EventQueue {
    /// Starts the publishing thread for containerd namespace `namespace`.
    pub fn start(publisher: RemotePublisher, namespace: String) -> Self {
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("events".into())
            .spawn(move || publish_all(&publisher, &namespace, rx))
            .map_err(|err| warn!("cannot start the event thread: {err}"))
            .ok();
        Self { tx }
    }

    /// Queues `message` on `topic`.
    pub fn publish(&self, topic: &'static str, message: impl MessageDyn) {
        let message = Box::new(message);
        if self.tx.send(Queued::Event { topic, message }).is_err() {
            warn!("event {topic} dropped: the event thread is gone");
        }
    }

    /// Waits (at most `timeout`) until every event queued so far was handled.
    pub fn flush(&self, timeout: Duration) {
        let (ack, done) = mpsc::channel();
        if self.tx.send(Queued::Flush(ack)).is_ok() && done.recv_timeout(timeout).is_err() {
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
