//! Guest memory as iovecs, so that the host kernel moves data straight between
//! a file (a disk image, a tap) and the guest's buffers, with no bounce copy.

use vm_memory::VolatileSlice;

/// Most iovecs one readv/writev/preadv/pwritev takes (Linux's `UIO_MAXIOV`).
pub const IOV_MAX: usize = 1024;

/// Calls `f` with one iovec per slice of `slices` (at most [`IOV_MAX`] of
/// them: the caller takes no more), the slices' memory pinned by their guards
/// until `f` returns.
pub fn with_iovecs<R>(slices: &[VolatileSlice<'_>], f: impl FnOnce(&[libc::iovec]) -> R) -> R {
    let slices = &slices[..slices.len().min(IOV_MAX)];
    let guards: Vec<_> = slices.iter().map(|s| s.ptr_guard_mut()).collect();
    let iovecs: Vec<libc::iovec> = guards
        .iter()
        .map(|guard| libc::iovec {
            iov_base: guard.as_ptr().cast(),
            iov_len: guard.len(),
        })
        .collect();
    f(&iovecs)
}

/// The iovec count as the system calls take it (at most [`IOV_MAX`], so it
/// fits).
pub fn iov_count(iovecs: &[libc::iovec]) -> libc::c_int {
    libc::c_int::try_from(iovecs.len().min(IOV_MAX)).unwrap_or(libc::c_int::MAX)
}
