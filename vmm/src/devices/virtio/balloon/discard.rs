//! Giving guest pages back to the host: `madvise(MADV_DONTNEED)` on the
//! VMM's private anonymous mapping of guest RAM, after which the pages read
//! as zeroes and cost nothing until the guest touches them again.

use vm_memory::{GuestAddress, GuestMemory, GuestMemoryMmap, GuestMemoryRegion};

/// Host page size the ranges are cut to.
const PAGE_SIZE: u64 = 4096;

/// Why a reported range was not given back.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DiscardError {
    /// The range's end overflows the guest's address space.
    #[error("the reported range at {addr:#x} of {len} bytes overflows")]
    Overflow { addr: u64, len: u64 },
    /// The range does not lie inside one region of guest RAM.
    #[error("the reported range at {addr:#x} of {len} bytes is not guest RAM")]
    OutsideRam { addr: u64, len: u64 },
    /// The kernel refused the madvise.
    #[error("madvise of the reported range at {addr:#x} of {len} bytes failed: errno {errno}")]
    Madvise { addr: u64, len: u64, errno: i32 },
}

/// The whole host pages inside `[addr, addr + len)`: a range that is not
/// page-aligned is cut inwards, never widened over what the guest reported.
fn whole_pages(addr: u64, len: u64) -> Result<Option<(u64, u64)>, DiscardError> {
    let end = addr
        .checked_add(len)
        .ok_or(DiscardError::Overflow { addr, len })?;
    // A start in the address space's last partial page has no whole page
    // after it.
    let Some(start) = addr.checked_next_multiple_of(PAGE_SIZE) else {
        return Ok(None);
    };
    let end = end / PAGE_SIZE * PAGE_SIZE;
    Ok((start < end).then(|| (start, end - start)))
}

/// Gives the guest memory `[addr, addr + len)` back to the host; the number
/// of bytes given back (the whole pages inside the range).
pub fn discard(mem: &GuestMemoryMmap, addr: u64, len: u64) -> Result<u64, DiscardError> {
    let Some((start, len)) = whole_pages(addr, len)? else {
        return Ok(0);
    };
    let outside = DiscardError::OutsideRam { addr: start, len };
    let (region, offset) = mem.to_region_addr(GuestAddress(start)).ok_or(outside)?;
    let fits = offset
        .0
        .checked_add(len)
        .is_some_and(|end| end <= region.len());
    if !fits {
        return Err(DiscardError::OutsideRam { addr: start, len });
    }
    let host = region
        .get_host_address(offset)
        .map_err(|_| DiscardError::OutsideRam { addr: start, len })?;
    let host_len = usize::try_from(len).map_err(|_| DiscardError::Overflow { addr: start, len })?;
    // SAFETY: `[host, host + len)` lies inside one region's mapping, which
    // lives as long as `mem`; it is private anonymous memory, so
    // MADV_DONTNEED only makes its pages read as zeroes from now on, and no
    // Rust reference into guest memory exists (the VMM reaches it only
    // through volatile accesses).
    let rc = unsafe { libc::madvise(host.cast(), host_len, libc::MADV_DONTNEED) };
    if rc != 0 {
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        return Err(DiscardError::Madvise {
            addr: start,
            len,
            errno,
        });
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn ranges_are_cut_inwards_to_whole_pages() {
        assert_eq!(whole_pages(0x1000, 0x2000), Ok(Some((0x1000, 0x2000))));
        assert_eq!(whole_pages(0x1001, 0x2000), Ok(Some((0x2000, 0x1000))));
        assert_eq!(whole_pages(0x1000, 0xfff), Ok(None));
        assert_eq!(whole_pages(0x1800, 0x1000), Ok(None));
        assert!(matches!(
            whole_pages(u64::MAX - 0xfff, 0x2000),
            Err(DiscardError::Overflow { .. })
        ));
        // Found by the balloon_reports fuzz target: rounding the start up
        // overflowed.
        assert_eq!(whole_pages(u64::MAX - 10, 5), Ok(None));
    }

    #[test]
    fn discarded_pages_read_as_zero_and_neighbours_keep_their_bytes() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        mem.write_slice(&[0xaa; 0x4000], GuestAddress(0x1000))
            .unwrap();
        assert_eq!(discard(&mem, 0x2000, 0x2000), Ok(0x2000));
        let mut bytes = [0u8; 0x4000];
        mem.read_slice(&mut bytes, GuestAddress(0x1000)).unwrap();
        assert!(
            bytes[..0x1000].iter().all(|b| *b == 0xaa),
            "the page before"
        );
        assert!(
            bytes[0x1000..0x3000].iter().all(|b| *b == 0),
            "the discarded pages"
        );
        assert!(bytes[0x3000..].iter().all(|b| *b == 0xaa), "the page after");
    }

    #[test]
    fn ranges_outside_one_region_are_refused() {
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x10_0000),
            (GuestAddress(0x10_0000), 0x10_0000),
        ])
        .unwrap();
        let refused = |addr, len| {
            matches!(
                discard(&mem, addr, len),
                Err(DiscardError::OutsideRam { .. })
            )
        };
        assert!(refused(0x30_0000, 0x1000), "past the end of RAM");
        assert!(refused(0xf_f000, 0x2000), "across two regions");
        assert!(refused(0x1f_f000, 0x2000), "past the last region's end");
        assert_eq!(discard(&mem, 0x10_0000, 0x1000), Ok(0x1000));
    }
}
