//! `fs-check`: the guest end of the virtio-fs suite's checks that busybox
//! cannot make (test-only, never in the production initrd). Each subcommand
//! prints one `key=value ...` line for the host to assert on:
//!
//! - `xattr FILE`: sets, reads, lists and removes `security.runv.*`
//!   attributes (tmpfs, where the test host's shares live, keeps no `user.*`
//!   ones on 6.1), leaving `security.runv.kept=guest` for the host to read,
//!   and tries to set `trusted.runv.denied` and a valid `security.capability`,
//!   which the share refuses;
//! - `locks FILE`: an `flock` and a POSIX record lock held by a child process
//!   are seen as conflicts by the parent, and are free once the child exits
//!   (the passthrough file system claims no lock support in FUSE_INIT, so the
//!   guest kernel keeps these locks itself: this checks that they still work);
//! - `race PATH ROUNDS`: reads PATH and creates a new file beside it, ROUNDS
//!   times, while the host swaps PATH's directory with a symlink that points
//!   out of the share; counts what the rounds saw and made;
//! - `fill DIR`: creates files in a new DIR and keeps them open (each is an
//!   inode and an open file on the host) until the share's bound on host fds
//!   refuses one, names the error, closes them and checks that one more can
//!   be created; the files stay for the host to count.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::process::exit;

const KEPT_NAME: &str = "security.runv.kept";
const KEPT_VALUE: &[u8] = b"guest";
const GONE_NAME: &str = "security.runv.gone";
const DENIED_NAME: &str = "trusted.runv.denied";
const CAPABILITY_NAME: &str = "security.capability";
/// A valid version-2 capability set: revision 2 with the effective flag,
/// cap_net_raw (13) permitted, nothing inheritable.
const CAPABILITY_VALUE: [u8; 20] = [
    1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];
/// Files `fill` keeps open at most: below the guest's own limit of open
/// files (1024), above what the share's bound in the suite allows.
const FILL_MAX: usize = 900;

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in the path"))
}

fn c_name(name: &str) -> CString {
    // The names are constants without NUL bytes.
    CString::new(name).unwrap_or_default()
}

/// Returns -1's errno as an error, anything else as the count.
fn check(ret: libc::ssize_t) -> io::Result<usize> {
    usize::try_from(ret).map_err(|_| io::Error::last_os_error())
}

