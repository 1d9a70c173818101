//! The host end of a virtio-net device: a tap interface opened (or inherited)
//! with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, so that every frame carries the
//! same 12-byte `virtio_net_hdr_v1` the guest uses, and non-blocking.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

/// Size of `struct virtio_net_hdr_v1` (with `num_buffers`), on both sides.
pub const VNET_HDR_LEN: usize = 12;
/// Longest interface name, without the NUL.
pub const MAX_NAME_LEN: usize = libc::IFNAMSIZ - 1;
/// The checksum and TCP segmentation offloads the device may turn on.
pub const TUN_OFFLOADS: libc::c_uint = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;

/// Errors opening or configuring a tap.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// `/dev/net/tun` cannot be opened.
    #[error("cannot open /dev/net/tun for tap {name}: {source}")]
    OpenTun { name: String, source: io::Error },
    /// The interface name is empty or too long.
    #[error("tap name '{0}' must be 1 to 15 bytes without NUL")]
    Name(String),
    /// No such tap, or TUNSETIFF failed (another process holds it).
    #[error("cannot attach to tap {name}: {source}")]
    Attach { name: String, source: io::Error },
    /// The inherited fd is not a tap opened with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`.
    #[error("fd {fd} is not a tap with IFF_TAP|IFF_NO_PI|IFF_VNET_HDR: {why}")]
    NotATap { fd: RawFd, why: String },
    /// A configuration ioctl failed.
    #[error("tap {name}: {what} failed: {source}")]
    Ioctl {
        name: String,
        what: &'static str,
        source: io::Error,
    },
}

/// An open tap queue.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

fn ifreq_with_name(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    ifr
}

const TAP_FLAGS: libc::c_int = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;

impl Tap {
    /// Attaches to the existing tap interface `name` (the VMM never creates
    /// one: a missing interface is an error).
    pub fn open(name: &str) -> Result<Self, TapError> {
        if name.is_empty() || name.len() > MAX_NAME_LEN || name.contains('\0') {
            return Err(TapError::Name(name.to_owned()));
        }
        // TUNSETIFF would create a missing interface: refuse it instead.
        let sys = std::path::Path::new("/sys/class/net").join(name);
        if !sys.join("tun_flags").exists() {
            return Err(TapError::Attach {
                name: name.to_owned(),
                source: io::Error::new(
                    io::ErrorKind::NotFound,
                    "no such tap interface (create it first: ip tuntap add dev NAME mode tap)",
                ),
            });
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|source| TapError::OpenTun {
                name: name.to_owned(),
                source,
            })?;
        let mut ifr = ifreq_with_name(name);
        ifr.ifr_ifru.ifru_flags = TAP_FLAGS as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes one ifreq, which outlives the call.
        let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut ifr) };
        if ret < 0 {
            return Err(TapError::Attach {
                name: name.to_owned(),
                source: io::Error::last_os_error(),
            });
        }
        Self::configure(file, name.to_owned())
    }

    /// Takes an inherited, already-attached tap fd (the shim opens the tap in
    /// the pod's network namespace).
    pub fn from_fd(fd: OwnedFd) -> Result<Self, TapError> {
        let raw = fd.as_raw_fd();
        let not_a_tap = |why: String| TapError::NotATap { fd: raw, why };
        let mut ifr = ifreq_with_name("");
        // SAFETY: TUNGETIFF writes one ifreq, which outlives the call.
        let ret = unsafe { libc::ioctl(raw, libc::TUNGETIFF, &mut ifr) };
        if ret < 0 {
            return Err(not_a_tap(io::Error::last_os_error().to_string()));
        }
        // SAFETY: TUNGETIFF filled in the flags member of the union.
        let flags = libc::c_int::from(unsafe { ifr.ifr_ifru.ifru_flags });
        if flags & TAP_FLAGS != TAP_FLAGS || flags & libc::IFF_TUN != 0 {
            return Err(not_a_tap(format!("its flags are {flags:#x}")));
        }
        let name: String = ifr
            .ifr_name
            .iter()
            .take_while(|c| **c != 0)
            .map(|c| *c as u8 as char)
            .collect();
        // SAFETY: F_SETFL on an fd this process owns.
        let ret = unsafe {
            let fl = libc::fcntl(raw, libc::F_GETFL);
            if fl < 0 {
                fl
            } else {
                libc::fcntl(raw, libc::F_SETFL, fl | libc::O_NONBLOCK)
            }
        };
        if ret < 0 {
            return Err(not_a_tap(io::Error::last_os_error().to_string()));
        }
        Self::configure(File::from(fd), name)
    }

    /// Sets the header size and turns every offload off (until the driver
    /// acks some, see [`Tap::set_offload`]).
    fn configure(file: File, name: String) -> Result<Self, TapError> {
        let tap = Self { file, name };
        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int, which outlives the call.
        let ret = unsafe { libc::ioctl(tap.file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len) };
        if ret < 0 {
            return Err(tap.ioctl_error("TUNSETVNETHDRSZ"));
        }
        tap.set_offload(0)?;
        Ok(tap)
    }

    fn ioctl_error(&self, what: &'static str) -> TapError {
        TapError::Ioctl {
            name: self.name.clone(),
            what,
            source: io::Error::last_os_error(),
        }
    }

    /// Which offloads (`TUN_F_*`) the tap may use on frames it hands us.
    pub fn set_offload(&self, flags: libc::c_uint) -> Result<(), TapError> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        let ret = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        if ret < 0 {
            return Err(self.ioctl_error("TUNSETOFFLOAD"));
        }
        Ok(())
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The file frames are read from and written to.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// A tap over any fd, without ioctls (unit tests use a datagram socket).
    #[cfg(test)]
    pub fn from_raw_for_test(fd: OwnedFd) -> Self {
        Self {
            file: File::from(fd),
            name: "test".into(),
        }
    }
}

