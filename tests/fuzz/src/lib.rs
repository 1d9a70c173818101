//! What the fuzz targets share: a cursor over the fuzzer's bytes, guest memory,
//! and a guest driver that lays split virtqueues and descriptor chains out in
//! it as a hostile guest may (any address, length, flag and `next`).
//!
//! Memory: two adjacent regions (a buffer may straddle them) and a third past a
//! hole. Queue `k`'s rings sit at `k * RING_STRIDE`; buffers are taken from
//! `DATA_START..DATA_END`, which crosses the first region boundary.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm::devices::virtio::VirtioInterrupt;
use vmm_sys_util::eventfd::EventFd;

/// End of the first memory region, where the second begins.
pub const REGION_SPLIT: u64 = 0x2_0000;
/// End of the second region; a hole follows it.
pub const REGION_END: u64 = 0x3_0000;
/// A small third region past the hole.
pub const FAR_REGION: u64 = 0x4_0000;
/// Distance between the rings of two queues.
pub const RING_STRIDE: u64 = 0x4000;
/// First byte buffers are taken from.
pub const DATA_START: u64 = 0x1_0000;
/// End of the buffer area.
pub const DATA_END: u64 = REGION_END;

/// Descriptor flag: the chain goes on.
pub const F_NEXT: u16 = 1;
/// Descriptor flag: the device writes the buffer.
pub const F_WRITE: u16 = 2;
/// Descriptor flag: the buffer is a table of descriptors.
pub const F_INDIRECT: u16 = 4;

/// Reads the fuzzer's bytes front to back; past their end every value is 0.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    /// A cursor at the start of `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    /// Whether every byte was taken.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Up to `n` bytes (fewer at the end).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (taken, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        taken
    }

    /// Every byte left.
    pub fn rest(&mut self) -> &'a [u8] {
        self.bytes(self.data.len())
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let taken = self.bytes(N);
        out[..taken.len()].copy_from_slice(taken);
        out
    }

    /// One byte.
    pub fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }

    /// A little-endian u16.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }

    /// A little-endian u32.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }

    /// A little-endian u64.
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }

    /// A flag: the low bit of one byte.
    pub fn bool(&mut self) -> bool {
        self.u8() & 1 != 0
    }
}

/// Fresh, zeroed guest memory.
pub fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), REGION_SPLIT as usize),
        (
            GuestAddress(REGION_SPLIT),
            (REGION_END - REGION_SPLIT) as usize,
        ),
        (GuestAddress(FAR_REGION), 0x1000),
    ])
    .expect("fuzz guest memory")
}

/// A non-blocking eventfd.
pub fn eventfd() -> EventFd {
    EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).expect("eventfd")
}

/// An interrupt whose irqfd nobody reads.
pub fn interrupt() -> Arc<VirtioInterrupt> {
    Arc::new(VirtioInterrupt::new(eventfd()))
}

/// Size of the disk image the block device serves: 128 sectors.
pub const DISK_IMAGE_LEN: i64 = 64 << 10;

/// The path of a 64 KiB memfd a block device can open (no file to clean up;
/// one per process, its content changing as the targets write it).
pub fn disk_image() -> &'static PathBuf {
    static IMAGE: OnceLock<(OwnedFd, PathBuf)> = OnceLock::new();
    &IMAGE
        .get_or_init(|| {
            // SAFETY: a plain syscall on a NUL-terminated name; the result is checked.
            let fd = unsafe { libc::memfd_create(c"runv-fuzz-disk".as_ptr(), libc::MFD_CLOEXEC) };
            assert!(fd >= 0, "memfd_create");
            // SAFETY: `fd` was just created and is owned by nothing else.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: ftruncate on the fd we own.
            assert_eq!(
                unsafe { libc::ftruncate(fd.as_raw_fd(), DISK_IMAGE_LEN) },
                0
            );
            let path = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
            (fd, path)
        })
        .1
}

