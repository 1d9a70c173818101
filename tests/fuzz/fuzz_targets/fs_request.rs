//! virtio-fs: FUSE requests from every chain a guest makes available, decoded
//! by fuse-backend-rs's server as the device does, through the share's policy
//! layer (`fs::filter::Filtered`) down to a model of the passthrough file
//! system. The model touches no host file: it checks that only what the
//! policy allows reaches it (no `.`/`..` lookups, no O_PATH or O_TMPFILE
//! opens, O_NOFOLLOW always, no device nodes, no setuid/setgid on an
//! unprivileged share, no `trusted.*` or capability xattrs set) and that the
//! guest never makes it hold more fds than the share's bound.
//!
//! Input: a policy byte (bit 0: privileged; bits 1-4: the fd bound), then the
//! chains (`Driver::decode_chains`); a read-only descriptor inline holds a
//! FUSE request (a 40-byte `fuse_in_header`, then its arguments).

#![no_main]

use fuse_backend_rs::abi::fuse_abi::{stat64, CreateIn};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileSystem, FsOptions, GetxattrReply, ListxattrReply, OpenOptions,
    SetattrValid, ZeroCopyReader, ZeroCopyWriter, ROOT_ID,
};
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::transport::{Reader, VirtioFsWriter};
use libfuzzer_sys::fuzz_target;
use runv_fuzz::{memory, Driver, Input, Ring, MAX_CHAINS};
use std::collections::HashMap;
use std::ffi::CStr;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use virtio_queue::QueueT;
use vmm::devices::virtio::fs::filter::{Filtered, Policy};

/// Open flags the policy lets reach the host (with O_NOFOLLOW always).
const OPEN_FLAGS: i32 = libc::O_ACCMODE
    | libc::O_APPEND
    | libc::O_NONBLOCK
    | libc::O_TRUNC
    | libc::O_DIRECTORY
    | libc::O_SYNC
    | libc::O_DSYNC
    | libc::O_NOFOLLOW;
const SETID: u32 = libc::S_ISUID | libc::S_ISGID;
const FILE_MODE: u32 = libc::S_IFREG | 0o6755;
const DIR_MODE: u32 = libc::S_IFDIR | 0o2755;

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

/// What the model holds, as the passthrough file system would in fds.
#[derive(Default)]
struct State {
    /// Inode of each (parent, name) ever looked up or made.
    names: HashMap<(u64, Vec<u8>), u64>,
    /// Mode of each inode.
    modes: HashMap<u64, u32>,
    /// Lookups not forgotten yet, per inode (an O_PATH fd each inode).
    lookups: HashMap<u64, u64>,
    /// Open handles and their inodes.
    handles: HashMap<u64, u64>,
    next_inode: u64,
    next_handle: u64,
}

impl State {
    fn fds(&self) -> usize {
        self.lookups.len() + self.handles.len()
    }

    fn mode(&self, inode: u64) -> u32 {
        if inode == ROOT_ID {
            return DIR_MODE;
        }
        self.modes.get(&inode).copied().unwrap_or(FILE_MODE)
    }

    /// An entry for `name` in `parent`, made with `mode` if new; counts a
    /// lookup.
    fn entry(&mut self, parent: u64, name: &CStr, mode: u32) -> Entry {
        let key = (parent, name.to_bytes().to_vec());
        let inode = match self.names.get(&key) {
            Some(&inode) => inode,
            None => {
                self.next_inode += 1;
                let inode = ROOT_ID + self.next_inode;
                self.names.insert(key, inode);
                self.modes.insert(inode, mode);
                inode
            }
        };
        *self.lookups.entry(inode).or_insert(0) += 1;
        let mut attr: stat64 = zeroed_stat();
        attr.st_ino = inode;
        attr.st_mode = self.mode(inode);
        Entry {
            inode,
            generation: 0,
            attr,
            attr_flags: 0,
            attr_timeout: Duration::ZERO,
            entry_timeout: Duration::ZERO,
        }
    }

    fn forget(&mut self, inode: u64, count: u64) {
        if let Some(lookups) = self.lookups.get_mut(&inode) {
            *lookups = lookups.saturating_sub(count);
            if *lookups == 0 {
                self.lookups.remove(&inode);
            }
        }
    }

