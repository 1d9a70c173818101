//! Guest RAM: anonymous mappings laid around the 32-bit MMIO gap, each
//! starting on a 2 MiB boundary of the VMM's address space.
//!
//! KVM maps guest memory with large pages in the nested page tables only where
//! a region's host address and guest address agree modulo 2 MiB; a plain mmap
//! is only page-aligned, so a guest would then pay a 4 KiB fault and TLB entry
//! per page it touches even where the host backs its memory with transparent
//! huge pages. QEMU aligns its RAM the same way. Whether the host does back it
//! with huge pages stays the host's THP policy (no madvise here).

use crate::arch::x86_64::layout::{MMIO_GAP_END, MMIO_GAP_START};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use vm_memory::mmap::{MmapRegionBuilder, MmapRegionError};
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap};

/// Alignment of each region's host address: an x86 large page.
const HOST_ALIGN: usize = 2 << 20;
/// Protection of guest RAM in the VMM.
const RAM_PROT: i32 = libc::PROT_READ | libc::PROT_WRITE;
/// Guest RAM is private anonymous memory, committed as the guest touches it.
const RAM_FLAGS: i32 = libc::MAP_ANONYMOUS | libc::MAP_PRIVATE | libc::MAP_NORESERVE;

/// Errors while creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// mmap of guest RAM failed.
    #[error("cannot map {size_mib} MiB of guest memory: {source}")]
    Map { size_mib: u64, source: io::Error },
    /// The mapping could not be made a guest region.
    #[error("cannot make {size_mib} MiB of guest memory a region: {source}")]
    Region {
        size_mib: u64,
        source: MmapRegionError,
    },
    /// A region ends past the guest address space.
    #[error("invalid guest memory layout: {len} bytes at {guest:#x?}")]
    Overflow { len: usize, guest: GuestAddress },
    /// The regions overlap or are out of order.
    #[error("invalid guest memory layout: {0}")]
    Layout(vm_memory::GuestRegionCollectionError),
}

/// The RAM regions for `size` bytes: below the MMIO gap, the rest above 4 GiB.
pub fn ram_regions(size: u64) -> Vec<(GuestAddress, usize)> {
    if size <= MMIO_GAP_START {
        vec![(GuestAddress(0), size as usize)]
    } else {
        vec![
            (GuestAddress(0), MMIO_GAP_START as usize),
            (GuestAddress(MMIO_GAP_END), (size - MMIO_GAP_START) as usize),
        ]
    }
}

/// Maps `size` bytes of guest RAM.
pub fn create_guest_memory(size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    guest_memory(size, |_, _| Ok(()))
}

