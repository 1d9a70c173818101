//! Tests of the virtio-rng device: buffers filled, bounds and the rate.

use super::*;
use crate::devices::virtio::test_utils::{
    activate_notifying, activate_on, desc, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;

fn activated(
    mem: &GuestMemoryMmap,
    queue: &MockSplitQueue<'_, GuestMemoryMmap>,
) -> (Rng, Arc<VirtioInterrupt>) {
    let mut rng = Rng::new().unwrap();
    let interrupt = activate_on(&mut rng, mem, queue);
    (rng, interrupt)
}

fn used_len(queue: &MockSplitQueue<'_, GuestMemoryMmap>, index: u16) -> u32 {
    queue
        .used()
        .ring()
        .ref_at(index as usize)
        .unwrap()
        .load()
        .len()
}

fn used_idx(queue: &MockSplitQueue<'_, GuestMemoryMmap>) -> u16 {
    queue.used().idx().load()
}

fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
}

/// `count` requests of `len` bytes each, one buffer apiece.
fn requests(count: u64, len: u32) -> Vec<RawDescriptor> {
    (0..count)
        .map(|i| desc(0x1_0000 + i * 0x1_0000, len, VRING_DESC_F_WRITE))
        .collect()
}

#[test]
fn fills_write_only_buffers_and_interrupts() {
    let mem = guest_memory();
    let queue = MockSplitQueue::create(&mem, GuestAddress(0), 16);
    queue
        .build_desc_chain(&[
            desc(0x8000, 64, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT),
            desc(0x9000, 32, VRING_DESC_F_WRITE),
        ])
        .unwrap();
    let (rng, interrupt) = activated(&mem, &queue);
    rng.serve_now();
    assert_eq!(used_len(&queue, 0), 96);
    assert_eq!(interrupt.status(), 1);
    let mut bytes = [0u8; 64];
    mem.read_slice(&mut bytes, GuestAddress(0x8000)).unwrap();
    assert!(bytes.iter().any(|b| *b != 0), "random bytes were written");
}

#[test]
fn read_only_or_out_of_range_buffers_get_nothing() {
    let mem = guest_memory();
    let queue = MockSplitQueue::create(&mem, GuestAddress(0), 16);
    queue
        .build_multiple_desc_chains(&[
            desc(0x8000, 64, 0),
            desc(0xff_ff00, 0x1000, VRING_DESC_F_WRITE),
        ])
        .unwrap();
    let (rng, _) = activated(&mem, &queue);
    rng.serve_now();
    assert_eq!(used_len(&queue, 0), 0, "read-only buffer");
    assert_eq!(used_len(&queue, 1), 0, "buffer outside guest memory");
}

#[test]
fn oversized_descriptors_are_capped() {
    let mem = guest_memory();
    let queue = MockSplitQueue::create(&mem, GuestAddress(0), 16);
    queue
        .build_desc_chain(&[desc(0x1_0000, 0x8_0000, VRING_DESC_F_WRITE)])
        .unwrap();
    let (rng, _) = activated(&mem, &queue);
    rng.serve_now();
    assert_eq!(used_len(&queue, 0), MAX_BYTES_PER_REQUEST);
}

#[test]
fn a_request_of_many_buffers_gets_the_cap_in_all() {
    let mem = guest_memory();
    let queue = MockSplitQueue::create(&mem, GuestAddress(0), 16);
    let flags = VRING_DESC_F_WRITE | VRING_DESC_F_NEXT;
    let buffers: Vec<RawDescriptor> = (0..8)
        .map(|i| desc(0x1_0000 + i * 0x1_0000, 0x1_0000, flags))
        .collect();
    queue.build_desc_chain(&buffers).unwrap();
    let (rng, _) = activated(&mem, &queue);
    rng.serve_now();
    assert_eq!(used_len(&queue, 0), MAX_BYTES_PER_REQUEST);
}

#[test]
fn requests_past_the_burst_wait_for_the_rate() {
    let mem = guest_memory();
    let queue = MockSplitQueue::create(&mem, GuestAddress(0), 16);
    queue
        .build_multiple_desc_chains(&requests(4, 8192))
        .unwrap();
    // 8 KiB at once, then 8 KiB every 31.25 ms.
    let mut rng = Rng::limited(TokenBucket::new(256 << 10, 8192, Instant::now())).unwrap();
    activate_on(&mut rng, &mem, &queue);
    let started = Instant::now();
    rng.serve_now();
    assert!(
        started.elapsed() >= Duration::from_millis(90),
        "served in {:?}",
        started.elapsed()
    );
    assert_eq!(used_idx(&queue), 4);
    for index in 0..4 {
        assert_eq!(used_len(&queue, index), 8192, "every request in full");
    }
}

#[test]
fn small_requests_are_charged_the_minimum() {
    let mem = guest_memory();
    let queue = MockSplitQueue::create(&mem, GuestAddress(0), 16);
    queue.build_multiple_desc_chains(&requests(4, 1)).unwrap();
    // One minimal request at once, then one every 10 ms.
    let rate = MIN_REQUEST_COST * 100;
    let mut rng = Rng::limited(TokenBucket::new(rate, MIN_REQUEST_COST, Instant::now())).unwrap();
    activate_on(&mut rng, &mem, &queue);
    let started = Instant::now();
    rng.serve_now();
    assert!(
        started.elapsed() >= Duration::from_millis(28),
        "served in {:?}",
        started.elapsed()
    );
    assert_eq!(used_idx(&queue), 4);
}

/// Polls `done` for up to 5 s.
fn eventually(done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    true
}

#[test]
fn the_thread_serves_notifications_tells_the_guest_before_waiting_and_stops_at_once() {
    let mem = guest_memory();
    let queue = MockSplitQueue::create(&mem, GuestAddress(0), 16);
    // The first request empties the bucket; the second needs 10 s more.
    let mut rng = Rng::limited(TokenBucket::new(4, 40, Instant::now())).unwrap();
    let (interrupt, notify) = activate_notifying(&mut rng, &mem, &queue, 0);
    queue.build_multiple_desc_chains(&requests(2, 40)).unwrap();
    notify.write(1).unwrap();
    assert!(eventually(|| used_idx(&queue) == 1), "first request served");
    assert!(eventually(|| interrupt.status() == 1), "and signalled");
    assert_eq!(used_len(&queue, 0), 40);

    let started = Instant::now();
    assert!(rng.reset());
    assert!(started.elapsed() < Duration::from_secs(1), "reset waited");
    assert_eq!(used_idx(&queue), 1, "the waiting request is left");
}

#[test]
fn the_thread_serves_a_waiting_request_once_the_bucket_refills() {
    let mem = guest_memory();
    let queue = MockSplitQueue::create(&mem, GuestAddress(0), 16);
    // The first request empties the bucket; the second waits 20 ms.
    let mut rng = Rng::limited(TokenBucket::new(2000, 40, Instant::now())).unwrap();
    let (interrupt, notify) = activate_notifying(&mut rng, &mem, &queue, 0);
    queue.build_multiple_desc_chains(&requests(2, 40)).unwrap();
    let started = Instant::now();
    notify.write(1).unwrap();
    assert!(eventually(|| used_idx(&queue) == 2), "both served");
    assert!(started.elapsed() >= Duration::from_millis(15));
    assert_eq!(used_len(&queue, 1), 40, "in full");
    assert_eq!(interrupt.status(), 1);
}
