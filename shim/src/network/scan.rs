//! What the CNI plugin made in the pod's network namespace: its interfaces
//! (with MAC, MTU and global addresses) and the main table's routes through
//! them, read over rtnetlink and bounded.

use std::collections::BTreeMap;
use std::net::IpAddr;

use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkLayerType, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteType,
};
use netlink_packet_route::RouteNetlinkMessage;
use protocol::agent as api;
use protocol::netlink::Netlink;

use super::{dump, each_link, guest_name, tap, NetworkError};

/// Most links a pod's namespace may hold, whatever their kind (lo, the CNI's
/// interfaces, the kernel's fallback tunnel devices, our taps).
pub const MAX_LINKS: usize = 64;
/// Most interfaces of a pod (each becomes a virtio-net card).
pub const MAX_INTERFACES: usize = 8;
/// Most global addresses of one interface.
pub const MAX_ADDRESSES: usize = 16;
/// Most routes through the pod's interfaces.
pub const MAX_ROUTES: usize = 128;

/// An address with its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cidr {
    pub ip: IpAddr,
    pub prefix: u8,
}

/// One interface of the pod, as the CNI plugin left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodLink {
    pub index: u32,
    pub name: String,
    pub mac: [u8; 6],
    pub mtu: u32,
    pub addresses: Vec<Cidr>,
}

/// The pod's interfaces (in ifindex order) and their routes, with the
/// guest's device names (`eth{i}` for the i-th interface).
#[derive(Debug, Default)]
pub struct Scan {
    pub links: Vec<PodLink>,
    pub routes: Vec<api::Route>,
}

/// Reads the pod's interfaces and routes in the calling thread's namespace.
pub fn scan(nl: &mut Netlink) -> Result<Scan, NetworkError> {
    let mut links = ethernet_links(nl)?;
    add_addresses(nl, &mut links)?;
    let links: Vec<PodLink> = links
        .into_values()
        .filter(|l| !l.addresses.is_empty())
        .collect();
    if links.len() > MAX_INTERFACES {
        return Err(NetworkError::TooMany {
            what: "interfaces with a global address".into(),
            max: MAX_INTERFACES,
        });
    }
    let routes = routes(nl, &links)?;
    Ok(Scan { links, routes })
}

/// The Ethernet links that may be the pod's: not loopback, not our taps,
/// with a MAC. Keyed (and so ordered) by ifindex.
pub fn ethernet_links(nl: &mut Netlink) -> Result<BTreeMap<u32, PodLink>, NetworkError> {
    let mut links = BTreeMap::new();
    each_link(nl, |message| {
        if let Some(link) = pod_link(message) {
            links.insert(link.index, link);
        }
        Ok(())
    })?;
    Ok(links)
}

/// `message` as a candidate pod interface, if it is one.
fn pod_link(message: &LinkMessage) -> Option<PodLink> {
    let header = &message.header;
    if header.link_layer_type != LinkLayerType::Ether || header.flags.contains(LinkFlags::Loopback)
    {
        return None;
    }
    let mut name = None;
    let mut mac = None;
    let mut mtu = 0;
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::Address(a) => mac = <[u8; 6]>::try_from(a.as_slice()).ok(),
            LinkAttribute::Mtu(m) => mtu = *m,
            _ => {}
        }
    }
    let name = name.filter(|n| !tap::is_ours(n))?;
    Some(PodLink {
        index: header.index,
        name,
        mac: mac?,
        mtu,
        addresses: Vec::new(),
    })
}

/// Adds to each link its global (scope universe) IPv4 and IPv6 addresses.
fn add_addresses(nl: &mut Netlink, links: &mut BTreeMap<u32, PodLink>) -> Result<(), NetworkError> {
    dump(
        nl,
        "list the addresses",
        RouteNetlinkMessage::GetAddress(AddressMessage::default()),
        |reply| {
            let RouteNetlinkMessage::NewAddress(message) = reply else {
                return Ok(());
            };
            let Some(link) = links.get_mut(&message.header.index) else {
                return Ok(());
            };
            let Some(cidr) = global_address(&message) else {
                return Ok(());
            };
            if !link.addresses.contains(&cidr) {
                if link.addresses.len() == MAX_ADDRESSES {
                    return Err(NetworkError::TooMany {
                        what: format!("global addresses on {}", link.name),
                        max: MAX_ADDRESSES,
                    });
                }
                link.addresses.push(cidr);
            }
            Ok(())
        },
    )
}

