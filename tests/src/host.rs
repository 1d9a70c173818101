//! Preconditions on the host a suite runs on, and leak checks after it.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

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
    pids_matching(needle)
        .into_iter()
        .map(|(_, cmdline)| cmdline)
        .collect()
}

/// Pid and command line of the live processes (but this one) whose command line
/// contains `needle`.
pub fn pids_matching(needle: &str) -> Vec<(i32, String)> {
    let own_pid = std::process::id() as i32;
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != own_pid)
        .filter_map(|pid| {
            let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&raw)
                .replace('\0', " ")
                .trim()
                .to_owned();
            cmdline.contains(needle).then_some((pid, cmdline))
        })
        .collect()
}

/// Pid and command line of the live processes whose program (the base name of
/// `argv[0]`) is `name`.
pub fn pids_named(name: &str) -> Vec<(i32, String)> {
    pids_matching(name)
        .into_iter()
        .filter(|(_, cmdline)| {
            let program = cmdline.split(' ').next().unwrap_or_default();
            Path::new(program).file_name() == Some(std::ffi::OsStr::new(name))
        })
        .collect()
}

/// Mount points (from `/proc/self/mountinfo`, unescaped) at or below `dir`,
/// in mount order.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_mount_field(field)))
        .filter(|point| point.starts_with(dir))
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
pub(crate) fn unescape_mount_field(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|digits| {
            let digits = std::str::from_utf8(digits).ok()?;
            u8::from_str_radix(digits, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
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

/// Panics if a process whose command line contains `needle` is still alive.
pub fn assert_no_process_left(needle: &str) {
    let left = processes_matching(needle);
    assert!(left.is_empty(), "processes left behind: {left:?}");
}
