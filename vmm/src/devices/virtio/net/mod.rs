//! virtio-net on a tap interface: one receive/transmit queue pair, mergeable
//! receive buffers, checksum and segmentation offloads as the tap allows.

mod device;
mod rx;
pub mod tap;
#[cfg(test)]
mod tests;
mod tx;
mod worker;

pub use device::{Net, NetError};
pub use tap::{Tap, TapError};
