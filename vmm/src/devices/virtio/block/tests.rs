//! virtio-blk on mock queues: requests as a driver builds them, good and bad.

use super::device::{
    Block, STATUS_IOERR, STATUS_OK, STATUS_UNSUPP, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_WRITE_ZEROES,
};
use super::request::{
    MAX_DATA_LEN, MAX_DISCARD_SECTORS, MAX_DISCARD_SEG, MAX_WRITE_ZEROES_SECTORS, SEG_MAX,
};
use crate::devices::virtio::test_utils::{
    activate_notifying, activate_on, activate_with, desc, interrupted, VRING_DESC_F_NEXT as NEXT,
    VRING_DESC_F_WRITE as WRITE,
};
use crate::devices::virtio::{VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_GET_ID: u32 = 8;
const T_DISCARD: u32 = 11;
const T_WRITE_ZEROES: u32 = 13;
const UNMAP: u32 = 1;
const HEADER: u64 = 0x8000;
const STATUS: u64 = 0xa000;
/// Bytes of the test image: 128 sectors.
const IMAGE_LEN: u32 = 64 << 10;
/// The end of guest memory's first region; a second one follows it.
const REGION_END: u64 = 0x10_0000;

/// The byte the test image holds at `offset` before any write.
fn pattern(offset: u32) -> u8 {
    (offset % 251) as u8
}

struct Fixture {
    mem: GuestMemoryMmap,
    image: PathBuf,
}

impl Fixture {
    fn new(name: &str) -> Self {
        let image = std::env::temp_dir().join(format!("runv-blk-{name}-{}", std::process::id()));
        let content: Vec<u8> = (0..IMAGE_LEN).map(pattern).collect();
        std::fs::write(&image, content).unwrap();
        // Two adjacent regions, so that a buffer can straddle them.
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), REGION_END as usize),
            (GuestAddress(REGION_END), 0x1_0000),
        ])
        .unwrap();
        Self { mem, image }
    }

    fn header(&self, kind: u32, sector: u64) {
        self.mem.write_obj(kind, GuestAddress(HEADER)).unwrap();
        self.mem
            .write_obj(sector, GuestAddress(HEADER + 8))
            .unwrap();
    }

    /// Runs one chain on a queue of `size`; the status byte and the used length.
    fn run_on(&self, block: &mut Block, descs: &[RawDescriptor], size: u16) -> (u8, u32) {
        self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        let queue = MockSplitQueue::create(&self.mem, GuestAddress(0), size);
        queue.build_desc_chain(descs).unwrap();
        activate_on(block, &self.mem, &queue);
        block.serve_now();
        let used = queue.used().ring().ref_at(0).unwrap().load();
        (self.mem.read_obj(GuestAddress(STATUS)).unwrap(), used.len())
    }

    fn run(&self, block: &mut Block, descs: &[RawDescriptor]) -> (u8, u32) {
        self.run_on(block, descs, 16)
    }

    fn image(&self) -> Vec<u8> {
        std::fs::read(&self.image).unwrap()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.image);
    }
}

/// A chain of the header, `data` and the status byte.
fn chain(data: &[RawDescriptor]) -> Vec<RawDescriptor> {
    let mut descs = vec![desc(HEADER, 16, NEXT)];
    descs.extend_from_slice(data);
    descs.push(desc(STATUS, 1, WRITE));
    descs
}

fn io_chain(data_flags: u16) -> Vec<RawDescriptor> {
    chain(&[desc(0x9000, 512, data_flags | NEXT)])
}

#[test]
fn reads_and_writes_sectors() {
    let f = Fixture::new("rw");
    let mut block = Block::open(&f.image, false, "disk0").unwrap();
    f.header(T_IN, 2);
    assert_eq!(f.run(&mut block, &io_chain(WRITE)), (STATUS_OK, 513));
    let mut got = [0u8; 512];
    f.mem.read_slice(&mut got, GuestAddress(0x9000)).unwrap();
    let expected: Vec<u8> = (1024..1536).map(pattern).collect();
    assert_eq!(&got[..], &expected[..]);

    f.mem
        .write_slice(&[0xab; 512], GuestAddress(0x9000))
        .unwrap();
    f.header(T_OUT, 1);
    assert_eq!(f.run(&mut block, &io_chain(0)), (STATUS_OK, 1));
    assert_eq!(&f.image()[512..1024], &[0xab; 512][..]);
}

