//! The virtio-blk device: one request queue served from a raw image file, on a
//! thread of its own that waits on the queue's notifications: disk I/O runs
//! outside the event loop and outside the transport's lock, so a vCPU reading
//! the interrupt status is not held up by a request in progress.

use super::config::{BlockConfig, CONFIG_LEN};
use super::disk::{BlockError, Disk, DiskError};
use super::event_handler::BlockHandler;
use super::request::{
    Parsed, Request, RequestError, MAX_DATA_LEN, MAX_DISCARD_SECTORS, MAX_DISCARD_SEG,
    MAX_WRITE_ZEROES_SECTORS, MAX_WRITE_ZEROES_SEG, SEG_MAX,
};
use crate::devices::virtio::device_thread::{DeviceThread, DeviceWorker, EventRegistry};
use crate::devices::virtio::{
    drain_queue, read_config_space, ActivateError, ActiveQueue, SingleQueue, VirtioDevice,
    VirtioInterrupt, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use crate::seccomp::ThreadKind;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, TryLockError};
use virtio_bindings::{virtio_blk, virtio_ids};
use vm_memory::{Bytes, GuestMemoryMmap};

const TYPE_BLOCK: u32 = virtio_ids::VIRTIO_ID_BLOCK;
/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Logical block size the device reports.
const BLK_SIZE: u32 = 512;
/// Feature: `size_max` bounds each data buffer of a request.
const VIRTIO_BLK_F_SIZE_MAX: u64 = 1 << virtio_blk::VIRTIO_BLK_F_SIZE_MAX;
/// Largest data buffer: with `SEG_MAX` of them a request stays within
/// `MAX_DATA_LEN`, so the driver never builds one the device refuses.
const SIZE_MAX: u32 = 256 << 10;
/// Feature: `seg_max` bounds the data buffers of a request.
const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << virtio_blk::VIRTIO_BLK_F_SEG_MAX;
/// Feature: the device is read-only.
pub(super) const VIRTIO_BLK_F_RO: u64 = 1 << virtio_blk::VIRTIO_BLK_F_RO;
/// Feature: `blk_size` holds the logical block size.
const VIRTIO_BLK_F_BLK_SIZE: u64 = 1 << virtio_blk::VIRTIO_BLK_F_BLK_SIZE;
/// Feature: the device supports flush.
const VIRTIO_BLK_F_FLUSH: u64 = 1 << virtio_blk::VIRTIO_BLK_F_FLUSH;
/// Feature: the device supports discard (writable disks).
pub(super) const VIRTIO_BLK_F_DISCARD: u64 = 1 << virtio_blk::VIRTIO_BLK_F_DISCARD;
/// Feature: the device supports write zeroes (writable disks).
pub(super) const VIRTIO_BLK_F_WRITE_ZEROES: u64 = 1 << virtio_blk::VIRTIO_BLK_F_WRITE_ZEROES;
/// Alignment asked of discards, in sectors: 4 KiB, the block of the host
/// file systems that deallocate (smaller holes only zero data).
const DISCARD_SECTOR_ALIGNMENT: u32 = 8;
/// Length of the id string GET_ID returns.
const ID_LEN: usize = 20;

pub(super) const STATUS_OK: u8 = 0;
pub(super) const STATUS_IOERR: u8 = 1;
pub(super) const STATUS_UNSUPP: u8 = 2;

// With SEG_MAX buffers of SIZE_MAX bytes a request is not refused as too long.
const _: () = assert!(SEG_MAX as u64 * SIZE_MAX as u64 <= MAX_DATA_LEN);

/// Host I/O errors logged one by one before only every `LOG_EVERY`th is.
const LOG_FIRST: u64 = 8;
const LOG_EVERY: u64 = 1024;

/// A raw-file block device.
pub struct Block {
    backend: Arc<BlockBackend>,
    config: [u8; CONFIG_LEN],
    /// The serving loop while active; stopped before `thread` ends.
    worker: Option<DeviceThread>,
    thread: DeviceWorker,
}

