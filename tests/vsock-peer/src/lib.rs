//! What the host side of the vsock suite and the guest peer agree on: the
//! data pattern and the digest format.

use sha2::{Digest, Sha256};

/// The byte at `offset` of the test pattern.
pub fn pattern_byte(offset: u64) -> u8 {
    (offset.wrapping_mul(2_654_435_761) >> 13) as u8
}

/// Fills `buf` with the pattern from `offset` on.
pub fn fill_pattern(buf: &mut [u8], offset: u64) {
    for (i, byte) in buf.iter_mut().enumerate() {
        *byte = pattern_byte(offset + i as u64);
    }
}

/// A running SHA-256 that prints as lowercase hex.
#[derive(Default)]
pub struct Digester(Sha256);

impl Digester {
    /// Adds `data`.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// The digest in hex.
    pub fn hex(self) -> String {
        self.0
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// The digest of `len` pattern bytes.
pub fn pattern_digest(len: u64) -> String {
    let mut digest = Digester::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut offset = 0;
    while offset < len {
        let n = (len - offset).min(buf.len() as u64) as usize;
        fill_pattern(&mut buf[..n], offset);
        digest.update(&buf[..n]);
        offset += n as u64;
    }
    digest.hex()
}