/// Where one split virtqueue's rings are.
#[derive(Debug, Clone, Copy)]
pub struct Ring {
    /// Descriptor table.
    pub desc: u64,
    /// Driver area (avail ring).
    pub avail: u64,
    /// Device area (used ring).
    pub used: u64,
    /// Number of entries (a power of two, at most 256).
    pub size: u16,
}

impl Ring {
    /// The rings of queue `index` (0..4), `size` entries.
    pub fn new(index: u64, size: u16) -> Self {
        let base = index * RING_STRIDE;
        Self {
            desc: base,
            avail: base + 0x1000,
            used: base + 0x2000,
            size,
        }
    }

    /// The device's view: a ready queue on these rings.
    pub fn queue(&self, event_idx: bool) -> Queue {
        let mut queue = Queue::new(self.size).expect("queue size is a power of two");
        let halves = |addr: u64| (Some(addr as u32), Some((addr >> 32) as u32));
        let (low, high) = halves(self.desc);
        queue.set_desc_table_address(low, high);
        let (low, high) = halves(self.avail);
        queue.set_avail_ring_address(low, high);
        let (low, high) = halves(self.used);
        queue.set_used_ring_address(low, high);
        queue.set_size(self.size);
        queue.set_event_idx(event_idx);
        queue.set_ready(true);
        queue
    }

    /// The used ring's index.
    pub fn used_idx(&self, mem: &GuestMemoryMmap) -> u16 {
        mem.read_obj(GuestAddress(self.used + 2)).unwrap_or(0)
    }

    /// Used ring entry `n` (wrapping): the head and the length written.
    pub fn used_entry(&self, mem: &GuestMemoryMmap, n: u16) -> (u32, u32) {
        let at = self.used + 4 + 8 * u64::from(n % self.size);
        let id = mem.read_obj(GuestAddress(at)).unwrap_or(0);
        let len = mem.read_obj(GuestAddress(at + 4)).unwrap_or(0);
        (id, len)
    }
}

/// One descriptor as the driver writes it.
#[derive(Debug, Clone, Copy)]
pub struct Desc {
    /// Guest address of the buffer.
    pub addr: u64,
    /// Its length.
    pub len: u32,
    /// `F_*` flags.
    pub flags: u16,
    /// The next descriptor, if `F_NEXT`.
    pub next: u16,
}

/// A guest driver on one queue: writes descriptors and publishes chains.
pub struct Driver<'m> {
    mem: &'m GuestMemoryMmap,
    /// The queue's rings.
    pub ring: Ring,
    avail_idx: u16,
    next_desc: u16,
    data_next: u64,
}

impl<'m> Driver<'m> {
    /// A driver of `ring` in `mem`, which starts with empty rings; its
    /// buffers come from the part of the buffer area that `data_from` selects.
    pub fn new(mem: &'m GuestMemoryMmap, ring: Ring, data_from: u64) -> Self {
        let data_next = DATA_START + data_from % (DATA_END - DATA_START);
        Self {
            mem,
            ring,
            avail_idx: 0,
            next_desc: 0,
            data_next,
        }
    }

    /// Room for `len` bytes in the buffer area, 8-aligned (wrapping to its
    /// start: later buffers may overwrite earlier ones).
    pub fn alloc(&mut self, len: u64) -> u64 {
        let len = len.min(DATA_END - DATA_START);
        if self.data_next + len > DATA_END {
            self.data_next = DATA_START;
        }
        let addr = self.data_next;
        self.data_next = (addr + len + 7) & !7;
        addr
    }

    /// A buffer holding `content`.
    pub fn alloc_with(&mut self, content: &[u8], room: u64) -> u64 {
        let addr = self.alloc(room.max(content.len() as u64));
        // Inside the buffer area: the write cannot fail.
        let _ = self.mem.write_slice(content, GuestAddress(addr));
        addr
    }

