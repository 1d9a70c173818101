//! virtio-net: the transmit path (every chain a frame for the tap) and the
//! receive path (frames spread over the guest's buffers), over chains a guest
//! lays out.
//!
//! Input: a mode byte (bit 0: the tap refuses frames; bit 1: the driver acked
//! `VIRTIO_RING_F_EVENT_IDX`), the transmit queue's
//! chains, the receive queue's chains (`Driver::decode_chains`), then frames
//! for the guest, each a u16 length and its bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use runv_fuzz::{memory, Driver, Input, Ring};
use std::io::{self, Write};
use virtio_queue::QueueT;
use vmm::devices::virtio::net::rx::{ask_for_buffers, deliver, needs_interrupt, RxOutcome};
use vmm::devices::virtio::net::tap::VNET_HDR_LEN;
use vmm::devices::virtio::net::tx::{process_tx, MAX_TX_LEN};

/// The device's queue size.
const QUEUE_SIZE: u16 = 256;
/// Most frames delivered in one run.
const MAX_FRAMES: usize = 16;

/// The tap's end: takes whole frames only.
struct Tap {
    refuse: bool,
}

impl Write for Tap {
    fn write(&mut self, frame: &[u8]) -> io::Result<usize> {
        assert!(
            (VNET_HDR_LEN..=MAX_TX_LEN).contains(&frame.len()),
            "a frame of {} bytes reached the tap",
            frame.len()
        );
        if self.refuse {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        Ok(frame.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

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
    let mut buf = vec![0u8; MAX_TX_LEN];
    let mut tap = Tap {
        refuse: mode & 1 != 0,
    };
    process_tx(&mut tx, &mem, &mut tap, &mut buf);

    let mut rx = rx_ring.queue(event_idx);
    for _ in 0..MAX_FRAMES {
        if input.is_empty() {
            break;
        }
        let len = usize::from(input.u16());
        let frame = input.bytes(len);
        let before = rx.next_used();
        let outcome = deliver(&mut rx, &mem, frame);
        let used = rx.next_used().wrapping_sub(before);
        match outcome {
            RxOutcome::Delivered(count) => {
                assert_eq!(count, used);
                assert!(count >= 1 && count <= QUEUE_SIZE);
                let total: u64 = (0..used)
                    .map(|i| u64::from(rx_ring.used_entry(&mem, before.wrapping_add(i)).1))
                    .sum();
                assert_eq!(total, frame.len() as u64, "delivered bytes");
            }
            RxOutcome::NoBuffers => {
                assert_eq!(used, 0);
                let _ = ask_for_buffers(&rx, &mem);
            }
            RxOutcome::Dropped => {
                assert!((0..used).all(|i| rx_ring.used_entry(&mem, before.wrapping_add(i)).1 == 0));
            }
            RxOutcome::Broken => break,
        }
        let _ = needs_interrupt(&rx, &mem, before);
    }
});
