//! The host side of a pod's network, in the "tc filter" model: the CNI plugin
//! has put interfaces (usually one veth) with addresses and routes in the
//! pod's network namespace; for each, the shim makes a tap in that namespace
//! and joins the two with tc redirects (what arrives on the interface leaves
//! by the tap, and the other way round). runv-vmm turns each tap into a
//! virtio-net card, and the agent gives the guest's card the interface's MAC,
//! MTU, addresses and routes. The interfaces keep their addresses on the host;
//! their traffic goes to the guest.
//!
//! Everything here runs on a thread that enters the pod's namespace
//! ([`netns`]); the shim's own threads never change namespace.

mod netns;
mod scan;
pub use scan::MAX_INTERFACES;
mod tap;
mod tc;

#[cfg(test)]
mod tests;

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use netlink_packet_route::link::LinkMessage;
use netlink_packet_route::RouteNetlinkMessage;
use protocol::agent as api;
use protocol::netlink::Netlink;

use netns::{Netns, Opened};

/// What the guest gets: one virtio-net card per pod interface, and the
/// routes through them.
#[derive(Debug)]
pub struct PodNetwork {
    /// In the order of the pod's interfaces (ifindex): the i-th is `eth{i}`.
    pub interfaces: Vec<GuestInterface>,
    /// The main table's routes through the pod's interfaces, with guest
    /// device names, for the agent's UpdateRoutes. The kernel's prefix
    /// routes are not among them: the guest's kernel adds those when
    /// UpdateInterface sets the addresses.
    pub routes: Vec<api::Route>,
}

/// One pod interface, as the VMM and the agent take it.
#[derive(Debug)]
pub struct GuestInterface {
    /// The tap's queue, for runv-vmm's `--net fd=N,mac=M`. The tap lives as
    /// long as this descriptor (and any copy of it) is open.
    pub tap: OwnedFd,
    /// The pod interface's MAC, "aa:bb:cc:dd:ee:ff": the guest's card uses it.
    pub mac: String,
    /// For the agent's UpdateInterface: name `eth{i}`, MAC, MTU and the
    /// interface's global addresses.
    pub interface: api::Interface,
    /// The pod interface's name on the host (usually a veth).
    pub veth: String,
    /// The tap's name on the host, `tap{i}_runv`.
    pub tap_name: String,
}

/// Errors setting up or tearing down a pod's network.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The pod would share the host's network namespace.
    #[error(
        "runv pods need a network namespace of their own; host network is not supported \
         ({path} is the host's network namespace)"
    )]
    HostNetwork { path: PathBuf },
    /// The path is not a namespace file.
    #[error("{path} is not a network namespace: {why}")]
    NotANetns { path: PathBuf, why: String },
    /// The namespace file cannot be opened.
    #[error("cannot open network namespace {path}: {source}")]
    OpenNetns { path: PathBuf, source: io::Error },
    /// The shim's own namespace cannot be read, so the pod's cannot be told
    /// apart from the host's.
    #[error(
        "cannot tell whether {path} is the host's network namespace \
         (stat /proc/self/ns/net: {source})"
    )]
    HostUnknown { path: PathBuf, source: io::Error },
    /// setns() refused the namespace.
    #[error("cannot enter network namespace {path}: {source}")]
    EnterNetns { path: PathBuf, source: io::Error },
    /// More of something than runv takes.
    #[error("the pod's network namespace has more than {max} {what}")]
    TooMany { what: String, max: usize },
    /// Someone else's ingress qdisc is on a pod interface.
    #[error(
        "{link} already has an ingress qdisc that is not runv's: \
         its traffic cannot be redirected to the VM"
    )]
    IngressTaken { link: String },
    /// Making or configuring a tap failed.
    #[error("tap {name}: {step}: {source}")]
    Tap {
        name: String,
        step: &'static str,
        source: io::Error,
    },
    /// The kernel refused an rtnetlink request (or the socket failed).
    #[error("rtnetlink: {step}: {source}")]
    Netlink { step: String, source: io::Error },
    /// The thread that enters the namespace could not run.
    #[error("network namespace thread: {0}")]
    Thread(io::Error),
}

