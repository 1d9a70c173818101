//! What a guest may ask of the host through a share: a layer between the FUSE
//! server and the passthrough file system that checks and rewrites requests,
//! and bounds the host fds the guest makes the VMM hold. The guest (its root,
//! its kernel) is hostile: nothing here trusts what its kernel would normally
//! have checked.
//!
//! - Names: LOOKUP of `.` and `..` is refused (EPERM): the passthrough file
//!   system allows them for NFS export, and `..` of a directory the host moved
//!   out of the share would lead outside it; the guest's VFS never sends
//!   either.
//! - Open flags (OPEN, OPENDIR, CREATE, and READ and WRITE, whose flags the
//!   passthrough file system re-applies with F_SETFL): O_PATH is refused
//!   (EINVAL; with it, O_CREAT|O_EXCL is ignored and a last component that is a
//!   symlink is followed on the host), and so is O_TMPFILE (an unnamed file
//!   FUSE has no message for). Only the access mode and O_APPEND, O_NONBLOCK,
//!   O_TRUNC, O_DIRECTORY (not on CREATE), O_SYNC and O_DSYNC, plus O_CREAT and
//!   O_EXCL on CREATE, reach the host; O_NOFOLLOW is always added. Dropped:
//!   O_DIRECT (as virtiofsd does: the guest's O_DIRECT is served by its own
//!   kernel, while on the host it would make the guest's buffers, which it
//!   may change in flight, the source of direct I/O, and fails on tmpfs),
//!   O_NOATIME (honoured only for the file's owner, which the host cannot
//!   check for the guest), O_ASYNC, O_NOCTTY and kernel-internal bits.
//!   CREATE always runs with O_EXCL: a name that exists is then looked up and
//!   opened like any other (the passthrough file system's own path for it
//!   leaks the inode when the open fails).
//! - Device nodes: MKNOD of a block device, or of a character device other
//!   than 0:0 (an overlayfs whiteout), is refused (EPERM): the passthrough file
//!   system never opens one for the guest, but the node would stay on the host
//!   for host processes to use. FIFOs and sockets are made: the server never
//!   opens them either (only regular files and directories), and guests need
//!   them (a unix socket bound on a volume, a named pipe).
//! - setuid/setgid (unless the share is privileged): dropped from the mode of
//!   new files (CREATE, MKNOD) and of SETATTR's chmod; on directories only
//!   setuid is dropped (setgid there means group inheritance, no privilege).
//!   Before a regular file's content changes (WRITE, truncation by SETATTR or
//!   OPEN with O_TRUNC, FALLOCATE), its setuid/setgid bits are cleared, as the
//!   host kernel does for writers without CAP_FSETID, which the VMM has. The
//!   kernel itself still removes `security.capability` on those changes.
//! - Extended attributes: setting or removing `trusted.*` is refused (EPERM):
//!   host root software keeps its state there (overlayfs's `trusted.overlay.*`)
//!   guarded only by CAP_SYS_ADMIN, which the VMM has; reading and listing
//!   hide them (ENODATA), so the guest sees a namespace it cannot write as
//!   empty. Setting `security.capability` is refused (EPERM) unless the share
//!   is privileged: host processes that execute the file would get those
//!   capabilities. Reading it stays allowed (the guest kernel reads it to give
//!   an image's binaries their file capabilities), and so does removing it
//!   (that only lowers privilege). Other `security.*` names are mediated by the
//!   host's own LSM (SELinux relabel permissions, Smack's CAP_MAC_ADMIN).
//! - Host fds: every inode the guest knows is an fd (O_PATH) in the
//!   passthrough file system until the guest forgets it, and every open file
//!   or directory is another. The layer counts both; past the share's bound an
//!   entry for a new inode is forgotten again and the request fails with
//!   ENFILE, as do OPEN, OPENDIR and CREATE (READDIRPLUS lists the name
//!   without an inode instead, which the guest then looks up itself).

use fuse_backend_rs::abi::fuse_abi::{stat64, statvfs64, CreateIn};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileSystem, FsOptions, GetxattrReply, ListxattrReply, OpenOptions,
    SetattrValid, ZeroCopyReader, ZeroCopyWriter, ROOT_ID,
};
use std::collections::HashMap;
use std::ffi::CStr;
use std::io;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// What a share lets the guest do beyond plain file access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// setuid/setgid bits and `security.capability` are kept as the guest
    /// sets them.
    pub privileged: bool,
    /// Host fds the guest may make the share hold.
    pub max_fds: usize,
}

/// Open flags that reach the host on OPEN and OPENDIR.
const OPEN_FLAGS: i32 = libc::O_ACCMODE
    | libc::O_APPEND
    | libc::O_NONBLOCK
    | libc::O_TRUNC
    | libc::O_DIRECTORY
    | libc::O_SYNC
    | libc::O_DSYNC;
/// Open flags that reach the host on CREATE.
const CREATE_FLAGS: i32 = (OPEN_FLAGS & !libc::O_DIRECTORY) | libc::O_CREAT | libc::O_EXCL;
/// O_TMPFILE without the O_DIRECTORY it includes.
const O_TMPFILE_ONLY: i32 = libc::O_TMPFILE & !libc::O_DIRECTORY;
/// The mode bits that give privilege to whoever executes a file.
const SETID: u32 = libc::S_ISUID | libc::S_ISGID;
/// Longest list of xattr names the kernel returns.
const XATTR_LIST_MAX: u32 = 65536;
/// The namespace hidden from the guest.
const TRUSTED_PREFIX: &[u8] = b"trusted.";
const SECURITY_CAPABILITY: &[u8] = b"security.capability";

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

