//! Receive: one frame from the tap (virtio-net header first) spread over as
//! many receive chains as it needs (`VIRTIO_NET_F_MRG_RXBUF`), their count in
//! the header's `num_buffers`, all published to the guest at once.
//!
//! With `VIRTIO_RING_F_EVENT_IDX` the guest is interrupted only when its
//! `used_event` asks, and kicks the queue only when the device ran out of
//! buffers and said so in `avail_event` ([`ask_for_buffers`]).

use super::tap::VNET_HDR_LEN;
use std::io::Write;
use std::num::Wrapping;
use std::sync::atomic::{fence, Ordering};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Offset of `num_buffers` in `struct virtio_net_hdr_v1`.
const NUM_BUFFERS_OFFSET: usize = 10;
/// Size of a used ring element and of the used ring's header.
const USED_ELEM_LEN: u64 = 8;
const USED_RING_HEADER_LEN: u64 = 4;
/// Size of an available ring element and of the available ring's header.
const AVAIL_ELEM_LEN: u64 = 2;
const AVAIL_RING_HEADER_LEN: u64 = 4;

/// What became of a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum RxOutcome {
    /// The guest has it, in this many buffers.
    Delivered(u16),
    /// The guest posted too few buffers: nothing was consumed, try again
    /// after the next receive notification.
    NoBuffers,
    /// The guest's buffers were unusable (malformed chain, outside guest
    /// memory, the frame fits no amount of them): the frame is dropped and
    /// the buffers handed back empty.
    Dropped,
    /// The used ring is outside guest memory.
    Broken,
}

/// Delivers `frame` (a virtio-net header then an Ethernet frame).
pub fn deliver(queue: &mut Queue, mem: &GuestMemoryMmap, frame: &[u8]) -> RxOutcome {
    if frame.len() < VNET_HDR_LEN {
        return RxOutcome::Dropped;
    }
    let mut used: Vec<(u16, u32)> = Vec::new();
    let mut num_buffers_field = None;
    let mut offset = 0;
    let mut usable = true;
    while offset < frame.len() {
        if used.len() >= usize::from(queue.size()) {
            usable = false; // even a full ring cannot hold it
            break;
        }
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            for _ in 0..used.len() {
                queue.go_to_previous_position();
            }
            return RxOutcome::NoBuffers;
        };
        let head = chain.head_index();
        let written = chain.writer(mem).ok().and_then(|mut writer| {
            if offset == 0 {
                // The header goes first, `num_buffers` left for the end.
                if writer.available_bytes() < VNET_HDR_LEN {
                    return None;
                }
                let mut field = writer.split_at(NUM_BUFFERS_OFFSET).ok()?;
                let mut body = field.split_at(2).ok()?;
                writer.write_all(&frame[..NUM_BUFFERS_OFFSET]).ok()?;
                let n = body.available_bytes().min(frame.len() - VNET_HDR_LEN);
                body.write_all(&frame[VNET_HDR_LEN..VNET_HDR_LEN + n])
                    .ok()?;
                num_buffers_field = Some(field);
                Some(VNET_HDR_LEN + n)
            } else {
                let n = writer.available_bytes().min(frame.len() - offset);
                writer.write_all(&frame[offset..offset + n]).ok()?;
                Some(n)
            }
        });
        match written {
            Some(n) if n > 0 => {
                used.push((head, n as u32));
                offset += n;
            }
            _ => {
                used.push((head, 0));
                usable = false;
                break;
            }
        }
    }
    let count = used.len() as u16;
    let filled = usable
        && num_buffers_field
            .as_mut()
            .is_some_and(|field| field.write_all(&count.to_le_bytes()).is_ok());
    if !filled {
        for entry in &mut used {
            entry.1 = 0;
        }
    }
    if publish_used(queue, mem, &used).is_err() {
        return RxOutcome::Broken;
    }
    if filled {
        RxOutcome::Delivered(count)
    } else {
        RxOutcome::Dropped
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
