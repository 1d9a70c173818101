//! virtio-fs, inline: the VMM itself serves a host directory to the guest
//! (Dragonball's design, no external virtiofsd), with fuse-backend-rs's FUSE
//! server over its passthrough file system.
//!
//! - `device.rs`: the virtio state machine (config space: tag + number of
//!   request queues; activation starts the device's thread, which serves the
//!   queues on the driver's notifications, off the VMM's event loop).
//! - `event_handler.rs`: serving the queues, one FUSE request per chain.
//! - `filter.rs`: what the guest may ask of the host (names, open flags,
//!   device nodes, setuid/setgid, xattrs) and how many host fds it may make
//!   the share hold, between the FUSE server and the passthrough file system.
//! - `tests.rs`: the device on mock queues over a temporary share.
//! - `backend.rs`: the passthrough file system rooted at the shared directory,
//!   and the process's limit of open files.

mod backend;
mod device;
mod event_handler;
#[doc(hidden)] // public for the fuzz targets (tests/fuzz)
pub mod filter;

pub use device::{Fs, FsError, TAG_LEN};