/// Buffers of a multi-segment request: scattered, out of address order, of
/// odd sizes, one straddling the two memory regions.
const SEGMENTS: [(u64, u32); 4] = [
    (0x2_0000, 4096),
    (0x1_0000, 512),
    (REGION_END - 0x600, 0x1000),
    (0x3_0000, 1536),
];

#[test]
fn multi_segment_read_and_write() {
    let f = Fixture::new("multi");
    let mut block = Block::open(&f.image, false, "multi").unwrap();
    let total: u32 = SEGMENTS.iter().map(|s| s.1).sum();
    let data = |flags| -> Vec<RawDescriptor> {
        SEGMENTS
            .iter()
            .map(|&(addr, len)| desc(addr, len, flags | NEXT))
            .collect()
    };

    f.header(T_IN, 3);
    assert_eq!(
        f.run(&mut block, &chain(&data(WRITE))),
        (STATUS_OK, total + 1)
    );
    let mut offset = 3 * 512;
    for (addr, len) in SEGMENTS {
        let mut got = vec![0u8; len as usize];
        f.mem.read_slice(&mut got, GuestAddress(addr)).unwrap();
        let expected: Vec<u8> = (offset..offset + len).map(pattern).collect();
        assert!(got == expected, "buffer at {addr:#x}");
        offset += len;
    }

    for (i, (addr, len)) in SEGMENTS.iter().enumerate() {
        f.mem
            .write_slice(&vec![i as u8 + 1; *len as usize], GuestAddress(*addr))
            .unwrap();
    }
    f.header(T_OUT, 40);
    assert_eq!(f.run(&mut block, &chain(&data(0))), (STATUS_OK, 1));
    let image = f.image();
    let mut offset = 40 * 512;
    for (i, (_, len)) in SEGMENTS.iter().enumerate() {
        let written = &image[offset..offset + *len as usize];
        assert!(written.iter().all(|&b| b == i as u8 + 1), "segment {i}");
        offset += *len as usize;
    }
    assert_eq!(
        image[offset],
        pattern(offset as u32),
        "nothing past the end"
    );
}

#[test]
fn seg_max_buffers_pass_and_one_more_is_refused() {
    let f = Fixture::new("segmax");
    let mut block = Block::open(&f.image, false, "segs").unwrap();
    f.header(T_IN, 0);
    let buffers = |n: u32| -> Vec<RawDescriptor> {
        (0..n)
            .map(|i| desc(0x1_0000 + u64::from(i) * 8, 8, WRITE | NEXT))
            .collect()
    };
    let at_most = chain(&buffers(SEG_MAX));
    assert_eq!(
        f.run_on(&mut block, &at_most, 512),
        (STATUS_OK, SEG_MAX * 8 + 1)
    );
    let too_many = chain(&buffers(SEG_MAX + 1));
    assert_eq!(f.run_on(&mut block, &too_many, 512), (STATUS_IOERR, 1));
}

#[test]
fn oversized_buffers_are_refused_before_any_io() {
    let f = Fixture::new("oversized");
    let mut block = Block::open(&f.image, false, "big").unwrap();
    f.header(T_IN, 0);
    let one = chain(&[desc(0x1_0000, MAX_DATA_LEN as u32 + 1, WRITE | NEXT)]);
    assert_eq!(f.run(&mut block, &one), (STATUS_IOERR, 1));
    let half = (MAX_DATA_LEN / 2) as u32 + 512;
    let two = chain(&[
        desc(0x1_0000, half, WRITE | NEXT),
        desc(0x2_0000, half, WRITE | NEXT),
    ]);
    assert_eq!(f.run(&mut block, &two), (STATUS_IOERR, 1));
    f.header(T_OUT, 0);
    let unmapped = chain(&[desc(0x4000_0000, 512, NEXT)]);
    assert_eq!(
        f.run(&mut block, &unmapped),
        (STATUS_IOERR, 1),
        "buffer outside guest memory"
    );
    assert_eq!(
        &f.image()[..512],
        &(0..512).map(pattern).collect::<Vec<_>>()[..]
    );
}

