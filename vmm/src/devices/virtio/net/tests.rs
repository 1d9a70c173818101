//! The device's data path driven step by step, the test playing the guest
//! driver on mock queues and the tap's other end on a datagram socket.

use super::device::{features, tap_offloads};
use super::rx::{ask_for_buffers, deliver, needs_interrupt, RxOutcome};
use super::tap::VNET_HDR_LEN;
use super::tx::process_tx;
use crate::devices::virtio::test_utils::{
    desc, VRING_DESC_F_NEXT as NEXT, VRING_DESC_F_WRITE as WRITE,
};
use std::fs::File;
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const BUFFERS: u64 = 0x10_0000;

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap()
}

/// Both ends of a datagram socket pair, non-blocking.
fn socket_pair() -> (File, File) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors socketpair writes.
    let ret = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(ret, 0);
    // SAFETY: socketpair succeeded; each fd is open and owned by nobody else.
    let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    (File::from(a), File::from(b))
}

fn used(queue: &MockSplitQueue<'_, GuestMemoryMmap>) -> Vec<(u32, u32)> {
    let ring = queue.used();
    (0..ring.idx().load())
        .map(|i| {
            let e = ring.ring().ref_at(usize::from(i)).unwrap().load();
            (e.id(), e.len())
        })
        .collect()
}

fn frame(len: usize) -> Vec<u8> {
    let mut frame = vec![0u8; len];
    frame[0] = 1; // flags: NEEDS_CSUM, passed through
    for (i, byte) in frame[VNET_HDR_LEN..].iter_mut().enumerate() {
        *byte = (i % 251) as u8;
    }
    frame
}

fn tx(mem: &GuestMemoryMmap, queue: &MockSplitQueue<'_, GuestMemoryMmap>, tap: &mut File) -> Queue {
    let mut q = queue.create_queue().unwrap();
    let mut buf = vec![0u8; 2048];
    process_tx(&mut q, mem, tap, &mut buf);
    q
}

#[test]
fn a_transmitted_frame_reaches_the_tap_whole() {
    let mem = memory();
    let queue = MockSplitQueue::create(&mem, GuestAddress(0), 16);
    let data = frame(VNET_HDR_LEN + 100);
    mem.write_slice(&data[..VNET_HDR_LEN], GuestAddress(BUFFERS))
        .unwrap();
    mem.write_slice(&data[VNET_HDR_LEN..], GuestAddress(BUFFERS + 0x1000))
        .unwrap();
    queue
        .build_desc_chain(&[
            desc(BUFFERS, VNET_HDR_LEN as u32, NEXT),
            desc(BUFFERS + 0x1000, 100, 0),
        ])
        .unwrap();
    let (mut tap, mut peer) = socket_pair();
    tx(&mem, &queue, &mut tap);
    let mut got = [0u8; 4096];
    let n = peer.read(&mut got).unwrap();
    assert_eq!(&got[..n], &data[..]);
    assert_eq!(used(&queue), [(0, 0)]);
}

#[test]
fn malformed_transmit_chains_are_used_and_send_nothing() {
    let mem = memory();
    let queue = MockSplitQueue::create(&mem, GuestAddress(0), 16);
    queue
        .build_multiple_desc_chains(&[
            desc(0x3f_ff00, 0x1000, 0),                // runs past guest memory
            desc(BUFFERS, 4, 0),                       // shorter than the header
            desc(BUFFERS, 4096, 0),                    // longer than the buffer
            desc(BUFFERS, VNET_HDR_LEN as u32, WRITE), // nothing readable
        ])
        .unwrap();
    let (mut tap, mut peer) = socket_pair();
    tx(&mem, &queue, &mut tap);
    assert_eq!(used(&queue).len(), 4);
    assert!(used(&queue).iter().all(|&(_, len)| len == 0));
    let mut got = [0u8; 64];
    assert_eq!(
        peer.read(&mut got).unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock
    );
}

/// Posts `count` one-descriptor receive buffers of `len` bytes.
fn post_rx(queue: &MockSplitQueue<'_, GuestMemoryMmap>, first: u16, count: u16, len: u32) {
    let descs: Vec<_> = (first..first + count)
        .map(|i| desc(BUFFERS + u64::from(i) * 0x1_0000, len, WRITE))
        .collect();
    queue.build_multiple_desc_chains(&descs).unwrap();
}

