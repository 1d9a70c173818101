//! The thread that serves a virtio-fs device's queues.
//!
//! File system requests can take long (a large read, a slow host disk), so
//! they are served here and never on the VMM's event loop: the event loop's
//! `process_queue` only wakes this thread through an eventfd. The device stops
//! the thread on a driver reset and when it is dropped (at the end of
//! `Vmm::run`); see [`Worker::stop`].

use super::backend::FsServer;
use super::request;
use crate::devices::virtio::VirtioInterrupt;
use fuse_backend_rs::transport::{Reader, VirtioFsWriter};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// How long [`Worker::stop`] waits for a request in progress to finish.
const STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// What the worker thread owns: the device's active state.
pub struct Served {
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// The hiprio queue, then the request queue(s).
    pub queues: Vec<Queue>,
    /// The device's interrupt.
    pub interrupt: Arc<VirtioInterrupt>,
    /// The FUSE server.
    pub server: FsServer,
}

/// A running worker thread.
pub struct Worker {
    wake: EventFd,
    stop: Arc<AtomicBool>,
    done: Receiver<()>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts serving `served` on a new thread.
    pub fn spawn(served: Served) -> std::io::Result<Self> {
        // Blocking: the thread sleeps in read() until woken.
        let wake = EventFd::new(libc::EFD_CLOEXEC)?;
        let thread_wake = wake.try_clone()?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        let (done_tx, done) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("virtio-fs".into())
            .spawn(move || {
                // Dropped when the thread ends, which `stop` waits for.
                let _done = done_tx;
                run(&thread_wake, &thread_stop, served);
            })?;
        Ok(Self {
            wake,
            stop,
            done,
            thread: Some(thread),
        })
    }

    /// Asks the thread to serve the queues.
    pub fn wake(&self) {
        if let Err(err) = self.wake.write(1) {
            eprintln!("runv-vmm: virtio-fs: cannot wake the worker: {err}");
        }
    }

    /// Stops the thread after the request in progress and joins it. A request
    /// blocked in the host kernel for more than [`STOP_TIMEOUT`] (a FIFO, a
    /// hung network file system) leaves the thread detached; it ends with the
    /// process.
    pub fn stop(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.stop.store(true, Ordering::SeqCst);
        self.wake();
        match self.done.recv_timeout(STOP_TIMEOUT) {
            Err(RecvTimeoutError::Disconnected) | Ok(()) => {
                if thread.join().is_err() {
                    eprintln!("runv-vmm: virtio-fs: the worker thread panicked");
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                eprintln!("runv-vmm: virtio-fs: a request is still running; not waiting for it");
            }
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The thread's loop: serve every queue each time it is woken.
fn run(wake: &EventFd, stop: &AtomicBool, mut served: Served) {
    loop {
        match wake.read() {
            Ok(_) => {}
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => {
                eprintln!("runv-vmm: virtio-fs: the worker cannot wait: {err}");
                return;
            }
        }
        if stop.load(Ordering::SeqCst) {
            return;
        }
        if !served.serve_all() {
            return;
        }
    }
}

impl Served {
    /// Serves every pending request; false once the device failed (its used
    /// ring is outside guest memory), after which it serves nothing more.
    pub fn serve_all(&mut self) -> bool {
        let mut completed = false;
        let mut healthy = true;
        for queue in &mut self.queues {
            while let Some(chain) = queue.pop_descriptor_chain(&self.mem) {
                let head = chain.head_index();
                let len = handle(&self.server, &self.mem, chain);
                if queue.add_used(&self.mem, head, len).is_err() {
                    eprintln!("runv-vmm: virtio-fs: the used ring is outside guest memory");
                    healthy = false;
                    break;
                }
                completed = true;
            }
        }
        if completed {
            if let Err(err) = self.interrupt.signal_used_queue() {
                eprintln!("runv-vmm: virtio-fs: cannot interrupt the guest: {err}");
            }
        }
        healthy
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
    if let Some(refusal) = request::refusal(reader.clone()) {
        return request::reply_error(writer.into(), &refusal);
    }
    match server.handle_message(reader, writer.into(), None, None) {
        Ok(len) => u32::try_from(len).unwrap_or(0),
        Err(_) => 0,
    }
}
