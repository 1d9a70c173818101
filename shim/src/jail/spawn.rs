//! Spawning the VMM confined: its jail, its pid namespace and its
//! privileges, set up between fork and exec.

use super::{Jail, JailError};
use crate::privileges::VmmPrivileges;
use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Spawns the VMM `command` confined: in the child, `prepare`, then the
/// entry into `jail` (if any; the child is then the first process of a new pid
/// namespace), then `privileges`. Returns the child and how long the spawn
/// took, fork to exec (with the jail's making), or what failed (a jail step
/// names itself).
///
/// # Safety
///
/// `prepare` runs in the child between fork and exec: it must be
/// async-signal-safe (system calls only; no allocation, no lock).
pub unsafe fn spawn_confined(
    command: &mut Command,
    jail: Option<Arc<Jail>>,
    privileges: VmmPrivileges,
    prepare: impl Fn() -> io::Result<()> + Send + Sync + 'static,
) -> Result<(Child, Duration), JailError> {
    let entering = jail.clone();
    // SAFETY: the caller vouches for `prepare`; `Jail::enter` and
    // `VmmPrivileges::apply` make system calls on plans made before the fork
    // and allocate nothing.
    unsafe {
        command.pre_exec(move || {
            prepare()?;
            if let Some(jail) = &entering {
                jail.enter()?;
            }
            privileges.apply()
        });
    }
    let started = Instant::now();
    let spawned = match &jail {
        Some(_) => spawn(command),
        None => command.spawn(),
    };
    let took = started.elapsed();
    match spawned {
        Ok(child) => Ok((child, took)),
        Err(err) => Err(match jail {
            Some(jail) => jail.describe(err),
            None => JailError::Spawn(err),
        }),
    }
}

/// Spawns `command` as the first process of a new pid namespace: from a
/// thread of its own that unshares the namespace for its children (the shim's
/// other threads keep theirs), so that the VMM is still the shim's child.
fn spawn(command: &mut Command) -> io::Result<Child> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: unshare takes flags; CLONE_NEWPID changes only the
                // pid namespace of this thread's children, and this thread
                // ends after its one child.
                if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                command.spawn()
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the VMM's spawner thread panicked")))
    })
}
