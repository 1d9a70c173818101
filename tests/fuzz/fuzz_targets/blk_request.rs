//! virtio-blk: `Request::parse` over every chain a guest makes available, then
//! (if the first byte says so) the whole device serving them against a small
//! disk image.
//!
//! Input: a mode byte (bit 0: event index; bit 1: serve with the device;
//! bit 2: read-only disk), then the chains (`Driver::decode_chains`).

#![no_main]

use libfuzzer_sys::fuzz_target;
use runv_fuzz::{disk_image, eventfd, interrupt, memory, Driver, Input, Ring, MAX_CHAINS};
use virtio_queue::QueueT;
use vmm::devices::virtio::block::request::{
    Request, MAX_DATA_LEN, MAX_DISCARD_SECTORS, MAX_DISCARD_SEG, MAX_WRITE_ZEROES_SECTORS,
    MAX_WRITE_ZEROES_SEG, SEG_MAX,
};
use vmm::devices::virtio::block::Block;
use vmm::devices::virtio::{ActiveQueue, VirtioDevice, VIRTIO_RING_F_EVENT_IDX};

/// The device's queue size.
const QUEUE_SIZE: u16 = 256;
/// What the device may never accept, whatever the guest sends.
fn check(request: &Request) {
    match request {
        Request::In { buffers, .. } | Request::Out { buffers, .. } => {
            assert!(buffers.len() <= SEG_MAX as usize);
            let total: u64 = buffers.iter().map(|b| u64::from(b.len)).sum();
            assert!(total <= MAX_DATA_LEN);
        }
        Request::Discard { segments } => {
            assert!(!segments.is_empty() && segments.len() <= MAX_DISCARD_SEG as usize);
            assert!(segments
                .iter()
                .all(|s| s.num_sectors <= MAX_DISCARD_SECTORS && !s.unmap));
        }
        Request::WriteZeroes { segments } => {
            assert!(!segments.is_empty() && segments.len() <= MAX_WRITE_ZEROES_SEG as usize);
            assert!(segments
                .iter()
                .all(|s| s.num_sectors <= MAX_WRITE_ZEROES_SECTORS));
        }
        Request::Flush | Request::GetId { .. } => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mode = input.u8();
    let event_idx = mode & 1 != 0;
    let mem = memory();
    let ring = Ring::new(0, QUEUE_SIZE);
    let mut driver = Driver::new(&mem, ring, u64::from(input.u16()));
    driver.decode_chains(&mut input);

    let mut queue = ring.queue(event_idx);
    for _ in 0..MAX_CHAINS {
        let Some(chain) = queue.pop_descriptor_chain(&mem) else {
            break;
        };
        if let Ok(parsed) = Request::parse(chain, &mem) {
            if let Ok(request) = &parsed.request {
                check(request);
            }
        }
    }

    if mode & 2 != 0 {
        let mut block = Block::open(disk_image(), mode & 4 != 0, "fuzz").expect("disk image");
        let features = if event_idx {
            1 << VIRTIO_RING_F_EVENT_IDX
        } else {
            0
        };
        let active = ActiveQueue::new(ring.queue(event_idx), eventfd(), features);
        block
            .activate(mem.clone(), features, vec![active], interrupt())
            .expect("activate");
        block.serve_now();
        // Dropping the device stops and joins its thread.
    }
});