fn set_xattr(path: &CString, name: &str, value: &[u8]) -> io::Result<()> {
    // SAFETY: path and name are NUL-terminated; value is valid for its length.
    let ret = unsafe {
        libc::setxattr(
            path.as_ptr(),
            c_name(name).as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    check(ret as libc::ssize_t).map(drop)
}

fn get_xattr(path: &CString, name: &str) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    // SAFETY: path and name are NUL-terminated; buf is writable for its length.
    let ret = unsafe {
        libc::getxattr(
            path.as_ptr(),
            c_name(name).as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    buf.truncate(check(ret)?);
    Ok(buf)
}

fn list_xattr(path: &CString) -> io::Result<Vec<String>> {
    let mut buf = vec![0u8; 4096];
    // SAFETY: path is NUL-terminated; buf is writable for its length.
    let ret = unsafe { libc::listxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    buf.truncate(check(ret)?);
    Ok(buf
        .split(|b| *b == 0)
        .filter(|name| !name.is_empty())
        .map(|name| String::from_utf8_lossy(name).into_owned())
        .collect())
}

fn remove_xattr(path: &CString, name: &str) -> io::Result<()> {
    // SAFETY: path and name are NUL-terminated.
    let ret = unsafe { libc::removexattr(path.as_ptr(), c_name(name).as_ptr()) };
    check(ret as libc::ssize_t).map(drop)
}

fn xattr(file: &Path) -> io::Result<String> {
    let path = c_path(file)?;
    set_xattr(&path, KEPT_NAME, KEPT_VALUE)?;
    set_xattr(&path, GONE_NAME, b"temporary")?;
    let read_back = get_xattr(&path, KEPT_NAME)?;
    let listed = list_xattr(&path)?;
    remove_xattr(&path, GONE_NAME)?;
    let after_remove = match get_xattr(&path, GONE_NAME) {
        Err(err) if err.raw_os_error() == Some(libc::ENODATA) => "enodata".to_owned(),
        other => format!("{other:?}"),
    };
    Ok(format!(
        "xattr-get={} xattr-listed={} xattr-removed={after_remove} xattr-trusted={} \
         xattr-capability={}",
        String::from_utf8_lossy(&read_back),
        listed.iter().any(|name| name == KEPT_NAME) && listed.iter().any(|n| n == GONE_NAME),
        errno_name(set_xattr(&path, DENIED_NAME, b"guest")),
        errno_name(set_xattr(&path, CAPABILITY_NAME, &CAPABILITY_VALUE)),
    ))
}

/// `ok`, `eperm`, `enfile` or the error as text.
fn errno_name<T>(result: io::Result<T>) -> String {
    match result {
        Ok(_) => "ok".into(),
        Err(err) => match err.raw_os_error() {
            Some(libc::EPERM) => "eperm".into(),
            Some(libc::ENFILE) => "enfile".into(),
            _ => err.to_string().replace(' ', "_"),
        },
    }
}

fn fill(dir: &Path) -> io::Result<String> {
    std::fs::create_dir(dir)?;
    let mut open = Vec::new();
    let refused = loop {
        if open.len() == FILL_MAX {
            break Ok(());
        }
        match File::create(dir.join(format!("f{}", open.len()))) {
            Ok(file) => open.push(file),
            Err(err) => break Err(err),
        }
    };
    let made = open.len();
    // Closed, the files are released, and their inodes forgotten once the
    // guest kernel drops them (at once under cache=never; it sends FORGETs in
    // the background).
    drop(open);
    let again = dir.join("again");
    let mut made_again = File::create(&again);
    for _ in 0..50 {
        if made_again.is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        made_again = File::create(&again);
    }
    Ok(format!(
        "fill-refused={} fill-made={made} fill-again={}",
        errno_name(refused),
        errno_name(made_again),
    ))
}

/// Whether an exclusive `flock` and an exclusive POSIX lock on `file` are
/// free right now, as (flock free, posix free).
fn locks_free(file: &File) -> io::Result<(bool, bool)> {
    let fd = file.as_raw_fd();
    // SAFETY: fd is an open file; LOCK_NB never blocks.
    let flock_free = unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } == 0;
    if flock_free {
        // SAFETY: as above; releases the lock just taken.
        unsafe { libc::flock(fd, libc::LOCK_UN) };
    }
    let mut probe = posix_lock(libc::F_WRLCK);
    // SAFETY: fd is an open file; probe is a valid flock struct to fill.
    if unsafe { libc::fcntl(fd, libc::F_GETLK, &mut probe as *mut libc::flock) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((flock_free, probe.l_type == libc::F_UNLCK as libc::c_short))
}

fn posix_lock(kind: libc::c_int) -> libc::flock {
    // SAFETY: flock is plain data; all-zero is a valid value (whole file).
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = kind as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    lock
}

fn open_rw(file: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(file)
}

fn locks(file: &Path) -> io::Result<String> {
    let mut ready = [0 as libc::c_int; 2];
    let mut release = [0 as libc::c_int; 2];
    for pipe in [&mut ready, &mut release] {
        // SAFETY: each array has room for the two fds pipe(2) returns.
        if unsafe { libc::pipe(pipe.as_mut_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // SAFETY: the process is single-threaded; the child only makes syscalls.
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(io::Error::last_os_error());
    }
    if child == 0 {
        // SAFETY: the parent's ends; the child must not hold `release`'s
        // write end, or its read below never sees end of file.
        unsafe {
            libc::close(ready[0]);
            libc::close(release[1]);
        }
        let held = open_rw(file).is_ok_and(|f| {
            let lock = posix_lock(libc::F_WRLCK);
            // SAFETY: f is open; the locks are released when the child exits.
            let ok = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0
                && unsafe {
                    libc::fcntl(f.as_raw_fd(), libc::F_SETLK, &lock as *const libc::flock)
                } == 0;
            std::mem::forget(f);
            ok
        });
        let byte = [u8::from(held)];
        let mut wait = [0u8; 1];
        // SAFETY: the pipe fds are open; the buffers are valid for one byte.
        unsafe {
            libc::write(ready[1], byte.as_ptr().cast(), 1);
            libc::read(release[0], wait.as_mut_ptr().cast(), 1);
            libc::_exit(0);
        }
    }
    // SAFETY: the child's ends, which the parent does not use.
    unsafe {
        libc::close(ready[1]);
        libc::close(release[0]);
    }
    let mut held = [0u8; 1];
    // SAFETY: ready[0] is open; held is valid for one byte.
    unsafe { libc::read(ready[0], held.as_mut_ptr().cast(), 1) };
    let ours = open_rw(file)?;
    let (flock_while_held, posix_while_held) = locks_free(&ours)?;
    // SAFETY: release[1] is open; closing it lets the child exit.
    unsafe { libc::close(release[1]) };
    let mut status = 0;
    // SAFETY: child is our child; status is a valid int to fill.
    unsafe { libc::waitpid(child, &mut status, 0) };
    let (flock_after, posix_after) = locks_free(&ours)?;
    Ok(format!(
        "locks-child-held={} flock-conflict={} posix-conflict={} flock-free-after={flock_after} posix-free-after={posix_after}",
        held[0] == 1,
        !flock_while_held,
        !posix_while_held,
    ))
}

fn race(path: &Path, rounds: u32) -> io::Result<String> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let (mut inside, mut escaped, mut failed, mut created) = (0u32, 0u32, 0u32, 0u32);
    for round in 0..rounds {
        let mut text = String::new();
        match File::open(path).and_then(|mut f| f.read_to_string(&mut text)) {
            Ok(_) if text.contains("HOST-SECRET") => escaped += 1,
            Ok(_) => inside += 1,
            Err(_) => failed += 1,
        }
        // Kept, each under its own name: the host then finds every one of them
        // in the real directory and none outside the share.
        if File::create(dir.join(format!("made-by-guest-{round}"))).is_ok() {
            created += 1;
        }
    }
    Ok(format!(
        "race-rounds={rounds} race-inside={inside} race-failed={failed} race-escaped={escaped} \
         race-created={created}"
    ))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["xattr", file] => xattr(Path::new(file)),
        ["locks", file] => locks(Path::new(file)),
        ["race", path, rounds] => match rounds.parse() {
            Ok(rounds) => race(Path::new(path), rounds),
            Err(_) => Err(io::Error::new(io::ErrorKind::InvalidInput, "bad ROUNDS")),
        },
        ["fill", dir] => fill(Path::new(dir)),
        _ => {
            eprintln!("usage: fs-check xattr FILE | locks FILE | race PATH ROUNDS | fill DIR");
            exit(2);
        }
    };
    match result {
        Ok(line) => println!("{line}"),
        Err(err) => {
            println!("fs-check-error={} {err}", args.join("-"));
            exit(1);
        }
    }
}