#[test]
fn out_of_range_readonly_and_unknown_requests_fail_cleanly() {
    let f = Fixture::new("bad");
    let mut ro = Block::open(&f.image, true, "ro").unwrap();
    assert_ne!(ro.avail_features() & VIRTIO_BLK_F_RO, 0);
    f.header(T_OUT, 0);
    assert_eq!(
        f.run(&mut ro, &io_chain(0)).0,
        STATUS_IOERR,
        "write to a read-only disk"
    );
    f.header(T_IN, u64::from(IMAGE_LEN / 512));
    assert_eq!(
        f.run(&mut ro, &io_chain(WRITE)).0,
        STATUS_IOERR,
        "read past the end"
    );
    f.header(T_IN, u64::MAX);
    assert_eq!(
        f.run(&mut ro, &io_chain(WRITE)).0,
        STATUS_IOERR,
        "sector overflow"
    );
    f.header(11, 0);
    assert_eq!(f.run(&mut ro, &io_chain(0)).0, STATUS_UNSUPP);
    f.header(T_IN, 0);
    assert_eq!(
        f.run(&mut ro, &io_chain(0)),
        (STATUS_IOERR, 1),
        "read into a device-readable buffer"
    );
    let no_status = [desc(HEADER, 16, NEXT), desc(0x9000, 512, 0)];
    f.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    assert_eq!(
        f.run(&mut ro, &no_status).1,
        0,
        "a chain without a status byte is completed with nothing written"
    );
}

#[test]
fn get_id_and_config_space() {
    let f = Fixture::new("id");
    let mut block = Block::open(&f.image, false, "runv-disk").unwrap();
    let mut config = [0u8; 24];
    block.read_config(0, &mut config);
    let u32_at = |at: usize| u32::from_le_bytes(config[at..at + 4].try_into().unwrap());
    assert_eq!(
        u64::from_le_bytes(config[..8].try_into().unwrap()),
        u64::from(IMAGE_LEN / 512),
        "capacity"
    );
    assert_eq!(u32_at(8), 256 << 10, "size_max");
    assert_eq!(u32_at(12), SEG_MAX, "seg_max");
    assert_eq!(u32_at(20), 512, "blk_size");
    // The largest request the driver may build is one the device serves.
    assert!(u64::from(u32_at(8)) * u64::from(u32_at(12)) <= MAX_DATA_LEN);
    let features = block.avail_features();
    assert_eq!(
        features & (1 << 1 | 1 << 2 | 1 << 6),
        1 << 1 | 1 << 2 | 1 << 6,
        "SIZE_MAX, SEG_MAX, BLK_SIZE"
    );

    f.header(T_GET_ID, 0);
    assert_eq!(f.run(&mut block, &io_chain(WRITE)), (STATUS_OK, 21));
    let mut id = [0u8; 9];
    f.mem.read_slice(&mut id, GuestAddress(0x9000)).unwrap();
    assert_eq!(&id, b"runv-disk");
}

/// Adds a one-sector read of `sector` into `buffer` as chain `n` (descriptors
/// 3n to 3n+2) to the available ring.
fn add_read(f: &Fixture, queue: &MockSplitQueue<'_, GuestMemoryMmap>, n: u16, buffer: u64) {
    let first = 3 * n;
    let descs = [
        Descriptor::new(HEADER, 16, NEXT, first + 1),
        Descriptor::new(buffer, 512, WRITE | NEXT, first + 2),
        Descriptor::new(STATUS, 1, WRITE, 0),
    ];
    let raw: Vec<RawDescriptor> = descs.into_iter().map(RawDescriptor::from).collect();
    f.header(T_IN, 1);
    queue.add_desc_chains(&raw, first).unwrap();
}