    fn open(&mut self, inode: u64) -> u64 {
        self.next_handle += 1;
        self.handles.insert(self.next_handle, inode);
        self.next_handle
    }

    fn release(&mut self, inode: u64, handle: u64) -> io::Result<()> {
        match self.handles.get(&handle) {
            Some(&of) if of == inode => {
                self.handles.remove(&handle);
                Ok(())
            }
            _ => Err(errno(libc::EBADF)),
        }
    }
}

fn zeroed_stat() -> stat64 {
    // SAFETY: stat64 is plain data; all zeroes is a valid value.
    unsafe { std::mem::zeroed() }
}

/// The model of the passthrough file system under the policy layer.
struct Model {
    privileged: bool,
    state: Arc<Mutex<State>>,
}

impl Model {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check_open_flags(flags: u32) {
        let flags = flags as i32;
        assert_eq!(
            flags & libc::O_PATH,
            0,
            "O_PATH reached the host: {flags:#o}"
        );
        assert_ne!(
            flags & libc::O_TMPFILE,
            libc::O_TMPFILE,
            "O_TMPFILE: {flags:#o}"
        );
        assert_ne!(flags & libc::O_NOFOLLOW, 0, "no O_NOFOLLOW: {flags:#o}");
        assert_eq!(
            flags & !OPEN_FLAGS & !(libc::O_CREAT | libc::O_EXCL),
            0,
            "{flags:#o}"
        );
    }

    fn check_new_mode(&self, mode: u32, dir: bool) {
        if !self.privileged {
            let refused = if dir { libc::S_ISUID } else { SETID };
            assert_eq!(
                mode & refused,
                0,
                "setuid/setgid reached the host: {mode:#o}"
            );
        }
    }

    fn check_xattr_change(&self, name: &CStr, removing: bool) {
        let name = name.to_bytes();
        assert!(!name.starts_with(b"trusted."), "a trusted.* xattr changed");
        if !removing && !self.privileged {
            assert_ne!(name, b"security.capability", "file capabilities set");
        }
    }
}

