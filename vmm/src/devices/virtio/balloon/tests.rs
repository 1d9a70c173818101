//! Tests of the virtio-balloon device: reported ranges given back, inflate
//! requests only acknowledged, the configuration space and activation.

use super::*;
use crate::devices::virtio::test_utils::{
    desc, interrupted, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

const MIB: u64 = 1 << 20;

fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 * MIB as usize)]).unwrap()
}

/// Three mock queues in the first MiB of `mem`.
fn mock_queues(mem: &GuestMemoryMmap) -> Vec<MockSplitQueue<'_, GuestMemoryMmap>> {
    (0..QUEUE_COUNT as u64)
        .map(|i| MockSplitQueue::create(mem, GuestAddress(i * 0x4_0000), QUEUE_SIZE))
        .collect()
}

fn served(
    mem: &GuestMemoryMmap,
    mocks: &[MockSplitQueue<'_, GuestMemoryMmap>],
) -> (Queues, Arc<VirtioInterrupt>, Arc<AtomicU64>) {
    let interrupt = Arc::new(VirtioInterrupt::new(
        EventFd::new(libc::EFD_NONBLOCK).unwrap(),
    ));
    let returned = Arc::new(AtomicU64::new(0));
    let queues = mocks.iter().map(|m| m.create_queue().unwrap()).collect();
    let served = Queues::new(mem.clone(), queues, interrupt.clone(), returned.clone());
    (served, interrupt, returned)
}

fn filled(mem: &GuestMemoryMmap, addr: u64, len: u64) {
    mem.write_slice(&vec![0xaa; len as usize], GuestAddress(addr))
        .unwrap();
}

fn all(mem: &GuestMemoryMmap, addr: u64, len: u64, byte: u8) -> bool {
    let mut bytes = vec![0u8; len as usize];
    mem.read_slice(&mut bytes, GuestAddress(addr)).unwrap();
    bytes.iter().all(|b| *b == byte)
}

#[test]
fn reported_ranges_are_given_back_and_the_buffers_returned() {
    let mem = guest_memory();
    let mocks = mock_queues(&mem);
    filled(&mem, 2 * MIB, 6 * MIB);
    mocks[REPORTING_QUEUE]
        .build_desc_chain(&[
            desc(
                2 * MIB,
                2 * MIB as u32,
                VRING_DESC_F_WRITE | VRING_DESC_F_NEXT,
            ),
            desc(6 * MIB, 2 * MIB as u32, VRING_DESC_F_WRITE),
        ])
        .unwrap();
    let (mut queues, interrupt, returned) = served(&mem, &mocks);
    queues.serve(REPORTING_QUEUE);
    assert_eq!(mocks[REPORTING_QUEUE].used().idx().load(), 1);
    assert_eq!(returned.load(Ordering::Relaxed), 4 * MIB);
    assert!(
        all(&mem, 2 * MIB, 2 * MIB, 0),
        "the first range reads as zero"
    );
    assert!(all(&mem, 4 * MIB, 2 * MIB, 0xaa), "the unreported middle");
    assert!(
        all(&mem, 6 * MIB, 2 * MIB, 0),
        "the second range reads as zero"
    );
    assert!(interrupted(&interrupt));
}

#[test]
fn a_range_outside_guest_ram_is_skipped_and_the_rest_given_back() {
    let mem = guest_memory();
    let mocks = mock_queues(&mem);
    filled(&mem, 2 * MIB, MIB);
    mocks[REPORTING_QUEUE]
        .build_desc_chain(&[
            desc(
                15 * MIB,
                2 * MIB as u32,
                VRING_DESC_F_WRITE | VRING_DESC_F_NEXT,
            ),
            desc(2 * MIB, MIB as u32, VRING_DESC_F_WRITE),
        ])
        .unwrap();
    let (mut queues, _, returned) = served(&mem, &mocks);
    queues.serve(REPORTING_QUEUE);
    assert_eq!(mocks[REPORTING_QUEUE].used().idx().load(), 1);
    assert_eq!(returned.load(Ordering::Relaxed), MIB);
    assert!(all(&mem, 2 * MIB, MIB, 0));
}

#[test]
fn inflate_requests_are_acknowledged_but_nothing_is_given_back() {
    let mem = guest_memory();
    let mocks = mock_queues(&mem);
    filled(&mem, 2 * MIB, MIB);
    // An array of page frame numbers, as the driver inflates with.
    let pfns: Vec<u8> = (512u32..768).flat_map(u32::to_le_bytes).collect();
    mem.write_slice(&pfns, GuestAddress(MIB)).unwrap();
    mocks[0]
        .build_desc_chain(&[desc(MIB, pfns.len() as u32, 0)])
        .unwrap();
    let (mut queues, interrupt, returned) = served(&mem, &mocks);
    queues.serve(0);
    assert_eq!(mocks[0].used().idx().load(), 1);
    assert!(interrupted(&interrupt));
    assert_eq!(returned.load(Ordering::Relaxed), 0);
    assert!(all(&mem, 2 * MIB, MIB, 0xaa), "the listed pages are kept");
}

#[test]
fn the_target_is_zero_and_only_actual_is_writable() {
    let mut balloon = Balloon::new(Arc::new(AtomicU64::new(0))).unwrap();
    balloon.write_config(0, &[0xff; CONFIG_SIZE]);
    let mut config = [0xeeu8; CONFIG_SIZE];
    balloon.read_config(0, &mut config);
    assert_eq!(&config[..4], &[0; 4], "num_pages");
    assert_eq!(&config[4..8], &[0xff; 4], "actual");
    assert_eq!(&config[8..], &[0; 8], "the rest");
    assert!(balloon.reset());
    balloon.read_config(4, &mut config[..4]);
    assert_eq!(&config[..4], &[0; 4], "a reset clears actual");
}

#[test]
fn activation_needs_reporting_and_three_queues() {
    let mem = guest_memory();
    let mocks = mock_queues(&mem);
    let active = |count: usize| -> Vec<ActiveQueue> {
        mocks[..count]
            .iter()
            .map(|m| {
                ActiveQueue::new(
                    m.create_queue().unwrap(),
                    EventFd::new(libc::EFD_NONBLOCK).unwrap(),
                    0,
                )
            })
            .collect()
    };
    let interrupt = || {
        Arc::new(VirtioInterrupt::new(
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        ))
    };
    let mut balloon = Balloon::new(Arc::new(AtomicU64::new(0))).unwrap();
    assert!(matches!(
        balloon.activate(mem.clone(), 0, active(3), interrupt()),
        Err(ActivateError::MissingFeature { .. })
    ));
    let reporting = 1 << F_REPORTING;
    assert!(matches!(
        balloon.activate(mem.clone(), reporting, active(2), interrupt()),
        Err(ActivateError::QueueCount {
            expected: 3,
            got: 2,
            ..
        })
    ));
    balloon
        .activate(mem.clone(), reporting, active(3), interrupt())
        .unwrap();
    assert!(balloon.reset());
}

#[test]
fn the_thread_serves_a_notified_reporting_queue() {
    let mem = guest_memory();
    let mocks = mock_queues(&mem);
    filled(&mem, 4 * MIB, 2 * MIB);
    let notifies: Vec<EventFd> = (0..QUEUE_COUNT)
        .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
        .collect();
    let active = mocks
        .iter()
        .zip(&notifies)
        .map(|(m, n)| ActiveQueue::new(m.create_queue().unwrap(), n.try_clone().unwrap(), 0))
        .collect();
    let interrupt = Arc::new(VirtioInterrupt::new(
        EventFd::new(libc::EFD_NONBLOCK).unwrap(),
    ));
    let returned = Arc::new(AtomicU64::new(0));
    let mut balloon = Balloon::new(returned.clone()).unwrap();
    balloon
        .activate(mem.clone(), 1 << F_REPORTING, active, interrupt)
        .unwrap();
    mocks[REPORTING_QUEUE]
        .build_desc_chain(&[desc(4 * MIB, 2 * MIB as u32, VRING_DESC_F_WRITE)])
        .unwrap();
    notifies[REPORTING_QUEUE].write(1).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while returned.load(Ordering::Relaxed) == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(returned.load(Ordering::Relaxed), 2 * MIB);
    assert!(all(&mem, 4 * MIB, 2 * MIB, 0));
    assert!(balloon.reset());
}