#[test]
fn event_idx_interrupts_only_when_the_driver_asks() {
    let f = Fixture::new("eventidx");
    let mut block = Block::open(&f.image, false, "evt").unwrap();
    assert_ne!(block.avail_features() & (1 << VIRTIO_RING_F_EVENT_IDX), 0);
    // virtio-queue's mock lays the used ring over the tail of the available
    // ring (used_event among it); a large queue keeps the few entries used here
    // clear of each other.
    let size = 256u16;
    let queue = MockSplitQueue::create(&f.mem, GuestAddress(0), size);
    let acked = (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_EVENT_IDX);
    let interrupt = activate_with(&mut block, &f.mem, &queue, acked);
    // The driver's used_event (after the available ring): interrupt once the
    // used ring's index passes 1, i.e. not for the first request, for the second.
    let used_event = queue.avail_addr().unchecked_add(4 + 2 * u64::from(size));
    f.mem.write_obj(1u16, used_event).unwrap();
    // The device's avail_event (after the used ring).
    let avail_event = queue.used_addr().unchecked_add(4 + 8 * u64::from(size));

    add_read(&f, &queue, 0, 0x1_0000);
    block.serve_now();
    assert_eq!(queue.used().idx().load(), 1);
    assert!(
        !interrupted(&interrupt),
        "used_event 1 suppresses the first"
    );
    assert_eq!(
        f.mem.read_obj::<u16>(avail_event).unwrap(),
        1,
        "the device asks to be notified of the next request"
    );

    add_read(&f, &queue, 1, 0x1_1000);
    block.serve_now();
    assert_eq!(queue.used().idx().load(), 2);
    assert!(interrupted(&interrupt), "the second passes used_event");
    assert_eq!(f.mem.read_obj::<u16>(avail_event).unwrap(), 2);

    // Two more in one batch, with used_event left behind at 1: no interrupt.
    add_read(&f, &queue, 2, 0x1_2000);
    add_read(&f, &queue, 3, 0x1_3000);
    block.serve_now();
    assert_eq!(queue.used().idx().load(), 4);
    assert!(
        !interrupted(&interrupt),
        "used_event 1 is behind: suppressed"
    );
    let expected: Vec<u8> = (512..1024).map(pattern).collect();
    let mut got = vec![0u8; 512];
    f.mem.read_slice(&mut got, GuestAddress(0x1_3000)).unwrap();
    assert!(got == expected, "the requests were served");
}

#[test]
fn without_event_idx_every_batch_interrupts() {
    let f = Fixture::new("noeventidx");
    let mut block = Block::open(&f.image, false, "evt").unwrap();
    let queue = MockSplitQueue::create(&f.mem, GuestAddress(0), 16);
    let interrupt = activate_with(&mut block, &f.mem, &queue, 1 << VIRTIO_F_VERSION_1);
    for n in 0..2 {
        add_read(&f, &queue, n, 0x1_0000);
        block.serve_now();
        assert!(interrupted(&interrupt), "request {n}");
    }
}

/// Where discard / write-zeroes segments go in guest memory.
const SEGMENTS_AT: u64 = 0x9000;

impl Fixture {
    /// Runs a discard or write-zeroes request of `segments` (sector,
    /// num_sectors, flags); the status byte.
    fn ranges(&self, block: &mut Block, kind: u32, segments: &[(u64, u32, u32)]) -> u8 {
        let mut bytes = Vec::new();
        for &(sector, num_sectors, flags) in segments {
            bytes.extend_from_slice(&sector.to_le_bytes());
            bytes.extend_from_slice(&num_sectors.to_le_bytes());
            bytes.extend_from_slice(&flags.to_le_bytes());
        }
        self.mem
            .write_slice(&bytes, GuestAddress(SEGMENTS_AT))
            .unwrap();
        self.header(kind, 0);
        let data = desc(SEGMENTS_AT, bytes.len() as u32, NEXT);
        let (status, used) = self.run(block, &chain(&[data]));
        assert_eq!(used, 1, "nothing is written to the guest but the status");
        status
    }

