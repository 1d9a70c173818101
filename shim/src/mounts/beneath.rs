//! Files and directories resolved beneath a directory fd: no symlink or
//! magic link followed, nothing outside the directory reached.

use super::{cstring, fd_from_syscall, sys, MountError, Result};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// Checks that `rel` is one or more plain components.
pub(crate) fn check_relative(rel: &Path) -> Result<()> {
    let plain = rel.components().all(|c| matches!(c, Component::Normal(_)));
    if !plain || rel.as_os_str().is_empty() {
        return Err(MountError::NotRelative { path: rel.into() });
    }
    Ok(())
}

/// Opens `rel` beneath `dir` with `flags`: no symlink or magic link followed,
/// nothing outside `dir` reached, and with `same_mount` no mount point crossed.
/// A file it creates (`O_CREAT`) is the owner's alone (0600).
pub fn open_beneath(
    dir: BorrowedFd,
    rel: &Path,
    flags: OFlag,
    same_mount: bool,
) -> Result<OwnedFd> {
    check_relative(rel)?;
    let name = cstring(rel)?;
    let mut resolve =
        libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    if same_mount {
        resolve |= libc::RESOLVE_NO_XDEV;
    }
    // SAFETY: open_how is plain integers, for which all zeroes is valid (and
    // what the kernel wants of fields this code does not set).
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW).bits() as u64;
    if flags.contains(OFlag::O_CREAT) {
        how.mode = 0o600;
    }
    how.resolve = resolve;
    // SAFETY: `name` is a valid C string and `how` a valid open_how whose size is
    // passed; the returned fd, if any, is owned by nobody else.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            name.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    fd_from_syscall(fd, "open", rel)
}

/// Opens directory `rel` beneath `dir` as an `O_PATH` fd, on `dir`'s mount.
pub fn open_dir_beneath(dir: BorrowedFd, rel: &Path) -> Result<OwnedFd> {
    open_beneath(dir, rel, OFlag::O_PATH | OFlag::O_DIRECTORY, true)
}

/// Makes directory `rel` (and the directories above it) beneath `dir`, on
/// `dir`'s mount; returns an `O_PATH` fd of it. Existing directories are reused;
/// anything else in the way (a file, a symlink, a mount point) is refused.
pub fn make_dir_beneath(dir: BorrowedFd, rel: &Path) -> Result<OwnedFd> {
    check_relative(rel)?;
    let mut parent: Option<OwnedFd> = None;
    for component in rel.components() {
        let name = Path::new(component.as_os_str());
        let at = parent
            .as_ref()
            .map_or(dir, |fd| std::os::fd::AsFd::as_fd(fd));
        match nix::sys::stat::mkdirat(Some(at.as_raw_fd()), name, Mode::from_bits_truncate(0o700)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(source) => {
                return Err(MountError::Sys {
                    step: "mkdir",
                    path: rel.into(),
                    source,
                })
            }
        }
        parent = Some(open_dir_beneath(at, name)?);
    }
    parent.ok_or(MountError::NotRelative { path: rel.into() })
}

/// Makes an empty regular file `rel` beneath `dir` (its directories too), on
/// `dir`'s mount; an existing regular file is reused. Returns an `O_PATH` fd.
pub fn make_file_beneath(dir: BorrowedFd, rel: &Path) -> Result<OwnedFd> {
    check_relative(rel)?;
    let name = rel
        .file_name()
        .ok_or_else(|| MountError::NotRelative { path: rel.into() })?;
    let parent = match rel.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => Some(make_dir_beneath(dir, parent)?),
        None => None,
    };
    let at = parent
        .as_ref()
        .map_or(dir, |fd| std::os::fd::AsFd::as_fd(fd));
    let flags = OFlag::O_CREAT | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    match nix::fcntl::openat(
        Some(at.as_raw_fd()),
        Path::new(name),
        flags,
        Mode::from_bits_truncate(0o600),
    ) {
        // SAFETY: the kernel just returned this fd to us.
        Ok(fd) => drop(unsafe { OwnedFd::from_raw_fd(fd) }),
        Err(source) => {
            return Err(MountError::Sys {
                step: "create",
                path: rel.into(),
                source,
            })
        }
    }
    open_beneath(at, Path::new(name), OFlag::O_PATH, true)
}

/// `/proc/self/fd/N`: a path that names exactly the object open as `fd`.
pub fn fd_path(fd: BorrowedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Removes the empty directory or file `name` in `dir` (never a tree).
pub fn remove_entry(dir: BorrowedFd, name: &Path) -> Result<()> {
    check_relative(name)?;
    let remove = |flag| nix::unistd::unlinkat(Some(dir.as_raw_fd()), name, flag);
    match remove(nix::unistd::UnlinkatFlags::RemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(Errno::ENOTDIR) => match remove(nix::unistd::UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(source) => Err(MountError::Sys {
                step: "unlink",
                path: name.into(),
                source,
            }),
        },
        Err(source) => Err(MountError::Sys {
            step: "rmdir",
            path: name.into(),
            source,
        }),
    }
}

/// The names in the directory open as `dir` (an `O_PATH` fd is reopened).
pub fn list_dir(dir: BorrowedFd, what: &Path) -> Result<Vec<PathBuf>> {
    let reopened = nix::fcntl::openat(
        Some(dir.as_raw_fd()),
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(sys("open", what))?;
    let mut listing = nix::dir::Dir::from_fd(reopened).map_err(sys("read", what))?;
    let mut names = Vec::new();
    for entry in listing.iter() {
        let entry = entry.map_err(sys("read", what))?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(PathBuf::from(std::ffi::OsStr::from_bytes(name)));
        }
    }
    Ok(names)
}