impl NetworkError {
    fn netlink(step: impl Into<String>) -> impl FnOnce(io::Error) -> Self {
        let step = step.into();
        move |source| Self::Netlink { step, source }
    }
}

impl PodNetwork {
    /// Connects each interface of the pod's network namespace `netns` to a
    /// new tap. On failure nothing is left: taps closed, qdiscs removed.
    pub fn setup(netns: &Path) -> Result<Self, NetworkError> {
        match Netns::open(netns)? {
            Opened::Pod(namespace) => namespace.run(connect_all),
            Opened::Missing => Err(NetworkError::OpenNetns {
                path: netns.into(),
                source: io::ErrorKind::NotFound.into(),
            }),
        }
    }
}

/// Removes our tc qdiscs from the pod's interfaces and deletes any of our
/// taps left (held by a VMM that outlived its shim); idempotent. A path that
/// no longer exists, or is no network namespace (its mount is gone), is
/// success; so is the host's namespace, where setup never goes: nothing is
/// touched there. Used at pod end and by the shim's `delete` after a crash.
///
/// Which ingress qdiscs are ours: those with a filter whose mirred action
/// carries our cookie ([`tc::COOKIE`]). The target of a redirect cannot tell
/// (once the tap is gone, the kernel reports target ifindex 0), nor can the
/// qdisc (every ingress qdisc has handle `ffff:`); the cookie survives both,
/// and a CNI plugin's qdisc never has it. Setup refuses an interface that
/// already has an ingress qdisc, so one with our filter holds only ours.
/// (A shim killed between adding the qdisc and its filter leaves an empty
/// ingress qdisc, which redirects nothing and goes with the namespace.)
pub fn teardown(netns: &Path) -> Result<(), NetworkError> {
    match Netns::open(netns) {
        Ok(Opened::Pod(namespace)) => namespace.run(disconnect_all),
        Ok(Opened::Missing)
        | Err(NetworkError::NotANetns { .. } | NetworkError::HostNetwork { .. }) => Ok(()),
        Err(err) => Err(err),
    }
}

/// The guest's name of the pod's `i`-th interface.
fn guest_name(i: usize) -> String {
    format!("eth{i}")
}

fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn open_netlink() -> Result<Netlink, NetworkError> {
    Netlink::open().map_err(NetworkError::netlink("open an rtnetlink socket"))
}

/// Why a dump stopped: the socket, or `each`.
enum Stop {
    Io(io::Error),
    Error(NetworkError),
}

impl From<io::Error> for Stop {
    fn from(err: io::Error) -> Self {
        Self::Io(err)
    }
}

/// Sends dump `request` and hands each reply to `each`; a socket error is
/// reported as `step`.
fn dump(
    nl: &mut Netlink,
    step: &str,
    request: RouteNetlinkMessage,
    mut each: impl FnMut(RouteNetlinkMessage) -> Result<(), NetworkError>,
) -> Result<(), NetworkError> {
    nl.dump_each(request, |reply| each(reply).map_err(Stop::Error))
        .map_err(|stop| match stop {
            Stop::Io(source) => NetworkError::Netlink {
                step: step.into(),
                source,
            },
            Stop::Error(err) => err,
        })
}

/// Hands each link of the calling thread's namespace to `each`; more than
/// [`scan::MAX_LINKS`] links is an error.
fn each_link(
    nl: &mut Netlink,
    mut each: impl FnMut(&LinkMessage) -> Result<(), NetworkError>,
) -> Result<(), NetworkError> {
    let mut seen = 0usize;
    dump(
        nl,
        "list the links",
        RouteNetlinkMessage::GetLink(LinkMessage::default()),
        |reply| {
            let RouteNetlinkMessage::NewLink(message) = reply else {
                return Ok(());
            };
            seen += 1;
            if seen > scan::MAX_LINKS {
                return Err(NetworkError::TooMany {
                    what: "links".into(),
                    max: scan::MAX_LINKS,
                });
            }
            each(&message)
        },
    )
}