    /// Bytes of the image's file system blocks.
    fn allocated(&self) -> u64 {
        std::fs::metadata(&self.image).unwrap().blocks() * 512
    }

    /// The image holds its original bytes in `range`.
    fn untouched(&self, range: std::ops::Range<usize>) -> bool {
        let image = self.image();
        range.clone().all(|at| image[at] == pattern(at as u32))
    }
}

fn zeroed(image: &[u8], range: std::ops::Range<usize>) -> bool {
    image[range].iter().all(|&b| b == 0)
}

#[test]
fn discard_punches_holes_in_the_image() {
    let f = Fixture::new("discard");
    let mut block = Block::open(&f.image, false, "discard").unwrap();
    let features = block.avail_features();
    assert_eq!(
        features & (VIRTIO_BLK_F_DISCARD | VIRTIO_BLK_F_WRITE_ZEROES),
        VIRTIO_BLK_F_DISCARD | VIRTIO_BLK_F_WRITE_ZEROES
    );
    let before = f.allocated();
    // 16 KiB from 8 KiB, and 8 KiB from 48 KiB: whole file system blocks.
    assert_eq!(
        f.ranges(&mut block, T_DISCARD, &[(16, 32, 0), (96, 16, 0)]),
        STATUS_OK
    );
    let after = f.allocated();
    assert!(
        after + 24 * 1024 <= before,
        "24 KiB deallocated: {before} -> {after} bytes"
    );
    let image = f.image();
    assert!(zeroed(&image, 8192..24576) && zeroed(&image, 49152..57344));
    assert!(f.untouched(0..8192) && f.untouched(24576..49152) && f.untouched(57344..65536));
}

#[test]
fn write_zeroes_zeroes_with_or_without_unmap() {
    let f = Fixture::new("zeroes");
    let mut block = Block::open(&f.image, false, "zeroes").unwrap();
    assert_eq!(
        f.ranges(&mut block, T_WRITE_ZEROES, &[(4, 8, 0)]),
        STATUS_OK
    );
    assert!(zeroed(&f.image(), 2048..6144));
    assert!(f.untouched(0..2048) && f.untouched(6144..65536));
    let before = f.allocated();
    assert_eq!(
        f.ranges(&mut block, T_WRITE_ZEROES, &[(64, 32, UNMAP)]),
        STATUS_OK
    );
    assert!(zeroed(&f.image(), 32768..49152));
    assert!(f.untouched(6144..32768) && f.untouched(49152..65536));
    assert!(f.allocated() < before, "unmap deallocates");
    assert_eq!(
        f.ranges(&mut block, T_WRITE_ZEROES, &[(0, 0, 0)]),
        STATUS_OK,
        "an empty range is nothing to do"
    );
}

#[test]
fn discard_and_write_zeroes_out_of_range_touch_nothing() {
    let f = Fixture::new("discard-range");
    let mut block = Block::open(&f.image, false, "range").unwrap();
    let sectors = IMAGE_LEN / 512;
    for segments in [
        vec![(0, 8, 0), (u64::from(sectors) - 8, 16, 0)],
        vec![(u64::from(sectors), 1, 0)],
        vec![(u64::MAX, 1, 0)],
        vec![(u64::MAX / 512 + 1, 1, 0)],
    ] {
        assert_eq!(
            f.ranges(&mut block, T_DISCARD, &segments),
            STATUS_IOERR,
            "{segments:?}"
        );
    }
    assert_eq!(
        f.ranges(
            &mut block,
            T_WRITE_ZEROES,
            &[(u64::from(sectors) - 1, 2, 0)]
        ),
        STATUS_IOERR
    );
    assert!(
        f.untouched(0..IMAGE_LEN as usize),
        "ranges are checked before any is touched"
    );
    assert_eq!(
        f.ranges(&mut block, T_DISCARD, &[(u64::from(sectors) - 8, 8, 0)]),
        STATUS_OK,
        "the last sectors"
    );
}

