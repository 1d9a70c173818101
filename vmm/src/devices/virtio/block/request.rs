//! Parsing a virtio-blk descriptor chain into a typed request; every count,
//! length and direction is checked before any I/O happens (guest addresses are
//! checked when the data moves).

use super::device::QUEUE_SIZE;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

/// Bytes per virtio-blk sector.
pub const SECTOR_SIZE: u64 = 512;
/// Most data buffers in one request (`seg_max`): a header, these and the status
/// byte fill a queue, as in QEMU.
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Most data bytes in one request, all buffers together.
pub const MAX_DATA_LEN: u64 = 64 << 20;
/// Most segments in one discard request (`max_discard_seg`).
pub const MAX_DISCARD_SEG: u32 = 32;
/// Most sectors in one discard segment (`max_discard_sectors`): 2 GiB, as QEMU.
pub const MAX_DISCARD_SECTORS: u32 = i32::MAX as u32 >> 9;
/// Most segments in one write-zeroes request (`max_write_zeroes_seg`; Linux
/// sends one).
pub const MAX_WRITE_ZEROES_SEG: u32 = 1;
/// Most sectors in one write-zeroes segment (`max_write_zeroes_sectors`):
/// 32 MiB, what writing zeroes takes if the file system cannot zero a range.
pub const MAX_WRITE_ZEROES_SECTORS: u32 = (32 << 20) / SECTOR_SIZE as u32;
/// Length of the request header (type, reserved, sector).
const HEADER_LEN: u32 = 16;
/// Length of one discard / write-zeroes segment (sector, num_sectors, flags).
const SEGMENT_LEN: usize = 16;
/// Segment flag: write zeroes may deallocate the sectors.
const FLAG_UNMAP: u32 = 1;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
};

/// One data buffer of a request, in guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataBuffer {
    /// Guest address.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
}

/// One range of a discard or write-zeroes request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// First sector.
    pub sector: u64,
    /// Number of sectors.
    pub num_sectors: u32,
    /// Write zeroes only: the sectors may be deallocated.
    pub unmap: bool,
}

/// A valid request.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// Read sectors from `sector` on into the buffers, in order.
    In {
        sector: u64,
        buffers: Vec<DataBuffer>,
    },
    /// Write the buffers, in order, to sectors from `sector` on.
    Out {
        sector: u64,
        buffers: Vec<DataBuffer>,
    },
    /// Flush written data to stable storage.
    Flush,
    /// Write the device id string into the buffer.
    GetId { buffer: DataBuffer },
    /// Let the device deallocate the ranges (their content is then undefined).
    Discard { segments: Vec<Segment> },
    /// Make the ranges read as zeroes.
    WriteZeroes { segments: Vec<Segment> },
}

/// A chain with a header and a status byte: where the status goes, and the
/// request or why it is refused.
#[derive(Debug, PartialEq, Eq)]
pub struct Parsed {
    /// Where the status byte goes.
    pub status: GuestAddress,
    /// The request, or why it is refused (answered with an error status).
    pub request: Result<Request, RequestError>,
}

/// A chain without a readable header and a writable status byte: it is
/// completed with nothing written.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("descriptor chain without a readable header and a writable status byte")]
pub struct Malformed;

/// Why a request is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    /// The header cannot be read from guest memory.
    #[error("request header outside guest memory")]
    Header,
    /// The request type is not one the device knows.
    #[error("unsupported request type {0}")]
    Unsupported(u32),
    /// A data buffer has the wrong direction for the request.
    #[error("data buffer with the wrong direction")]
    Direction,
    /// More data buffers than `seg_max`.
    #[error("more than {SEG_MAX} data buffers")]
    TooManySegments,
    /// The buffers hold more than a request may carry.
    #[error("more than {MAX_DATA_LEN} data bytes")]
    TooLong,
    /// GET_ID without a buffer for the id.
    #[error("GET_ID without a buffer")]
    NoBuffer,
    /// Discard / write-zeroes data that is not whole segments, or none.
    #[error("{0} bytes are not whole discard/write-zeroes segments")]
    SegmentLength(u64),
    /// More discard / write-zeroes segments than the device takes.
    #[error("{count} segments, more than {max}")]
    TooManyRanges { count: u64, max: u32 },
    /// A segment longer than the device takes.
    #[error("a segment of {0} sectors is too long")]
    RangeTooLong(u32),
    /// The segments cannot be read from guest memory.
    #[error("segments outside guest memory")]
    SegmentsUnreadable,
    /// A segment has flags the request type does not take.
    #[error("unsupported segment flags {0:#x}")]
    UnsupportedFlags(u32),
}

impl RequestError {
    /// Whether the guest is told "unsupported" rather than "I/O error".
    pub fn is_unsupported(&self) -> bool {
        matches!(self, Self::Unsupported(_) | Self::UnsupportedFlags(_))
    }
}

/// The descriptors of a chain: the first, the last and, in order, at most
/// [`SEG_MAX`] between them, with how many more there were.
struct Split {
    header: Descriptor,
    data: Vec<Descriptor>,
    excess: usize,
    status: Descriptor,
}

fn split(chain: DescriptorChain<&GuestMemoryMmap>) -> Option<Split> {
    let mut descs = chain.into_iter();
    let header = descs.next()?;
    let mut data = Vec::new();
    let mut excess = 0;
    let mut last = None;
    // The chain ends by itself (virtio-queue bounds it by the descriptor table
    // or an indirect table: at most 65535 descriptors);
    // only SEG_MAX data descriptors are kept, the rest only counted.
    for desc in descs {
        if let Some(previous) = last.replace(desc) {
            if data.len() < SEG_MAX as usize {
                data.push(previous);
            } else {
                excess += 1;
            }
        }
    }
    Some(Split {
        header,
        data,
        excess,
        status: last?,
    })
}

