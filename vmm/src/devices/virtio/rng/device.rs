//! The virtio-rng device: one queue of write-only buffers, each filled with
//! bytes from the host's `getrandom`.

use crate::devices::virtio::{
    ActivateError, ActiveQueue, SingleQueue, VirtioDevice, VirtioInterrupt,
};
use std::sync::Arc;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestMemoryMmap};

/// virtio device type of an entropy source.
const TYPE_RNG: u32 = 4;
/// Queue size.
const QUEUE_SIZE: u16 = 256;
/// Most bytes one descriptor gets, whatever length the guest claims.
const MAX_BYTES_PER_DESCRIPTOR: u32 = 64 * 1024;

/// The entropy device.
#[derive(Default)]
pub struct Rng {
    active: Option<SingleQueue>,
}

impl Rng {
    /// A new, inactive device.
    pub fn new() -> Self {
        Self::default()
    }
}

/// Fills `buf` from the host's entropy pool.
fn fill_random(buf: &mut [u8]) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: `rest` is a valid, writable buffer of `rest.len()` bytes.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(err);
            }
        } else {
            filled += n as usize;
        }
    }
    Ok(())
}

/// Serves every pending request; true if any was completed.
fn serve(active: &mut SingleQueue) -> bool {
    let mut served = false;
    let mut buf = Vec::new();
    while let Some(chain) = active.queue.pop_descriptor_chain(&active.mem) {
        let head = chain.head_index();
        let mut written: u32 = 0;
        for desc in chain {
            // Only buffers the device may write; a malformed chain ends here.
            if !desc.is_write_only() {
                break;
            }
            let len = desc.len().min(MAX_BYTES_PER_DESCRIPTOR) as usize;
            buf.resize(len, 0);
            if fill_random(&mut buf).is_err() || active.mem.write_slice(&buf, desc.addr()).is_err()
            {
                break;
            }
            written = written.saturating_add(len as u32);
        }
        if active.queue.add_used(&active.mem, head, written).is_err() {
            eprintln!("runv-vmm: virtio-rng: the used ring is outside guest memory");
            break;
        }
        served = true;
    }
    served
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        TYPE_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        0
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0); // no configuration space
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        _acked_features: u64,
        queues: Vec<ActiveQueue>,
        interrupt: Arc<VirtioInterrupt>,
    ) -> Result<(), ActivateError> {
        self.active = Some(SingleQueue::activate("virtio-rng", mem, queues, interrupt)?);
        Ok(())
    }

    fn process_queue(&mut self, _index: usize) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        if serve(active) {
            active.signal_used("virtio-rng");
        }
    }

    fn reset(&mut self) -> bool {
        self.active = None;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::{
        activate_on, desc, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
    };
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestAddress;

    fn activated(
        mem: &GuestMemoryMmap,
        queue: &MockSplitQueue<'_, GuestMemoryMmap>,
    ) -> (Rng, Arc<VirtioInterrupt>) {
        let mut rng = Rng::new();
        let interrupt = activate_on(&mut rng, mem, queue);
        (rng, interrupt)
    }

    fn used_len(queue: &MockSplitQueue<'_, GuestMemoryMmap>, index: u16) -> u32 {
        queue
            .used()
            .ring()
            .ref_at(index as usize)
            .unwrap()
            .load()
            .len()
    }

    #[test]
    fn fills_write_only_buffers_and_interrupts() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let queue = MockSplitQueue::create(&mem, GuestAddress(0), 16);
        queue
            .build_desc_chain(&[
                desc(0x8000, 64, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT),
                desc(0x9000, 32, VRING_DESC_F_WRITE),
            ])
            .unwrap();
        let (mut rng, interrupt) = activated(&mem, &queue);
        rng.process_queue(0);
        assert_eq!(used_len(&queue, 0), 96);
        assert_eq!(interrupt.status(), 1);
        let mut bytes = [0u8; 64];
        mem.read_slice(&mut bytes, GuestAddress(0x8000)).unwrap();
        assert!(bytes.iter().any(|b| *b != 0), "random bytes were written");
    }

    #[test]
    fn read_only_or_out_of_range_buffers_get_nothing() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let queue = MockSplitQueue::create(&mem, GuestAddress(0), 16);
        queue
            .build_multiple_desc_chains(&[
                desc(0x8000, 64, 0),
                desc(0xff_ff00, 0x1000, VRING_DESC_F_WRITE),
            ])
            .unwrap();
        let (mut rng, _) = activated(&mem, &queue);
        rng.process_queue(0);
        assert_eq!(used_len(&queue, 0), 0, "read-only buffer");
        assert_eq!(used_len(&queue, 1), 0, "buffer outside guest memory");
    }

    #[test]
    fn oversized_descriptors_are_capped() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let queue = MockSplitQueue::create(&mem, GuestAddress(0), 16);
        queue
            .build_desc_chain(&[desc(0x1_0000, 0x8_0000, VRING_DESC_F_WRITE)])
            .unwrap();
        let (mut rng, _) = activated(&mem, &queue);
        rng.process_queue(0);
        assert_eq!(used_len(&queue, 0), MAX_BYTES_PER_DESCRIPTOR);
    }
}
