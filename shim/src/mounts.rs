//! fd-relative mount primitives. Every path below a directory the shim does not
//! fully own is resolved from an fd with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`, so a symlink planted in the
//! way is refused (ELOOP) instead of followed; mounts are attached to an fd
//! (`move_mount`, or `mount(2)` on `/proc/self/fd/N`, which names exactly the
//! opened object) and detached with `UMOUNT_NOFOLLOW`.

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{umount2, MntFlags, MsFlags};
use nix::sys::stat::Mode;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

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

/// Checks that `rel` is one or more plain components.
fn check_relative(rel: &Path) -> Result<()> {
    let plain = rel.components().all(|c| matches!(c, Component::Normal(_)));
    if !plain || rel.as_os_str().is_empty() {
        return Err(MountError::NotRelative { path: rel.into() });
    }
    Ok(())
}

/// Opens `rel` beneath `dir` with `flags`: no symlink or magic link followed,
/// nothing outside `dir` reached, and with `same_mount` no mount point crossed.
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
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn open_dir(path: &Path) -> OwnedFd {
        let fd = nix::fcntl::open(path, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty()).unwrap();
        // SAFETY: just opened.
        unsafe { OwnedFd::from_raw_fd(fd) }
    }

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mountinfo("/run/a\\040b"), "/run/a b");
        assert_eq!(unescape_mountinfo("/x\\134y"), "/x\\y");
        assert_eq!(unescape_mountinfo("/plain\\"), "/plain\\");
    }

    #[test]
    fn only_plain_relative_paths_are_taken() {
        let dir = tempfile::tempdir().unwrap();
        let fd = open_dir(dir.path());
        for bad in ["", "/etc", "../x", "a/../b", "."] {
            let err = make_dir_beneath(fd.as_fd(), Path::new(bad)).unwrap_err();
            assert!(
                matches!(err, MountError::NotRelative { .. }),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn directories_and_files_are_made_beneath() {
        let dir = tempfile::tempdir().unwrap();
        let fd = open_dir(dir.path());
        make_dir_beneath(fd.as_fd(), Path::new("c1/mounts")).unwrap();
        make_dir_beneath(fd.as_fd(), Path::new("c1/mounts")).unwrap();
        make_file_beneath(fd.as_fd(), Path::new("c1/mounts/0")).unwrap();
        assert!(dir.path().join("c1/mounts").is_dir());
        assert!(dir.path().join("c1/mounts/0").is_file());
        let names = list_dir(open_dir(&dir.path().join("c1")).as_fd(), Path::new("c1")).unwrap();
        assert_eq!(names, vec![PathBuf::from("mounts")]);
    }

    #[test]
    fn a_planted_symlink_is_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("c1")).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("c1/mounts")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("f"), dir.path().join("c1/file")).unwrap();
        let fd = open_dir(dir.path());
        for rel in ["c1/mounts/0", "c1/mounts"] {
            let err = make_dir_beneath(fd.as_fd(), Path::new(rel)).unwrap_err();
            assert!(
                matches!(
                    err,
                    MountError::Sys {
                        source: Errno::ELOOP | Errno::ENOTDIR,
                        ..
                    }
                ),
                "{rel}: {err}"
            );
        }
        let err = make_file_beneath(fd.as_fd(), Path::new("c1/file")).unwrap_err();
        assert!(
            matches!(
                err,
                MountError::Sys {
                    source: Errno::ELOOP,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn removal_takes_only_empty_entries() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("full/keep")).unwrap();
        std::fs::create_dir(dir.path().join("empty")).unwrap();
        std::fs::write(dir.path().join("file"), "").unwrap();
        let fd = open_dir(dir.path());
        remove_entry(fd.as_fd(), Path::new("empty")).unwrap();
        remove_entry(fd.as_fd(), Path::new("file")).unwrap();
        remove_entry(fd.as_fd(), Path::new("gone")).unwrap();
        assert!(remove_entry(fd.as_fd(), Path::new("full")).is_err());
        assert!(dir.path().join("full/keep").is_dir());
        assert!(!detach_all(fd.as_fd(), Path::new("full")).unwrap());
    }
}
