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
/// after the other: private, so the guest's writes stay its own while the
/// pages it only reads stay the host's page cache, shared by every VM
/// mapped from the same file (as Firecracker restores snapshot memory).
pub fn guest_memory_from_file(size: u64, file: &File) -> Result<GuestMemoryMmap, MemoryError> {
    let mut offset: u64 = 0;
    guest_memory(size, |addr, len| {
        // SAFETY: `addr`..`addr + len` is the aligned anonymous mapping just
        // reserved for this region and owned by nothing else yet; MAP_FIXED
        // replaces exactly that range with the file's pages.
        let mapped = unsafe {
            libc::mmap(
                addr.cast(),
                len,
                RAM_PROT,
                libc::MAP_PRIVATE | libc::MAP_NORESERVE | libc::MAP_FIXED,
                file.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        offset += len as u64;
        if mapped == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    })
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

    #[test]
    fn large_memory_skips_the_mmio_gap() {
        let regions = ram_regions(4 << 30);
        assert_eq!(regions[0], (GuestAddress(0), MMIO_GAP_START as usize));
        assert_eq!(regions[1].0, GuestAddress(MMIO_GAP_END));
        assert_eq!(regions[0].1 + regions[1].1, 4 << 30);
    }
}
