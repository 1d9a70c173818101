//! The virtio-rng device: one queue of write-only buffers, each filled with
//! bytes from the host's `getrandom`, on a thread of its own that waits on the
//! queue's notifications, so that a guest that keeps its queue busy holds up
//! neither the event loop nor other devices.
//!
//! What the guest takes is bounded per request ([`MAX_BYTES_PER_REQUEST`])
//! and over time: a token bucket of [`BURST_BYTES`] refilled at
//! [`RATE_BYTES_PER_SEC`], each request charged at least
//! [`MIN_REQUEST_COST`]. A request the bucket cannot pay for waits on the
//! device's thread (the guest gets its bytes later, never fewer), so one guest
//! can neither drain the host's entropy source for others nor make the thread
//! spin.

use super::bucket::TokenBucket;
use super::event_handler::RngHandler;
use crate::devices::virtio::device_thread::{DeviceThread, DeviceWorker, EventRegistry};
use crate::devices::virtio::{
    ActivateError, ActiveQueue, SingleQueue, VirtioDevice, VirtioInterrupt,
};
use crate::seccomp::ThreadKind;
use std::sync::{Arc, Mutex, PoisonError, TryLockError};
use std::time::{Duration, Instant};
use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// virtio device type of an entropy source.
const TYPE_RNG: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_RNG;
/// Queue size.
const QUEUE_SIZE: u16 = 256;
/// Most bytes one request gets, whatever length its buffers claim (the Linux
/// driver asks for a few hundred at a time).
const MAX_BYTES_PER_REQUEST: u32 = 64 * 1024;
/// Least a request is charged, however few bytes it asks for: bounds the
/// requests served a second to `RATE_BYTES_PER_SEC / MIN_REQUEST_COST`.
const MIN_REQUEST_COST: u64 = 64;
/// Bytes a second a guest may take in the long run: far above what a Linux
/// guest reads (its hwrng thread tops up the kernel's pool now and then),
/// far below what the host's `getrandom` gives.
const RATE_BYTES_PER_SEC: u64 = 2 << 20;
/// Bytes a guest may take at once after a quiet spell.
const BURST_BYTES: u64 = 1 << 20;

// A request never waits for more than the bucket holds.
const _: () = assert!(MAX_BYTES_PER_REQUEST as u64 <= BURST_BYTES);

/// The entropy device.
pub struct Rng {
    state: Arc<Mutex<State>>,
    /// The serving loop while active; stopped before `thread` ends.
    worker: Option<DeviceThread>,
    thread: DeviceWorker,
}

/// What the device's thread serves requests with.
pub(super) struct State {
    /// The queue once the driver activated the device.
    active: Option<SingleQueue>,
    /// What the guest may take; kept across resets, so a reset does not
    /// refill it.
    bucket: TokenBucket,
}

impl Rng {
    /// Serves the queue on the caller's thread, sleeping while the bucket is
    /// short, for tests (the device's own thread does this when the driver
    /// notifies it).
    #[cfg(test)]
    pub(crate) fn serve_now(&self) {
        while let Progress::Short(time) = process(&self.state) {
            std::thread::sleep(time);
        }
    }

    /// A new, inactive device, its thread started.
    pub fn new() -> std::io::Result<Self> {
        Self::limited(TokenBucket::new(
            RATE_BYTES_PER_SEC,
            BURST_BYTES,
            Instant::now(),
        ))
    }

    /// A new, inactive device whose guest takes what `bucket` allows.
    fn limited(bucket: TokenBucket) -> std::io::Result<Self> {
        Ok(Self {
            state: Arc::new(Mutex::new(State {
                active: None,
                bucket,
            })),
            worker: None,
            thread: DeviceWorker::start("virtio-rng", ThreadKind::Rng)?,
        })
    }
}

/// Fills `buf` from the host's entropy pool.
fn fill_random(buf: &mut [u8]) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: `rest` is a valid, writable buffer of `rest.len()` bytes.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(err);
            }
        } else {
            filled += n as usize;
        }
    }
    Ok(())
}

