//! virtio-vsock in userspace, with the host side on Unix sockets
//! (Firecracker's hybrid vsock): no vhost-vsock module needed.

mod connection;
mod device;
mod event_handler;
mod handshake;
#[doc(hidden)] // public for the fuzz targets (tests/fuzz)
pub mod muxer;
pub mod packet;

pub use device::{Vsock, VsockError};
