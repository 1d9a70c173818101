//! Preconditions on the host a suite runs on, and leak checks after it.

use std::fs::{self, OpenOptions};

/// Panics unless `/dev/kvm` can be opened read-write: a tier-2 suite fails
/// loudly without KVM instead of passing silently.
pub fn require_kvm() {
    if let Err(err) = OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        panic!(
            "this suite needs KVM: cannot open /dev/kvm ({err}); run it through tests/kvm-host/run"
        );
    }
}

/// Panics unless the suite runs as root, naming `why` it needs root.
pub fn require_root(why: &str) {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this suite must run as root: {why}"
    );
}

/// Command lines of the live processes whose command line contains `needle`.
pub fn processes_matching(needle: &str) -> Vec<String> {
    let own_pid = std::process::id().to_string();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|entry| {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            name.bytes().all(|b| b.is_ascii_digit()) && name != own_pid.as_str()
        })
        .filter_map(|entry| fs::read(entry.path().join("cmdline")).ok())
        .map(|raw| {
            String::from_utf8_lossy(&raw)
                .replace('\0', " ")
                .trim()
                .to_owned()
        })
        .filter(|cmdline| cmdline.contains(needle))
        .collect()
}

/// Panics if a process whose command line contains `needle` is still alive.
pub fn assert_no_process_left(needle: &str) {
    let left = processes_matching(needle);
    assert!(left.is_empty(), "processes left behind: {left:?}");
}
