//! fd-relative mount primitives. Every path below a directory the shim does not
//! fully own is resolved from an fd with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`, so a symlink planted in the
//! way is refused (ELOOP) instead of followed; mounts are attached to an fd
//! (`move_mount`, or `mount(2)` on `/proc/self/fd/N`, which names exactly the
//! opened object) and detached with `UMOUNT_NOFOLLOW`.

mod beneath;

pub(crate) use beneath::check_relative;
pub use beneath::{
    fd_path, list_dir, make_dir_beneath, make_file_beneath, open_beneath, open_dir_beneath,
    remove_entry,
};

use nix::errno::Errno;
use nix::mount::{umount2, MntFlags, MsFlags};
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Errors of the mount primitives, each naming the step and the path.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// A relative path that is not plain components (`..`, `/`, empty).
    #[error("{path}: not a plain relative path")]
    NotRelative { path: PathBuf },
    /// A path with a NUL byte.
    #[error("{path}: contains a NUL byte")]
    Nul { path: PathBuf },
    /// A system call on `path` failed.
    #[error("{step} {path}: {source}")]
    Sys {
        step: &'static str,
        path: PathBuf,
        source: Errno,
    },
    /// containerd's snapshot mount failed.
    #[error("mount {what} on {target}: {message}")]
    Snapshot {
        what: String,
        target: PathBuf,
        message: String,
    },
    /// Reading a file of the shim's own (mountinfo) failed.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

type Result<T> = std::result::Result<T, MountError>;

fn sys<'a>(step: &'static str, path: &'a Path) -> impl FnOnce(Errno) -> MountError + 'a {
    move |source| MountError::Sys {
        step,
        path: path.into(),
        source,
    }
}

fn cstring(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| MountError::Nul { path: path.into() })
}

/// Attributes a mount gets, recursively (`mount_setattr` with `AT_RECURSIVE`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MountAttrs {
    pub readonly: bool,
    pub nosuid: bool,
    pub nodev: bool,
    pub noexec: bool,
}

impl MountAttrs {
    fn bits(self) -> u64 {
        [
            (self.readonly, libc::MOUNT_ATTR_RDONLY),
            (self.nosuid, libc::MOUNT_ATTR_NOSUID),
            (self.nodev, libc::MOUNT_ATTR_NODEV),
            (self.noexec, libc::MOUNT_ATTR_NOEXEC),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .fold(0, |bits, (_, bit)| bits | bit)
    }
}

/// A detached copy of the mount at `source` (with its submounts if
/// `recursive`), as `open_tree(OPEN_TREE_CLONE)` makes it. `source` is a host
/// path from trusted input (containerd's spec), resolved like `mount --bind`.
pub fn clone_tree(source: &Path, recursive: bool) -> Result<OwnedFd> {
    let path = cstring(source)?;
    let mut flags = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: `path` is a valid C string; the fd returned is ours.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, path.as_ptr(), flags) };
    fd_from_syscall(fd, "open_tree", source)
}

/// The fd a raw `syscall` returned for `step` on `path`, owned, or its error.
fn fd_from_syscall(ret: libc::c_long, step: &'static str, path: &Path) -> Result<OwnedFd> {
    let fd = Errno::result(ret).map_err(sys(step, path))?;
    let fd = i32::try_from(fd).map_err(|_| MountError::Sys {
        step,
        path: path.into(),
        source: Errno::EBADF,
    })?;
    // SAFETY: the kernel just returned this fd to the caller, who owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sets `attrs` on the mount `tree` and every mount below it, and its
/// propagation (`MS_PRIVATE`, `MS_SLAVE`, ...) if given.
pub fn set_attrs(
    tree: BorrowedFd,
    attrs: MountAttrs,
    propagation: Option<MsFlags>,
    what: &Path,
) -> Result<()> {
    let attr = libc::mount_attr {
        attr_set: attrs.bits(),
        attr_clr: 0,
        propagation: propagation.map_or(0, |p| p.bits()),
        userns_fd: 0,
    };
    let empty = c"";
    let flags = libc::AT_EMPTY_PATH | libc::AT_RECURSIVE;
    // SAFETY: `attr` is a valid mount_attr whose size is passed; the path is
    // empty, so the call acts on `tree` itself.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            flags,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    Errno::result(rc)
        .map(drop)
        .map_err(sys("mount_setattr", what))
}

/// Attaches the detached mount `tree` on `target` (an fd of the mount point).
pub fn attach(tree: BorrowedFd, target: BorrowedFd, what: &Path) -> Result<()> {
    let empty = c"";
    let flags = libc::MOVE_MOUNT_F_EMPTY_PATH | libc::MOVE_MOUNT_T_EMPTY_PATH;
    // SAFETY: both paths are empty C strings, so the call acts on the two fds.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            target.as_raw_fd(),
            empty.as_ptr(),
            flags,
        )
    };
    Errno::result(rc).map(drop).map_err(sys("move_mount", what))
}

/// Sets the propagation of the mount open as `target` (a mount's root).
pub fn set_propagation(target: BorrowedFd, propagation: MsFlags, what: &Path) -> Result<()> {
    nix::mount::mount(
        None::<&str>,
        &fd_path(target),
        None::<&str>,
        propagation,
        None::<&str>,
    )
    .map_err(sys("set propagation of", what))
}

/// Mounts a new file system of `fstype` on `target` (an fd of the mount point).
pub fn mount_new(
    fstype: &str,
    flags: MsFlags,
    data: &str,
    target: BorrowedFd,
    what: &Path,
) -> Result<()> {
    nix::mount::mount(
        Some(fstype),
        &fd_path(target),
        Some(fstype),
        flags,
        Some(data),
    )
    .map_err(sys("mount", what))
}

/// Mounts one of containerd's snapshot mounts (overlay, bind, ...) on `target`
/// (an fd of the mount point), with containerd's own option handling.
pub fn mount_snapshot(
    fstype: &str,
    source: &str,
    options: &[String],
    target: BorrowedFd,
    what: &Path,
) -> Result<()> {
    containerd_shim::mount::mount_rootfs(
        Some(fstype).filter(|t| !t.is_empty()),
        Some(source).filter(|s| !s.is_empty()),
        options,
        fd_path(target),
    )
    .map_err(|err| MountError::Snapshot {
        what: format!("{fstype} {source}"),
        target: what.into(),
        message: err.to_string(),
    })
}

/// Detaches every mount stacked on `name` in the directory `dir` (lazily, so a
/// busy mount still goes) without following a symlink; true if there was one.
pub fn detach_all(dir: BorrowedFd, name: &Path) -> Result<bool> {
    check_relative(name)?;
    let path = fd_path(dir).join(name);
    let mut detached = false;
    loop {
        match umount2(&path, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW) {
            Ok(()) => detached = true,
            Err(Errno::EINVAL) | Err(Errno::ENOENT) => return Ok(detached),
            Err(source) => {
                return Err(MountError::Sys {
                    step: "unmount",
                    path: name.into(),
                    source,
                })
            }
        }
    }
}

/// Whether anything is mounted at or below `dir`, from /proc/self/mountinfo
/// (read only to decide whether a removal is safe; nothing is resolved by it).
pub fn anything_mounted_under(dir: &Path) -> Result<bool> {
    let info = Path::new("/proc/self/mountinfo");
    let text = std::fs::read_to_string(info).map_err(|source| MountError::Io {
        path: info.into(),
        source,
    })?;
    Ok(text
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .any(|field| Path::new(&unescape_mountinfo(field)).starts_with(dir)))
}

/// Decodes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(digits)) => {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                out.push(u8::try_from(value).unwrap_or(b'?'));
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests;
