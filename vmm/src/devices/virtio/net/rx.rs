//! Receive: the device holds receive chains enough for the longest frame
//! ([`RxBuffers`]); the tap reads each frame (virtio-net header first) straight
//! into them, and the chains it fills (`VIRTIO_NET_F_MRG_RXBUF`), their count
//! in the header's `num_buffers`, are published to the guest at once.
//!
//! With `VIRTIO_RING_F_EVENT_IDX` the guest is interrupted only when its
//! `used_event` asks, and kicks the queue only when the device ran out of
//! buffers and said so in `avail_event` ([`ask_for_buffers`]).

use super::frame_io::FrameIo;
use super::tap::VNET_HDR_LEN;
use super::tx::MAX_TX_LEN;
use crate::devices::virtio::iovec::{chain_pieces, IOV_MAX};
use std::collections::VecDeque;
use std::io;
use std::num::Wrapping;
use std::sync::atomic::{fence, Ordering};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{
    Bytes, GuestAddress, GuestMemory, GuestMemoryError, GuestMemoryMmap, VolatileSlice,
};

/// Offset of `num_buffers` in `struct virtio_net_hdr_v1`.
const NUM_BUFFERS_OFFSET: usize = 10;
/// Size of a used ring element and of the used ring's header.
const USED_ELEM_LEN: u64 = 8;
const USED_RING_HEADER_LEN: u64 = 4;
/// Size of an available ring element and of the available ring's header.
const AVAIL_ELEM_LEN: u64 = 2;
const AVAIL_RING_HEADER_LEN: u64 = 4;

/// Longest frame read from the tap: the header and a 64 KiB offload frame.
pub const MAX_RX_LEN: usize = MAX_TX_LEN;
/// Most pieces of guest memory held for receive: one read takes them all.
const MAX_HELD_PIECES: usize = IOV_MAX;

/// What became of a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum RxOutcome {
    /// The guest has it, in this many buffers.
    Delivered(u16),
    /// The frame did not fit the buffers held, or is shorter than its
    /// header: it is dropped, the buffers kept for the next one.
    Dropped,
    /// No buffers are held: nothing was read.
    NoBuffers,
    /// The used ring is outside guest memory.
    Broken,
}

/// A receive chain taken from the guest and not used yet.
#[derive(Debug)]
struct HeldChain {
    head: u16,
    /// How many of the held pieces are this chain's.
    pieces: usize,
    len: usize,
}

/// The receive chains the device holds, in the order the guest made them
/// available, as pieces of guest memory each within one memory region (so
/// each is one iovec). A frame fills them from the front.
#[derive(Debug, Default)]
pub struct RxBuffers {
    chains: VecDeque<HeldChain>,
    pieces: VecDeque<(GuestAddress, usize)>,
    capacity: usize,
}

impl RxBuffers {
    /// No buffers held.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes the held buffers take.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Whether the buffers held are all there can be: the whole ring, or as
    /// many pieces as one read takes.
    pub fn at_limit(&self, queue: &Queue) -> bool {
        self.chains.len() >= usize::from(queue.size()) || self.pieces.len() >= MAX_HELD_PIECES
    }

    /// Takes chains the guest made available until the held buffers take
    /// `want` bytes or are [at their limit](Self::at_limit). A chain that can
    /// take no frame (a device-readable or empty buffer, outside guest memory,
    /// in too many pieces) goes back to the guest used and empty. True if any
    /// did; an error if the used ring is outside guest memory.
    pub fn fill(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
        want: usize,
    ) -> Result<bool, GuestMemoryError> {
        let mut returned = false;
        while self.capacity < want && !self.at_limit(queue) {
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            let room = MAX_HELD_PIECES - self.pieces.len();
            match chain_pieces(mem, chain, true, MAX_HELD_PIECES).filter(|p| !p.is_empty()) {
                Some(pieces) if pieces.len() > room => {
                    // It fits once the chains before it are used.
                    queue.go_to_previous_position();
                    break;
                }
                Some(pieces) => {
                    let len = pieces.iter().map(|piece| piece.1).sum();
                    self.chains.push_back(HeldChain {
                        head,
                        pieces: pieces.len(),
                        len,
                    });
                    self.pieces.extend(pieces);
                    self.capacity += len;
                }
                None => {
                    publish_used(queue, mem, &[(head, 0)])?;
                    returned = true;
                }
            }
        }
        Ok(returned)
    }

