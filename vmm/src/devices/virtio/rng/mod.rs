//! virtio-rng: host entropy for the guest, so that it never blocks on
//! `getrandom` at boot.

mod bucket;
mod device;
mod event_handler;

pub use device::Rng;
