//! The virtio-blk device: one request queue served from a raw image file.

use super::request::{Request, RequestKind, MAX_DATA_LEN, SECTOR_SIZE};
use crate::devices::virtio::{
    read_config_space, ActivateError, ActiveQueue, SingleQueue, VirtioDevice, VirtioInterrupt,
};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestMemoryMmap};

const TYPE_BLOCK: u32 = 2;
const QUEUE_SIZE: u16 = 256;
/// Feature: the device is read-only.
const VIRTIO_BLK_F_RO: u64 = 1 << 5;
/// Feature: the device supports flush.
const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
/// Length of the id string GET_ID returns.
const ID_LEN: usize = 20;

const STATUS_OK: u8 = 0;
const STATUS_IOERR: u8 = 1;
const STATUS_UNSUPP: u8 = 2;

/// Errors while opening a disk.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The image cannot be opened.
    #[error("cannot open disk {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A raw-file block device.
pub struct Block {
    file: File,
    capacity_bytes: u64,
    readonly: bool,
    id: [u8; ID_LEN],
    config: [u8; 8],
    active: Option<SingleQueue>,
}

impl Block {
    /// Opens `path` (read-only if asked); `id` is what GET_ID returns.
    pub fn open(path: &Path, readonly: bool, id: &str) -> Result<Self, BlockError> {
        let open_err = |source| BlockError::Open {
            path: path.to_owned(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(!readonly)
            .open(path)
            .map_err(open_err)?;
        let capacity_bytes = file.metadata().map_err(open_err)?.len();
        let mut id_bytes = [0u8; ID_LEN];
        for (slot, byte) in id_bytes.iter_mut().zip(id.bytes()) {
            *slot = byte;
        }
        Ok(Self {
            file,
            capacity_bytes,
            readonly,
            id: id_bytes,
            config: (capacity_bytes / SECTOR_SIZE).to_le_bytes(),
            active: None,
        })
    }

    /// Performs `request`; returns the status and the bytes written to the guest.
    fn execute(&self, mem: &GuestMemoryMmap, request: &Request) -> (u8, u32) {
        match request.kind {
            RequestKind::In | RequestKind::Out => {
                let Some(offset) = request.sector.checked_mul(SECTOR_SIZE) else {
                    return (STATUS_IOERR, 0);
                };
                let in_range = offset
                    .checked_add(request.data_len())
                    .is_some_and(|end| end <= self.capacity_bytes);
                if !in_range || (request.kind == RequestKind::Out && self.readonly) {
                    return (STATUS_IOERR, 0);
                }
                match self.transfer(mem, request, offset) {
                    Ok(written) => (STATUS_OK, written),
                    Err(_) => (STATUS_IOERR, 0),
                }
            }
            RequestKind::Flush => match self.file.sync_data() {
                Ok(()) => (STATUS_OK, 0),
                Err(_) => (STATUS_IOERR, 0),
            },
            RequestKind::GetId => {
                let Some(buffer) = request.data.first() else {
                    return (STATUS_IOERR, 0);
                };
                let len = (buffer.len as usize).min(ID_LEN);
                match mem.write_slice(&self.id[..len], buffer.addr) {
                    Ok(()) => (STATUS_OK, len as u32),
                    Err(_) => (STATUS_IOERR, 0),
                }
            }
            RequestKind::Unsupported => (STATUS_UNSUPP, 0),
        }
    }

    fn transfer(
        &self,
        mem: &GuestMemoryMmap,
        request: &Request,
        mut offset: u64,
    ) -> std::io::Result<u32> {
        let mut buf = Vec::new();
        let mut to_guest = 0u32;
        for data in &request.data {
            buf.resize(data.len.min(MAX_DATA_LEN) as usize, 0);
            if request.kind == RequestKind::In {
                self.file.read_exact_at(&mut buf, offset)?;
                mem.write_slice(&buf, data.addr)
                    .map_err(std::io::Error::other)?;
                to_guest += data.len;
            } else {
                mem.read_slice(&mut buf, data.addr)
                    .map_err(std::io::Error::other)?;
                self.file.write_all_at(&buf, offset)?;
            }
            offset += u64::from(data.len);
        }
        Ok(to_guest)
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_BLK_F_FLUSH | if self.readonly { VIRTIO_BLK_F_RO } else { 0 }
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_space(&self.config, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        _acked_features: u64,
        queues: Vec<ActiveQueue>,
        interrupt: Arc<VirtioInterrupt>,
    ) -> Result<(), ActivateError> {
        self.active = Some(SingleQueue::activate("virtio-blk", mem, queues, interrupt)?);
        Ok(())
    }

    fn process_queue(&mut self, _index: usize) {
        let Some(mut active) = self.active.take() else {
            return;
        };
        let mut served = false;
        while let Some(chain) = active.queue.pop_descriptor_chain(&active.mem) {
            let head = chain.head_index();
            // A chain that does not parse is completed with nothing written.
            let len = match Request::parse(chain, &active.mem) {
                Ok(request) => {
                    let (status, len) = self.execute(&active.mem, &request);
                    match active.mem.write_obj(status, request.status) {
                        Ok(()) => len + 1, // the status byte counts as written
                        Err(_) => 0,
                    }
                }
                Err(_) => 0,
            };
            if active.queue.add_used(&active.mem, head, len).is_err() {
                eprintln!("runv-vmm: virtio-blk: the used ring is outside guest memory");
                break;
            }
            served = true;
        }
        if served {
            active.signal_used("virtio-blk");
        }
        self.active = Some(active);
    }

    fn reset(&mut self) -> bool {
        self.active = None;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::{
        activate_on, desc, VRING_DESC_F_NEXT as NEXT, VRING_DESC_F_WRITE as WRITE,
    };
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestAddress;

    struct Fixture {
        mem: GuestMemoryMmap,
        image: PathBuf,
    }

    impl Fixture {
        fn new(name: &str) -> Self {
            let image =
                std::env::temp_dir().join(format!("runv-blk-{name}-{}", std::process::id()));
            let content: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
            std::fs::write(&image, content).unwrap();
            let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
            Self { mem, image }
        }

        fn header(&self, kind: u32, sector: u64) {
            self.mem.write_obj(kind, GuestAddress(0x8000)).unwrap();
            self.mem.write_obj(sector, GuestAddress(0x8008)).unwrap();
        }

        fn run(&self, block: &mut Block, descs: &[RawDescriptor]) -> (u8, u32) {
            let queue = MockSplitQueue::create(&self.mem, GuestAddress(0), 16);
            queue.build_desc_chain(descs).unwrap();
            activate_on(block, &self.mem, &queue);
            block.process_queue(0);
            let used = queue.used().ring().ref_at(0).unwrap().load();
            (self.mem.read_obj(GuestAddress(0xa000)).unwrap(), used.len())
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.image);
        }
    }

    fn io_chain(data_flags: u16) -> Vec<RawDescriptor> {
        vec![
            desc(0x8000, 16, NEXT),
            desc(0x9000, 512, data_flags | NEXT),
            desc(0xa000, 1, WRITE),
        ]
    }

    #[test]
    fn reads_and_writes_sectors() {
        let f = Fixture::new("rw");
        let mut block = Block::open(&f.image, false, "disk0").unwrap();
        f.header(0, 2);
        assert_eq!(f.run(&mut block, &io_chain(WRITE)), (STATUS_OK, 513));
        let mut got = [0u8; 512];
        f.mem.read_slice(&mut got, GuestAddress(0x9000)).unwrap();
        let expected: Vec<u8> = (1024..1536u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(&got[..], &expected[..]);

        f.mem
            .write_slice(&[0xab; 512], GuestAddress(0x9000))
            .unwrap();
        f.header(1, 1);
        assert_eq!(f.run(&mut block, &io_chain(0)), (STATUS_OK, 1));
        assert_eq!(
            &std::fs::read(&f.image).unwrap()[512..1024],
            &[0xab; 512][..]
        );
    }

    #[test]
    fn out_of_range_readonly_and_unknown_requests_fail_cleanly() {
        let f = Fixture::new("bad");
        let mut ro = Block::open(&f.image, true, "ro").unwrap();
        assert_ne!(ro.avail_features() & VIRTIO_BLK_F_RO, 0);
        f.header(1, 0);
        assert_eq!(
            f.run(&mut ro, &io_chain(0)).0,
            STATUS_IOERR,
            "write to a read-only disk"
        );
        f.header(0, 16);
        assert_eq!(
            f.run(&mut ro, &io_chain(WRITE)).0,
            STATUS_IOERR,
            "read past the end"
        );
        f.header(0, u64::MAX);
        assert_eq!(
            f.run(&mut ro, &io_chain(WRITE)).0,
            STATUS_IOERR,
            "sector overflow"
        );
        f.header(11, 0);
        assert_eq!(f.run(&mut ro, &io_chain(0)).0, STATUS_UNSUPP);
        f.header(0, 0);
        assert_eq!(
            f.run(&mut ro, &io_chain(0)).1,
            0,
            "read into a device-readable buffer"
        );
    }

    #[test]
    fn get_id_and_capacity() {
        let f = Fixture::new("id");
        let mut block = Block::open(&f.image, false, "runv-disk").unwrap();
        let mut capacity = [0u8; 8];
        block.read_config(0, &mut capacity);
        assert_eq!(u64::from_le_bytes(capacity), 16);
        f.header(8, 0);
        assert_eq!(f.run(&mut block, &io_chain(WRITE)), (STATUS_OK, 21));
        let mut id = [0u8; 9];
        f.mem.read_slice(&mut id, GuestAddress(0x9000)).unwrap();
        assert_eq!(&id, b"runv-disk");
    }
}