/// The disk and, once active, the queue: what requests are served with.
pub(super) struct BlockBackend {
    disk: Disk,
    id: [u8; ID_LEN],
    /// The queue once the driver activated the device.
    active: Mutex<Option<SingleQueue>>,
    /// Host I/O errors so far (the guest gets IOERR; the operator a log line).
    host_errors: AtomicU64,
}

/// The status byte for a refused request.
fn refused_status(error: &RequestError) -> u8 {
    if error.is_unsupported() {
        STATUS_UNSUPP
    } else {
        STATUS_IOERR
    }
}

impl Block {
    /// Serves the queue on the caller's thread, for tests and fuzzing (the
    /// device's own thread does this when the driver notifies it).
    pub fn serve_now(&self) {
        self.backend.process();
    }

    /// Opens `path` (read-only if asked); `id` is what GET_ID returns.
    pub fn open(path: &Path, readonly: bool, id: &str) -> Result<Self, BlockError> {
        let disk = Disk::open(path, readonly)?;
        let mut id_bytes = [0u8; ID_LEN];
        for (slot, byte) in id_bytes.iter_mut().zip(id.bytes()) {
            *slot = byte;
        }
        let mut config = BlockConfig {
            capacity: disk.capacity(),
            size_max: SIZE_MAX,
            seg_max: SEG_MAX,
            blk_size: BLK_SIZE,
            ..BlockConfig::default()
        };
        if !disk.readonly() {
            config.max_discard_sectors = MAX_DISCARD_SECTORS;
            config.max_discard_seg = MAX_DISCARD_SEG;
            config.discard_sector_alignment = DISCARD_SECTOR_ALIGNMENT;
            config.max_write_zeroes_sectors = MAX_WRITE_ZEROES_SECTORS;
            config.max_write_zeroes_seg = MAX_WRITE_ZEROES_SEG;
            config.write_zeroes_may_unmap = 1;
        }
        Ok(Self {
            backend: Arc::new(BlockBackend {
                disk,
                id: id_bytes,
                active: Mutex::new(None),
                host_errors: AtomicU64::new(0),
            }),
            config: config.to_bytes(),
            worker: None,
            thread: DeviceWorker::start("virtio-blk", ThreadKind::Block)
                .map_err(BlockError::Thread)?,
        })
    }
}

impl BlockBackend {
    /// Serves what the driver made available, if the device is active, and
    /// interrupts the guest as the driver asks.
    pub(super) fn process(&self) {
        let mut active = self.active.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(active) = active.as_mut() {
            if self.serve(active) {
                active.signal_used_if_needed("virtio-blk");
            }
        }
    }

    /// The status byte for a finished operation. A failure of the host's image
    /// (not of the guest's request) is also logged, rate-limited: a full or
    /// failing host disk must not go unseen, nor flood the log.
    fn status<T>(&self, result: &Result<T, DiskError>) -> u8 {
        match result {
            Ok(_) => STATUS_OK,
            Err(err @ DiskError::Io(_)) => {
                let count = self.host_errors.fetch_add(1, Ordering::Relaxed) + 1;
                if count <= LOG_FIRST || count % LOG_EVERY == 0 {
                    log::error!("virtio-blk: {err} (host I/O error {count})");
                }
                STATUS_IOERR
            }
            Err(_) => STATUS_IOERR,
        }
    }