/// Maps `size` bytes of guest RAM from `file`, which holds the regions one
/// after the other, with pages of zeros left as holes (a snapshot's memory).
/// The file's data is mapped private, so the guest's writes stay its own
/// while the pages it only reads stay the host's page cache, shared by every
/// VM mapped from the same file (as Firecracker restores snapshot memory).
/// Its holes are not: a private fault on a tmpfs hole adds a page to the
/// file itself, so a VM mapped over them would grow the shared file by every
/// page it touched, for as long as the file lives. They keep the anonymous
/// memory every region starts as, zero-filled a page at a time: the guest's
/// free memory is touched sparsely after a restore, and a huge page for each
/// touch would cost every VM of a template 2 MiB where it uses 4 KiB.
pub fn guest_memory_from_file(size: u64, file: &File) -> Result<GuestMemoryMmap, MemoryError> {
    let mut region_offset: u64 = 0;
    guest_memory(size, |addr, len| {
        // SAFETY: advice on the aligned anonymous mapping just reserved for
        // this region; it changes how pages come in, not what they hold.
        if unsafe { libc::madvise(addr.cast(), len, libc::MADV_NOHUGEPAGE) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let ranges = data_ranges(file, region_offset, len as u64)?;
        for (offset, range_len) in ranges {
            let at = addr.wrapping_add((offset - region_offset) as usize);
            // SAFETY: `at`..`at + range_len` lies inside the aligned anonymous
            // mapping just reserved for this region (`data_ranges` keeps to
            // `region_offset`..`region_offset + len`), owned by nothing else
            // yet; MAP_FIXED replaces exactly that range with the file's pages.
            let mapped = unsafe {
                libc::mmap(
                    at.cast(),
                    range_len as usize,
                    RAM_PROT,
                    libc::MAP_PRIVATE | libc::MAP_NORESERVE | libc::MAP_FIXED,
                    file.as_raw_fd(),
                    offset as libc::off_t,
                )
            };
            if mapped == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
        }
        region_offset += len as u64;
        Ok(())
    })
}

/// Holes of a memory file shorter than this are mapped from the file with
/// the data around them: fewer mappings, for at most this much file growth
/// per hole.
const SMALL_HOLE: u64 = 256 << 10;
/// Past this many data ranges in one region, the whole region is mapped
/// from the file (a mapping each would cost more than the holes save).
const MAX_DATA_RANGES: usize = 1024;
/// The granule of mappings.
const PAGE: u64 = 4096;

/// The ranges of `file` in `start`..`start + len` that hold data, as (file
/// offset, length) in pages, holes under [`SMALL_HOLE`] merged into the data
/// around them; the whole range if there are more than [`MAX_DATA_RANGES`].
fn data_ranges(file: &File, start: u64, len: u64) -> io::Result<Vec<(u64, u64)>> {
    let end = start + len;
    let seek = |offset: u64, whence: i32| -> io::Result<Option<u64>> {
        // SAFETY: lseek on a file this function borrows; only its offset
        // changes, which nothing here reads (mmap takes explicit offsets).
        let found = unsafe { libc::lseek(file.as_raw_fd(), offset as libc::off_t, whence) };
        if found < 0 {
            let err = io::Error::last_os_error();
            // ENXIO: no data at or past `offset`.
            return match err.raw_os_error() {
                Some(libc::ENXIO) => Ok(None),
                _ => Err(err),
            };
        }
        Ok(Some(found as u64))
    };
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    let mut offset = start;
    while offset < end {
        let Some(data) = seek(offset, libc::SEEK_DATA)? else {
            break;
        };
        if data >= end {
            break;
        }
        let hole = seek(data, libc::SEEK_HOLE)?.unwrap_or(end).min(end);
        let (data, hole) = (data / PAGE * PAGE, hole.next_multiple_of(PAGE).min(end));
        match ranges.last_mut() {
            Some((from, len)) if data < *from + *len + SMALL_HOLE => *len = hole - *from,
            _ => ranges.push((data, hole - data)),
        }
        if ranges.len() > MAX_DATA_RANGES {
            return Ok(vec![(start, len)]);
        }
        offset = hole.max(offset + PAGE);
    }
    Ok(ranges)
}

/// The regions for `size` bytes, each an aligned anonymous mapping handed to
/// `fill` (its host address and length) before it becomes a guest region.
fn guest_memory(
    size: u64,
    mut fill: impl FnMut(*mut u8, usize) -> io::Result<()>,
) -> Result<GuestMemoryMmap, MemoryError> {
    let regions = ram_regions(size)
        .into_iter()
        .map(|(guest, len)| {
            let region = aligned_region(len)?;
            fill(region.as_ptr(), len).map_err(|source| MemoryError::Map {
                size_mib: (len >> 20) as u64,
                source,
            })?;
            GuestRegionMmap::new(region, guest).ok_or(MemoryError::Overflow { len, guest })
        })
        .collect::<Result<Vec<_>, _>>()?;
    GuestMemoryMmap::from_regions(regions).map_err(MemoryError::Layout)
}

/// An anonymous read-write mapping of `len` bytes whose start is a multiple
/// of [`HOST_ALIGN`]. vm-memory does not unmap a region built on a raw
/// pointer: the mapping lives as long as the VMM process, which runs one VM.
fn aligned_region(len: usize) -> Result<vm_memory::MmapRegion, MemoryError> {
    let size_mib = (len >> 20) as u64;
    let map_err = |source| MemoryError::Map { size_mib, source };
    let reserved = len
        .checked_add(HOST_ALIGN)
        .ok_or_else(|| map_err(io::Error::from_raw_os_error(libc::ENOMEM)))?;
    // SAFETY: a new anonymous private mapping, not MAP_FIXED: it replaces
    // nothing; the result is checked.
    let base = unsafe { libc::mmap(std::ptr::null_mut(), reserved, RAM_PROT, RAM_FLAGS, -1, 0) };
    if base == libc::MAP_FAILED {
        return Err(map_err(io::Error::last_os_error()));
    }
    let start = base as usize;
    let aligned = start.next_multiple_of(HOST_ALIGN);
    let (head, tail) = (aligned - start, start + reserved - (aligned + len));
    // SAFETY: both ranges lie inside the mapping just made and outside the
    // aligned part kept; unmapping them touches nothing else.
    unsafe {
        if head > 0 {
            libc::munmap(base, head);
        }
        if tail > 0 {
            libc::munmap((aligned + len) as *mut libc::c_void, tail);
        }
    }
    // SAFETY: `aligned` and `len` are exactly the part of the mapping kept
    // above, read-write, and nothing else unmaps it.
    let builder = unsafe {
        MmapRegionBuilder::new(len)
            .with_mmap_prot(RAM_PROT)
            .with_mmap_flags(RAM_FLAGS)
            .with_raw_mmap_pointer(aligned as *mut u8)
    };
    builder
        .build()
        .map_err(|source| MemoryError::Region { size_mib, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_memory_is_one_region() {
        assert_eq!(ram_regions(256 << 20), vec![(GuestAddress(0), 256 << 20)]);
    }

    #[test]
    fn every_region_starts_on_a_large_page() {
        use vm_memory::{Bytes, GuestMemory};
        let mem = create_guest_memory(4 << 30).unwrap();
        assert_eq!(mem.num_regions(), 2);
        for region in mem.iter() {
            assert_eq!(region.as_ptr() as usize % HOST_ALIGN, 0);
        }
        // Readable and writable end to end.
        mem.write_obj(0xabu8, GuestAddress(MMIO_GAP_START - 1))
            .unwrap();
        mem.write_obj(0xcdu8, GuestAddress(MMIO_GAP_END + (1 << 20)))
            .unwrap();
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(MMIO_GAP_START - 1))
                .unwrap(),
            0xab
        );
    }

    /// A file of `len` bytes in tmpfs (where a private fault on a hole adds
    /// a page to the file) with one byte at each of `data`.
    fn tmpfs_file(name: &str, len: u64, data: &[u64]) -> File {
        use std::os::unix::fs::FileExt;
        let shm = std::path::Path::new("/dev/shm");
        assert!(shm.is_dir(), "these tests need tmpfs at /dev/shm");
        let path = shm.join(format!("runv-{name}-{}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        file.set_len(len).unwrap();
        for &offset in data {
            file.write_all_at(&[0x5a], offset).unwrap();
        }
        file
    }

    /// The VmFlags of the mapping of this process that holds `addr`.
    fn vm_flags_at(addr: u64) -> String {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        for line in smaps.lines() {
            let range = line
                .split_whitespace()
                .next()
                .and_then(|r| r.split_once('-'));
            if let Some((start, end)) = range {
                if let (Ok(start), Ok(end)) =
                    (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
                {
                    inside = (start..end).contains(&addr);
                    continue;
                }
            }
            if let Some(flags) = line.strip_prefix("VmFlags:").filter(|_| inside) {
                return flags.to_string();
            }
        }
        panic!("no mapping holds {addr:#x}");
    }

    #[test]
    fn data_ranges_merge_small_holes_and_skip_large_ones() {
        let file = tmpfs_file("ranges", 64 << 20, &[0, 0x3000, 8 << 20, 40 << 20]);
        // 0x0 and 0x3000: one range across a small hole; the others alone.
        assert_eq!(
            data_ranges(&file, 0, 64 << 20).unwrap(),
            vec![(0, 0x4000), (8 << 20, PAGE), (40 << 20, PAGE)]
        );
        // A second region sees only its own part of the file.
        assert_eq!(
            data_ranges(&file, 32 << 20, 32 << 20).unwrap(),
            vec![(40 << 20, PAGE)]
        );
        assert_eq!(data_ranges(&file, 48 << 20, 16 << 20).unwrap(), vec![]);
    }

    #[test]
    fn too_many_data_ranges_map_the_whole_region() {
        let pages: Vec<u64> = (0..=MAX_DATA_RANGES as u64)
            .map(|i| i * 2 * SMALL_HOLE)
            .collect();
        let len = 2 * SMALL_HOLE * (MAX_DATA_RANGES as u64 + 1);
        let file = tmpfs_file("many-ranges", len, &pages);
        assert_eq!(data_ranges(&file, 0, len).unwrap(), vec![(0, len)]);
    }

    #[test]
    fn a_guest_touching_the_holes_of_its_memory_file_leaves_the_file_as_it_was() {
        use std::os::unix::fs::MetadataExt;
        use vm_memory::{Bytes, GuestMemory, GuestMemoryRegion};
        let file = tmpfs_file("holes", 64 << 20, &[0x1000, 33 << 20]);
        let blocks = file.metadata().unwrap().blocks();
        let mem = guest_memory_from_file(64 << 20, &file).unwrap();
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x1000)).unwrap(), 0x5a);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(33 << 20)).unwrap(), 0x5a);
        for page in (4 << 20..32 << 20).step_by(256 << 10) {
            assert_eq!(mem.read_obj::<u8>(GuestAddress(page)).unwrap(), 0);
            mem.write_obj(0xffu8, GuestAddress(page)).unwrap();
        }
        mem.write_obj(0xffu8, GuestAddress(0x1000)).unwrap();
        assert_eq!(
            file.metadata().unwrap().blocks(),
            blocks,
            "the guest's pages in the holes came from the file"
        );
        let hole = mem.get_host_address(GuestAddress(8 << 20)).unwrap() as u64;
        assert!(
            vm_flags_at(hole)
                .split_whitespace()
                .any(|flag| flag == "nh"),
            "a hole may come in huge pages: {}",
            vm_flags_at(hole)
        );
        for region in mem.iter() {
            // SAFETY: each region is this test's own mapping, unmapped once.
            unsafe { libc::munmap(region.as_ptr().cast(), region.len() as usize) };
        }
    }

    #[test]
    fn large_memory_skips_the_mmio_gap() {
        let regions = ram_regions(4 << 30);
        assert_eq!(regions[0], (GuestAddress(0), MMIO_GAP_START as usize));
        assert_eq!(regions[1].0, GuestAddress(MMIO_GAP_END));
        assert_eq!(regions[0].1 + regions[1].1, 4 << 30);
    }
}
