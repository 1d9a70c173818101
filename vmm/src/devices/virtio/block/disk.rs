//! The raw image file behind a virtio-blk device: data moves between the file
//! and guest memory directly (preadv/pwritev on the guest's pages, no bounce
//! buffer), after every range is checked against the disk and guest memory.

use super::request::{DataBuffer, Segment, SECTOR_SIZE};
use crate::devices::virtio::iovec::{with_iovecs, IOV_MAX};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use vm_memory::bitmap::Bitmap;
use vm_memory::{GuestMemory, GuestMemoryError, GuestMemoryMmap, VolatileSlice};

/// Zeroes written where the file system cannot zero a range itself.
static ZEROES: [u8; 64 << 10] = [0; 64 << 10];

/// Errors while opening a disk.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The image cannot be opened.
    #[error("cannot open disk {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    /// The device's thread.
    #[error("cannot start the virtio-blk thread: {0}")]
    Thread(io::Error),
}

/// Why a disk operation failed (the guest sees an I/O error).
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The sectors are not all on the disk.
    #[error("sectors {sector}+{len} bytes are past the end of the disk")]
    OutOfRange { sector: u64, len: u64 },
    /// A write to a read-only disk.
    #[error("the disk is read-only")]
    ReadOnly,
    /// A data buffer is not in guest memory.
    #[error("data buffer outside guest memory: {0}")]
    GuestMemory(#[from] GuestMemoryError),
    /// The image file failed.
    #[error("disk image I/O: {0}")]
    Io(#[from] io::Error),
}

/// A raw image file, whole 512-byte sectors of it.
pub struct Disk {
    file: File,
    capacity: u64,
    readonly: bool,
}

impl Disk {
    /// Opens `path`, read-only if asked.
    pub fn open(path: &Path, readonly: bool) -> Result<Self, BlockError> {
        let open_err = |source| BlockError::Open {
            path: path.to_owned(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(!readonly)
            .open(path)
            .map_err(open_err)?;
        let capacity = file.metadata().map_err(open_err)?.len() / SECTOR_SIZE;
        Ok(Self {
            file,
            capacity,
            readonly,
        })
    }

    /// Size in sectors.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Whether writes are refused.
    pub fn readonly(&self) -> bool {
        self.readonly
    }

    /// The byte offset of `sector`, if `len` bytes from there are on the disk.
    fn byte_range(&self, sector: u64, len: u64) -> Result<u64, DiskError> {
        let out_of_range = DiskError::OutOfRange { sector, len };
        let offset = sector.checked_mul(SECTOR_SIZE).ok_or(out_of_range)?;
        match offset.checked_add(len) {
            Some(end) if end <= self.capacity * SECTOR_SIZE => Ok(offset),
            _ => Err(DiskError::OutOfRange { sector, len }),
        }
    }

    /// Reads sectors from `sector` on into `buffers`; the bytes read.
    pub fn read(
        &self,
        mem: &GuestMemoryMmap,
        sector: u64,
        buffers: &[DataBuffer],
    ) -> Result<u32, DiskError> {
        let (offset, slices, len) = self.prepare(mem, sector, buffers)?;
        transfer(&self.file, &slices, offset, Direction::ToGuest)?;
        for slice in &slices {
            slice.bitmap().mark_dirty(0, slice.len());
        }
        // At most MAX_DATA_LEN (request.rs), so it fits.
        Ok(u32::try_from(len).unwrap_or(u32::MAX))
    }

    /// Writes `buffers` to sectors from `sector` on.
    pub fn write(
        &self,
        mem: &GuestMemoryMmap,
        sector: u64,
        buffers: &[DataBuffer],
    ) -> Result<(), DiskError> {
        if self.readonly {
            return Err(DiskError::ReadOnly);
        }
        let (offset, slices, _) = self.prepare(mem, sector, buffers)?;
        transfer(&self.file, &slices, offset, Direction::FromGuest)
    }

    /// Checks a transfer: the file offset, the guest memory it touches as
    /// slices (a buffer may span memory regions), and its length.
    fn prepare<'m>(
        &self,
        mem: &'m GuestMemoryMmap,
        sector: u64,
        buffers: &[DataBuffer],
    ) -> Result<(u64, Vec<VolatileSlice<'m>>, u64), DiskError> {
        let len = buffers.iter().map(|b| u64::from(b.len)).sum();
        let offset = self.byte_range(sector, len)?;
        let mut slices = Vec::with_capacity(buffers.len());
        for buffer in buffers {
            for slice in mem.get_slices(buffer.addr, buffer.len as usize) {
                slices.push(slice?);
            }
        }
        Ok((offset, slices, len))
    }

    /// Makes written data durable.
    pub fn flush(&self) -> Result<(), DiskError> {
        Ok(self.file.sync_data()?)
    }

    /// The byte ranges of `segments`, all checked before any is touched.
    fn ranges(&self, segments: &[Segment]) -> Result<Vec<(u64, u64)>, DiskError> {
        if self.readonly {
            return Err(DiskError::ReadOnly);
        }
        segments
            .iter()
            .map(|segment| {
                let len = u64::from(segment.num_sectors) * SECTOR_SIZE;
                Ok((self.byte_range(segment.sector, len)?, len))
            })
            .collect()
    }

    /// Deallocates the sectors of `segments` (punches holes: they read as
    /// zeroes). A file system without holes keeps the data, as discard allows.
    pub fn discard(&self, segments: &[Segment]) -> Result<(), DiskError> {
        for (offset, len) in self.ranges(segments)? {
            match self.fallocate(PUNCH_HOLE, offset, len) {
                Err(err) if !unsupported(&err) => return Err(err.into()),
                _ => {}
            }
        }
        Ok(())
    }

    /// Makes the sectors of `segments` read as zeroes: a hole where the segment
    /// allows unmapping, else a zeroed range, else zeroes written.
    pub fn write_zeroes(&self, segments: &[Segment]) -> Result<(), DiskError> {
        for ((offset, len), segment) in self.ranges(segments)?.into_iter().zip(segments) {
            let modes: &[libc::c_int] = if segment.unmap {
                &[PUNCH_HOLE, ZERO_RANGE]
            } else {
                &[ZERO_RANGE]
            };
            let mut done = false;
            for &mode in modes {
                match self.fallocate(mode, offset, len) {
                    Ok(()) => {
                        done = true;
                        break;
                    }
                    Err(err) if !unsupported(&err) => return Err(err.into()),
                    Err(_) => {}
                }
            }
            if !done {
                self.write_zeroes_by_hand(offset, len)?;
            }
        }
        Ok(())
    }

    fn write_zeroes_by_hand(&self, mut offset: u64, len: u64) -> io::Result<()> {
        let end = offset + len;
        while offset < end {
            let chunk = (end - offset).min(ZEROES.len() as u64) as usize;
            self.file.write_all_at(&ZEROES[..chunk], offset)?;
            offset += chunk as u64;
        }
        Ok(())
    }

    /// fallocate(2) on the image; an empty range is nothing to do.
    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        let overflow = || io::Error::from_raw_os_error(libc::EOVERFLOW);
        let offset = libc::off_t::try_from(offset).map_err(|_| overflow())?;
        let len = libc::off_t::try_from(len).map_err(|_| overflow())?;
        loop {
            // SAFETY: fallocate takes no memory, only the image's own fd, which
            // `self.file` keeps open.
            let ret = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, offset, len) };
            if ret == 0 {
                return Ok(());
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }
}

/// Deallocate a range, keeping the file's size.
const PUNCH_HOLE: libc::c_int = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
/// Zero a range (allocated), keeping the file's size.
const ZERO_RANGE: libc::c_int = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;

/// The file system does not do this fallocate mode (tmpfs has no ZERO_RANGE).
fn unsupported(err: &io::Error) -> bool {
    err.raw_os_error() == Some(libc::EOPNOTSUPP)
}

/// Which way data moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// File to guest memory (preadv).
    ToGuest,
    /// Guest memory to file (pwritev).
    FromGuest,
}

