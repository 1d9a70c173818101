//! virtio-fs, inline: the VMM itself serves a host directory to the guest
//! (Dragonball's design, no external virtiofsd), with fuse-backend-rs's FUSE
//! server over its passthrough file system.
//!
//! - `device.rs`: the virtio state machine (config space: tag + number of
//!   request queues; activation starts the device's thread, which serves the
//!   queues on the driver's notifications, off the VMM's event loop).
//! - `handler.rs`: serving the queues, one FUSE request per chain.
//! - `request.rs`: the checks the device makes before a request reaches the
//!   FUSE server (lookups of `.`/`..`, device nodes).
//! - `backend.rs`: the passthrough file system rooted at the shared directory.

mod backend;
mod device;
mod handler;
mod request;

pub use device::{Fs, FsError, TAG_LEN};
