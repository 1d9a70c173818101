//! Serving a virtio-fs device's queues: each chain is one FUSE request, handed
//! to the FUSE server (which answers through the share's filter). The device's
//! own thread does this when the driver notifies a queue, so that file system
//! work never stalls the VMM's event loop.

use super::backend::FsServer;
use crate::devices::virtio::device_thread::DeviceEventHandler;
use crate::devices::virtio::{drain_queue, needs_interrupt, VirtioInterrupt};
use fuse_backend_rs::transport::{Reader, VirtioFsWriter};
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use virtio_queue::{DescriptorChain, Queue};
use vm_memory::GuestMemoryMmap;

/// An active device's FUSE session: the queues and the server answering them.
pub struct FsSession {
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

impl FsSession {
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
            if drained.log_if_broken("virtio-fs: a queue (the device stops)") {
                self.failed = true;
            }
            if drained.completed && needs_interrupt(queue, mem, "virtio-fs") {
                interrupt = true;
            }
        }
        if interrupt {
            if let Err(err) = self.interrupt.signal_used_queue() {
                log::error!("virtio-fs: cannot interrupt the guest: {err}");
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

/// The active session, shared between the device and its thread.
pub type SharedSession = Arc<Mutex<Option<FsSession>>>;

/// Locks the active session; a panic elsewhere leaves it usable.
pub fn lock(session: &Mutex<Option<FsSession>>) -> MutexGuard<'_, Option<FsSession>> {
    session.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Serves the queues of one active device once a round of notifications
/// is in.
pub struct FsHandler {
    session: SharedSession,
    /// A queue was notified in this round.
    notified: bool,
    /// False once the session failed: nothing more is served.
    healthy: bool,
}

impl FsHandler {
    /// A handler serving `session`.
    pub fn new(session: SharedSession) -> Self {
        Self {
            session,
            notified: false,
            healthy: true,
        }
    }

    fn serve(&mut self) {
        self.healthy = lock(&self.session)
            .as_mut()
            .is_some_and(FsSession::serve_all);
    }
}

impl DeviceEventHandler for FsHandler {
    fn start(&mut self) -> io::Result<()> {
        self.serve();
        Ok(())
    }

    fn queue_event(&mut self, _index: usize) -> io::Result<()> {
        self.notified = true;
        Ok(())
    }

    fn events_done(&mut self) -> io::Result<()> {
        if std::mem::take(&mut self.notified) && self.healthy {
            self.serve();
        }
        Ok(())
    }
}
