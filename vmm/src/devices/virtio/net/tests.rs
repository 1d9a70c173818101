//! The device's data path driven step by step, the test playing the guest
//! driver on mock queues and the tap's other end ([`FrameQueue`]).

use super::device::{features, tap_offloads};
use super::frame_io::FrameQueue;
use super::rx::{ask_for_buffers, needs_interrupt, RxBuffers, RxOutcome, MAX_RX_LEN};
use super::tap::VNET_HDR_LEN;
use super::tx::{process_tx, MAX_TX_LEN};
use crate::devices::virtio::test_utils::{
    desc, VRING_DESC_F_NEXT as NEXT, VRING_DESC_F_WRITE as WRITE,
};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const BUFFERS: u64 = 0x10_0000;

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap()
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

fn tx(mem: &GuestMemoryMmap, queue: &MockSplitQueue<'_, GuestMemoryMmap>) -> FrameQueue {
    let mut q = queue.create_queue().unwrap();
    let mut tap = FrameQueue::default();
    process_tx(&mut q, mem, &mut tap);
    tap
}

/// Takes what the guest posted (up to the longest frame) and receives `data`.
fn receive(
    buffers: &mut RxBuffers,
    q: &mut Queue,
    mem: &GuestMemoryMmap,
    data: &[u8],
) -> RxOutcome {
    buffers.fill(q, mem, MAX_RX_LEN).unwrap();
    let mut tap = FrameQueue::default();
    tap.incoming.push_back(data.to_vec());
    buffers.receive(q, mem, &mut tap).unwrap()
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
    assert_eq!(tx(&mem, &queue).sent, [data]);
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
            desc(BUFFERS, MAX_TX_LEN as u32 + 1, 0),   // longer than any frame
            desc(BUFFERS, VNET_HDR_LEN as u32, WRITE), // nothing readable
        ])
        .unwrap();
    assert!(tx(&mem, &queue).sent.is_empty());
    assert_eq!(used(&queue).len(), 4);
    assert!(used(&queue).iter().all(|&(_, len)| len == 0));
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
    let mut buffers = RxBuffers::new();
    let data = frame(3000);
    assert_eq!(
        receive(&mut buffers, &mut q, &mem, &data),
        RxOutcome::Delivered(2)
    );
    assert_eq!(used(&queue), [(0, 1526), (1, 3000 - 1526)]);
    let mut got = vec![0u8; 3000];
    mem.read_slice(&mut got[..1526], GuestAddress(BUFFERS))
        .unwrap();
    mem.read_slice(&mut got[1526..], GuestAddress(BUFFERS + 0x1_0000))
        .unwrap();
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 2, "num_buffers");
    assert_eq!(got[..10], data[..10]);
    assert_eq!(got[12..], data[12..]);
    // A small frame takes one buffer: the next one held.
    assert_eq!(
        receive(&mut buffers, &mut q, &mem, &frame(60)),
        RxOutcome::Delivered(1)
    );
    assert_eq!(used(&queue)[2], (2, 60));
    assert_eq!(buffers.capacity(), 1526, "the last one is still held");
}

#[test]
fn buffers_are_taken_only_up_to_the_longest_frame() {
    let mem = memory();
    let queue = MockSplitQueue::create(&mem, GuestAddress(0), 16);
    post_rx(&queue, 0, 16, 0x6000);
    let mut q = queue.create_queue().unwrap();
    let mut buffers = RxBuffers::new();
    buffers.fill(&mut q, &mem, MAX_RX_LEN).unwrap();
    assert_eq!(
        buffers.capacity(),
        3 * 0x6000,
        "enough for {MAX_RX_LEN} bytes"
    );
    assert_eq!(q.next_avail(), 3, "the rest stay with the driver");
    assert!(!buffers.at_limit(&q));
}

#[test]
fn a_frame_cut_short_by_too_few_buffers_is_dropped_and_the_buffers_kept() {
    let mem = memory();
    let queue = MockSplitQueue::create(&mem, GuestAddress(0), 2);
    post_rx(&queue, 0, 2, 1000);
    let mut q = queue.create_queue().unwrap();
    let mut buffers = RxBuffers::new();
    buffers.fill(&mut q, &mem, MAX_RX_LEN).unwrap();
    assert!(buffers.at_limit(&q), "the whole ring is held");
    assert_eq!(
        receive(&mut buffers, &mut q, &mem, &frame(2001)),
        RxOutcome::Dropped
    );
    assert!(used(&queue).is_empty(), "nothing consumed");
    assert_eq!(
        receive(&mut buffers, &mut q, &mem, &frame(2000)),
        RxOutcome::Delivered(2)
    );
    assert_eq!(used(&queue), [(0, 1000), (1, 1000)]);
    let mut tap = FrameQueue::default();
    tap.incoming.push_back(frame(100));
    assert_eq!(
        buffers.receive(&mut q, &mem, &mut tap).unwrap(),
        RxOutcome::NoBuffers
    );
    assert_eq!(tap.incoming.len(), 1, "nothing was read");
}