impl FileSystem for Model {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, _capable: FsOptions) -> io::Result<FsOptions> {
        Ok(FsOptions::empty())
    }

    fn destroy(&self) {
        // As the passthrough file system: every inode and handle is dropped.
        let mut state = self.state();
        state.lookups.clear();
        state.handles.clear();
    }

    fn lookup(&self, _ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        assert!(
            !matches!(name.to_bytes(), b"." | b".."),
            "lookup of {name:?}"
        );
        if name.to_bytes().starts_with(b"missing") {
            return Err(errno(libc::ENOENT));
        }
        Ok(self.state().entry(parent, name, FILE_MODE))
    }

    fn forget(&self, _ctx: &Context, inode: u64, count: u64) {
        self.state().forget(inode, count);
    }

    fn batch_forget(&self, _ctx: &Context, requests: Vec<(u64, u64)>) {
        let mut state = self.state();
        for (inode, count) in requests {
            state.forget(inode, count);
        }
    }

    fn getattr(
        &self,
        _ctx: &Context,
        inode: u64,
        _handle: Option<u64>,
    ) -> io::Result<(stat64, Duration)> {
        let mut attr = zeroed_stat();
        attr.st_ino = inode;
        attr.st_mode = self.state().mode(inode);
        Ok((attr, Duration::ZERO))
    }

    fn setattr(
        &self,
        _ctx: &Context,
        inode: u64,
        attr: stat64,
        _handle: Option<u64>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        let mut state = self.state();
        let current = state.mode(inode);
        if valid.contains(SetattrValid::MODE) {
            let dir = current & libc::S_IFMT == libc::S_IFDIR;
            self.check_new_mode(attr.st_mode, dir);
            let mode = (current & libc::S_IFMT) | (attr.st_mode & !libc::S_IFMT);
            state.modes.insert(inode, mode);
        }
        if valid.contains(SetattrValid::SIZE) && !self.privileged {
            let mode = state.mode(inode);
            assert!(
                mode & libc::S_IFMT != libc::S_IFREG || mode & SETID == 0,
                "a setuid/setgid file truncated"
            );
        }
        let mut attr = attr;
        attr.st_mode = state.mode(inode);
        Ok((attr, Duration::ZERO))
    }

    fn mknod(
        &self,
        _ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        rdev: u32,
        _umask: u32,
    ) -> io::Result<Entry> {
        let kind = mode & libc::S_IFMT;
        assert_ne!(kind, libc::S_IFBLK, "a block device node");
        assert!(
            kind != libc::S_IFCHR || rdev == 0,
            "a character device {rdev:#x}"
        );
        self.check_new_mode(mode, false);
        Ok(self.state().entry(parent, name, mode))
    }

    fn mkdir(
        &self,
        _ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        _umask: u32,
    ) -> io::Result<Entry> {
        self.check_new_mode(mode, true);
        Ok(self
            .state()
            .entry(parent, name, libc::S_IFDIR | (mode & !libc::S_IFMT)))
    }

    fn symlink(
        &self,
        _ctx: &Context,
        _linkname: &CStr,
        parent: u64,
        name: &CStr,
    ) -> io::Result<Entry> {
        Ok(self.state().entry(parent, name, libc::S_IFLNK | 0o777))
    }

    fn link(
        &self,
        _ctx: &Context,
        inode: u64,
        newparent: u64,
        newname: &CStr,
    ) -> io::Result<Entry> {
        let mut state = self.state();
        // As the passthrough file system: only an inode the guest holds can
        // be linked (EBADF otherwise), and never a directory.
        if !state.lookups.contains_key(&inode) {
            return Err(errno(libc::EBADF));
        }
        let mode = state.mode(inode);
        if mode & libc::S_IFMT == libc::S_IFDIR {
            return Err(errno(libc::EPERM));
        }
        state
            .names
            .insert((newparent, newname.to_bytes().to_vec()), inode);
        Ok(state.entry(newparent, newname, mode))
    }

    fn open(
        &self,
        _ctx: &Context,
        inode: u64,
        flags: u32,
        _fuse_flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        Self::check_open_flags(flags);
        assert_eq!(flags as i32 & (libc::O_CREAT | libc::O_EXCL), 0);
        let mut state = self.state();
        if flags as i32 & libc::O_TRUNC != 0 && !self.privileged {
            let mode = state.mode(inode);
            assert!(
                mode & libc::S_IFMT != libc::S_IFREG || mode & SETID == 0,
                "O_TRUNC of a setuid/setgid file"
            );
        }
        Ok((Some(state.open(inode)), OpenOptions::empty(), None))
    }

    fn create(
        &self,
        _ctx: &Context,
        parent: u64,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        Self::check_open_flags(args.flags);
        assert_ne!(args.flags as i32 & libc::O_EXCL, 0, "CREATE without O_EXCL");
        assert_eq!(
            args.flags as i32 & libc::O_DIRECTORY,
            0,
            "CREATE with O_DIRECTORY"
        );
        self.check_new_mode(args.mode, false);
        let mut state = self.state();
        if state
            .names
            .contains_key(&(parent, name.to_bytes().to_vec()))
        {
            return Err(errno(libc::EEXIST));
        }
        let entry = state.entry(parent, name, libc::S_IFREG | (args.mode & !libc::S_IFMT));
        let handle = state.open(entry.inode);
        Ok((entry, Some(handle), OpenOptions::empty(), None))
    }

    #[allow(clippy::too_many_arguments)]
    fn read(
        &self,
        _ctx: &Context,
        _inode: u64,
        _handle: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        _offset: u64,
        _lock_owner: Option<u64>,
        flags: u32,
    ) -> io::Result<usize> {
        assert_eq!(flags as i32 & !OPEN_FLAGS, 0, "read flags {flags:#o}");
        let data = vec![0x5a; (size as usize).min(4096)];
        w.write(&data)
    }

    #[allow(clippy::too_many_arguments)]
    fn write(
        &self,
        _ctx: &Context,
        inode: u64,
        _handle: u64,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        _offset: u64,
        _lock_owner: Option<u64>,
        _delayed_write: bool,
        flags: u32,
        _fuse_flags: u32,
    ) -> io::Result<usize> {
        assert_eq!(flags as i32 & !OPEN_FLAGS, 0, "write flags {flags:#o}");
        if !self.privileged {
            let mode = self.state().mode(inode);
            assert!(
                mode & libc::S_IFMT != libc::S_IFREG || mode & SETID == 0,
                "a write to a setuid/setgid file"
            );
        }
        let mut sink = io::sink();
        let mut buf = vec![0u8; (size as usize).min(1 << 20)];
        let n = io::Read::read(r, &mut buf)?;
        io::Write::write_all(&mut sink, &buf[..n])?;
        Ok(n)
    }

    fn fallocate(
        &self,
        _ctx: &Context,
        inode: u64,
        _handle: u64,
        _mode: u32,
        _offset: u64,
        _length: u64,
    ) -> io::Result<()> {
        if !self.privileged {
            let mode = self.state().mode(inode);
            assert!(mode & libc::S_IFMT != libc::S_IFREG || mode & SETID == 0);
        }
        Ok(())
    }

    fn release(
        &self,
        _ctx: &Context,
        inode: u64,
        _flags: u32,
        handle: u64,
        _flush: bool,
        _flock_release: bool,
        _lock_owner: Option<u64>,
    ) -> io::Result<()> {
        self.state().release(inode, handle)
    }

    fn setxattr(
        &self,
        _ctx: &Context,
        _inode: u64,
        name: &CStr,
        _value: &[u8],
        _flags: u32,
    ) -> io::Result<()> {
        self.check_xattr_change(name, false);
        Ok(())
    }

    fn getxattr(
        &self,
        _ctx: &Context,
        _inode: u64,
        _name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        if size == 0 {
            return Ok(GetxattrReply::Count(4));
        }
        Ok(GetxattrReply::Value(b"seen".to_vec()))
    }

    fn listxattr(&self, _ctx: &Context, _inode: u64, _size: u32) -> io::Result<ListxattrReply> {
        Ok(ListxattrReply::Names(
            b"user.a\0trusted.overlay.opaque\0security.capability\0".to_vec(),
        ))
    }

    fn removexattr(&self, _ctx: &Context, _inode: u64, name: &CStr) -> io::Result<()> {
        self.check_xattr_change(name, true);
        Ok(())
    }

    fn opendir(
        &self,
        _ctx: &Context,
        inode: u64,
        flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions)> {
        Self::check_open_flags(flags);
        Ok((Some(self.state().open(inode)), OpenOptions::empty()))
    }

    fn readdirplus(
        &self,
        _ctx: &Context,
        inode: u64,
        _handle: u64,
        _size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        // As the passthrough file system: each entry is looked up; one that
        // does not fit is forgotten again and ends the listing.
        for (i, name) in [c"x", c"y", c"z"].iter().enumerate().skip(offset as usize) {
            let entry = self.state().entry(inode, name, FILE_MODE);
            let dir_entry = DirEntry {
                ino: entry.inode,
                offset: i as u64 + 1,
                type_: libc::DT_REG as u32,
                name: name.to_bytes(),
            };
            let looked_up = entry.inode;
            match add_entry(dir_entry, entry) {
                Ok(0) => {
                    self.state().forget(looked_up, 1);
                    break;
                }
                Ok(_) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    fn releasedir(&self, _ctx: &Context, inode: u64, _flags: u32, handle: u64) -> io::Result<()> {
        self.state().release(inode, handle)
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let policy_byte = input.u8();
    let policy = Policy {
        privileged: policy_byte & 1 != 0,
        max_fds: usize::from((policy_byte >> 1) & 0xf),
    };
    let state = Arc::new(Mutex::new(State::default()));
    let model = Model {
        privileged: policy.privileged,
        state: state.clone(),
    };
    let server = Server::new(Filtered::new(model, policy));

    let mem = memory();
    let ring = Ring::new(0, 256);
    let mut driver = Driver::new(&mem, ring, 0);
    driver.decode_chains(&mut input);
    let mut queue = ring.queue(false);
    for _ in 0..MAX_CHAINS {
        let Some(chain) = queue.pop_descriptor_chain(&mem) else {
            break;
        };
        let (Ok(reader), Ok(writer)) = (
            Reader::from_descriptor_chain(&mem, chain.clone()),
            VirtioFsWriter::new(&mem, chain),
        ) else {
            continue;
        };
        let _ = server.handle_message(reader, writer.into(), None, None);
        let held = state.lock().unwrap_or_else(|e| e.into_inner()).fds();
        assert!(
            held <= policy.max_fds,
            "the guest made the share hold {held} fds, past its bound of {}",
            policy.max_fds
        );
    }
});