    /// Performs `request`; returns the status and the bytes written to the guest.
    fn execute(&self, mem: &GuestMemoryMmap, request: &Request) -> (u8, u32) {
        match request {
            Request::In { sector, buffers } => {
                let result = self.disk.read(mem, *sector, buffers);
                (self.status(&result), result.unwrap_or(0))
            }
            Request::Out { sector, buffers } => {
                (self.status(&self.disk.write(mem, *sector, buffers)), 0)
            }
            Request::Flush => (self.status(&self.disk.flush()), 0),
            // Not offered on a read-only disk.
            Request::Discard { .. } | Request::WriteZeroes { .. } if self.disk.readonly() => {
                (STATUS_UNSUPP, 0)
            }
            Request::Discard { segments } => (self.status(&self.disk.discard(segments)), 0),
            Request::WriteZeroes { segments } => {
                (self.status(&self.disk.write_zeroes(segments)), 0)
            }
            Request::GetId { buffer } => {
                let len = (buffer.len as usize).min(ID_LEN);
                match mem.write_slice(&self.id[..len], buffer.addr) {
                    Ok(()) => (STATUS_OK, len as u32),
                    Err(_) => (STATUS_IOERR, 0),
                }
            }
        }
    }

    /// Serves every request the driver made available; true if any was
    /// completed.
    fn serve(&self, active: &mut SingleQueue) -> bool {
        let mem = &active.mem;
        let drained = drain_queue(&mut active.queue, mem, |chain| {
            // A chain without header and status is completed with nothing written.
            match Request::parse(chain, mem) {
                Ok(parsed) => self.complete(mem, parsed),
                Err(_) => 0,
            }
        });
        drained.log_if_broken("virtio-blk: the request queue");
        drained.completed
    }

    /// Answers one parsed chain: its status byte, and the length the used
    /// ring reports (data written to the guest plus the status byte).
    fn complete(&self, mem: &GuestMemoryMmap, parsed: Parsed) -> u32 {
        let (status, len) = match &parsed.request {
            Ok(request) => self.execute(mem, request),
            Err(error) => (refused_status(error), 0),
        };
        match mem.write_obj(status, parsed.status) {
            Ok(()) => len + 1,
            Err(_) => 0,
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        let common = VIRTIO_BLK_F_FLUSH
            | VIRTIO_BLK_F_SIZE_MAX
            | VIRTIO_BLK_F_SEG_MAX
            | VIRTIO_BLK_F_BLK_SIZE
            | 1 << VIRTIO_RING_F_EVENT_IDX
            // A request takes one ring slot however many buffers it has.
            | 1 << VIRTIO_RING_F_INDIRECT_DESC;
        if self.backend.disk.readonly() {
            common | VIRTIO_BLK_F_RO
        } else {
            common | VIRTIO_BLK_F_DISCARD | VIRTIO_BLK_F_WRITE_ZEROES
        }
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_space(&self.config, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        _acked_features: u64,
        queues: Vec<ActiveQueue>,
        interrupt: Arc<VirtioInterrupt>,
    ) -> Result<(), ActivateError> {
        // A second activation (only tests do that) first stops the first thread.
        self.worker = None;
        let notify = queues
            .first()
            .ok_or(ActivateError::QueueCount {
                device: "virtio-blk",
                expected: 1,
                got: 0,
            })?
            .notify
            .try_clone()?;
        let active = SingleQueue::activate("virtio-blk", mem, queues, interrupt)?;
        *self
            .backend
            .active
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(active);
        let handler = BlockHandler::new(self.backend.clone());
        self.worker = Some(self.thread.serve_events(
            EventRegistry::new()?,
            vec![notify],
            move || Ok(handler),
        )?);
        Ok(())
    }

    fn reset(&mut self) -> bool {
        // Dropping the loop stops it and waits for its end, or after a while
        // leaves it to a request blocked in the host kernel (a hung network
        // file system), which still holds the queue: the device then cannot
        // be reset.
        self.worker = None;
        match self.backend.active.try_lock() {
            Ok(mut active) => *active = None,
            Err(TryLockError::Poisoned(poisoned)) => *poisoned.into_inner() = None,
            Err(TryLockError::WouldBlock) => {
                protocol::log_limited!(
                    log::Level::Error,
                    "virtio-blk: a request is stuck in the host; no reset"
                );
                return false;
            }
        }
        true
    }
}