#[test]
fn read_only_disk_offers_neither_discard_nor_write_zeroes() {
    let f = Fixture::new("discard-ro");
    let mut ro = Block::open(&f.image, true, "ro").unwrap();
    assert_eq!(
        ro.avail_features() & (VIRTIO_BLK_F_DISCARD | VIRTIO_BLK_F_WRITE_ZEROES),
        0
    );
    let mut config = [0u8; 60];
    ro.read_config(0, &mut config);
    assert!(config[36..57].iter().all(|&b| b == 0), "no discard limits");
    assert_eq!(f.ranges(&mut ro, T_DISCARD, &[(0, 8, 0)]), STATUS_UNSUPP);
    assert_eq!(
        f.ranges(&mut ro, T_WRITE_ZEROES, &[(0, 8, 0)]),
        STATUS_UNSUPP
    );
    assert!(f.untouched(0..IMAGE_LEN as usize));
}

#[test]
fn malformed_segments_are_refused() {
    let f = Fixture::new("discard-bad");
    let mut block = Block::open(&f.image, false, "bad").unwrap();
    let mut config = [0u8; 60];
    block.read_config(0, &mut config);
    let u32_at = |at: usize| u32::from_le_bytes(config[at..at + 4].try_into().unwrap());
    assert_eq!(
        (u32_at(36), u32_at(40), u32_at(48), config[56]),
        (
            MAX_DISCARD_SECTORS,
            MAX_DISCARD_SEG,
            MAX_WRITE_ZEROES_SECTORS,
            1
        )
    );

    let too_many = vec![(0, 1, 0); MAX_DISCARD_SEG as usize + 1];
    assert_eq!(f.ranges(&mut block, T_DISCARD, &too_many), STATUS_IOERR);
    assert_eq!(
        f.ranges(&mut block, T_WRITE_ZEROES, &[(0, 1, 0), (8, 1, 0)]),
        STATUS_IOERR,
        "max_write_zeroes_seg is 1"
    );
    assert_eq!(
        f.ranges(&mut block, T_DISCARD, &[(0, MAX_DISCARD_SECTORS + 1, 0)]),
        STATUS_IOERR
    );
    assert_eq!(
        f.ranges(
            &mut block,
            T_WRITE_ZEROES,
            &[(0, MAX_WRITE_ZEROES_SECTORS + 1, 0)]
        ),
        STATUS_IOERR
    );
    assert_eq!(
        f.ranges(&mut block, T_DISCARD, &[(0, 8, UNMAP)]),
        STATUS_UNSUPP,
        "unmap is for write zeroes only"
    );
    assert_eq!(
        f.ranges(&mut block, T_WRITE_ZEROES, &[(0, 8, 2)]),
        STATUS_UNSUPP,
        "unknown flag"
    );

    f.header(T_DISCARD, 0);
    let partial = chain(&[desc(SEGMENTS_AT, 15, NEXT)]);
    assert_eq!(f.run(&mut block, &partial), (STATUS_IOERR, 1));
    let none = chain(&[]);
    assert_eq!(f.run(&mut block, &none), (STATUS_IOERR, 1));
    let writable = chain(&[desc(SEGMENTS_AT, 16, WRITE | NEXT)]);
    assert_eq!(f.run(&mut block, &writable), (STATUS_IOERR, 1));
    let unmapped = chain(&[desc(0x4000_0000, 16, NEXT)]);
    assert_eq!(f.run(&mut block, &unmapped), (STATUS_IOERR, 1));
    assert!(f.untouched(0..IMAGE_LEN as usize));
}

#[test]
fn an_invalid_available_index_ends_the_round() {
    let f = Fixture::new("badidx");
    let mut block = Block::open(&f.image, false, "idx").unwrap();
    let queue = MockSplitQueue::create(&f.mem, GuestAddress(0), 16);
    let interrupt = activate_on(&mut block, &f.mem, &queue);
    add_read(&f, &queue, 0, 0x1_0000);
    block.serve_now();
    assert_eq!(queue.used().idx().load(), 1);
    assert!(interrupted(&interrupt));
    // More entries than the queue has: virtio-queue refuses to pop, and the
    // device must not spin on "more is available".
    queue.avail().idx().store(1000);
    block.serve_now();
    assert_eq!(queue.used().idx().load(), 1);
    assert!(!interrupted(&interrupt));
}