/// In the pod's namespace: scans it and connects each interface to a tap.
fn connect_all() -> Result<PodNetwork, NetworkError> {
    let mut nl = open_netlink()?;
    let found = scan::scan(&mut nl)?;
    let mut ingress = Vec::new();
    let mut interfaces = Vec::new();
    for (i, link) in found.links.iter().enumerate() {
        match connect(&mut nl, i, link, &mut ingress) {
            Ok(interface) => interfaces.push(interface),
            Err(err) => {
                for (index, name) in &ingress {
                    if let Err(undo) = tc::remove_ingress(&mut nl, *index) {
                        log::warn!(
                            "pod network: cannot remove the ingress qdisc of {name}: {undo}"
                        );
                    }
                }
                // Closing the taps deletes them, with their qdiscs.
                drop(interfaces);
                return Err(err);
            }
        }
    }
    Ok(PodNetwork {
        interfaces,
        routes: found.routes,
    })
}

/// Makes the tap of the pod's `i`-th interface `link` and joins the two;
/// records in `ingress` the interface once it has our qdisc.
fn connect(
    nl: &mut Netlink,
    i: usize,
    link: &scan::PodLink,
    ingress: &mut Vec<(u32, String)>,
) -> Result<GuestInterface, NetworkError> {
    let tap = tap::create(nl, &tap::name(i), link.mtu)?;
    join(nl, link, &tap, ingress)?;
    Ok(guest_interface(i, link, tap))
}

/// Redirects what arrives on `tap` out of `link`, then what arrives on
/// `link` out of `tap` (from then on the pod's traffic goes to the guest).
fn join(
    nl: &mut Netlink,
    link: &scan::PodLink,
    tap: &tap::Tap,
    ingress: &mut Vec<(u32, String)>,
) -> Result<(), NetworkError> {
    let (veth, tap_name) = (&link.name, &tap.name);
    tc::add_ingress(nl, tap.index).map_err(NetworkError::netlink(format!(
        "add an ingress qdisc to {tap_name}"
    )))?;
    tc::add_redirect(nl, tap.index, link.index).map_err(NetworkError::netlink(format!(
        "redirect {tap_name} to {veth}"
    )))?;
    match tc::add_ingress(nl, link.index) {
        Err(err) if err.raw_os_error() == Some(libc::EEXIST) => {
            return Err(NetworkError::IngressTaken { link: veth.clone() })
        }
        result => result.map_err(NetworkError::netlink(format!(
            "add an ingress qdisc to {veth}"
        )))?,
    }
    ingress.push((link.index, veth.clone()));
    tc::add_redirect(nl, link.index, tap.index).map_err(NetworkError::netlink(format!(
        "redirect {veth} to {tap_name}"
    )))
}

/// The guest's card `eth{i}` for pod interface `link`, behind `tap`.
fn guest_interface(i: usize, link: &scan::PodLink, tap: tap::Tap) -> GuestInterface {
    let mac = format_mac(&link.mac);
    let addresses = link
        .addresses
        .iter()
        .map(|cidr| api::IpAddress {
            address: cidr.ip.to_string(),
            prefix_len: u32::from(cidr.prefix),
            ..Default::default()
        })
        .collect();
    GuestInterface {
        interface: api::Interface {
            name: guest_name(i),
            hw_addr: mac.clone(),
            mtu: link.mtu,
            addresses,
            ..Default::default()
        },
        mac,
        veth: link.name.clone(),
        tap_name: tap.name,
        tap: tap.fd,
    }
}

/// In the pod's namespace: removes our ingress qdiscs, then our taps. Goes
/// on past a failure and reports the first.
fn disconnect_all() -> Result<(), NetworkError> {
    let mut nl = open_netlink()?;
    let mut first_error = None;
    for link in scan::ethernet_links(&mut nl)?.into_values() {
        let removed = match tc::has_our_redirect(&mut nl, link.index) {
            Ok(true) => tc::remove_ingress(&mut nl, link.index).map_err(NetworkError::netlink(
                format!("remove the ingress qdisc of {}", link.name),
            )),
            Ok(false) => Ok(()),
            Err(err) => Err(err),
        };
        if let Err(err) = removed {
            log::warn!("pod network teardown: {}: {err}", link.name);
            first_error.get_or_insert(err);
        }
    }
    if let Err(err) = tap::remove_all(&mut nl) {
        first_error.get_or_insert(err);
    }
    first_error.map_or(Ok(()), Err)
}
