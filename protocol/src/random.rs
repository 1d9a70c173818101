//! Bytes from the host's random generator (`getrandom`), for what the shim
//! and VMM draw: guest entropy, MAC addresses.

use std::io;

/// Fills `buf` from the kernel's generator; an error if it gave fewer
/// bytes (for up to 256 bytes it gives all, once the generator is ready).
pub fn fill(buf: &mut [u8]) -> io::Result<()> {
    // SAFETY: getrandom writes at most `buf.len()` bytes into `buf`.
    let got = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    match usize::try_from(got) {
        Ok(got) if got == buf.len() => Ok(()),
        Ok(got) => Err(io::Error::other(format!(
            "getrandom gave {got} of {} bytes",
            buf.len()
        ))),
        Err(_) => Err(io::Error::last_os_error()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn fills_the_whole_buffer() {
        let (mut first, mut second) = ([0u8; 64], [0u8; 64]);
        super::fill(&mut first).unwrap();
        super::fill(&mut second).unwrap();
        assert_ne!(first, second);
        super::fill(&mut []).unwrap();
    }
}
