//! Taking a pod down: powering its guest off, and removing what the shim
//! made for it on the host (also what a dead shim left).

use crate::mounts;
use crate::network;
use crate::paths::SandboxDir;
use crate::pod_cgroup;
use crate::share;
use crate::vm::{self, Vm};
use log::{info, warn};
use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::time::Duration;

/// Removes the tc filters (and any tap left) from the network namespace the
/// pod's record names, then the record.
fn detach_network(dir: &SandboxDir) {
    let record = dir.netns_record();
    let netns = match fs::read(&record) {
        Ok(bytes) => PathBuf::from(OsString::from_vec(bytes)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => return,
        Err(err) => {
            warn!("cleanup: {}: {err}", record.display());
            return;
        }
    };
    match network::teardown(&netns) {
        Ok(()) => {
            let _ = fs::remove_file(&record);
        }
        Err(err) => warn!("cleanup: network namespace {}: {err}", netns.display()),
    }
}

/// Kills a VMM left in `dir`, detaches the pod's share, takes what the shim
/// added out of the pod's network namespace and removes the directory; a
/// directory with anything still mounted below it is left whole (a removal
/// must never reach into a volume).
pub fn cleanup(dir: &SandboxDir) {
    vm::kill_orphan(dir);
    pod_cgroup::remove_recorded(dir);
    if let Err(err) = share::teardown(dir) {
        warn!("cleanup of {}: {err}", dir.path().display());
    }
    detach_network(dir);
    match mounts::anything_mounted_under(dir.path()) {
        Ok(false) => {}
        Ok(true) => {
            warn!(
                "cleanup of {}: something is still mounted below it; left in place",
                dir.path().display()
            );
            return;
        }
        Err(err) => {
            warn!("cleanup of {}: {err}; left in place", dir.path().display());
            return;
        }
    }
    match fs::remove_dir_all(dir.path()) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => warn!("cleanup of {}: {err}", dir.path().display()),
    }
}

/// How long after the shutdown deadline the VMM may take to exit before it is
/// killed.
const SHUTDOWN_MARGIN: Duration = Duration::from_secs(5);

/// Resumes a paused VM (the sandbox task's Pause): a paused guest cannot
/// answer DestroySandbox nor power off.
pub(super) fn resume_for_power_off(id: &str, api: &crate::vmm_api::VmmApi) {
    match api.state() {
        Ok(protocol::vmm::VmState::PAUSED) => {
            info!("pod {id}: resuming the paused VM to power it off");
            if let Err(err) = api.resume() {
                warn!("pod {id}: {err}");
            }
        }
        Ok(_) => {}
        Err(err) => warn!("pod {id}: {err}"),
    }
}

/// Asks the VMM to shut the VM down: the guest gets `grace` to power off
/// (zero: the VM stops at once), then the VMM stops it; kills the VMM if it
/// has not exited a little after that.
pub(super) fn shut_down_vmm(id: &str, vm: &Vm, api: &crate::vmm_api::VmmApi, grace: Duration) {
    if vm.has_exited() {
        return;
    }
    let asked = api.shutdown(grace);
    if asked.is_ok() {
        if grace.is_zero() {
            info!("pod {id}: VMM API Shutdown sent (the VM stops at once)");
        } else {
            info!(
                "pod {id}: VMM API Shutdown sent ({} s for the guest to power off)",
                grace.as_secs()
            );
        }
    }
    let exited = vm.wait_exit(grace + SHUTDOWN_MARGIN);
    match asked {
        // The VMM ended before its answer came: the guest powered off first,
        // or the VM it stopped at once took the API's connection with it.
        Err(err) if exited => {
            info!("pod {id}: the VMM exited before answering Shutdown ({err})")
        }
        Err(err) => warn!("pod {id}: {err}"),
        Ok(()) => {}
    }
    if !exited {
        warn!("pod {id}: the VMM did not stop the VM; killing it");
        vm.kill();
    }
}
