//! Parsing a virtio-blk descriptor chain into a typed request; every address
//! and length is checked before any I/O happens.

use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

/// Bytes per virtio-blk sector.
pub const SECTOR_SIZE: u64 = 512;
/// Length of the request header (type, reserved, sector).
const HEADER_LEN: u32 = 16;
/// Most bytes one data descriptor may carry.
pub const MAX_DATA_LEN: u32 = 4 << 20;

const VIRTIO_BLK_T_IN: u32 = 0;
const VIRTIO_BLK_T_OUT: u32 = 1;
const VIRTIO_BLK_T_FLUSH: u32 = 4;
const VIRTIO_BLK_T_GET_ID: u32 = 8;

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// Read sectors into the data buffers.
    In,
    /// Write the data buffers to sectors.
    Out,
    /// Flush written data to stable storage.
    Flush,
    /// Write the device id string into the data buffer.
    GetId,
    /// Anything else: answered with "unsupported".
    Unsupported,
}

/// One data buffer of a request, in guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataBuffer {
    /// Guest address.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
}

/// A parsed request.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    /// The operation.
    pub kind: RequestKind,
    /// First sector.
    pub sector: u64,
    /// Data buffers, in order.
    pub data: Vec<DataBuffer>,
    /// Where the status byte goes.
    pub status: GuestAddress,
}

/// Why a chain is not a valid request.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    /// The chain is too short or the header is not device-readable.
    #[error("malformed descriptor chain")]
    Malformed,
    /// The header cannot be read from guest memory.
    #[error("request header outside guest memory")]
    Header,
    /// A data buffer has the wrong direction for the request.
    #[error("data buffer with the wrong direction")]
    Direction,
    /// A data buffer is too long.
    #[error("data buffer longer than {MAX_DATA_LEN} bytes")]
    TooLong,
}

impl Request {
    /// Parses `chain`: a readable header, data buffers, a writable status byte.
    pub fn parse(
        chain: DescriptorChain<&GuestMemoryMmap>,
        mem: &GuestMemoryMmap,
    ) -> Result<Self, RequestError> {
        let descs: Vec<Descriptor> = chain.collect();
        let (header, rest) = descs.split_first().ok_or(RequestError::Malformed)?;
        let (status, data) = rest.split_last().ok_or(RequestError::Malformed)?;
        if header.is_write_only()
            || header.len() < HEADER_LEN
            || !status.is_write_only()
            || status.len() < 1
        {
            return Err(RequestError::Malformed);
        }
        let request_type: u32 = mem
            .read_obj(header.addr())
            .map_err(|_| RequestError::Header)?;
        let sector_addr = header.addr().checked_add(8).ok_or(RequestError::Header)?;
        let sector: u64 = mem
            .read_obj(sector_addr)
            .map_err(|_| RequestError::Header)?;
        let kind = match request_type {
            VIRTIO_BLK_T_IN => RequestKind::In,
            VIRTIO_BLK_T_OUT => RequestKind::Out,
            VIRTIO_BLK_T_FLUSH => RequestKind::Flush,
            VIRTIO_BLK_T_GET_ID => RequestKind::GetId,
            _ => RequestKind::Unsupported,
        };
        let device_writes = matches!(kind, RequestKind::In | RequestKind::GetId);
        let mut buffers = Vec::with_capacity(data.len());
        for desc in data {
            if matches!(
                kind,
                RequestKind::In | RequestKind::Out | RequestKind::GetId
            ) && desc.is_write_only() != device_writes
            {
                return Err(RequestError::Direction);
            }
            if desc.len() > MAX_DATA_LEN {
                return Err(RequestError::TooLong);
            }
            buffers.push(DataBuffer {
                addr: desc.addr(),
                len: desc.len(),
            });
        }
        Ok(Request {
            kind,
            sector,
            data: buffers,
            status: status.addr(),
        })
    }

    /// Total data length.
    pub fn data_len(&self) -> u64 {
        self.data.iter().map(|b| u64::from(b.len)).sum()
    }
}