/// The device-writable buffers a request starts with, cut to
/// [`MAX_BYTES_PER_REQUEST`] in all; a buffer the device may not write ends
/// them.
fn writable_buffers(chain: DescriptorChain<&GuestMemoryMmap>) -> Vec<(GuestAddress, u32)> {
    let mut left = MAX_BYTES_PER_REQUEST;
    let mut buffers = Vec::new();
    for desc in chain {
        if !desc.is_write_only() || left == 0 {
            break;
        }
        let len = desc.len().min(left);
        left -= len;
        buffers.push((desc.addr(), len));
    }
    buffers
}

/// Writes random bytes into `buffers`; how many reached the guest (a buffer
/// outside guest memory ends the request).
fn fill(mem: &GuestMemoryMmap, buffers: &[(GuestAddress, u32)], buf: &mut Vec<u8>) -> u32 {
    let total: u32 = buffers.iter().map(|(_, len)| len).sum();
    buf.resize(total as usize, 0);
    if fill_random(buf).is_err() {
        return 0;
    }
    let mut written = 0;
    for &(addr, len) in buffers {
        let bytes = &buf[written as usize..(written + len) as usize];
        if mem.write_slice(bytes, addr).is_err() {
            break;
        }
        written += len;
    }
    written
}

/// How far [`serve`] got.
#[derive(Debug, PartialEq)]
pub(super) enum Progress {
    /// Every pending request was served.
    Drained,
    /// The bucket cannot pay for the next request before this long; it is
    /// left on the queue.
    Short(Duration),
    /// The used ring is broken: nothing more can be served.
    Broken,
}

/// Serves the device's queue if it is active.
pub(super) fn process(state: &Mutex<State>) -> Progress {
    let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
    let State { active, bucket } = &mut *state;
    match active.as_mut() {
        Some(active) => serve(active, bucket),
        None => Progress::Drained,
    }
}

/// Serves pending requests while `bucket` pays for them, then tells the
/// guest of what completed.
fn serve(active: &mut SingleQueue, bucket: &mut TokenBucket) -> Progress {
    let mut buf = Vec::new();
    let mut completed = false;
    let progress = loop {
        let Some(chain) = active.queue.pop_descriptor_chain(&active.mem) else {
            break Progress::Drained;
        };
        let head = chain.head_index();
        let buffers = writable_buffers(chain);
        let asked: u32 = buffers.iter().map(|(_, len)| len).sum();
        let cost = u64::from(asked).max(MIN_REQUEST_COST);
        if let Err(time) = bucket.take(cost, Instant::now()) {
            // Taken again once the bucket holds enough.
            QueueOwnedT::go_to_previous_position(&mut active.queue);
            break Progress::Short(time);
        }
        let written = fill(&active.mem, &buffers, &mut buf);
        if active.queue.add_used(&active.mem, head, written).is_err() {
            protocol::log_limited!(
                log::Level::Error,
                "virtio-rng: the used ring is outside guest memory"
            );
            break Progress::Broken;
        }
        completed = true;
    };
    if completed {
        active.signal_used("virtio-rng");
    }
    progress
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        TYPE_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        0
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0); // no configuration space
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        _acked_features: u64,
        queues: Vec<ActiveQueue>,
        interrupt: Arc<VirtioInterrupt>,
    ) -> Result<(), ActivateError> {
        // A second activation (only tests do that) first stops the first thread.
        self.worker = None;
        let notify = queues
            .first()
            .ok_or(ActivateError::QueueCount {
                device: "virtio-rng",
                expected: 1,
                got: 0,
            })?
            .notify
            .try_clone()?;
        let active = SingleQueue::activate("virtio-rng", mem, queues, interrupt)?;
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .active = Some(active);
        let handler = RngHandler::new(self.state.clone());
        self.worker = Some(self.thread.serve_events(
            EventRegistry::new()?,
            vec![notify],
            move || Ok(handler),
        )?);
        Ok(())
    }

    fn reset(&mut self) -> bool {
        // Dropping the loop stops it and waits for its end; one waiting for the bucket
        // sees the stop at once.
        self.worker = None;
        match self.state.try_lock() {
            Ok(mut state) => state.active = None,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner().active = None,
            Err(TryLockError::WouldBlock) => {
                log::error!("virtio-rng: the device's thread is stuck; no reset");
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
