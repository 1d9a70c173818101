//! virtio-net: the transmit path (every chain a frame for the tap) and the
//! receive path (frames spread over the guest's buffers), over chains a guest
//! lays out.
//!
//! Input: a mode byte (bit 0: the tap refuses frames; bit 1: the driver acked
//! `VIRTIO_RING_F_EVENT_IDX`), the transmit queue's
//! chains, the receive queue's chains (`Driver::decode_chains`), then frames
//! for the guest, each a u16 length and its bytes, received into the buffers
//! the device holds as the VMM's receive loop does.

#![no_main]

use libfuzzer_sys::fuzz_target;
use runv_fuzz::{memory, Driver, Input, Ring};
use virtio_queue::QueueT;
use vmm::devices::virtio::net::frame_io::FrameQueue;
use vmm::devices::virtio::net::rx::{
    ask_for_buffers, needs_interrupt, RxBuffers, RxOutcome, MAX_RX_LEN,
};
use vmm::devices::virtio::net::tap::VNET_HDR_LEN;
use vmm::devices::virtio::net::tx::{process_tx, MAX_TX_LEN};

/// The device's queue size.
const QUEUE_SIZE: u16 = 256;
/// Most frames delivered in one run.
const MAX_FRAMES: usize = 16;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mode = input.u8();
    let mem = memory();
    let (tx_ring, rx_ring) = (Ring::new(0, QUEUE_SIZE), Ring::new(1, QUEUE_SIZE));
    let mut tx_driver = Driver::new(&mem, tx_ring, 0);
    tx_driver.decode_chains(&mut input);
    let mut rx_driver = Driver::new(&mem, rx_ring, 0x8000);
    rx_driver.decode_chains(&mut input);

    let event_idx = mode & 2 != 0;
    let mut tx = tx_ring.queue(event_idx);
    let mut tap = FrameQueue {
        refuse: mode & 1 != 0,
        ..FrameQueue::default()
    };
    process_tx(&mut tx, &mem, &mut tap);
    for frame in &tap.sent {
        assert!(
            (VNET_HDR_LEN..=MAX_TX_LEN).contains(&frame.len()),
            "a frame of {} bytes reached the tap",
            frame.len()
        );
    }

    let mut rx = rx_ring.queue(event_idx);
    let mut buffers = RxBuffers::new();
    for _ in 0..MAX_FRAMES {
        if input.is_empty() {
            break;
        }
        let len = usize::from(input.u16());
        tap.incoming.push_back(input.bytes(len).to_vec());
        let before_fill = rx.next_used();
        let Ok(_) = buffers.fill(&mut rx, &mem, MAX_RX_LEN) else {
            break;
        };
        let returned = rx.next_used().wrapping_sub(before_fill);
        assert!((0..returned).all(|i| rx_ring
            .used_entry(&mem, before_fill.wrapping_add(i))
            .1
            == 0));
        let capacity = buffers.capacity();
        let before = rx.next_used();
        let Ok(outcome) = buffers.receive(&mut rx, &mem, &mut tap) else {
            continue;
        };
        let used = rx.next_used().wrapping_sub(before);
        match outcome {
            RxOutcome::Delivered(count) => {
                assert_eq!(count, used);
                assert!(count >= 1 && count <= QUEUE_SIZE);
                let total: u64 = (0..used)
                    .map(|i| u64::from(rx_ring.used_entry(&mem, before.wrapping_add(i)).1))
                    .sum();
                assert!(total >= VNET_HDR_LEN as u64 && total <= capacity as u64);
                assert!(buffers.capacity() + total as usize <= capacity);
            }
            RxOutcome::Dropped => {
                assert_eq!(used, 0);
                assert_eq!(buffers.capacity(), capacity, "the buffers are kept");
            }
            RxOutcome::NoBuffers => {
                assert_eq!(used, 0);
                assert_eq!(capacity, 0);
                let _ = tap.incoming.pop_front();
                let _ = ask_for_buffers(&rx, &mem);
            }
            RxOutcome::Broken => break,
        }
        let _ = needs_interrupt(&rx, &mem, before);
    }
});
