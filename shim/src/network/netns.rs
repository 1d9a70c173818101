//! A pod's network namespace: opened and checked (a namespace of its own,
//! not the host's), and entered only by a thread made for the purpose, so the
//! shim's other threads never change namespace.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;
use nix::sys::statfs::{fstatfs, NSFS_MAGIC};

use super::NetworkError;

/// The host's network namespace: PID 1's, where it can be seen (a sandboxed
/// host may hide it, or PID 1 may not be dumpable), and always the shim's
/// own (containerd starts it in its namespace, which is the host's network to
/// its pods; `self` is the main thread, which never moves).
const HOST_NETNS: [&str; 2] = ["/proc/1/ns/net", "/proc/self/ns/net"];

/// An open network namespace that is not the host's.
#[derive(Debug)]
pub struct Netns {
    file: File,
    path: PathBuf,
}

/// What opening a namespace path found.
#[derive(Debug)]
pub enum Opened {
    /// A network namespace of its own.
    Pod(Netns),
    /// The path does not exist (any more).
    Missing,
}

impl Netns {
    /// Opens `path`: `Missing` if it does not exist; an error if it is not a
    /// namespace or is the host's. The path is opened with `O_PATH` first, so
    /// a FIFO or device there is never opened for reading.
    pub fn open(path: &Path) -> Result<Opened, NetworkError> {
        let handle = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH)
            .open(path)
        {
            Ok(handle) => handle,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Opened::Missing),
            Err(source) => {
                return Err(NetworkError::OpenNetns {
                    path: path.into(),
                    source,
                })
            }
        };
        let not_a_netns = |why: String| NetworkError::NotANetns {
            path: path.into(),
            why,
        };
        let fs = fstatfs(&handle).map_err(|e| not_a_netns(format!("statfs: {e}")))?;
        if fs.filesystem_type() != NSFS_MAGIC {
            return Err(not_a_netns("not a namespace file (nsfs)".into()));
        }
        let own = handle
            .metadata()
            .map_err(|e| not_a_netns(format!("stat: {e}")))?;
        if is_host((own.dev(), own.ino()), path)? {
            return Err(NetworkError::HostNetwork { path: path.into() });
        }
        // setns() takes no O_PATH descriptor: reopen the very same inode.
        let file =
            File::open(format!("/proc/self/fd/{}", handle.as_raw_fd())).map_err(|source| {
                NetworkError::OpenNetns {
                    path: path.into(),
                    source,
                }
            })?;
        Ok(Opened::Pod(Netns {
            file,
            path: path.into(),
        }))
    }

    /// Runs `work` on a new thread that has entered this namespace; the
    /// caller's thread stays where it is. Sockets and taps `work` opens stay
    /// in the namespace after the thread ends.
    pub fn run<T: Send>(
        &self,
        work: impl FnOnce() -> Result<T, NetworkError> + Send,
    ) -> Result<T, NetworkError> {
        std::thread::scope(|scope| {
            let thread = std::thread::Builder::new()
                .name("runv-netns".into())
                .spawn_scoped(scope, || {
                    nix::sched::setns(&self.file, CloneFlags::CLONE_NEWNET).map_err(|e| {
                        NetworkError::EnterNetns {
                            path: self.path.clone(),
                            source: e.into(),
                        }
                    })?;
                    work()
                })
                .map_err(NetworkError::Thread)?;
            thread.join().map_err(|_| {
                NetworkError::Thread(io::Error::other("the network namespace thread panicked"))
            })?
        })
    }
}

/// Whether the namespace `(dev, ino)` (opened from `path`) is the host's.
fn is_host(namespace: (u64, u64), path: &Path) -> Result<bool, NetworkError> {
    let [init, own] = HOST_NETNS;
    let id = |file: &str| std::fs::metadata(file).map(|m| (m.dev(), m.ino()));
    let own = id(own).map_err(|source| NetworkError::HostUnknown {
        path: path.into(),
        source,
    })?;
    Ok(namespace == own || id(init).is_ok_and(|init| namespace == init))
}
