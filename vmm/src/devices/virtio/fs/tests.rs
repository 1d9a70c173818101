//! Tests of the virtio-fs device: FUSE requests on mock queues over a
//! temporary share.

use super::*;
use crate::devices::virtio::test_utils::{
    desc, VRING_DESC_F_NEXT as NEXT, VRING_DESC_F_WRITE as WRITE,
};
use fuse_backend_rs::abi::fuse_abi::{EntryOut, InitOut, OutHeader};
use std::path::Path;
use std::time::{Duration, Instant};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

const OPCODE_LOOKUP: u32 = 1;
const OPCODE_READLINK: u32 = 5;
const OPCODE_MKNOD: u32 = 8;
const OPCODE_OPEN: u32 = 14;
const OPCODE_INIT: u32 = 26;
const REQUEST: u64 = 0x1_0000;
const REPLY: u64 = 0x2_0000;
const HEADER_LEN: usize = 40;

/// A share with room for few fds: tests run side by side under the
/// process's limit.
fn share(tag: &str, dir: &Path, cache: FsCache) -> FsConfig {
    FsConfig {
        cache,
        max_fds: 256,
        ..FsConfig::new(tag, dir)
    }
}

/// A request: fuse_in_header followed by `body`.
fn request(opcode: u32, unique: u64, nodeid: u64, body: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&((HEADER_LEN + body.len()) as u32).to_le_bytes());
    bytes.extend_from_slice(&opcode.to_le_bytes());
    bytes.extend_from_slice(&unique.to_le_bytes());
    bytes.extend_from_slice(&nodeid.to_le_bytes());
    bytes.extend_from_slice(&[0u8; 16]); // uid, gid, pid, padding
    bytes.extend_from_slice(body);
    bytes
}

fn init_request() -> Vec<u8> {
    let body: Vec<u8> = [7u32, 31, 0, 0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    request(OPCODE_INIT, 1, 0, &body)
}

struct Rig<'a> {
    mem: &'a GuestMemoryMmap,
    queue: MockSplitQueue<'a, GuestMemoryMmap>,
    /// The request queue's notification, as the transport would signal it.
    notify: EventFd,
    fs: Fs,
    dir: PathBuf,
    served: u16,
}

impl<'a> Rig<'a> {
    fn new(mem: &'a GuestMemoryMmap, name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("runv-fs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("hello"), b"hello").unwrap();
        let hiprio = MockSplitQueue::create(mem, GuestAddress(0), 16);
        let queue = MockSplitQueue::create(mem, GuestAddress(0x4000), 16);
        let mut fs = Fs::new(&share("runv", &dir, FsCache::Auto)).unwrap();
        let interrupt = Arc::new(VirtioInterrupt::new(
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        ));
        let notify = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let queues = vec![
            ActiveQueue {
                queue: hiprio.create_queue().unwrap(),
                notify: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            },
            ActiveQueue {
                queue: queue.create_queue().unwrap(),
                notify: notify.try_clone().unwrap(),
            },
        ];
        fs.activate(mem.clone(), 0, queues, interrupt).unwrap();
        Self {
            mem,
            queue,
            notify,
            fs,
            dir,
            served: 0,
        }
    }

