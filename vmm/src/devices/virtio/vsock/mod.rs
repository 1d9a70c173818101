//! virtio-vsock in userspace, with the host side on Unix sockets
//! (Firecracker's hybrid vsock): no vhost-vsock module needed.

mod connection;
mod device;
mod handshake;
mod muxer;
pub mod packet;

pub use device::{Vsock, VsockError};