/// The flags of a guest's OPEN, OPENDIR or CREATE as the host gets them:
/// O_PATH and O_TMPFILE refused, anything not in `kept` dropped, O_NOFOLLOW
/// added.
fn host_open_flags(flags: u32, kept: i32) -> io::Result<u32> {
    let flags = flags as i32;
    if flags & (libc::O_PATH | O_TMPFILE_ONLY) != 0 {
        return Err(errno(libc::EINVAL));
    }
    Ok(((flags & kept) | libc::O_NOFOLLOW) as u32)
}

/// The flags of a READ or WRITE as the host gets them: what OPEN kept (the
/// passthrough file system applies them with F_SETFL when they differ from
/// the open's).
fn host_io_flags(flags: u32) -> u32 {
    (((flags as i32) & OPEN_FLAGS) | libc::O_NOFOLLOW) as u32
}

fn is_dir(mode: u32) -> bool {
    mode & libc::S_IFMT == libc::S_IFDIR
}

/// The host fds a guest holds through a share: one per inode it knows (with
/// the lookups it has not forgotten yet) and one per open file or directory.
/// The root inode is the share's own and not counted.
#[derive(Debug, Default)]
struct Held {
    inodes: HashMap<u64, u64>,
    handles: usize,
}

impl Held {
    fn fds(&self) -> usize {
        self.inodes.len() + self.handles
    }

    /// Counts a lookup of `inode`; false, counting nothing, when the inode is
    /// new and `max` fds are held already.
    fn look_up(&mut self, inode: u64, max: usize) -> bool {
        if inode == ROOT_ID || inode == 0 {
            return true;
        }
        if let Some(lookups) = self.inodes.get_mut(&inode) {
            *lookups = lookups.saturating_add(1);
            return true;
        }
        if self.fds() >= max {
            return false;
        }
        self.inodes.insert(inode, 1);
        true
    }

    /// Takes back `count` lookups of `inode`.
    fn forget(&mut self, inode: u64, count: u64) {
        if let Some(lookups) = self.inodes.get_mut(&inode) {
            *lookups = lookups.saturating_sub(count);
            if *lookups == 0 {
                self.inodes.remove(&inode);
            }
        }
    }

    /// Counts an open file, and `extra` more fds that must fit beside it;
    /// false, counting nothing, when they do not fit under `max`.
    fn open(&mut self, extra: usize, max: usize) -> bool {
        if self.fds() + 1 + extra > max {
            return false;
        }
        self.handles += 1;
        true
    }

    /// Takes back an open file.
    fn close(&mut self) {
        self.handles = self.handles.saturating_sub(1);
    }
}

/// A file system that applies a share's [`Policy`] to the one it wraps.
pub struct Filtered<F> {
    inner: F,
    policy: Policy,
    held: Mutex<Held>,
}

impl<F: FileSystem<Inode = u64, Handle = u64>> Filtered<F> {
    /// Wraps `inner`.
    pub fn new(inner: F, policy: Policy) -> Self {
        Self {
            inner,
            policy,
            held: Mutex::new(Held::default()),
        }
    }

    fn held(&self) -> MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts an entry the wrapped file system returned; past the bound, the
    /// entry is forgotten again and ENFILE returned.
    fn admit(&self, ctx: &Context, entry: Entry) -> io::Result<Entry> {
        let admitted = self.held().look_up(entry.inode, self.policy.max_fds);
        if admitted {
            Ok(entry)
        } else {
            self.inner.forget(ctx, entry.inode, 1);
            Err(errno(libc::ENFILE))
        }
    }

    /// ENFILE when a new inode would not fit.
    fn room_for_inode(&self) -> io::Result<()> {
        if self.held().fds() >= self.policy.max_fds {
            return Err(errno(libc::ENFILE));
        }
        Ok(())
    }

    /// Counts an open file before it is opened, with room for `extra` more
    /// fds beside it; ENFILE when they do not fit.
    fn reserve_handle(&self, extra: usize) -> io::Result<()> {
        if !self.held().open(extra, self.policy.max_fds) {
            return Err(errno(libc::ENFILE));
        }
        Ok(())
    }

    /// Settles a reservation: kept when `opened` holds a handle.
    fn settle_handle<T>(
        &self,
        opened: io::Result<T>,
        handle: impl Fn(&T) -> bool,
    ) -> io::Result<T> {
        if !opened.as_ref().is_ok_and(handle) {
            self.held().close();
        }
        opened
    }

    /// The mode a new non-directory gets.
    fn file_mode(&self, mode: u32) -> u32 {
        if self.policy.privileged {
            mode
        } else {
            mode & !SETID
        }
    }

    /// The mode a new directory gets.
    fn dir_mode(&self, mode: u32) -> u32 {
        if self.policy.privileged {
            mode
        } else {
            mode & !libc::S_ISUID
        }
    }

