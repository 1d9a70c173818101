//! virtio-balloon: a queue served over every chain a guest makes available.
//! Reported ranges are given back only as whole pages (a range outside guest
//! RAM, across regions or overflowing gives back nothing), inflate and
//! deflate requests give back nothing, and serving always ends.
//!
//! Input: a byte choosing the queue (0 inflate, 1 deflate, else reporting),
//! then the chains (`Driver::decode_chains`), as blk_request lays them out.

#![no_main]

use libfuzzer_sys::fuzz_target;
use runv_fuzz::{interrupt, memory, Driver, Input, Ring};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use vmm::devices::virtio::balloon::{Queues, QUEUE_COUNT, REPORTING_QUEUE};

/// The device's queue size.
const QUEUE_SIZE: u16 = 32;
/// Host page size.
const PAGE: u64 = 4096;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let index = usize::from(input.u8()).min(REPORTING_QUEUE);
    let mem = memory();
    let rings: Vec<Ring> = (0..QUEUE_COUNT as u64)
        .map(|k| Ring::new(k, QUEUE_SIZE))
        .collect();
    let mut driver = Driver::new(&mem, rings[index], u64::from(input.u16()));
    driver.decode_chains(&mut input);

    let returned = Arc::new(AtomicU64::new(0));
    let queues = rings.iter().map(|ring| ring.queue(false)).collect();
    let mut balloon = Queues::new(mem.clone(), queues, interrupt(), returned.clone());
    balloon.serve(index);
    // Once more: a second notification of a drained (or broken) queue.
    balloon.serve(index);

    let returned = returned.load(Ordering::Relaxed);
    assert_eq!(returned % PAGE, 0, "only whole pages go back");
    if index != REPORTING_QUEUE {
        assert_eq!(returned, 0, "queue {index} gave memory back");
    }
});