    /// Runs a chain through the device's thread, notified as the driver
    /// does; the used length.
    fn run(&mut self, descs: &[RawDescriptor]) -> u32 {
        self.mem
            .write_slice(&[0u8; 0x1000], GuestAddress(REPLY))
            .unwrap();
        self.queue.build_desc_chain(descs).unwrap();
        self.notify.write(1).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.queue.used().idx().load() == self.served {
            assert!(
                Instant::now() < deadline,
                "the device's thread did not answer"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        let used = self
            .queue
            .used()
            .ring()
            .ref_at(self.served as usize)
            .unwrap()
            .load();
        self.served += 1;
        used.len()
    }

    /// Sends a well-formed request; the reply header.
    fn send(&mut self, bytes: &[u8]) -> OutHeader {
        self.mem.write_slice(bytes, GuestAddress(REQUEST)).unwrap();
        let len = self.run(&[
            desc(REQUEST, bytes.len() as u32, NEXT),
            desc(REPLY, 0x1000, WRITE),
        ]);
        let header: OutHeader = self.mem.read_obj(GuestAddress(REPLY)).unwrap();
        assert_eq!(header.len, len);
        header
    }

    fn reply<T: vm_memory::ByteValued>(&self) -> T {
        self.mem.read_obj(GuestAddress(REPLY + 16)).unwrap()
    }
}

impl Drop for Rig<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
}

#[test]
fn config_space_holds_tag_and_queue_count() {
    let dir = std::env::temp_dir();
    let fs = Fs::new(&share("runv-share", &dir, FsCache::Never)).unwrap();
    let mut tag = [0xffu8; TAG_LEN];
    fs.read_config(0, &mut tag);
    assert_eq!(&tag[..10], b"runv-share");
    assert!(tag[10..].iter().all(|b| *b == 0), "NUL padded");
    let mut count = [0u8; 4];
    fs.read_config(TAG_LEN as u64, &mut count);
    assert_eq!(u32::from_le_bytes(count), 1);
    let mut past = [0xffu8; 4];
    fs.read_config(u64::MAX, &mut past);
    assert_eq!(past, [0; 4]);
    assert_eq!((fs.device_type(), fs.queue_max_sizes().len()), (26, 2));
}

#[test]
fn bad_tags_and_dirs_are_refused() {
    let dir = std::env::temp_dir();
    assert!(matches!(
        Fs::new(&share("", &dir, FsCache::Auto)),
        Err(FsError::Tag(_))
    ));
    assert!(matches!(
        Fs::new(&share(&"t".repeat(37), &dir, FsCache::Auto)),
        Err(FsError::Tag(_))
    ));
    let Err(err) = Fs::new(&share("t", Path::new("/nonexistent/share"), FsCache::Auto)) else {
        panic!("a missing directory was accepted");
    };
    assert!(err.to_string().contains("/nonexistent/share"));
}

#[test]
fn init_then_lookup_of_a_file() {
    let mem = memory();
    let mut rig = Rig::new(&mem, "lookup");
    let header = rig.send(&init_request());
    assert_eq!((header.error, header.unique), (0, 1));
    let init: InitOut = rig.reply();
    assert_eq!(init.major, 7);

    let header = rig.send(&request(OPCODE_LOOKUP, 2, 1, b"hello\0"));
    assert_eq!((header.error, header.unique), (0, 2));
    let entry: EntryOut = rig.reply();
    assert_eq!(entry.attr.size, 5);
    assert_ne!(entry.nodeid, 1);

    let header = rig.send(&request(OPCODE_LOOKUP, 3, 1, b"missing\0"));
    assert_eq!(header.error, -libc::ENOENT);
    assert!(rig.fs.reset(), "the device's thread stops on reset");
    assert_ne!(rig.fs.avail_features() & (1 << VIRTIO_RING_F_EVENT_IDX), 0);
}

#[test]
fn lookups_of_dot_and_dotdot_and_device_nodes_are_refused() {
    let mem = memory();
    let mut rig = Rig::new(&mem, "escape");
    assert_eq!(rig.send(&init_request()).error, 0);
    for name in [&b"..\0"[..], b".\0"] {
        let header = rig.send(&request(OPCODE_LOOKUP, 4, 1, name));
        assert_eq!(
            (header.error, header.unique, header.len),
            (-libc::EPERM, 4, 16)
        );
    }
    // fuse_mknod_in: mode (block device), rdev 8:0, umask, padding; name.
    let mut mknod: Vec<u8> = [libc::S_IFBLK | 0o600, 0x800, 0, 0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    mknod.extend_from_slice(b"sda\0");
    assert_eq!(
        rig.send(&request(OPCODE_MKNOD, 5, 1, &mknod)).error,
        -libc::EPERM
    );
    assert!(!rig.dir.join("sda").exists());
}

#[test]
fn a_symlink_out_of_the_share_is_never_followed_on_the_host() {
    let mem = memory();
    let mut rig = Rig::new(&mem, "symlink");
    std::os::unix::fs::symlink("/etc", rig.dir.join("out")).unwrap();
    assert_eq!(rig.send(&init_request()).error, 0);
    assert_eq!(rig.send(&request(OPCODE_LOOKUP, 2, 1, b"out\0")).error, 0);
    let entry: EntryOut = rig.reply();
    assert_eq!(entry.attr.mode & libc::S_IFMT, libc::S_IFLNK);
    // The guest gets the link's text, to resolve in its own namespace.
    assert_eq!(
        rig.send(&request(OPCODE_READLINK, 3, entry.nodeid, &[]))
            .error,
        0
    );
    let mut target = [0u8; 4];
    mem.read_slice(&mut target, GuestAddress(REPLY + 16))
        .unwrap();
    assert_eq!(&target, b"/etc");
    // A hostile guest kernel using the link as a directory or opening it
    // reaches nothing on the host.
    let header = rig.send(&request(OPCODE_LOOKUP, 4, entry.nodeid, b"passwd\0"));
    assert_ne!(header.error, 0, "lookup through a symlink");
    let open: Vec<u8> = [libc::O_RDONLY as u32, 0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let header = rig.send(&request(OPCODE_OPEN, 5, entry.nodeid, &open));
    assert_ne!(header.error, 0, "open of a symlink");
}

#[test]
fn malformed_chains_get_no_reply_and_do_not_stop_the_device() {
    let mem = memory();
    let mut rig = Rig::new(&mem, "malformed");
    let init = init_request();
    mem.write_slice(&init, GuestAddress(REQUEST)).unwrap();
    // Header cut short.
    assert_eq!(
        rig.run(&[desc(REQUEST, 10, NEXT), desc(REPLY, 0x1000, WRITE)]),
        0
    );
    // No buffer for the reply.
    assert_eq!(rig.run(&[desc(REQUEST, init.len() as u32, 0)]), 0);
    // Reply buffer too small for the answer.
    assert_eq!(
        rig.run(&[
            desc(REQUEST, init.len() as u32, NEXT),
            desc(REPLY, 8, WRITE)
        ]),
        0
    );
    // Buffers outside guest memory.
    assert_eq!(
        rig.run(&[desc(0xfff_0000, 64, NEXT), desc(REPLY, 0x1000, WRITE)]),
        0
    );
    assert_eq!(
        rig.run(&[
            desc(REQUEST, init.len() as u32, NEXT),
            desc(0xff_f000, 0x2000, WRITE)
        ]),
        0
    );
    // Still serving.
    assert_eq!(rig.send(&init).error, 0);
}
