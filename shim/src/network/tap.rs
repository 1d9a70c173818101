//! The taps that carry a pod interface's frames to runv-vmm: `tap{i}_runv`,
//! opened with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` and never persistent, so a
//! tap disappears with the last descriptor of it (a killed VMM leaves none).

use std::ffi::CString;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;
use protocol::netlink::Netlink;

use super::{each_link, NetworkError};

/// Size of the `virtio_net_hdr_v1` (with `num_buffers`) in front of every
/// frame, as runv-vmm sets it too.
pub const VNET_HDR_LEN: libc::c_int = 12;
const TAP_FLAGS: libc::c_int = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;

/// A tap made for one pod interface.
#[derive(Debug)]
pub struct Tap {
    /// The queue: frames in and out, each after a `virtio_net_hdr_v1`.
    pub fd: OwnedFd,
    pub name: String,
    pub index: u32,
}

/// The name of the tap of the pod's `i`-th interface.
pub fn name(i: usize) -> String {
    format!("tap{i}_runv")
}

/// Whether `name` is one [`name`] makes.
pub fn is_ours(name: &str) -> bool {
    name.strip_prefix("tap")
        .and_then(|rest| rest.strip_suffix("_runv"))
        .is_some_and(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
}

/// Creates tap `name` in the calling thread's namespace, with `mtu`, up.
pub fn create(nl: &mut Netlink, name: &str, mtu: u32) -> Result<Tap, NetworkError> {
    let failed = |step: &'static str| {
        let name = name.to_string();
        move |source: io::Error| NetworkError::Tap { name, step, source }
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(failed("open /dev/net/tun (is the tun module loaded?)"))?;
    let mut ifr = ifreq_named(name).map_err(failed("name"))?;
    ifr.ifr_ifru.ifru_flags = TAP_FLAGS as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one ifreq, which outlives the call.
    if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut ifr) } < 0 {
        return Err(failed("TUNSETIFF")(io::Error::last_os_error()));
    }
    // SAFETY: TUNSETVNETHDRSZ reads one int, which outlives the call.
    if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &VNET_HDR_LEN) } < 0 {
        return Err(failed("TUNSETVNETHDRSZ")(io::Error::last_os_error()));
    }
    let index = index_of(name).map_err(failed("find its index"))?;
    let mut message = LinkMessage::default();
    message.header.index = index;
    message.header.flags = LinkFlags::Up;
    message.header.change_mask = LinkFlags::Up;
    message.attributes.push(LinkAttribute::Mtu(mtu));
    nl.request(RouteNetlinkMessage::SetLink(message), 0)
        .map_err(failed("set its mtu and bring it up"))?;
    Ok(Tap {
        fd: file.into(),
        name: name.to_string(),
        index,
    })
}

/// Deletes every tap [`is_ours`] in the calling thread's namespace (those a
/// VMM still holds, after a shim crash); the names of those it deleted.
pub fn remove_all(nl: &mut Netlink) -> Result<Vec<String>, NetworkError> {
    let mut taps = Vec::new();
    each_link(nl, |message| {
        let mut name = None;
        let mut tun = false;
        for attribute in &message.attributes {
            match attribute {
                LinkAttribute::IfName(n) => name = Some(n.clone()),
                LinkAttribute::LinkInfo(infos) => {
                    tun = infos.contains(&LinkInfo::Kind(InfoKind::Tun));
                }
                _ => {}
            }
        }
        if let Some(name) = name.filter(|n| tun && is_ours(n)) {
            taps.push((message.header.index, name));
        }
        Ok(())
    })?;
    let mut removed = Vec::new();
    for (index, name) in taps {
        let mut message = LinkMessage::default();
        message.header.index = index;
        match nl.request(RouteNetlinkMessage::DelLink(message), 0) {
            Ok(()) => removed.push(name),
            // Closed meanwhile.
            Err(err) if err.raw_os_error() == Some(libc::ENODEV) => {}
            Err(source) => {
                return Err(NetworkError::Netlink {
                    step: format!("delete tap {name}"),
                    source,
                })
            }
        }
    }
    Ok(removed)
}

fn ifreq_named(name: &str) -> io::Result<libc::ifreq> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "an interface name is 1 to 15 bytes",
        ));
    }
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(ifr)
}

/// The ifindex of link `name` in the calling thread's namespace.
pub fn index_of(name: &str) -> io::Result<u32> {
    let name = CString::new(name).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `name` is a NUL-terminated string that outlives the call.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(io::Error::last_os_error()),
        index => Ok(index),
    }
}

#[cfg(test)]
mod tests;
