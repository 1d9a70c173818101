//! Serving a virtio-fs device's queues: each chain is one FUSE request, handed
//! to the FUSE server (which answers through the share's filter). The device's
//! own thread does this when the driver notifies a queue, so that file system
//! work never stalls the VMM's event loop.

use super::backend::FsServer;
use crate::devices::virtio::{drain_queue, needs_interrupt, VirtioInterrupt};
use fuse_backend_rs::transport::{Reader, VirtioFsWriter};
use std::sync::Arc;
use virtio_queue::{DescriptorChain, Queue};
use vm_memory::GuestMemoryMmap;

/// The device's active state: what its queues are served with.
pub struct Served {
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// The hiprio queue, then the request queue(s).
    pub queues: Vec<Queue>,
    /// The device's interrupt.
    pub interrupt: Arc<VirtioInterrupt>,
    /// The FUSE server.
    pub server: FsServer,
    /// The rings turned out broken: nothing more is served.
    pub failed: bool,
}

impl Served {
    /// Serves every pending request and interrupts the guest as the driver
    /// asks; false once the device failed (its rings are broken), after which
    /// it serves nothing more.
    pub fn serve_all(&mut self) -> bool {
        if self.failed {
            return false;
        }
        let mut interrupt = false;
        for queue in &mut self.queues {
            let (mem, server) = (&self.mem, &self.server);
            let drained = drain_queue(queue, mem, |chain| handle(server, mem, chain));
            if let Some(err) = drained.broken {
                eprintln!("runv-vmm: virtio-fs: a queue is broken, the device stops: {err}");
                self.failed = true;
            }
            if drained.completed && needs_interrupt(queue, mem, "virtio-fs") {
                interrupt = true;
            }
        }
        if interrupt {
            if let Err(err) = self.interrupt.signal_used_queue() {
                eprintln!("runv-vmm: virtio-fs: cannot interrupt the guest: {err}");
            }
        }
        !self.failed
    }
}

/// Serves one request; the bytes written to the guest (0 when the chain is
/// malformed: buffers outside guest memory, no room for a reply).
fn handle(
    server: &FsServer,
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
) -> u32 {
    let (Ok(reader), Ok(writer)) = (
        Reader::from_descriptor_chain(mem, chain.clone()),
        VirtioFsWriter::new(mem, chain),
    ) else {
        return 0;
    };
    match server.handle_message(reader, writer.into(), None, None) {
        Ok(len) => u32::try_from(len).unwrap_or(0),
        Err(_) => 0,
    }
}
