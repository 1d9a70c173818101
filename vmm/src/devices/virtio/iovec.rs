//! Guest memory as iovecs, so that the host kernel moves data straight between
//! a file (a disk image, a tap) and the guest's buffers, with no bounce copy.

use virtio_queue::DescriptorChain;
use vm_memory::{Address, GuestAddress, GuestMemory, GuestMemoryMmap, VolatileSlice};

/// Most iovecs one readv/writev/preadv/pwritev takes (Linux's `UIO_MAXIOV`).
pub const IOV_MAX: usize = 1024;

/// Calls `f` with an array of one iovec per slice of `slices` and its length
/// (at most [`IOV_MAX`]: the caller takes no more), the slices' memory pinned
/// by their guards until `f` returns.
pub fn with_iovecs<R>(
    slices: &[VolatileSlice<'_>],
    f: impl FnOnce(*const libc::iovec, libc::c_int) -> R,
) -> R {
    let slices = &slices[..slices.len().min(IOV_MAX)];
    let guards: Vec<_> = slices.iter().map(|s| s.ptr_guard_mut()).collect();
    let iovecs: Vec<libc::iovec> = guards
        .iter()
        .map(|guard| libc::iovec {
            iov_base: guard.as_ptr().cast(),
            iov_len: guard.len(),
        })
        .collect();
    // At most IOV_MAX, so it fits.
    let count = libc::c_int::try_from(iovecs.len()).unwrap_or(libc::c_int::MAX);
    f(iovecs.as_ptr(), count)
}

/// The guest memory of `chain`'s descriptors, in order, as pieces each within
/// one memory region (one iovec each). None if a descriptor goes the other
/// way (the device writes every one if `device_writes`, reads every one
/// otherwise), lies outside guest memory, or the chain is in more than
/// `max_pieces` pieces.
pub fn chain_pieces(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    device_writes: bool,
    max_pieces: usize,
) -> Option<Vec<(GuestAddress, usize)>> {
    let mut pieces = Vec::new();
    for desc in chain {
        if desc.is_write_only() != device_writes {
            return None;
        }
        let mut addr = desc.addr();
        for slice in mem.get_slices(addr, desc.len() as usize) {
            let len = slice.ok()?.len();
            pieces.push((addr, len));
            if pieces.len() > max_pieces {
                return None;
            }
            addr = addr.checked_add(len as u64)?;
        }
    }
    Some(pieces)
}