/// Waits up to 10 s for `check`.
fn eventually(mut check: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    check()
}

#[test]
fn its_own_thread_serves_the_queue_on_notifications_until_reset() {
    let f = Fixture::new("thread");
    let mut block = Block::open(&f.image, false, "thread").unwrap();
    let queue = MockSplitQueue::create(&f.mem, GuestAddress(0), 16);
    add_read(&f, &queue, 0, 0x1_0000);
    let (interrupt, notify) = activate_notifying(&mut block, &f.mem, &queue, 0);
    assert!(
        eventually(|| queue.used().idx().load() == 1),
        "what was available before activation is served"
    );
    assert!(eventually(|| interrupted(&interrupt)));

    add_read(&f, &queue, 1, 0x1_1000);
    notify.write(1).unwrap();
    assert!(eventually(|| queue.used().idx().load() == 2));
    assert!(eventually(|| interrupted(&interrupt)));
    let expected: Vec<u8> = (512..1024).map(pattern).collect();
    let mut got = vec![0u8; 512];
    f.mem.read_slice(&mut got, GuestAddress(0x1_1000)).unwrap();
    assert!(got == expected);

    assert!(block.reset());
    add_read(&f, &queue, 2, 0x1_2000);
    notify.write(1).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(
        queue.used().idx().load(),
        2,
        "a reset device serves nothing"
    );
}

/// Descriptor flag: the buffer is a table of descriptors.
const INDIRECT: u16 = 4;

/// Writes `descs` as an indirect table at `table` (each pointing to the next)
/// and returns the ring descriptor for it.
fn indirect(f: &Fixture, table: u64, descs: &[(u64, u32, u16)]) -> RawDescriptor {
    for (i, &(addr, len, flags)) in descs.iter().enumerate() {
        let last = i + 1 == descs.len();
        let (flags, next) = if last {
            (flags, 0)
        } else {
            (flags | NEXT, i as u16 + 1)
        };
        let desc = Descriptor::new(addr, len, flags, next);
        f.mem
            .write_obj(desc, GuestAddress(table + 16 * i as u64))
            .unwrap();
    }
    desc(table, 16 * descs.len() as u32, INDIRECT)
}

#[test]
fn requests_in_indirect_tables_are_served_and_bounded() {
    use crate::devices::virtio::VIRTIO_RING_F_INDIRECT_DESC;
    let f = Fixture::new("indirect");
    let mut block = Block::open(&f.image, false, "indirect").unwrap();
    assert_ne!(
        block.avail_features() & (1 << VIRTIO_RING_F_INDIRECT_DESC),
        0
    );
    let table = 0x4_0000;
    let with = |n: u32| -> Vec<(u64, u32, u16)> {
        let mut descs = vec![(HEADER, 16, 0)];
        descs.extend((0..n).map(|i| (0x1_0000 + u64::from(i) * 16, 8, WRITE)));
        descs.push((STATUS, 1, WRITE));
        descs
    };
    f.header(T_IN, 0);
    let ring = indirect(&f, table, &with(SEG_MAX));
    assert_eq!(f.run(&mut block, &[ring]), (STATUS_OK, SEG_MAX * 8 + 1));
    let mut got = vec![0u8; 8];
    f.mem
        .read_slice(&mut got, GuestAddress(0x1_0000 + 100 * 16))
        .unwrap();
    let expected: Vec<u8> = (100 * 8..101 * 8).map(pattern).collect();
    assert!(got == expected);
    let ring = indirect(&f, table, &with(SEG_MAX + 1));
    assert_eq!(f.run(&mut block, &[ring]), (STATUS_IOERR, 1));
}