    /// Writes descriptor `index` of the table.
    pub fn write_desc(&self, index: u16, desc: Desc) {
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&desc.addr.to_le_bytes());
        raw[8..12].copy_from_slice(&desc.len.to_le_bytes());
        raw[12..14].copy_from_slice(&desc.flags.to_le_bytes());
        raw[14..].copy_from_slice(&desc.next.to_le_bytes());
        let at = self.ring.desc + 16 * u64::from(index % self.ring.size);
        let _ = self.mem.write_slice(&raw, GuestAddress(at));
    }

    /// Makes the chain at `head` available.
    pub fn publish(&mut self, head: u16) {
        let slot = self.ring.avail + 4 + 2 * u64::from(self.avail_idx % self.ring.size);
        let _ = self.mem.write_obj(head, GuestAddress(slot));
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.set_avail_idx(self.avail_idx);
    }

    /// Writes the avail ring's index as is (a lying driver).
    pub fn set_avail_idx(&self, idx: u16) {
        let _ = self.mem.write_obj(idx, GuestAddress(self.ring.avail + 2));
    }

    /// Writes `descs` to consecutive table slots, links them and publishes
    /// the chain; its head.
    pub fn add_chain(&mut self, buffers: &[(u64, u32, u16)]) -> u16 {
        let size = self.ring.size;
        let head = self.next_desc % size;
        for (i, &(addr, len, flags)) in buffers.iter().enumerate() {
            let index = (head + i as u16) % size;
            let last = i + 1 == buffers.len();
            let desc = Desc {
                addr,
                len,
                flags: if last { flags } else { flags | F_NEXT },
                next: (index + 1) % size,
            };
            self.write_desc(index, desc);
        }
        self.next_desc = (head + buffers.len() as u16) % size;
        self.publish(head);
        head
    }

    /// Lays out what `input` describes, as a guest may: a descriptor table
    /// (each descriptor's buffer inline, in the buffer area, in the rings,
    /// or anywhere), then the heads it makes available.
    ///
    /// Per descriptor, a control byte: bits 0-2 the `F_*` flags, bits 3-4
    /// where the buffer is (0: inline, a u16 length then, for a buffer the
    /// device reads, its content; 1: a u16 offset into the buffer area and a
    /// u16 length; 2: a u64 address and a u32 length; 3: a u16 address, in
    /// the rings, and a u16 length), bit 5 an explicit u16 `next` (else the
    /// following slot). Then a count of heads, each a u8 slot; a count
    /// byte with bit 7 set is followed by a raw u16 avail index.
    pub fn decode_chains(&mut self, input: &mut Input<'_>) {
        let count = usize::from(input.u8()).min(usize::from(self.ring.size));
        for index in 0..count as u16 {
            let control = input.u8();
            let flags = u16::from(control & 7);
            let (addr, len) = match (control >> 3) & 3 {
                0 => {
                    let len = input.u16() % 0x2000;
                    let content = if flags & F_WRITE == 0 {
                        input.bytes(usize::from(len))
                    } else {
                        &[]
                    };
                    (self.alloc_with(content, u64::from(len)), u32::from(len))
                }
                1 => (DATA_START + u64::from(input.u16()), u32::from(input.u16())),
                2 => (input.u64(), input.u32()),
                _ => (u64::from(input.u16()), u32::from(input.u16())),
            };
            let next = if control & 0x20 != 0 {
                input.u16()
            } else {
                index.wrapping_add(1)
            };
            self.write_desc(
                index,
                Desc {
                    addr,
                    len,
                    flags,
                    next,
                },
            );
        }
        let heads = input.u8();
        for _ in 0..(heads & 0x3f) {
            let head = u16::from(input.u8());
            self.publish(head);
        }
        if heads & 0x80 != 0 {
            self.set_avail_idx(input.u16());
        }
    }
}

/// Most chains a target pops from one queue (a bound on a broken ring).
pub const MAX_CHAINS: usize = 1024;
