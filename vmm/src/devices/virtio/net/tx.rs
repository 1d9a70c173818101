//! Transmit: each chain of the transmit queue is one frame (virtio-net header
//! first), handed to the tap straight from the guest's buffers.

use super::frame_io::FrameIo;
use super::tap::VNET_HDR_LEN;
use crate::devices::virtio::drain_queue;
use crate::devices::virtio::iovec::{chain_pieces, IOV_MAX};
use virtio_queue::{DescriptorChain, Queue};
use vm_memory::{GuestMemory, GuestMemoryMmap, VolatileSlice};

/// Longest chain taken from the guest: the header and a 64 KiB segmentation
/// offload frame with its headers. Longer chains are dropped.
pub const MAX_TX_LEN: usize = VNET_HDR_LEN + 65536 + 256;

/// Sends every frame the guest queued to `tap`, its notifications off
/// meanwhile (`drain_queue`); true if any chain was used. A chain that is
/// malformed, outside guest memory, shorter than the header, longer than
/// [`MAX_TX_LEN`] or in more than `IOV_MAX` pieces is dropped; so is a frame
/// the tap refuses (as a full NIC queue would).
pub fn process_tx(queue: &mut Queue, mem: &GuestMemoryMmap, tap: &mut impl FrameIo) -> bool {
    let drained = drain_queue(queue, mem, |chain| {
        if let Some(frame) = frame_slices(mem, chain) {
            // A refused frame (bad offload header, interface gone) is dropped.
            let _ = tap.send(&frame);
        }
        0
    });
    drained.log_if_broken("virtio-net: the transmit queue");
    drained.completed
}

/// The guest memory of a transmit chain, if it is a frame that may be sent.
fn frame_slices<'m>(
    mem: &'m GuestMemoryMmap,
    chain: DescriptorChain<&'m GuestMemoryMmap>,
) -> Option<Vec<VolatileSlice<'m>>> {
    let pieces = chain_pieces(mem, chain, false, IOV_MAX)?;
    let len: usize = pieces.iter().map(|piece| piece.1).sum();
    if !(VNET_HDR_LEN..=MAX_TX_LEN).contains(&len) {
        return None;
    }
    pieces
        .into_iter()
        .map(|(addr, len)| mem.get_slice(addr, len).ok())
        .collect()
}
