//! virtio-net on a tap interface: one receive/transmit queue pair, mergeable
//! receive buffers, checksum and segmentation offloads as the tap allows.

mod device;
mod event_handler;
#[doc(hidden)] // public for the fuzz targets (tests/fuzz)
pub mod frame_io;
#[doc(hidden)] // public for the fuzz targets (tests/fuzz)
pub mod rx;
pub mod tap;
#[cfg(test)]
mod tests;
#[doc(hidden)] // public for the fuzz targets (tests/fuzz)
pub mod tx;

pub use device::{Net, NetError};
pub use tap::{Tap, TapError};
