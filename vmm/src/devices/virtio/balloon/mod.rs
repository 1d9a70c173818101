//! virtio-balloon, for free page reporting only: the guest tells the VMM
//! which blocks of its memory are free, and the VMM gives them back to the
//! host, so that an idle pod holds only what its guest really uses.
//!
//! The device never asks the guest to inflate (its target is always 0
//! pages); the inflate and deflate queues exist because every balloon driver
//! sets them up, and what arrives on them is acknowledged and otherwise
//! ignored.

mod device;
mod discard;
mod event_handler;

pub use device::{Balloon, Queues, QUEUE_COUNT, REPORTING_QUEUE};
