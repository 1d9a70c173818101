//! Frames moved between the tap and the guest's own buffers: the kernel reads
//! a frame straight into the receive chains (readv) and takes a frame
//! straight from a transmit chain (writev), with no copy through the VMM.

use super::tap::Tap;
use crate::devices::virtio::iovec::with_iovecs;
use std::collections::VecDeque;
use std::io;
use std::os::fd::AsRawFd;
use vm_memory::VolatileSlice;

/// The host end of a virtio-net device, one frame (virtio-net header first)
/// per call.
pub trait FrameIo {
    /// Reads one frame into `bufs`, in order. Returns the frame's whole
    /// length, which is larger than `bufs` when the frame was cut to fit
    /// (as a tap does). `WouldBlock` when no frame waits.
    fn recv(&mut self, bufs: &[VolatileSlice<'_>]) -> io::Result<usize>;
    /// Writes one frame gathered from `bufs`.
    fn send(&mut self, bufs: &[VolatileSlice<'_>]) -> io::Result<usize>;
}

impl FrameIo for Tap {
    fn recv(&mut self, bufs: &[VolatileSlice<'_>]) -> io::Result<usize> {
        let fd = self.file().as_raw_fd();
        // SAFETY: each iovec is guest memory that get_slices checked to be
        // mapped, pinned by its guard for the call; the kernel writes at most
        // iov_len bytes to each.
        let read = with_iovecs(bufs, |iovecs, count| unsafe {
            libc::readv(fd, iovecs, count)
        });
        usize::try_from(read).map_err(|_| io::Error::last_os_error())
    }

    fn send(&mut self, bufs: &[VolatileSlice<'_>]) -> io::Result<usize> {
        let fd = self.file().as_raw_fd();
        // SAFETY: as in `recv`; the kernel only reads the iovecs' memory.
        let written = with_iovecs(bufs, |iovecs, count| unsafe {
            libc::writev(fd, iovecs, count)
        });
        usize::try_from(written).map_err(|_| io::Error::last_os_error())
    }
}

/// A tap's stand-in for unit tests and fuzzing: frames waiting for the guest,
/// and the frames the guest sent.
#[doc(hidden)]
#[derive(Debug, Default)]
pub struct FrameQueue {
    /// Frames `recv` hands out, oldest first.
    pub incoming: VecDeque<Vec<u8>>,
    /// Frames `send` took.
    pub sent: Vec<Vec<u8>>,
    /// `send` refuses every frame (as a tap refuses a bad offload header).
    pub refuse: bool,
}

impl FrameIo for FrameQueue {
    fn recv(&mut self, bufs: &[VolatileSlice<'_>]) -> io::Result<usize> {
        let frame = self
            .incoming
            .pop_front()
            .ok_or_else(|| io::Error::from(io::ErrorKind::WouldBlock))?;
        let mut rest = &frame[..];
        for buf in bufs {
            let n = buf.len().min(rest.len());
            buf.copy_from(&rest[..n]);
            rest = &rest[n..];
        }
        Ok(frame.len())
    }

    fn send(&mut self, bufs: &[VolatileSlice<'_>]) -> io::Result<usize> {
        if self.refuse {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let mut frame = Vec::new();
        for buf in bufs {
            let start = frame.len();
            frame.resize(start + buf.len(), 0);
            buf.copy_to(&mut frame[start..]);
        }
        let len = frame.len();
        self.sent.push(frame);
        Ok(len)
    }
}
