//! A VMM left running by a dead shim, found by its pid file and killed.

use crate::paths::SandboxDir;
use log::{info, warn};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::fs;
use std::path::Path;
use std::time::Duration;

/// Kills the VMM a dead shim left in `dir` (pid file), if that pid is still a
/// VMM of this sandbox.
pub fn kill_orphan(dir: &SandboxDir) {
    let Ok(text) = fs::read_to_string(dir.vmm_pid_file()) else {
        return;
    };
    let Ok(pid) = text.trim().parse::<i32>() else {
        return;
    };
    if !is_vmm_of(pid, dir.path()) {
        return;
    }
    info!("killing VMM {pid} left by a dead shim");
    if let Err(err) = kill(Pid::from_raw(pid), Signal::SIGKILL) {
        warn!("kill VMM {pid}: {err}");
        return;
    }
    // Not our child: wait for it to go by polling /proc.
    for _ in 0..100 {
        if !Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    warn!("VMM {pid} still exists 5 s after SIGKILL");
}

/// Whether `pid`'s command line names `sandbox_dir` (so a recycled pid is spared).
fn is_vmm_of(pid: i32, sandbox_dir: &Path) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let needle = sandbox_dir.as_os_str().as_encoded_bytes();
    cmdline
        .split(|b| *b == 0)
        .any(|arg| arg.windows(needle.len()).any(|w| w == needle))
}

fn is_zombie(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}