impl Request {
    /// Parses `chain`: a readable header, data buffers, a writable status byte.
    ///
    /// The header, each data buffer and the status each have descriptors of
    /// their own, as every Linux driver lays them out (and as Firecracker and
    /// Cloud Hypervisor expect); a driver that packs the header and data, or
    /// data and status, into one descriptor (allowed by VIRTIO_F_ANY_LAYOUT in
    /// virtio 1.x) gets its request answered wrongly or refused, never served
    /// outside its buffers.
    pub fn parse(
        chain: DescriptorChain<&GuestMemoryMmap>,
        mem: &GuestMemoryMmap,
    ) -> Result<Parsed, Malformed> {
        let split = split(chain).ok_or(Malformed)?;
        let (header, status) = (split.header, split.status);
        if header.is_write_only()
            || header.len() < HEADER_LEN
            || !status.is_write_only()
            || status.len() < 1
        {
            return Err(Malformed);
        }
        Ok(Parsed {
            status: status.addr(),
            request: Self::from_parts(mem, header, &split.data, split.excess),
        })
    }

    fn from_parts(
        mem: &GuestMemoryMmap,
        header: Descriptor,
        data: &[Descriptor],
        excess: usize,
    ) -> Result<Self, RequestError> {
        let request_type: u32 = mem
            .read_obj(header.addr())
            .map_err(|_| RequestError::Header)?;
        let sector_addr = header.addr().checked_add(8).ok_or(RequestError::Header)?;
        let sector: u64 = mem
            .read_obj(sector_addr)
            .map_err(|_| RequestError::Header)?;
        if excess > 0 {
            return Err(RequestError::TooManySegments);
        }
        let total: u64 = data.iter().map(|d| u64::from(d.len())).sum();
        if total > MAX_DATA_LEN {
            return Err(RequestError::TooLong);
        }
        let buffers = |device_writes: bool| {
            data.iter()
                .map(|desc| {
                    if desc.is_write_only() == device_writes {
                        Ok(DataBuffer {
                            addr: desc.addr(),
                            len: desc.len(),
                        })
                    } else {
                        Err(RequestError::Direction)
                    }
                })
                .collect::<Result<Vec<_>, _>>()
        };
        match request_type {
            VIRTIO_BLK_T_IN => Ok(Request::In {
                sector,
                buffers: buffers(true)?,
            }),
            VIRTIO_BLK_T_OUT => Ok(Request::Out {
                sector,
                buffers: buffers(false)?,
            }),
            VIRTIO_BLK_T_FLUSH => Ok(Request::Flush),
            VIRTIO_BLK_T_GET_ID => {
                let buffer = buffers(true)?.first().copied();
                Ok(Request::GetId {
                    buffer: buffer.ok_or(RequestError::NoBuffer)?,
                })
            }
            VIRTIO_BLK_T_DISCARD => Ok(Request::Discard {
                segments: segments(mem, &buffers(false)?, Kind::Discard)?,
            }),
            VIRTIO_BLK_T_WRITE_ZEROES => Ok(Request::WriteZeroes {
                segments: segments(mem, &buffers(false)?, Kind::WriteZeroes)?,
            }),
            other => Err(RequestError::Unsupported(other)),
        }
    }
}

/// The request types that carry segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Discard,
    WriteZeroes,
}

/// Reads the segments of a discard / write-zeroes request from `buffers`,
/// bounded in count and length; flags it does not take are unsupported.
fn segments(
    mem: &GuestMemoryMmap,
    buffers: &[DataBuffer],
    kind: Kind,
) -> Result<Vec<Segment>, RequestError> {
    let (max_count, max_sectors, flags_taken) = match kind {
        Kind::Discard => (MAX_DISCARD_SEG, MAX_DISCARD_SECTORS, 0),
        Kind::WriteZeroes => (MAX_WRITE_ZEROES_SEG, MAX_WRITE_ZEROES_SECTORS, FLAG_UNMAP),
    };
    let len: u64 = buffers.iter().map(|b| u64::from(b.len)).sum();
    if len == 0 || len % SEGMENT_LEN as u64 != 0 {
        return Err(RequestError::SegmentLength(len));
    }
    let count = len / SEGMENT_LEN as u64;
    if count > u64::from(max_count) {
        return Err(RequestError::TooManyRanges {
            count,
            max: max_count,
        });
    }
    // At most max_count segments: a few hundred bytes.
    let mut bytes = vec![0u8; len as usize];
    let mut at = 0;
    for buffer in buffers {
        let end = at + buffer.len as usize;
        let slot = bytes
            .get_mut(at..end)
            .ok_or(RequestError::SegmentsUnreadable)?;
        mem.read_slice(slot, buffer.addr)
            .map_err(|_| RequestError::SegmentsUnreadable)?;
        at = end;
    }
    bytes
        .chunks_exact(SEGMENT_LEN)
        .map(|raw| {
            let (sector, rest) = raw.split_at(8);
            let (num_sectors, flags) = rest.split_at(4);
            let sector = u64::from_le_bytes(sector.try_into().unwrap_or_default());
            let num_sectors = u32::from_le_bytes(num_sectors.try_into().unwrap_or_default());
            let flags = u32::from_le_bytes(flags.try_into().unwrap_or_default());
            if flags & !flags_taken != 0 {
                return Err(RequestError::UnsupportedFlags(flags));
            }
            if num_sectors > max_sectors {
                return Err(RequestError::RangeTooLong(num_sectors));
            }
            Ok(Segment {
                sector,
                num_sectors,
                unmap: flags & FLAG_UNMAP != 0,
            })
        })
        .collect()
}
