//! Guest memory to a file: the regions one after the other, pages that hold
//! only zeros left as holes, so that the file takes on disk (and in the page
//! cache of every VM mapped from it) only what the guest wrote.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use vm_memory::{GuestMemory, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress};

/// The unit checked for zeros.
const PAGE: usize = 4096;

/// Writes every region of `mem` into `file` (emptied first); returns the
/// bytes written, holes not counted. The guest must not run meanwhile.
pub fn save(mem: &GuestMemoryMmap, file: &File) -> io::Result<u64> {
    let total: u64 = mem.iter().map(|region| region.len()).sum();
    file.set_len(0)?;
    file.set_len(total)?;
    let (mut offset, mut written) = (0u64, 0u64);
    for region in mem.iter() {
        let host = region
            .get_host_address(MemoryRegionAddress(0))
            .map_err(io::Error::other)?;
        let len = region.len() as usize;
        // SAFETY: `host` is the region's live mapping of `len` bytes, which
        // outlives this call; no vCPU runs and no device thread writes while
        // a snapshot is taken, so the bytes do not change under the slice.
        let bytes = unsafe { std::slice::from_raw_parts(host.cast_const(), len) };
        written += write_nonzero_runs(bytes, file, offset)?;
        offset += len as u64;
    }
    file.sync_all()?;
    Ok(written)
}

/// Writes each run of pages of `bytes` that are not all zeros at its place
/// past `base`; returns the bytes written.
fn write_nonzero_runs(bytes: &[u8], file: &File, base: u64) -> io::Result<u64> {
    let mut written = 0u64;
    let mut run_start: Option<usize> = None;
    let mut flush = |start: usize, end: usize| -> io::Result<()> {
        file.write_all_at(&bytes[start..end], base + start as u64)?;
        written += (end - start) as u64;
        Ok(())
    };
    for (index, page) in bytes.chunks(PAGE).enumerate() {
        let at = index * PAGE;
        match (page.iter().all(|b| *b == 0), run_start) {
            (false, None) => run_start = Some(at),
            (true, Some(start)) => {
                flush(start, at)?;
                run_start = None;
            }
            _ => {}
        }
    }
    if let Some(start) = run_start {
        flush(start, bytes.len())?;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vstate::memory::{create_guest_memory, guest_memory_from_file};
    use std::os::unix::fs::MetadataExt;
    use vm_memory::{Bytes, GuestAddress};

    fn temp_file(name: &str) -> (File, std::path::PathBuf) {
        let path = std::env::temp_dir().join(format!("runv-{name}-{}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        (file, path)
    }

    #[test]
    fn only_written_pages_reach_the_file_and_map_back_privately() {
        let mem = create_guest_memory(64 << 20).unwrap();
        mem.write_obj(0x1122_3344u32, GuestAddress(0x1000)).unwrap();
        mem.write_obj(0x55u8, GuestAddress((32 << 20) + 7)).unwrap();
        let (file, path) = temp_file("memory-file");
        let written = save(&mem, &file).unwrap();
        assert_eq!(written, 2 * PAGE as u64, "two pages hold data");
        let meta = file.metadata().unwrap();
        assert_eq!(meta.len(), 64 << 20);
        assert!(meta.blocks() * 512 <= 64 * 1024, "holes stay holes");

        let first = guest_memory_from_file(64 << 20, &file).unwrap();
        let second = guest_memory_from_file(64 << 20, &file).unwrap();
        assert_eq!(
            first.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
            0x1122_3344
        );
        assert_eq!(
            first.read_obj::<u8>(GuestAddress((32 << 20) + 7)).unwrap(),
            0x55
        );
        first.write_obj(0xffu8, GuestAddress(0x1000)).unwrap();
        assert_eq!(
            second.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
            0x1122_3344,
            "a write stays in its own mapping"
        );
        let mut on_disk = [0u8; 4];
        file.read_exact_at(&mut on_disk, 0x1000).unwrap();
        assert_eq!(
            u32::from_ne_bytes(on_disk),
            0x1122_3344,
            "nor reaches the file"
        );
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn a_run_to_the_end_of_a_region_is_written() {
        let (file, path) = temp_file("memory-tail");
        let mut bytes = vec![0u8; 4 * PAGE];
        bytes[2 * PAGE] = 1;
        bytes[4 * PAGE - 1] = 2;
        file.set_len(bytes.len() as u64).unwrap();
        assert_eq!(
            write_nonzero_runs(&bytes, &file, 0).unwrap(),
            2 * PAGE as u64
        );
        let mut back = vec![0u8; bytes.len()];
        file.read_exact_at(&mut back, 0).unwrap();
        assert_eq!(back, bytes);
        std::fs::remove_file(path).unwrap();
    }
}
