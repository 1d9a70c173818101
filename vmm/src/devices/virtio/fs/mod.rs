//! virtio-fs, inline: the VMM itself serves a host directory to the guest
//! (Dragonball's design, no external virtiofsd), with fuse-backend-rs's FUSE
//! server over its passthrough file system.
//!
//! - `device.rs`: the virtio state machine (config space: tag + number of
//!   request queues; activation starts the worker).
//! - `worker.rs`: the thread that serves the queues, so that file system work
//!   never stalls the VMM's event loop.
//! - `request.rs`: the checks the device makes before a request reaches the
//!   FUSE server (lookups of `.`/`..`, device nodes).
//! - `backend.rs`: the passthrough file system rooted at the shared directory.

mod backend;
mod device;
mod request;
mod worker;

pub use device::{Fs, FsError, TAG_LEN};