#[test]
fn a_received_frame_fills_mergeable_buffers_with_their_count() {
    let mem = memory();
    let queue = MockSplitQueue::create(&mem, GuestAddress(0), 16);
    post_rx(&queue, 0, 4, 1526);
    let mut q = queue.create_queue().unwrap();
    let data = frame(3000);
    assert_eq!(deliver(&mut q, &mem, &data), RxOutcome::Delivered(2));
    assert_eq!(used(&queue), [(0, 1526), (1, 3000 - 1526)]);
    let mut got = vec![0u8; 3000];
    mem.read_slice(&mut got[..1526], GuestAddress(BUFFERS))
        .unwrap();
    mem.read_slice(&mut got[1526..], GuestAddress(BUFFERS + 0x1_0000))
        .unwrap();
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 2, "num_buffers");
    assert_eq!(got[..10], data[..10]);
    assert_eq!(got[12..], data[12..]);
    // A small frame takes one buffer.
    assert_eq!(deliver(&mut q, &mem, &frame(60)), RxOutcome::Delivered(1));
    assert_eq!(used(&queue)[2], (2, 60));
}

#[test]
fn a_frame_waits_until_the_guest_posts_enough_buffers() {
    let mem = memory();
    let queue = MockSplitQueue::create(&mem, GuestAddress(0), 16);
    post_rx(&queue, 0, 1, 1000);
    let mut q = queue.create_queue().unwrap();
    let data = frame(1800);
    assert_eq!(deliver(&mut q, &mem, &data), RxOutcome::NoBuffers);
    assert!(used(&queue).is_empty(), "nothing consumed");
    assert_eq!(q.next_avail(), 0, "the buffer is handed back to the queue");
    // The driver posts one more (as its refill would) and kicks.
    queue
        .add_desc_chains(&[desc(BUFFERS + 0x1_0000, 1000, WRITE)], 1)
        .unwrap();
    assert_eq!(deliver(&mut q, &mem, &data), RxOutcome::Delivered(2));
    assert_eq!(used(&queue), [(0, 1000), (1, 800)]);
}

#[test]
fn unusable_receive_buffers_drop_the_frame_and_come_back_empty() {
    let mem = memory();
    let queue = MockSplitQueue::create(&mem, GuestAddress(0), 16);
    queue
        .build_multiple_desc_chains(&[
            desc(BUFFERS, 1526, 0),         // read-only
            desc(BUFFERS, 8, WRITE),        // too small for the header
            desc(0x3f_ff00, 0x1000, WRITE), // past guest memory
            desc(BUFFERS, 1526, WRITE),
            desc(BUFFERS + 0x1_0000, 0, WRITE), // empty, in the middle of a frame
        ])
        .unwrap();
    let mut q = queue.create_queue().unwrap();
    for _ in 0..3 {
        assert_eq!(deliver(&mut q, &mem, &frame(100)), RxOutcome::Dropped);
    }
    assert_eq!(deliver(&mut q, &mem, &frame(3000)), RxOutcome::Dropped);
    assert_eq!(used(&queue), [(0, 0), (1, 0), (2, 0), (3, 0), (4, 0)]);
}

#[test]
fn a_frame_larger_than_the_whole_ring_is_dropped() {
    let mem = memory();
    let queue = MockSplitQueue::create(&mem, GuestAddress(0), 4);
    post_rx(&queue, 0, 4, 100);
    let mut q = queue.create_queue().unwrap();
    assert_eq!(deliver(&mut q, &mem, &frame(1000)), RxOutcome::Dropped);
    assert!(used(&queue).iter().all(|&(_, len)| len == 0));
}

#[test]
fn tap_offloads_follow_the_acked_features() {
    let bit = |f: u32| 1u64 << f;
    assert_eq!(tap_offloads(bit(features::GUEST_TSO4)), 0, "TSO needs CSUM");
    assert_eq!(tap_offloads(bit(features::GUEST_CSUM)), libc::TUN_F_CSUM);
    assert_eq!(
        tap_offloads(
            bit(features::GUEST_CSUM) | bit(features::GUEST_TSO4) | bit(features::GUEST_TSO6)
        ),
        libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6
    );
}

