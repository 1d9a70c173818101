//! Checks made on a FUSE request before the FUSE server sees it, and the error
//! reply for a request the device refuses.

use fuse_backend_rs::abi::fuse_abi::{InHeader, OutHeader};
use fuse_backend_rs::transport::{Reader, Writer};
use std::io::{Read, Write};
use vm_memory::ByteValued;

/// FUSE_LOOKUP.
const OPCODE_LOOKUP: u32 = 1;
/// FUSE_MKNOD.
const OPCODE_MKNOD: u32 = 8;

/// Why a request is answered by the device instead of the file system: the
/// request's id and the errno to answer with.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The request's `unique` id.
    pub unique: u64,
    /// Positive errno.
    pub errno: i32,
}

/// Reads as much of `buf` as the request holds; the count read.
fn read_prefix(reader: &mut Reader<'_>, buf: &mut [u8]) -> usize {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => filled += n,
        }
    }
    filled
}

/// A refusal for requests that could reach outside the shared directory:
/// - LOOKUP of `.` or `..` (the passthrough file system allows them for NFS
///   export; `..` of the root would be the shared directory's parent; the
///   guest kernel's VFS never sends them);
/// - MKNOD of a character or block device other than 0:0 (an overlayfs
///   whiteout): a node for a host device would give the guest that device if a
///   hostile guest kernel asked the server to open it.
///
/// A request too short to tell is left to the server, which rejects it.
pub fn refusal(mut reader: Reader<'_>) -> Option<Refusal> {
    let mut header = InHeader::default();
    if read_prefix(&mut reader, header.as_mut_slice()) < std::mem::size_of::<InHeader>() {
        return None;
    }
    let refuse = |errno| {
        Some(Refusal {
            unique: header.unique,
            errno,
        })
    };
    match header.opcode {
        OPCODE_LOOKUP => {
            let mut name = [0u8; 3];
            let len = read_prefix(&mut reader, &mut name);
            let name = &name[..len];
            if name.starts_with(b".\0") || name.starts_with(b"..\0") {
                return refuse(libc::EPERM);
            }
            None
        }
        OPCODE_MKNOD => {
            // fuse_mknod_in: mode, rdev, umask, padding.
            let mut args = [0u8; 8];
            if read_prefix(&mut reader, &mut args) < args.len() {
                return None;
            }
            let mode = u32::from_le_bytes([args[0], args[1], args[2], args[3]]);
            let rdev = u32::from_le_bytes([args[4], args[5], args[6], args[7]]);
            let kind = mode & libc::S_IFMT;
            if (kind == libc::S_IFCHR || kind == libc::S_IFBLK) && rdev != 0 {
                return refuse(libc::EPERM);
            }
            None
        }
        _ => None,
    }
}

/// Writes the error reply for `refusal`; the bytes written (0 if the chain has
/// no room for a reply).
pub fn reply_error(mut writer: Writer<'_>, refusal: &Refusal) -> u32 {
    let header = OutHeader {
        len: std::mem::size_of::<OutHeader>() as u32,
        error: -refusal.errno,
        unique: refusal.unique,
    };
    match writer.write_all(header.as_slice()) {
        Ok(()) => header.len,
        Err(_) => 0,
    }
}