    /// Clears setuid/setgid from a regular file whose content is about to
    /// change.
    fn kill_priv(&self, ctx: &Context, inode: u64, handle: Option<u64>) -> io::Result<()> {
        if self.policy.privileged {
            return Ok(());
        }
        let (mut attr, _) = self.inner.getattr(ctx, inode, handle)?;
        if attr.st_mode & libc::S_IFMT != libc::S_IFREG || attr.st_mode & SETID == 0 {
            return Ok(());
        }
        attr.st_mode &= !SETID;
        self.inner
            .setattr(ctx, inode, attr, handle, SetattrValid::MODE)
            .map(drop)
    }

    /// EPERM for an xattr the guest may not set (`removing`: or remove).
    fn may_change_xattr(&self, name: &CStr, removing: bool) -> io::Result<()> {
        let name = name.to_bytes();
        let capability = name == SECURITY_CAPABILITY && !removing && !self.policy.privileged;
        if name.starts_with(TRUSTED_PREFIX) || capability {
            return Err(errno(libc::EPERM));
        }
        Ok(())
    }

    /// Looks up and opens a file that CREATE found existing.
    fn open_existing(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        let entry = self.lookup(ctx, parent, name)?;
        let flags = args.flags & !((libc::O_CREAT | libc::O_EXCL) as u32);
        match self.open(ctx, entry.inode, flags, args.fuse_flags) {
            Ok((handle, options, passthrough)) => Ok((entry, handle, options, passthrough)),
            Err(err) => {
                self.forget(ctx, entry.inode, 1);
                Err(err)
            }
        }
    }
}

