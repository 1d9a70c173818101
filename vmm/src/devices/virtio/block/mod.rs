//! virtio-blk on a raw image file: read, write, flush and get-id.

mod device;
mod request;

pub use device::{Block, BlockError};