/// Takes ownership of an inherited fd number (checked to be open).
pub fn inherited_fd(fd: RawFd) -> Result<OwnedFd, TapError> {
    // SAFETY: F_GETFD only queries the descriptor table.
    if fd < 0 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(TapError::NotATap {
            fd,
            why: "not an open file descriptor".into(),
        });
    }
    // SAFETY: the fd is open and was handed to this process to own (`--net fd=N`);
    // nothing else in the VMM refers to it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_names_missing_taps_and_non_tap_fds_are_refused() {
        let err = |r: Result<Tap, TapError>| r.unwrap_err().to_string();
        assert!(err(Tap::open("")).contains("1 to 15 bytes"));
        assert!(err(Tap::open("abcdefghijklmnop")).contains("1 to 15 bytes"));
        assert!(err(Tap::open("runvnotap7")).contains("tap runvnotap7: no such tap"));
        assert!(!std::path::Path::new("/sys/class/net/runvnotap7").exists());
        let file = File::open("/dev/null").unwrap();
        let raw = file.as_raw_fd();
        assert!(err(Tap::from_fd(OwnedFd::from(file))).contains(&format!("fd {raw} is not a tap")));
        assert!(inherited_fd(-1).is_err());
        assert!(inherited_fd(100_000).is_err(), "not open");
    }

    /// Needs root and /dev/net/tun (tier 1 runs as root), and fails without
    /// them: an inherited fd of a real (non-persistent, so never leaked) tap
    /// is taken and configured.
    #[test]
    fn an_inherited_tap_fd_is_taken() {
        let tun = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .expect("this test needs /dev/net/tun");
        let mut ifr = ifreq_with_name("runvut%d");
        ifr.ifr_ifru.ifru_flags = TAP_FLAGS as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes one ifreq, which outlives the call.
        let created = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut ifr) };
        assert!(
            created >= 0,
            "this test needs root to create a tap: {}",
            io::Error::last_os_error()
        );
        let tap = Tap::from_fd(OwnedFd::from(tun)).unwrap();
        assert!(tap.name().starts_with("runvut"), "{}", tap.name());
        tap.set_offload(TUN_OFFLOADS).unwrap();
        let sys = std::path::Path::new("/sys/class/net").join(tap.name());
        assert!(sys.exists());
        drop(tap);
        assert!(!sys.exists(), "the tap goes with its last fd");
    }
}