impl<F: FileSystem<Inode = u64, Handle = u64>> FileSystem for Filtered<F> {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        self.inner.init(capable)
    }

    fn destroy(&self) {
        self.inner.destroy();
        *self.held() = Held::default();
    }

    fn lookup(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        if matches!(name.to_bytes(), b"." | b"..") {
            return Err(errno(libc::EPERM));
        }
        let entry = self.inner.lookup(ctx, parent, name)?;
        self.admit(ctx, entry)
    }

    fn forget(&self, ctx: &Context, inode: u64, count: u64) {
        self.held().forget(inode, count);
        self.inner.forget(ctx, inode, count);
    }

    fn batch_forget(&self, ctx: &Context, requests: Vec<(u64, u64)>) {
        {
            let mut held = self.held();
            for (inode, count) in &requests {
                held.forget(*inode, *count);
            }
        }
        self.inner.batch_forget(ctx, requests);
    }

    fn getattr(
        &self,
        ctx: &Context,
        inode: u64,
        handle: Option<u64>,
    ) -> io::Result<(stat64, Duration)> {
        self.inner.getattr(ctx, inode, handle)
    }

    fn setattr(
        &self,
        ctx: &Context,
        inode: u64,
        mut attr: stat64,
        handle: Option<u64>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        if !self.policy.privileged && valid.contains(SetattrValid::MODE) {
            let (current, _) = self.inner.getattr(ctx, inode, None)?;
            attr.st_mode = if is_dir(current.st_mode) {
                self.dir_mode(attr.st_mode)
            } else {
                self.file_mode(attr.st_mode)
            };
        }
        if valid.contains(SetattrValid::SIZE) {
            self.kill_priv(ctx, inode, handle)?;
        }
        self.inner.setattr(ctx, inode, attr, handle, valid)
    }

    fn readlink(&self, ctx: &Context, inode: u64) -> io::Result<Vec<u8>> {
        self.inner.readlink(ctx, inode)
    }

    fn symlink(
        &self,
        ctx: &Context,
        linkname: &CStr,
        parent: u64,
        name: &CStr,
    ) -> io::Result<Entry> {
        self.room_for_inode()?;
        let entry = self.inner.symlink(ctx, linkname, parent, name)?;
        self.admit(ctx, entry)
    }

    fn mknod(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        let kind = mode & libc::S_IFMT;
        if kind == libc::S_IFBLK || (kind == libc::S_IFCHR && rdev != 0) {
            return Err(errno(libc::EPERM));
        }
        self.room_for_inode()?;
        let mode = self.file_mode(mode);
        let entry = self.inner.mknod(ctx, parent, name, mode, rdev, umask)?;
        self.admit(ctx, entry)
    }

    fn mkdir(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.room_for_inode()?;
        let mode = self.dir_mode(mode);
        let entry = self.inner.mkdir(ctx, parent, name, mode, umask)?;
        self.admit(ctx, entry)
    }

    fn unlink(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        self.inner.unlink(ctx, parent, name)
    }

    fn rmdir(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        self.inner.rmdir(ctx, parent, name)
    }

    fn rename(
        &self,
        ctx: &Context,
        olddir: u64,
        oldname: &CStr,
        newdir: u64,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        self.inner
            .rename(ctx, olddir, oldname, newdir, newname, flags)
    }

    fn link(&self, ctx: &Context, inode: u64, newparent: u64, newname: &CStr) -> io::Result<Entry> {
        let entry = self.inner.link(ctx, inode, newparent, newname)?;
        self.admit(ctx, entry)
    }

    fn open(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        let flags = host_open_flags(flags, OPEN_FLAGS)?;
        self.reserve_handle(0)?;
        if flags & libc::O_TRUNC as u32 != 0 {
            if let Err(err) = self.kill_priv(ctx, inode, None) {
                self.held().close();
                return Err(err);
            }
        }
        let opened = self.inner.open(ctx, inode, flags, fuse_flags);
        self.settle_handle(opened, |(handle, ..)| handle.is_some())
    }

    fn create(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        let guest_excl = args.flags & libc::O_EXCL as u32 != 0;
        let host_args = CreateIn {
            flags: host_open_flags(args.flags, CREATE_FLAGS)? | libc::O_EXCL as u32,
            mode: self.file_mode(args.mode),
            ..args
        };
        // The open file, and room for the new inode beside it.
        self.reserve_handle(1)?;
        let (entry, handle, options, passthrough) =
            match self.inner.create(ctx, parent, name, host_args) {
                Ok(created) => created,
                Err(err) => {
                    self.held().close();
                    if err.raw_os_error() == Some(libc::EEXIST) && !guest_excl {
                        return self.open_existing(ctx, parent, name, host_args);
                    }
                    return Err(err);
                }
            };
        let Some(handle) = handle else {
            self.held().close();
            return Ok((self.admit(ctx, entry)?, None, options, passthrough));
        };
        match self.admit(ctx, entry) {
            Ok(entry) => Ok((entry, Some(handle), options, passthrough)),
            Err(err) => {
                let _ = self
                    .inner
                    .release(ctx, entry.inode, 0, handle, false, false, None);
                self.held().close();
                Err(err)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn read(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        flags: u32,
    ) -> io::Result<usize> {
        let flags = host_io_flags(flags);
        self.inner
            .read(ctx, inode, handle, w, size, offset, lock_owner, flags)
    }

    #[allow(clippy::too_many_arguments)]
    fn write(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        delayed_write: bool,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<usize> {
        self.kill_priv(ctx, inode, Some(handle))?;
        let flags = host_io_flags(flags);
        self.inner.write(
            ctx,
            inode,
            handle,
            r,
            size,
            offset,
            lock_owner,
            delayed_write,
            flags,
            fuse_flags,
        )
    }

    fn flush(&self, ctx: &Context, inode: u64, handle: u64, lock_owner: u64) -> io::Result<()> {
        self.inner.flush(ctx, inode, handle, lock_owner)
    }

    fn fsync(&self, ctx: &Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        self.inner.fsync(ctx, inode, datasync, handle)
    }

    fn fallocate(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        self.kill_priv(ctx, inode, Some(handle))?;
        self.inner
            .fallocate(ctx, inode, handle, mode, offset, length)
    }

    #[allow(clippy::too_many_arguments)]
    fn release(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        handle: u64,
        flush: bool,
        flock_release: bool,
        lock_owner: Option<u64>,
    ) -> io::Result<()> {
        self.inner
            .release(ctx, inode, flags, handle, flush, flock_release, lock_owner)?;
        self.held().close();
        Ok(())
    }

    fn statfs(&self, ctx: &Context, inode: u64) -> io::Result<statvfs64> {
        self.inner.statfs(ctx, inode)
    }

    fn setxattr(
        &self,
        ctx: &Context,
        inode: u64,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        self.may_change_xattr(name, false)?;
        self.inner.setxattr(ctx, inode, name, value, flags)
    }

    fn getxattr(
        &self,
        ctx: &Context,
        inode: u64,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        if name.to_bytes().starts_with(TRUSTED_PREFIX) {
            return Err(errno(libc::ENODATA));
        }
        self.inner.getxattr(ctx, inode, name, size)
    }

    fn listxattr(&self, ctx: &Context, inode: u64, size: u32) -> io::Result<ListxattrReply> {
        let ListxattrReply::Names(names) = self.inner.listxattr(ctx, inode, XATTR_LIST_MAX)? else {
            return Err(errno(libc::EIO));
        };
        let shown: Vec<u8> = names
            .split_inclusive(|byte| *byte == 0)
            .filter(|name| !name.starts_with(TRUSTED_PREFIX))
            .flatten()
            .copied()
            .collect();
        let len = u32::try_from(shown.len()).map_err(|_| errno(libc::E2BIG))?;
        match size {
            0 => Ok(ListxattrReply::Count(len)),
            size if len > size => Err(errno(libc::ERANGE)),
            _ => Ok(ListxattrReply::Names(shown)),
        }
    }

    fn removexattr(&self, ctx: &Context, inode: u64, name: &CStr) -> io::Result<()> {
        self.may_change_xattr(name, true)?;
        self.inner.removexattr(ctx, inode, name)
    }

    fn opendir(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions)> {
        let flags = host_open_flags(flags, OPEN_FLAGS)?;
        self.reserve_handle(0)?;
        let opened = self.inner.opendir(ctx, inode, flags);
        self.settle_handle(opened, |(handle, _)| handle.is_some())
    }

    fn readdir(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.inner
            .readdir(ctx, inode, handle, size, offset, add_entry)
    }

    fn readdirplus(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.inner
            .readdirplus(ctx, inode, handle, size, offset, &mut |dir_entry, entry| {
                let looked_up = entry.inode;
                let admitted = self.held().look_up(looked_up, self.policy.max_fds);
                // Past the bound: the name without an inode (nodeid 0), which
                // the guest's kernel skips.
                let shown = if admitted {
                    entry
                } else {
                    Entry { inode: 0, ..entry }
                };
                let added = add_entry(dir_entry, shown);
                // The wrapped file system takes its lookup back itself when
                // the entry did not fit (Ok(0)), and keeps it when adding
                // failed.
                let (ours, theirs) = match added {
                    Ok(0) => (admitted, false),
                    Ok(_) => (false, !admitted),
                    Err(_) => (admitted, true),
                };
                if ours {
                    self.held().forget(looked_up, 1);
                }
                if theirs {
                    self.inner.forget(ctx, looked_up, 1);
                }
                added
            })
    }

    fn fsyncdir(&self, ctx: &Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        self.inner.fsyncdir(ctx, inode, datasync, handle)
    }

    fn releasedir(&self, ctx: &Context, inode: u64, flags: u32, handle: u64) -> io::Result<()> {
        self.inner.releasedir(ctx, inode, flags, handle)?;
        self.held().close();
        Ok(())
    }

    fn access(&self, ctx: &Context, inode: u64, mask: u32) -> io::Result<()> {
        self.inner.access(ctx, inode, mask)
    }

    fn lseek(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        self.inner.lseek(ctx, inode, handle, offset, whence)
    }
}

#[cfg(test)]
mod tests {
    use super::super::backend::passthrough;
    use super::*;
    use crate::config::FsCache;
    use fuse_backend_rs::passthrough::PassthroughFs;
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    use std::path::{Path, PathBuf};

    const UNPRIVILEGED: Policy = Policy {
        privileged: false,
        max_fds: 64,
    };

    /// A filtered passthrough file system over `<base>/share`, with
    /// `<base>/outside` beside it for symlinks to point at.
    struct Rig {
        base: PathBuf,
        fs: Filtered<PassthroughFs>,
        ctx: Context,
    }

    impl Rig {
        fn new(name: &str, policy: Policy) -> Self {
            let base =
                std::env::temp_dir().join(format!("runv-fs-filter-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&base);
            std::fs::create_dir_all(base.join("share")).unwrap();
            std::fs::create_dir_all(base.join("outside")).unwrap();
            let base = std::fs::canonicalize(base).unwrap();
            let fs = Filtered::new(
                passthrough(&base.join("share"), FsCache::Never).unwrap(),
                policy,
            );
            fs.init(FsOptions::empty()).unwrap();
            Self {
                base,
                fs,
                ctx: Context::default(),
            }
        }

        fn share(&self, name: &str) -> PathBuf {
            self.base.join("share").join(name)
        }

        fn outside(&self, name: &str) -> PathBuf {
            self.base.join("outside").join(name)
        }

        fn lookup(&self, name: &str) -> io::Result<Entry> {
            self.fs.lookup(&self.ctx, ROOT_ID, &c(name))
        }

        fn create(
            &self,
            name: &str,
            flags: i32,
            mode: u32,
        ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
            let args = CreateIn {
                flags: flags as u32,
                mode,
                umask: 0,
                fuse_flags: 0,
            };
            self.fs.create(&self.ctx, ROOT_ID, &c(name), args)
        }

        fn open(&self, inode: u64, flags: i32) -> io::Result<u64> {
            let (handle, ..) = self.fs.open(&self.ctx, inode, flags as u32, 0)?;
            Ok(handle.expect("a handle"))
        }

        fn chmod(&self, inode: u64, mode: u32) -> io::Result<()> {
            // SAFETY: stat64 is plain data; all-zero is a valid value.
            let mut attr: stat64 = unsafe { std::mem::zeroed() };
            attr.st_mode = mode;
            self.fs
                .setattr(&self.ctx, inode, attr, None, SetattrValid::MODE)
                .map(drop)
        }

        fn held(&self) -> (usize, usize) {
            let held = self.fs.held();
            (held.inodes.len(), held.handles)
        }
    }

    impl Drop for Rig {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.base);
        }
    }

    fn c(name: &str) -> CString {
        CString::new(name).unwrap()
    }

    fn errno_of<T>(result: io::Result<T>) -> i32 {
        match result {
            Ok(_) => panic!("succeeded"),
            Err(err) => err.raw_os_error().expect("an errno"),
        }
    }

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    fn set_host_mode(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// Sets an xattr on the host; false where the host does not allow it.
    fn set_host_xattr(path: &Path, name: &str) -> bool {
        let path = CString::new(path.as_os_str().as_bytes()).unwrap();
        let name = c(name);
        // SAFETY: path and name are NUL-terminated; the value is 1 byte.
        unsafe { libc::setxattr(path.as_ptr(), name.as_ptr(), b"1".as_ptr().cast(), 1, 0) == 0 }
    }

    #[test]
    fn open_flags_reaching_the_host_are_filtered() {
        use libc::*;
        let refused = |flags: i32| errno_of(host_open_flags(flags as u32, OPEN_FLAGS));
        assert_eq!(refused(O_PATH), EINVAL);
        assert_eq!(refused(O_PATH | O_CREAT | O_EXCL | O_NOFOLLOW), EINVAL);
        assert_eq!(refused(O_TMPFILE | O_RDWR), EINVAL);
        // 0x20: the kernel's FMODE_EXEC, which guest kernels put in f_flags.
        let guest =
            O_RDWR | O_APPEND | O_DIRECT | O_NOATIME | O_ASYNC | O_NOCTTY | O_CLOEXEC | 0x20;
        assert_eq!(
            host_open_flags(guest as u32, OPEN_FLAGS).unwrap(),
            (O_RDWR | O_APPEND | O_NOFOLLOW) as u32
        );
        let create = O_WRONLY | O_CREAT | O_EXCL | O_TRUNC | O_DIRECTORY | O_DSYNC;
        assert_eq!(
            host_open_flags(create as u32, CREATE_FLAGS).unwrap(),
            (O_WRONLY | O_CREAT | O_EXCL | O_TRUNC | O_DSYNC | O_NOFOLLOW) as u32
        );
        assert_eq!(
            host_io_flags((O_RDONLY | O_DIRECT | O_PATH | O_NONBLOCK) as u32),
            (O_NONBLOCK | O_NOFOLLOW) as u32
        );
    }

    #[test]
    fn o_path_is_refused_on_open_and_create() {
        let rig = Rig::new("opath", UNPRIVILEGED);
        std::fs::write(rig.share("file"), "data").unwrap();
        std::fs::write(rig.outside("target"), "secret").unwrap();
        std::os::unix::fs::symlink(rig.outside("target"), rig.share("evil")).unwrap();
        let file = rig.lookup("file").unwrap();
        assert_eq!(errno_of(rig.open(file.inode, libc::O_PATH)), libc::EINVAL);
        for name in ["evil", "new"] {
            let flags = libc::O_PATH | libc::O_CREAT | libc::O_EXCL;
            assert_eq!(errno_of(rig.create(name, flags, 0o644)), libc::EINVAL);
        }
        assert!(!rig.share("new").exists());
        let opendir = rig.fs.opendir(&rig.ctx, ROOT_ID, libc::O_PATH as u32);
        assert_eq!(errno_of(opendir), libc::EINVAL);
        assert_eq!(rig.held(), (1, 0), "only the file's lookup is held");
    }

    #[test]
    fn a_symlink_planted_as_last_component_is_not_followed() {
        let rig = Rig::new("symlink", UNPRIVILEGED);
        std::fs::write(rig.outside("target"), "secret").unwrap();
        std::os::unix::fs::symlink(rig.outside("target"), rig.share("evil")).unwrap();
        std::os::unix::fs::symlink(rig.outside("made"), rig.share("dangling")).unwrap();
        let (rw, creat) = (libc::O_RDWR | libc::O_TRUNC, libc::O_CREAT);
        assert!(rig.create("evil", rw | creat, 0o644).is_err());
        assert_eq!(
            errno_of(rig.create("evil", rw | creat | libc::O_EXCL, 0o644)),
            libc::EEXIST
        );
        assert!(rig
            .create("dangling", libc::O_WRONLY | creat, 0o644)
            .is_err());
        let evil = rig.lookup("evil").unwrap();
        assert_eq!(evil.attr.st_mode & libc::S_IFMT, libc::S_IFLNK);
        assert!(rig.open(evil.inode, rw).is_err());
        assert!(rig.open(evil.inode, libc::O_RDONLY).is_err());
        assert_eq!(
            std::fs::read_to_string(rig.outside("target")).unwrap(),
            "secret"
        );
        assert!(!rig.outside("made").exists(), "created through the symlink");
        assert_eq!(rig.held(), (1, 0), "failed creates hold nothing");
    }

    #[test]
    fn create_of_an_existing_file_without_o_excl_opens_it() {
        let rig = Rig::new("existing", UNPRIVILEGED);
        std::fs::write(rig.share("there"), "kept").unwrap();
        let (entry, handle, ..) = rig
            .create("there", libc::O_RDWR | libc::O_CREAT, 0o600)
            .unwrap();
        assert_eq!(entry.inode, rig.lookup("there").unwrap().inode);
        assert_eq!(rig.held(), (1, 1));
        rig.fs
            .release(
                &rig.ctx,
                entry.inode,
                0,
                handle.unwrap(),
                false,
                false,
                None,
            )
            .unwrap();
        assert_eq!(rig.held(), (1, 0));
        assert_eq!(std::fs::read_to_string(rig.share("there")).unwrap(), "kept");
    }

    #[test]
    fn lookups_of_dot_and_dotdot_are_refused() {
        let rig = Rig::new("dots", UNPRIVILEGED);
        for name in [".", ".."] {
            assert_eq!(errno_of(rig.lookup(name)), libc::EPERM);
        }
    }

    #[test]
    fn device_nodes_are_refused_fifos_and_sockets_are_made() {
        let rig = Rig::new("mknod", UNPRIVILEGED);
        let mknod = |name: &str, mode: u32, rdev: u64| {
            rig.fs
                .mknod(&rig.ctx, ROOT_ID, &c(name), mode, rdev as u32, 0)
        };
        let sda = libc::makedev(8, 0);
        let null = libc::makedev(1, 3);
        assert_eq!(
            errno_of(mknod("sda", libc::S_IFBLK | 0o600, sda)),
            libc::EPERM
        );
        assert_eq!(
            errno_of(mknod("null", libc::S_IFCHR | 0o666, null)),
            libc::EPERM
        );
        assert_eq!(
            errno_of(mknod("blk0", libc::S_IFBLK | 0o600, 0)),
            libc::EPERM
        );
        for name in ["sda", "null", "blk0"] {
            assert!(rig.share(name).symlink_metadata().is_err(), "{name} made");
        }
        mknod("fifo", libc::S_IFIFO | 0o600, 0).unwrap();
        mknod("sock", libc::S_IFSOCK | 0o600, 0).unwrap();
        let kind = |name| {
            std::fs::symlink_metadata(rig.share(name))
                .unwrap()
                .file_type()
        };
        assert!(kind("fifo").is_fifo() && kind("sock").is_socket());
    }

    #[test]
    fn setuid_and_setgid_are_dropped_on_create_chmod_and_write() {
        let rig = Rig::new("setid", UNPRIVILEGED);
        let new = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL;
        let (made, ..) = rig.create("made", new, 0o6755).unwrap();
        assert_eq!(mode(&rig.share("made")), 0o755, "create");
        rig.fs
            .mknod(&rig.ctx, ROOT_ID, &c("node"), libc::S_IFREG | 0o4755, 0, 0)
            .unwrap();
        assert_eq!(mode(&rig.share("node")), 0o755, "mknod");
        rig.chmod(made.inode, 0o4711).unwrap();
        assert_eq!(mode(&rig.share("made")), 0o711, "chmod");
        let dir = rig
            .fs
            .mkdir(&rig.ctx, ROOT_ID, &c("dir"), 0o755, 0)
            .unwrap();
        rig.chmod(dir.inode, 0o6755).unwrap();
        assert_eq!(
            mode(&rig.share("dir")),
            0o2755,
            "setgid kept on a directory"
        );

        // Files the host made setuid lose it when the guest changes them.
        std::fs::write(rig.share("host-suid"), "host").unwrap();
        set_host_mode(&rig.share("host-suid"), 0o4755);
        let host = rig.lookup("host-suid").unwrap();
        let handle = rig.open(host.inode, libc::O_WRONLY).unwrap();
        let source = rig.base.join("source");
        std::fs::write(&source, "gst").unwrap();
        let mut reader = std::fs::File::open(&source).unwrap();
        let flags = libc::O_WRONLY as u32;
        let written = rig
            .fs
            .write(
                &rig.ctx,
                host.inode,
                handle,
                &mut reader,
                3,
                0,
                None,
                false,
                flags,
                0,
            )
            .unwrap();
        assert_eq!(written, 3);
        assert_eq!(
            std::fs::read_to_string(rig.share("host-suid")).unwrap(),
            "gstt"
        );
        assert_eq!(mode(&rig.share("host-suid")), 0o755, "write");
        set_host_mode(&rig.share("host-suid"), 0o2755);
        rig.fs
            .fallocate(&rig.ctx, host.inode, handle, 0, 0, 8)
            .unwrap();
        assert_eq!(mode(&rig.share("host-suid")), 0o755, "fallocate");
        set_host_mode(&rig.share("host-suid"), 0o6755);
        let (mut attr, _) = rig.fs.getattr(&rig.ctx, host.inode, None).unwrap();
        attr.st_size = 0;
        rig.fs
            .setattr(&rig.ctx, host.inode, attr, Some(handle), SetattrValid::SIZE)
            .unwrap();
        assert_eq!(mode(&rig.share("host-suid")), 0o755, "truncate");
        set_host_mode(&rig.share("host-suid"), 0o4755);
        rig.open(host.inode, libc::O_WRONLY | libc::O_TRUNC)
            .unwrap();
        assert_eq!(mode(&rig.share("host-suid")), 0o755, "open with O_TRUNC");
    }

    #[test]
    fn a_privileged_share_keeps_setuid_and_setgid() {
        let rig = Rig::new(
            "privileged",
            Policy {
                privileged: true,
                ..UNPRIVILEGED
            },
        );
        let new = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL;
        let (made, handle, ..) = rig.create("made", new, 0o4755).unwrap();
        assert_eq!(mode(&rig.share("made")), 0o4755);
        rig.chmod(made.inode, 0o6755).unwrap();
        assert_eq!(mode(&rig.share("made")), 0o6755);
        rig.fs
            .fallocate(&rig.ctx, made.inode, handle.unwrap(), 0, 0, 8)
            .unwrap();
        assert_eq!(mode(&rig.share("made")), 0o6755);
    }

    #[test]
    fn trusted_and_capability_xattrs_cannot_be_set() {
        let rig = Rig::new("xattr", UNPRIVILEGED);
        std::fs::write(rig.share("file"), "").unwrap();
        let file = rig.lookup("file").unwrap().inode;
        let set = |name: &str| rig.fs.setxattr(&rig.ctx, file, &c(name), b"v", 0);
        let remove = |name: &str| rig.fs.removexattr(&rig.ctx, file, &c(name));
        let get = |name: &str| rig.fs.getxattr(&rig.ctx, file, &c(name), 64);
        // A version-2 capability set: cap_net_raw permitted and effective.
        let caps = [
            1u8, 0, 0, 2, 0, 32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        assert_eq!(
            errno_of(
                rig.fs
                    .setxattr(&rig.ctx, file, &c("security.capability"), &caps, 0)
            ),
            libc::EPERM
        );
        assert_eq!(errno_of(set("trusted.overlay.redirect")), libc::EPERM);
        assert_eq!(errno_of(remove("trusted.overlay.opaque")), libc::EPERM);
        assert_eq!(errno_of(get("trusted.overlay.opaque")), libc::ENODATA);
        // Removing a capability is let through (the file has none).
        assert_ne!(errno_of(remove("security.capability")), libc::EPERM);
        // What the host set in trusted.* is hidden from listings.
        if set_host_xattr(&rig.share("file"), "trusted.runv.host") {
            assert_eq!(errno_of(get("trusted.runv.host")), libc::ENODATA);
            let listed = rig.fs.listxattr(&rig.ctx, file, 4096).unwrap();
            let ListxattrReply::Names(names) = listed else {
                panic!("no names");
            };
            assert!(!names.windows(8).any(|w| w == b"trusted."), "{names:?}");
            let ListxattrReply::Count(count) = rig.fs.listxattr(&rig.ctx, file, 0).unwrap() else {
                panic!("no count");
            };
            assert_eq!(count as usize, names.len());
        }
        if set_host_xattr(&rig.share("file"), "user.runv.host") {
            let ListxattrReply::Names(names) = rig.fs.listxattr(&rig.ctx, file, 4096).unwrap()
            else {
                panic!("no names");
            };
            assert_eq!(names, b"user.runv.host\0");
            assert_eq!(errno_of(rig.fs.listxattr(&rig.ctx, file, 4)), libc::ERANGE);
        }
    }

    #[test]
    fn past_the_fd_bound_new_inodes_and_opens_get_enfile() {
        let rig = Rig::new(
            "bound",
            Policy {
                max_fds: 4,
                ..UNPRIVILEGED
            },
        );
        for n in 0..6 {
            std::fs::write(rig.share(&format!("f{n}")), "").unwrap();
        }
        let inodes: Vec<u64> = (0..4)
            .map(|n| rig.lookup(&format!("f{n}")).unwrap().inode)
            .collect();
        assert_eq!(errno_of(rig.lookup("f4")), libc::ENFILE);
        assert_eq!(rig.lookup("f0").unwrap().inode, inodes[0], "a known inode");
        assert_eq!(errno_of(rig.open(inodes[0], libc::O_RDONLY)), libc::ENFILE);
        let new = libc::O_WRONLY | libc::O_CREAT;
        assert_eq!(errno_of(rig.create("new", new, 0o644)), libc::ENFILE);
        let dir = rig.fs.mkdir(&rig.ctx, ROOT_ID, &c("dir"), 0o755, 0);
        assert_eq!(errno_of(dir), libc::ENFILE);
        let link = rig.fs.symlink(&rig.ctx, &c("f0"), ROOT_ID, &c("link"));
        assert_eq!(errno_of(link), libc::ENFILE);
        let node = rig
            .fs
            .mknod(&rig.ctx, ROOT_ID, &c("fifo"), libc::S_IFIFO | 0o600, 0, 0);
        assert_eq!(errno_of(node), libc::ENFILE);
        for name in ["new", "dir", "link", "fifo"] {
            assert!(rig.share(name).symlink_metadata().is_err(), "{name} made");
        }
        assert_eq!(rig.held(), (4, 0));

        // Forgetting makes room again.
        rig.fs.forget(&rig.ctx, inodes[1], 1);
        let f4 = rig.lookup("f4").unwrap().inode;
        rig.fs
            .batch_forget(&rig.ctx, vec![(inodes[0], 1), (inodes[2], 1)]);
        assert_eq!(rig.held(), (3, 0), "f0 was looked up twice");
        rig.fs.forget(&rig.ctx, inodes[0], 1);
        let handle = rig.open(f4, libc::O_RDONLY).unwrap();
        assert_eq!(rig.held(), (2, 1));
        rig.fs
            .release(&rig.ctx, f4, 0, handle, false, false, None)
            .unwrap();
        assert_eq!(rig.held(), (2, 0));
        let released_twice = rig.fs.release(&rig.ctx, f4, 0, handle, false, false, None);
        assert!(released_twice.is_err());
        assert_eq!(rig.held(), (2, 0), "a bogus release frees nothing");
    }

    #[test]
    fn readdirplus_past_the_fd_bound_lists_names_without_inodes() {
        let rig = Rig::new(
            "readdirplus",
            Policy {
                max_fds: 4,
                ..UNPRIVILEGED
            },
        );
        for n in 0..5 {
            std::fs::write(rig.share(&format!("f{n}")), "").unwrap();
        }
        let (handle, _) = rig
            .fs
            .opendir(&rig.ctx, ROOT_ID, libc::O_RDONLY as u32)
            .unwrap();
        let handle = handle.unwrap();
        let mut listed = Vec::new();
        rig.fs
            .readdirplus(&rig.ctx, ROOT_ID, handle, 4096, 0, &mut |dir, entry| {
                listed.push((dir.name.to_vec(), entry.inode));
                Ok(1)
            })
            .unwrap();
        assert_eq!(listed.len(), 5, "every name is listed");
        let with_inode: Vec<u64> = listed.iter().map(|(_, i)| *i).filter(|i| *i != 0).collect();
        assert_eq!(with_inode.len(), 3, "the directory's handle holds one fd");
        assert_eq!(rig.held(), (3, 1));
        for inode in with_inode {
            rig.fs.forget(&rig.ctx, inode, 1);
        }
        rig.fs.releasedir(&rig.ctx, ROOT_ID, 0, handle).unwrap();
        assert_eq!(rig.held(), (0, 0));
        assert!(rig.lookup("f0").is_ok(), "room again");
    }
}