/// The driver's `used_event` (after the available ring) and the device's
/// `avail_event` (after the used ring), as addresses in guest memory.
fn event_fields(q: &Queue) -> (GuestAddress, GuestAddress) {
    let size = u64::from(q.size());
    (
        GuestAddress(q.avail_ring() + 4 + 2 * size),
        GuestAddress(q.used_ring() + 4 + 8 * size),
    )
}

#[test]
fn with_event_idx_the_guest_is_interrupted_only_when_its_used_event_asks() {
    let mem = memory();
    let queue = MockSplitQueue::create(&mem, GuestAddress(0), 16);
    post_rx(&queue, 0, 8, 1526);
    let mut q: Queue = queue.create_queue().unwrap();
    q.set_event_idx(true);
    let (used_event, _) = event_fields(&q);
    for _ in 0..3 {
        assert_eq!(deliver(&mut q, &mem, &frame(100)), RxOutcome::Delivered(1));
    }
    mem.write_obj(0u16, used_event).unwrap();
    assert!(needs_interrupt(&q, &mem, 0), "entry 0 is in 0..3");
    assert_eq!(deliver(&mut q, &mem, &frame(100)), RxOutcome::Delivered(1));
    mem.write_obj(10u16, used_event).unwrap();
    assert!(
        !needs_interrupt(&q, &mem, 3),
        "the driver waits for entry 10"
    );
    mem.write_obj(3u16, used_event).unwrap();
    assert!(needs_interrupt(&q, &mem, 3), "entry 3 was just used");
    // Without the feature, every check interrupts.
    q.set_event_idx(false);
    mem.write_obj(10u16, used_event).unwrap();
    assert!(needs_interrupt(&q, &mem, 4));
}

#[test]
fn out_of_buffers_with_event_idx_the_device_asks_for_a_kick_at_the_next_one() {
    let mem = memory();
    let queue = MockSplitQueue::create(&mem, GuestAddress(0), 16);
    post_rx(&queue, 0, 1, 1000);
    let mut q: Queue = queue.create_queue().unwrap();
    let (_, avail_event) = event_fields(&q);
    mem.write_obj(0xffffu16, avail_event).unwrap();
    assert_eq!(deliver(&mut q, &mem, &frame(1800)), RxOutcome::NoBuffers);
    assert_eq!(ask_for_buffers(&q, &mem).unwrap(), None);
    assert_eq!(
        mem.read_obj::<u16>(avail_event).unwrap(),
        0xffff,
        "without the feature the driver always kicks: nothing written"
    );
    q.set_event_idx(true);
    // One buffer is posted but not yet taken (next_avail is 0): the kick
    // must come with the next buffer, not the one already there.
    assert_eq!(ask_for_buffers(&q, &mem).unwrap(), Some(1));
    assert_eq!(mem.read_obj::<u16>(avail_event).unwrap(), 1);
    // The driver posts one more: the device asks past it, and the frame
    // fits what is there now.
    queue
        .add_desc_chains(&[desc(BUFFERS + 0x1_0000, 1000, WRITE)], 1)
        .unwrap();
    assert_eq!(ask_for_buffers(&q, &mem).unwrap(), Some(2));
    assert_eq!(mem.read_obj::<u16>(avail_event).unwrap(), 2);
    assert_eq!(deliver(&mut q, &mem, &frame(1800)), RxOutcome::Delivered(2));
}

#[test]
fn with_event_idx_the_transmit_queue_asks_for_a_kick_after_what_it_took() {
    let mem = memory();
    let queue = MockSplitQueue::create(&mem, GuestAddress(0), 16);
    let data = frame(VNET_HDR_LEN + 100);
    mem.write_slice(&data, GuestAddress(BUFFERS)).unwrap();
    queue
        .build_multiple_desc_chains(&[
            desc(BUFFERS, data.len() as u32, 0),
            desc(BUFFERS, data.len() as u32, 0),
        ])
        .unwrap();
    let mut q: Queue = queue.create_queue().unwrap();
    q.set_event_idx(true);
    let (_, avail_event) = event_fields(&q);
    let (mut tap, mut peer) = socket_pair();
    let mut buf = vec![0u8; 2048];
    assert!(process_tx(&mut q, &mem, &mut tap, &mut buf));
    assert_eq!(used(&queue).len(), 2);
    assert_eq!(mem.read_obj::<u16>(avail_event).unwrap(), 2);
    let mut got = [0u8; 4096];
    for _ in 0..2 {
        assert_eq!(peer.read(&mut got).unwrap(), data.len());
    }
}
