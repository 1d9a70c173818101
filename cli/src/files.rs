//! Bounded reads of host files: never more than asked for, and never through
//! a symlink in the last component (sandbox directories are written by the
//! shim and the VMM, not by this tool).

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Opens `path` for reading, refusing a symlink as its last component.
pub fn open_no_follow(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// At most `max` bytes of `path` (the rest is not read), as text with any
/// invalid UTF-8 replaced.
pub fn read_bounded(path: &Path, max: u64) -> io::Result<String> {
    let mut bytes = Vec::new();
    open_no_follow(path)?.take(max).read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Finds `needle` in the first `max` bytes of `path`, reading it in pieces:
/// the offset of its first byte.
pub fn find_in_file(path: &Path, needle: &[u8], max: u64) -> io::Result<Option<(u64, File)>> {
    const CHUNK: usize = 1 << 20;
    if needle.is_empty() {
        return Ok(None);
    }
    let mut file = open_no_follow(path)?;
    let mut reader = (&mut file).take(max);
    let mut window: Vec<u8> = Vec::with_capacity(CHUNK + needle.len());
    let mut window_start = 0u64;
    let mut chunk = vec![0u8; CHUNK];
    loop {
        let n = reader.read(&mut chunk)?;
        if n == 0 {
            return Ok(None);
        }
        window.extend_from_slice(&chunk[..n]);
        if let Some(at) = window.windows(needle.len()).position(|w| w == needle) {
            return Ok(Some((window_start + at as u64, file)));
        }
        // Keep the tail that may hold the start of a match.
        let keep = needle.len() - 1;
        let drop = window.len().saturating_sub(keep);
        window.drain(..drop);
        window_start += drop as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn finds_a_needle_across_chunks_and_stops_at_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let mut data = vec![b'x'; (1 << 20) - 3];
        data.extend_from_slice(b"Linux version 6.1");
        File::create(&path).unwrap().write_all(&data).unwrap();
        let found = find_in_file(&path, b"Linux version ", 1 << 24).unwrap();
        assert_eq!(found.map(|(at, _)| at), Some((1 << 20) - 3));
        assert!(find_in_file(&path, b"Linux version ", 1 << 10)
            .unwrap()
            .is_none());
        assert_eq!(read_bounded(&path, 4).unwrap(), "xxxx");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(read_bounded(&link, 4).is_err());
    }
}
