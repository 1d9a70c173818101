//! virtio-rng: host entropy for the guest, so that it never blocks on
//! `getrandom` at boot.

mod device;

pub use device::Rng;
