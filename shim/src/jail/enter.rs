//! Entering a planned jail, in the VMM's child between fork and exec: system
//! calls on the plan only, each failure reported as a code naming its step.

use super::{Bind, Jail, JailError, PROC_OPTIONS, ROOT_TMPFS_OPTIONS};
use nix::errno::Errno;
use std::ffi::CString;
use std::io;

/// A step of [`Jail::enter`], for its error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum Step {
    Unshare = 1,
    Slave,
    MountRoot,
    MakeDir,
    MakeMountPoint,
    Bind,
    Remount,
    MountProc,
    PivotRoot,
    DetachOldRoot,
    ReadOnlyRoot,
}

impl Step {
    const ALL: [Step; 11] = [
        Step::Unshare,
        Step::Slave,
        Step::MountRoot,
        Step::MakeDir,
        Step::MakeMountPoint,
        Step::Bind,
        Step::Remount,
        Step::MountProc,
        Step::PivotRoot,
        Step::DetachOldRoot,
        Step::ReadOnlyRoot,
    ];

    fn name(self) -> &'static str {
        match self {
            Step::Unshare => "enter a mount namespace",
            Step::Slave => "make the mounts slaves",
            Step::MountRoot => "mount the root tmpfs on",
            Step::MakeDir => "make directory",
            Step::MakeMountPoint => "make the mount point of",
            Step::Bind => "bind",
            Step::Remount => "restrict the bind of",
            Step::MountProc => "mount proc on",
            Step::PivotRoot => "pivot_root to",
            Step::DetachOldRoot => "detach the host's root from",
            Step::ReadOnlyRoot => "make the root read-only:",
        }
    }

    /// The code a failure of this step on entry `index` with `errno` is
    /// reported as: step, index and errno in one `i32`.
    pub(super) fn code(self, index: usize, errno: i32) -> i32 {
        (i32::from(self as u8) << 24) | ((index as i32 & 0xff) << 16) | (errno & 0xffff)
    }

    /// The step, index and errno of a code made by [`Step::code`].
    fn decode(code: i32) -> Option<(Step, usize, i32)> {
        let step = u8::try_from(code >> 24).ok()?;
        let step = Self::ALL.into_iter().find(|s| *s as u8 == step)?;
        Some((step, ((code >> 16) & 0xff) as usize, code & 0xffff))
    }
}

