//! virtio-blk on a raw image file: read, write, flush, get-id, and on writable
//! disks discard and write zeroes (holes punched in the image), with up to
//! `seg_max` data buffers per request and event-index notification suppression.

mod config;
mod device;
mod disk;
mod event_handler;
#[doc(hidden)] // public for the fuzz targets (tests/fuzz)
pub mod request;

pub use device::Block;
pub use disk::BlockError;
#[cfg(test)]
mod tests;