/// Moves all bytes of `slices` between them and `file` from `offset` on,
/// in as few preadv/pwritev calls as the kernel allows.
fn transfer(
    file: &File,
    slices: &[VolatileSlice<'_>],
    mut offset: u64,
    direction: Direction,
) -> Result<(), DiskError> {
    // The first slice not fully moved yet, and how much of it has been.
    let (mut index, mut done) = (0, 0);
    while index < slices.len() {
        let end = slices.len().min(index + IOV_MAX);
        let mut pending = Vec::with_capacity(end - index);
        for (i, slice) in slices[index..end].iter().enumerate() {
            let skip = if i == 0 { done } else { 0 };
            pending.push(slice.offset(skip).map_err(GuestMemoryError::from)?);
        }
        let file_offset = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
        let fd = file.as_raw_fd();
        let moved = with_iovecs(&pending, |iovecs, count| match direction {
            // SAFETY: every iovec is a VolatileSlice of guest memory that
            // get_slices checked to lie in a mapped region, kept mapped by its
            // guard for the call; the kernel writes at most iov_len bytes to each.
            Direction::ToGuest => unsafe { libc::preadv(fd, iovecs, count, file_offset) },
            // SAFETY: as above; the kernel only reads the iovecs' memory.
            Direction::FromGuest => unsafe { libc::pwritev(fd, iovecs, count, file_offset) },
        });
        let mut moved = match usize::try_from(moved) {
            Ok(0) => {
                return Err(match direction {
                    Direction::ToGuest => io::Error::from(io::ErrorKind::UnexpectedEof),
                    Direction::FromGuest => io::Error::from(io::ErrorKind::WriteZero),
                }
                .into())
            }
            Ok(moved) => moved,
            Err(_) => {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err.into());
            }
        };
        offset += moved as u64;
        // Skip what the call moved: whole slices, then part of one.
        while moved > 0 {
            let Some(slice) = slices.get(index) else {
                break;
            };
            let left = slice.len() - done;
            if moved >= left {
                moved -= left;
                index += 1;
                done = 0;
            } else {
                done += moved;
                moved = 0;
            }
        }
        // Empty slices move nothing and need no call.
        while slices.get(index).is_some_and(|s| s.len() == done) {
            index += 1;
            done = 0;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn transfers_more_slices_than_one_call_takes_and_stops_at_the_end_of_file() {
        let path = std::env::temp_dir().join(format!("runv-blk-iov-{}", std::process::id()));
        let slices_len = IOV_MAX + IOV_MAX / 2;
        let content: Vec<u8> = (0..slices_len * 8).map(|i| (i % 253) as u8).collect();
        std::fs::write(&path, &content).unwrap();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        // Every other 8 bytes, backwards: nothing contiguous.
        let addr = |i: usize| GuestAddress(((slices_len - i) * 16) as u64);
        let slices: Vec<_> = (0..slices_len)
            .map(|i| mem.get_slice(addr(i), 8).unwrap())
            .collect();

        transfer(&file, &slices, 0, Direction::ToGuest).unwrap();
        for i in [0, IOV_MAX - 1, IOV_MAX, slices_len - 1] {
            let mut got = [0u8; 8];
            mem.read_slice(&mut got, addr(i)).unwrap();
            assert_eq!(got[..], content[i * 8..i * 8 + 8], "slice {i}");
        }
        transfer(&file, &slices, 8, Direction::FromGuest).unwrap();
        let written = std::fs::read(&path).unwrap();
        assert_eq!(written[..8], content[..8]);
        assert_eq!(written[8..], content[..content.len()], "shifted by 8 bytes");

        let past_end = transfer(&file, &slices, 16, Direction::ToGuest);
        assert!(matches!(past_end, Err(DiskError::Io(_))), "{past_end:?}");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn write_zeroes_falls_back_to_writing_them_without_zero_range() {
        // tmpfs punches holes but has no ZERO_RANGE.
        let dir = Path::new("/dev/shm");
        if !dir.is_dir() {
            return;
        }
        let path = dir.join(format!("runv-blk-zeroes-{}", std::process::id()));
        std::fs::write(&path, vec![0xaa; 200 << 10]).unwrap();
        let disk = Disk::open(&path, false).unwrap();
        let no_unmap = Segment {
            sector: 1,
            num_sectors: 300, // more than ZEROES holds
            unmap: false,
        };
        disk.write_zeroes(&[no_unmap]).unwrap();
        let unmap = Segment {
            sector: 320,
            num_sectors: 8,
            unmap: true,
        };
        disk.write_zeroes(&[unmap]).unwrap();
        let image = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(image[..512].iter().all(|&b| b == 0xaa));
        assert!(image[512..301 * 512].iter().all(|&b| b == 0));
        assert!(image[301 * 512..320 * 512].iter().all(|&b| b == 0xaa));
        assert!(image[320 * 512..328 * 512].iter().all(|&b| b == 0));
        assert!(image[328 * 512..].iter().all(|&b| b == 0xaa));
    }
}
