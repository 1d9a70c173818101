//! virtio-blk on a raw image file: read, write, flush and get-id, with up to
//! `seg_max` data buffers per request.

mod config;
mod device;
mod disk;
mod request;

pub use device::Block;
pub use disk::BlockError;
#[cfg(test)]
mod tests;