impl Jail {
    /// Enters the jail: a new mount namespace whose mounts receive the
    /// shim's but never reach it, the root tmpfs, the binds, `/proc`, then
    /// `pivot_root` into it and the host's root detached. For the child
    /// between fork and exec, in the pid namespace [`super::spawn_confined`] made:
    /// async-signal-safe, system calls on the plan only, no allocation.
    pub fn enter(&self) -> io::Result<()> {
        let none = std::ptr::null::<libc::c_char>();
        // SAFETY: unshare takes flags; no memory.
        let unshared = unsafe { libc::unshare(libc::CLONE_NEWNS) };
        check(unshared, Step::Unshare, 0)?;
        // SAFETY: a NUL-terminated literal target; no source, type or data.
        let slave = unsafe {
            libc::mount(
                none,
                c"/".as_ptr(),
                none,
                libc::MS_REC | libc::MS_SLAVE,
                std::ptr::null(),
            )
        };
        check(slave, Step::Slave, 0)?;
        // SAFETY: NUL-terminated strings of the plan and literals.
        let root = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                self.root.as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                ROOT_TMPFS_OPTIONS.as_ptr().cast(),
            )
        };
        check(root, Step::MountRoot, 0)?;
        for (index, dir) in self.dirs.iter().enumerate() {
            // SAFETY: a NUL-terminated path of the plan.
            let made = unsafe { libc::mkdir(dir.as_ptr(), 0o755) };
            check(made, Step::MakeDir, index)?;
        }
        for (index, bind) in self.binds.iter().enumerate() {
            bind.mount(index)?;
        }
        // SAFETY: NUL-terminated strings of the plan and literals.
        let proc = unsafe {
            libc::mount(
                c"proc".as_ptr(),
                self.proc.as_ptr(),
                c"proc".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_RDONLY,
                PROC_OPTIONS.as_ptr().cast(),
            )
        };
        check(proc, Step::MountProc, 0)?;
        // SAFETY: a NUL-terminated path of the plan.
        let in_root = unsafe { libc::chdir(self.root.as_ptr()) };
        check(in_root, Step::PivotRoot, 0)?;
        // SAFETY: "." twice: the new root stacks over the old, which is then
        // detached from it.
        let pivot = unsafe { libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) };
        check(pivot as libc::c_int, Step::PivotRoot, 0)?;
        // SAFETY: a NUL-terminated literal.
        let detach = unsafe { libc::umount2(c".".as_ptr(), libc::MNT_DETACH) };
        check(detach, Step::DetachOldRoot, 0)?;
        // SAFETY: a NUL-terminated literal.
        let at_root = unsafe { libc::chdir(c"/".as_ptr()) };
        check(at_root, Step::DetachOldRoot, 0)?;
        // SAFETY: a NUL-terminated literal target; no source, type or data.
        let read_only = unsafe {
            libc::mount(
                none,
                c"/".as_ptr(),
                none,
                libc::MS_REMOUNT
                    | libc::MS_BIND
                    | libc::MS_RDONLY
                    | libc::MS_NOSUID
                    | libc::MS_NODEV
                    | libc::MS_NOEXEC,
                std::ptr::null(),
            )
        };
        check(read_only, Step::ReadOnlyRoot, 0)
    }

    /// What a failed spawn of a jailed VMM means: the step and the path when
    /// [`Jail::enter`] failed, else the error as it is.
    pub fn describe(&self, err: io::Error) -> JailError {
        let Some((step, index, errno)) = err.raw_os_error().and_then(Step::decode) else {
            return JailError::Spawn(err);
        };
        let show = |path: &CString| path.to_string_lossy().into_owned();
        let what = match step {
            Step::MountRoot | Step::PivotRoot => show(&self.root),
            Step::MakeDir => self.dirs.get(index).map(show).unwrap_or_default(),
            Step::MakeMountPoint | Step::Remount => self
                .binds
                .get(index)
                .map(|b| show(&b.target))
                .unwrap_or_default(),
            Step::Bind => self
                .binds
                .get(index)
                .map(|b| format!("{} on {}", show(&b.source), show(&b.target)))
                .unwrap_or_default(),
            Step::MountProc => show(&self.proc),
            Step::Unshare | Step::Slave | Step::DetachOldRoot | Step::ReadOnlyRoot => String::new(),
        };
        JailError::Enter {
            step: step.name(),
            what,
            errno: Errno::from_raw(errno),
        }
    }
}

impl Bind {
    /// Makes the mount point, binds, and restricts the bind's flags.
    fn mount(&self, index: usize) -> io::Result<()> {
        if self.file {
            // SAFETY: a NUL-terminated path of the plan; the fd is closed below.
            let fd = unsafe {
                libc::open(
                    self.target.as_ptr(),
                    libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC,
                    0o600,
                )
            };
            check(fd, Step::MakeMountPoint, index)?;
            // SAFETY: `fd` was just opened and is closed once.
            unsafe { libc::close(fd) };
        }
        let recursive = if self.recursive { libc::MS_REC } else { 0 };
        // SAFETY: NUL-terminated paths of the plan; no type or data.
        let bound = unsafe {
            libc::mount(
                self.source.as_ptr(),
                self.target.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | recursive,
                std::ptr::null(),
            )
        };
        check(bound, Step::Bind, index)?;
        if let Some(flags) = self.flags {
            // SAFETY: as above.
            let restricted = unsafe {
                libc::mount(
                    std::ptr::null(),
                    self.target.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REMOUNT | libc::MS_BIND | flags,
                    std::ptr::null(),
                )
            };
            check(restricted, Step::Remount, index)?;
        }
        Ok(())
    }
}

/// Maps a failed system call's return to the code of `step` on `index`.
fn check(ret: libc::c_int, step: Step, index: usize) -> io::Result<()> {
    if ret >= 0 {
        return Ok(());
    }
    let errno = io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO);
    Err(io::Error::from_raw_os_error(step.code(index, errno)))
}
