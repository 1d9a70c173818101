//! Transmit: each chain of the transmit queue is one frame (virtio-net header
//! first), written to the tap as it is.

use super::tap::VNET_HDR_LEN;
use crate::devices::virtio::drain_queue;
use std::io::{Read, Write};
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

/// Longest chain taken from the guest: the header and a 64 KiB segmentation
/// offload frame with its headers. Longer chains are dropped.
pub const MAX_TX_LEN: usize = VNET_HDR_LEN + 65536 + 256;

/// Sends every frame the guest queued to `tap`, its notifications off
/// meanwhile (`drain_queue`); true if any chain was used. A chain that is
/// malformed, outside guest memory, shorter than the header or longer than
/// `buf` is dropped; so is a frame the tap refuses (as a full NIC queue
/// would).
pub fn process_tx(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    tap: &mut impl Write,
    buf: &mut [u8],
) -> bool {
    let drained = drain_queue(queue, mem, |chain| {
        let len = chain.reader(mem).ok().and_then(|mut reader| {
            let len = reader.available_bytes();
            if !(VNET_HDR_LEN..=buf.len()).contains(&len) {
                return None;
            }
            reader.read_exact(&mut buf[..len]).ok().map(|()| len)
        });
        if let Some(len) = len {
            // A refused frame (bad offload header, interface gone) is dropped.
            let _ = tap.write(&buf[..len]);
        }
        0
    });
    if let Some(err) = drained.broken {
        eprintln!("runv-vmm: virtio-net: the transmit queue is broken: {err}");
    }
    drained.completed
}