    /// Reads one frame from `io` straight into the held buffers and hands
    /// the guest those it fills, `num_buffers` in its header set to their
    /// count. `WouldBlock` from `io` means no frame waits.
    pub fn receive(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
        io: &mut impl FrameIo,
    ) -> io::Result<RxOutcome> {
        if self.chains.is_empty() {
            return Ok(RxOutcome::NoBuffers);
        }
        let Ok(slices) = self
            .pieces
            .iter()
            .map(|&(addr, len)| mem.get_slice(addr, len))
            .collect::<Result<Vec<_>, _>>()
        else {
            // Checked when taken, and guest memory does not change.
            return Ok(RxOutcome::Broken);
        };
        let len = io.recv(&slices)?;
        if !(VNET_HDR_LEN..=self.capacity).contains(&len) {
            return Ok(RxOutcome::Dropped);
        }
        let mut used = Vec::new();
        let (mut left, mut pieces) = (len, 0);
        while left > 0 {
            let Some(chain) = self.chains.pop_front() else {
                break; // cannot be: `len` is within the capacity
            };
            let n = chain.len.min(left);
            used.push((chain.head, n as u32));
            left -= n;
            pieces += chain.pieces;
            self.capacity -= chain.len;
        }
        // At most the queue's size (≤ 32768), so it fits.
        let count = u16::try_from(used.len()).unwrap_or(u16::MAX);
        write_at(&slices, NUM_BUFFERS_OFFSET, &count.to_le_bytes());
        self.pieces.drain(..pieces);
        if publish_used(queue, mem, &used).is_err() {
            return Ok(RxOutcome::Broken);
        }
        Ok(RxOutcome::Delivered(count))
    }
}

/// Writes `bytes` at `offset` of the memory `slices` lay end to end.
fn write_at(slices: &[VolatileSlice<'_>], mut offset: usize, bytes: &[u8]) {
    let mut bytes = bytes.iter();
    for slice in slices {
        while offset < slice.len() {
            let Some(&byte) = bytes.next() else {
                return;
            };
            let _ = slice.write_obj(byte, offset);
            offset += 1;
        }
        offset -= slice.len();
    }
}

/// Writes `entries` to the used ring and then moves its index once, so that
/// the driver never sees part of a frame.
fn publish_used(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    entries: &[(u16, u32)],
) -> Result<(), vm_memory::GuestMemoryError> {
    let ring = queue.used_ring();
    let size = queue.size();
    let mut next = queue.next_used();
    for &(head, len) in entries {
        let slot = u64::from(next % size);
        let addr = ring
            .checked_add(USED_RING_HEADER_LEN + slot * USED_ELEM_LEN)
            .ok_or(vm_memory::GuestMemoryError::InvalidGuestAddress(
                GuestAddress(ring),
            ))?;
        let mut elem = [0u8; 8];
        elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        elem[4..].copy_from_slice(&len.to_le_bytes());
        mem.write_slice(&elem, GuestAddress(addr))?;
        next = next.wrapping_add(1);
    }
    let idx_addr = ring
        .checked_add(2)
        .ok_or(vm_memory::GuestMemoryError::InvalidGuestAddress(
            GuestAddress(ring),
        ))?;
    mem.store(next.to_le(), GuestAddress(idx_addr), Ordering::Release)?;
    queue.set_next_used(next);
    Ok(())
}

/// Whether the driver wants an interrupt for the frames delivered since the
/// queue's used index was `since`: always without `VIRTIO_RING_F_EVENT_IDX`
/// (and when `used_event` cannot be read, rather than stall the guest),
/// otherwise when `used_event` lies in what was delivered.
pub fn needs_interrupt(queue: &Queue, mem: &GuestMemoryMmap, since: u16) -> bool {
    if !queue.event_idx_enabled() {
        return true;
    }
    // The used ring's entries and index are written before `used_event` is
    // read (the driver's side of the same race reads them after writing it).
    fence(Ordering::SeqCst);
    let used_event = queue
        .avail_ring()
        .checked_add(AVAIL_RING_HEADER_LEN + u64::from(queue.size()) * AVAIL_ELEM_LEN)
        .and_then(|addr| mem.load::<u16>(GuestAddress(addr), Ordering::Relaxed).ok());
    let Some(used_event) = used_event else {
        return true;
    };
    let new = Wrapping(queue.next_used());
    new - Wrapping(u16::from_le(used_event)) - Wrapping(1) < new - Wrapping(since)
}

/// Asks the driver to kick the queue once it posts a buffer past the one it
/// has posted now: with `VIRTIO_RING_F_EVENT_IDX`, `avail_event` set to its
/// current available index, which is returned (buffers posted up to it came
/// without a kick: the caller tries them before it waits); None without the
/// feature, when the driver kicks for every buffer.
pub fn ask_for_buffers(
    queue: &Queue,
    mem: &GuestMemoryMmap,
) -> Result<Option<u16>, virtio_queue::Error> {
    if !queue.event_idx_enabled() {
        return Ok(None);
    }
    let seen = queue.avail_idx(mem, Ordering::Acquire)?;
    let avail_event = queue
        .used_ring()
        .checked_add(USED_RING_HEADER_LEN + u64::from(queue.size()) * USED_ELEM_LEN)
        .ok_or(virtio_queue::Error::AddressOverflow)?;
    mem.store(seen.0.to_le(), GuestAddress(avail_event), Ordering::Relaxed)
        .map_err(virtio_queue::Error::GuestMemory)?;
    // `avail_event` is visible before the caller reads the ring again: a
    // buffer posted after `seen` is either seen then or kicked for.
    fence(Ordering::SeqCst);
    Ok(Some(seen.0))
}