#[test]
fn unusable_receive_buffers_come_back_empty() {
    let mem = memory();
    let queue = MockSplitQueue::create(&mem, GuestAddress(0), 16);
    queue
        .build_multiple_desc_chains(&[
            desc(BUFFERS, 1526, 0),             // read-only
            desc(0x3f_ff00, 0x1000, WRITE),     // past guest memory
            desc(BUFFERS + 0x1_0000, 0, WRITE), // empty
            desc(BUFFERS, 1526, WRITE),
        ])
        .unwrap();
    let mut q = queue.create_queue().unwrap();
    let mut buffers = RxBuffers::new();
    assert!(
        buffers.fill(&mut q, &mem, MAX_RX_LEN).unwrap(),
        "some came back"
    );
    assert_eq!(used(&queue), [(0, 0), (1, 0), (2, 0)]);
    assert_eq!(buffers.capacity(), 1526);
    // A frame shorter than its header is dropped.
    assert_eq!(
        receive(&mut buffers, &mut q, &mem, &[0u8; 8]),
        RxOutcome::Dropped
    );
    assert_eq!(
        receive(&mut buffers, &mut q, &mem, &frame(100)),
        RxOutcome::Delivered(1)
    );
    assert_eq!(used(&queue)[3], (3, 100));
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
    let mut buffers = RxBuffers::new();
    for _ in 0..3 {
        assert_eq!(
            receive(&mut buffers, &mut q, &mem, &frame(100)),
            RxOutcome::Delivered(1)
        );
    }
    mem.write_obj(0u16, used_event).unwrap();
    assert!(needs_interrupt(&q, &mem, 0), "entry 0 is in 0..3");
    assert_eq!(
        receive(&mut buffers, &mut q, &mem, &frame(100)),
        RxOutcome::Delivered(1)
    );
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
    let mut buffers = RxBuffers::new();
    assert_eq!(
        receive(&mut buffers, &mut q, &mem, &frame(1800)),
        RxOutcome::Delivered(2)
    );
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
    let mut tap = FrameQueue::default();
    assert!(process_tx(&mut q, &mem, &mut tap));
    assert_eq!(used(&queue).len(), 2);
    assert_eq!(mem.read_obj::<u16>(avail_event).unwrap(), 2);
    assert_eq!(tap.sent, [data.clone(), data]);
}

#[test]
fn a_detached_card_offers_the_guest_offloads_and_serves_nothing() {
    use super::device::Net;
    use crate::devices::virtio::{ActiveQueue, VirtioDevice, VirtioInterrupt};
    use std::sync::Arc;
    use vmm_sys_util::eventfd::EventFd;

    let bit = |f: u32| 1u64 << f;
    let mut card = Net::detached([2, 0, 0, 0, 0, 1]).unwrap();
    let offered = card.avail_features();
    for feature in [
        features::GUEST_CSUM,
        features::GUEST_TSO4,
        features::MRG_RXBUF,
    ] {
        assert_ne!(offered & bit(feature), 0, "feature {feature} not offered");
    }
    let mem = memory();
    let mocks = [
        MockSplitQueue::create(&mem, GuestAddress(0), 256),
        MockSplitQueue::create(&mem, GuestAddress(0x1_0000), 256),
    ];
    let notifies: Vec<EventFd> = (0..2)
        .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
        .collect();
    let queues = mocks
        .iter()
        .zip(&notifies)
        .map(|(m, n)| ActiveQueue::new(m.create_queue().unwrap(), n.try_clone().unwrap(), offered))
        .collect();
    let interrupt = Arc::new(VirtioInterrupt::new(
        EventFd::new(libc::EFD_NONBLOCK).unwrap(),
    ));
    card.activate(mem.clone(), offered, queues, interrupt)
        .unwrap();
    mocks[1].build_desc_chain(&[desc(BUFFERS, 100, 0)]).unwrap();
    notifies[1].write(1).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert!(used(&mocks[1]).is_empty(), "a detached card used a chain");
    assert!(card.quiesce());
}
