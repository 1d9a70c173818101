//! The virtio-fs device: a hiprio queue and one request queue, a configuration
//! space with the tag the guest mounts, and a thread of its own that serves
//! both queues on the driver's notifications once the driver is ready.

use super::backend::{self, FdReservation};
use super::event_handler::{lock, FsHandler, FsSession, SharedSession};
use super::filter::Policy;
use crate::config::{FsCache, FsConfig};
use crate::devices::virtio::device_thread::{DeviceThread, DeviceWorker, EventRegistry};
use crate::devices::virtio::{
    read_config_space, ActivateError, ActiveQueue, VirtioDevice, VirtioInterrupt,
    VIRTIO_RING_F_EVENT_IDX,
};
use crate::seccomp::ThreadKind;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use vm_memory::GuestMemoryMmap;

/// virtio device type of a file system.
const TYPE_FS: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_FS;
/// Size of the hiprio queue and of the request queue.
const QUEUE_SIZES: [u16; 2] = [1024, 1024];
/// Request queues (the hiprio queue is not counted).
const NUM_REQUEST_QUEUES: u32 = 1;
/// Longest tag: the config space field's size.
pub const TAG_LEN: usize = 36;
/// Config space: tag (NUL padded), then num_request_queues (le32).
const CONFIG_LEN: usize = TAG_LEN + 4;

/// Errors while setting up a share.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The tag does not fit the config space or holds a NUL.
    #[error("virtio-fs tag '{0}' must be 1 to {TAG_LEN} bytes without NUL")]
    Tag(String),
    /// The shared directory cannot be resolved or served.
    #[error("cannot share directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The process may not hold the fds the share may need.
    #[error("virtio-fs tag '{tag}': {source}")]
    Fds { tag: String, source: std::io::Error },
    /// The device's thread.
    #[error("cannot start the virtio-fs thread: {0}")]
    Thread(std::io::Error),
}

/// A virtio-fs device sharing one host directory.
pub struct Fs {
    root: PathBuf,
    cache: FsCache,
    policy: Policy,
    /// Room for the share's fds in the process's limit.
    _fds: FdReservation,
    config: [u8; CONFIG_LEN],
    /// The active session, shared with the device's thread.
    session: SharedSession,
    /// The serving loop while active; stopped before `own_thread` ends.
    thread: Option<DeviceThread>,
    own_thread: DeviceWorker,
}

impl Fs {
    /// Shares `share.path` (symlinks in its own path resolved once, here) as
    /// `share.tag`, raising the process's limit of open files for the fds the
    /// share may hold.
    pub fn new(share: &FsConfig) -> Result<Self, FsError> {
        let (tag, dir) = (share.tag.as_str(), share.path.as_path());
        if tag.is_empty() || tag.len() > TAG_LEN || tag.contains('\0') {
            return Err(FsError::Tag(tag.to_owned()));
        }
        let dir_err = |source| FsError::Dir {
            path: dir.to_owned(),
            source,
        };
        let root = std::fs::canonicalize(dir).map_err(dir_err)?;
        if !root.is_dir() {
            return Err(dir_err(std::io::Error::other("not a directory")));
        }
        let policy = Policy {
            privileged: share.privileged,
            max_fds: usize::try_from(share.max_fds).unwrap_or(usize::MAX),
        };
        // Proves the backend can start (UTF-8 path, /proc mounted) before boot.
        backend::server(&root, share.cache, policy).map_err(dir_err)?;
        let fds = FdReservation::new(share.max_fds).map_err(|source| FsError::Fds {
            tag: tag.to_owned(),
            source,
        })?;
        let mut config = [0u8; CONFIG_LEN];
        config[..tag.len()].copy_from_slice(tag.as_bytes());
        config[TAG_LEN..].copy_from_slice(&NUM_REQUEST_QUEUES.to_le_bytes());
        Ok(Self {
            root,
            cache: share.cache,
            policy,
            _fds: fds,
            config,
            session: Arc::new(Mutex::new(None)),
            thread: None,
            own_thread: DeviceWorker::start("virtio-fs", ThreadKind::Fs)
                .map_err(FsError::Thread)?,
        })
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        TYPE_FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        1 << VIRTIO_RING_F_EVENT_IDX
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_space(&self.config, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    /// Starts a fresh file system (a new FUSE session) served on the device's
    /// own thread.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        _acked_features: u64,
        queues: Vec<ActiveQueue>,
        interrupt: Arc<VirtioInterrupt>,
    ) -> Result<(), ActivateError> {
        if queues.len() != QUEUE_SIZES.len() {
            return Err(ActivateError::QueueCount {
                device: "virtio-fs",
                expected: QUEUE_SIZES.len(),
                got: queues.len(),
            });
        }
        // A second activation (only tests do that) first stops the first thread.
        self.reset();
        let (queues, notifies): (Vec<_>, Vec<_>) =
            queues.into_iter().map(|a| (a.queue, a.notify)).unzip();
        let (root, cache, policy) = (self.root.clone(), self.cache, self.policy);
        let session = self.session.clone();
        // The file system is made on the device's thread: only its filter
        // allows opening files.
        self.thread = Some(self.own_thread.serve_events(
            EventRegistry::new()?,
            notifies,
            move || {
                let server = backend::server(&root, cache, policy)?;
                *lock(&session) = Some(FsSession {
                    mem,
                    queues,
                    interrupt,
                    server,
                    failed: false,
                });
                Ok(FsHandler::new(session))
            },
        )?);
        Ok(())
    }

    fn reset(&mut self) -> bool {
        // Dropping the loop stops it and waits for its end, or after a while
        // leaves it to a request blocked in the host kernel (a FIFO in the
        // share): the device's thread serves a new activation once that ends.
        self.thread = None;
        self.session = Arc::new(Mutex::new(None));
        true
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