fn global_address(message: &AddressMessage) -> Option<Cidr> {
    if message.header.scope != AddressScope::Universe {
        return None;
    }
    // IFA_LOCAL is the address itself; IFA_ADDRESS the peer on a
    // point-to-point link. IPv6 has only IFA_ADDRESS.
    let mut local = None;
    let mut address = None;
    for attribute in &message.attributes {
        match attribute {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            _ => {}
        }
    }
    Some(Cidr {
        ip: local.or(address)?,
        prefix: message.header.prefix_len,
    })
}

/// The main table's routes through the pod's links, as the agent's
/// UpdateRoutes takes them (see [`guest_route`]).
fn routes(nl: &mut Netlink, links: &[PodLink]) -> Result<Vec<api::Route>, NetworkError> {
    let devices: BTreeMap<u32, String> = links
        .iter()
        .enumerate()
        .map(|(i, link)| (link.index, guest_name(i)))
        .collect();
    let mut routes = Vec::new();
    dump(
        nl,
        "list the routes",
        RouteNetlinkMessage::GetRoute(RouteMessage::default()),
        |reply| {
            let RouteNetlinkMessage::NewRoute(message) = reply else {
                return Ok(());
            };
            let Some(route) = guest_route(&message, &devices) else {
                return Ok(());
            };
            if !routes.contains(&route) {
                if routes.len() == MAX_ROUTES {
                    return Err(NetworkError::TooMany {
                        what: "routes through the pod's interfaces".into(),
                        max: MAX_ROUTES,
                    });
                }
                routes.push(route);
            }
            Ok(())
        },
    )?;
    Ok(routes)
}

/// `message` as a route for the guest, if it is one to pass on: a unicast
/// route of the main table whose output device is a pod link (`devices`:
/// ifindex → guest name). Left out:
/// - the kernel's own routes (protocol kernel: the prefix route of each
///   address, IPv6 link-local): the guest's kernel makes the same ones when
///   the agent sets the addresses, and UpdateRoutes keeps them;
/// - routes learnt from router advertisements: the guest hears the same
///   advertisements and learns (and expires) them itself;
/// - IPv6 link-local and multicast destinations;
/// - multipath routes (no single output device) and IPv4 routes via an IPv6
///   gateway, which UpdateRoutes cannot express (logged).
fn guest_route(message: &RouteMessage, devices: &BTreeMap<u32, String>) -> Option<api::Route> {
    let header = &message.header;
    let mut table = u32::from(header.table);
    let mut oif = None;
    let mut dest = None;
    let mut gateway = None;
    let mut source = None;
    let mut unsupported = false;
    for attribute in &message.attributes {
        match attribute {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Oif(index) => oif = Some(*index),
            RouteAttribute::Destination(a) => dest = route_ip(a),
            RouteAttribute::Gateway(a) => gateway = route_ip(a),
            RouteAttribute::PrefSource(a) => source = route_ip(a),
            RouteAttribute::Via(_) | RouteAttribute::MultiPath(_) => unsupported = true,
            _ => {}
        }
    }
    if table != u32::from(RouteHeader::RT_TABLE_MAIN)
        || header.kind != RouteType::Unicast
        || matches!(header.protocol, RouteProtocol::Kernel | RouteProtocol::Ra)
    {
        return None;
    }
    let device = devices.get(&oif?)?;
    if unsupported {
        log::warn!("pod network: route to {dest:?} on {device} has a nexthop runv cannot pass on");
        return None;
    }
    if let Some(IpAddr::V6(ip)) = dest {
        let link_local = ip.segments()[0] & 0xffc0 == 0xfe80;
        if link_local || ip.is_multicast() {
            return None;
        }
    }
    let prefix = header.destination_prefix_length;
    Some(api::Route {
        // No destination (or a /0) is the default route: "".
        dest: dest
            .filter(|_| prefix > 0)
            .map(|ip| format!("{ip}/{prefix}"))
            .unwrap_or_default(),
        gateway: gateway.map(|ip| ip.to_string()).unwrap_or_default(),
        device: device.clone(),
        source: source.map(|ip| ip.to_string()).unwrap_or_default(),
        scope: u32::from(u8::from(header.scope)),
        ..Default::default()
    })
}

fn route_ip(address: &RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        RouteAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
