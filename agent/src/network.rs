//! The guest's network over rtnetlink: UpdateInterface (MTU, MAC, addresses,
//! link up) and UpdateRoutes (the main table's routes of the interfaces the
//! request names). Requests are checked whole before anything changes.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::MetadataExt;
use std::sync::Mutex;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use protocol::agent as api;
use protocol::mac::parse_mac;
use protocol::netlink::Netlink;

use crate::error::{AgentError, Result};

/// One network change at a time: each reads, then rewrites, kernel state.
static CHANGES: Mutex<()> = Mutex::new(());

/// An address with its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Cidr {
    ip: IpAddr,
    prefix: u8,
}

impl Cidr {
    fn family(&self) -> AddressFamily {
        family(&self.ip)
    }
}

/// A link as the kernel reports it.
struct Link {
    index: u32,
    name: String,
    mac: Vec<u8>,
    mtu: u32,
    up: bool,
}

/// A checked route of an UpdateRoutes request.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RoutePlan {
    family: AddressFamily,
    /// None = default route.
    dest: Option<Cidr>,
    gateway: Option<IpAddr>,
    source: Option<IpAddr>,
    device: String,
    scope: u8,
}

/// In host mode, refuses to touch the host's network: the agent must run in
/// a network namespace of its own (tier-3 tests start it under `unshare -n`),
/// not in that of its parent nor, where it can be seen, that of PID 1.
pub fn check_own_netns() -> Result<()> {
    let namespace = |pid: &str| {
        let path = format!("/proc/{pid}/ns/net");
        std::fs::metadata(&path)
            .map(|m| (m.dev(), m.ino()))
            .map_err(AgentError::io(format!("stat {path}")))
    };
    let own = namespace("self")?;
    let parent = namespace(&std::os::unix::process::parent_id().to_string())?;
    // A sandboxed host may hide PID 1's namespaces: then the parent's must do.
    let init = namespace("1").ok();
    if own == parent || Some(own) == init {
        return Err(AgentError::FailedPrecondition(
            "runv-agent in host mode shares the network namespace of its parent or of \
             PID 1 and changes nothing there: start it in a namespace of its own \
             (unshare -n)"
                .into(),
        ));
    }
    Ok(())
}

/// Sets MTU (0 = keep), MAC (empty = keep) and exactly the given addresses
/// (the kernel's IPv6 link-local ones stay) of interface `name`, brings it
/// up, and returns the interface as it now is.
pub fn update_interface(iface: &api::Interface) -> Result<api::Interface> {
    if iface.name.is_empty() {
        return Err(AgentError::InvalidArgument(
            "interface name is empty".into(),
        ));
    }
    let mac = match iface.hw_addr.as_str() {
        "" => None,
        text => Some(parse_mac(text)?),
    };
    let wanted: BTreeSet<Cidr> = iface
        .addresses
        .iter()
        .map(parse_address)
        .collect::<Result<_>>()?;

    let _one = CHANGES.lock().unwrap_or_else(|e| e.into_inner());
    let mut nl = open()?;
    let link = find_link(&mut nl, &iface.name)?;
    let name = &iface.name;
    let new_mac = mac.filter(|mac| link.mac != mac[..]);
    // Not every driver takes a new MAC while the link is up.
    let take_down = new_mac.is_some() && link.up;
    if take_down {
        set_link(&mut nl, link.index, Vec::new(), Some(false))
            .map_err(AgentError::netlink(format!("set {name} down")))?;
    }
    let configured = configure(&mut nl, &link, iface, new_mac, &wanted);
    if configured.is_err() && take_down {
        // Leave the link as it was found: up.
        let _ = set_link(&mut nl, link.index, Vec::new(), Some(true));
    }
    configured?;
    set_link(&mut nl, link.index, Vec::new(), Some(true))
        .map_err(AgentError::netlink(format!("set {name} up")))?;

    let now = find_link(&mut nl, name)?;
    let addresses = addresses(&mut nl, now.index)?
        .into_iter()
        .map(|(cidr, _)| api::IpAddress {
            address: cidr.ip.to_string(),
            prefix_len: u32::from(cidr.prefix),
            ..Default::default()
        })
        .collect();
    Ok(api::Interface {
        name: now.name,
        hw_addr: format_mac(&now.mac),
        mtu: now.mtu,
        addresses,
        ..Default::default()
    })
}

/// Replaces the main table's routes of every interface the request names
/// (the kernel's own prefix routes stay) with the requested ones; returns the
/// main table's routes of those interfaces as they now are. New routes are
/// added (or replace one with the same destination) before the stale ones
/// are removed, so a route the kernel refuses leaves the old ones in place.
pub fn update_routes(routes: &[api::Route]) -> Result<Vec<api::Route>> {
    let mut plans: Vec<RoutePlan> = routes.iter().map(parse_route).collect::<Result<_>>()?;
    // Link routes first: a gateway must be on a link when its route is added.
    plans.sort_by_key(|plan| std::cmp::Reverse(plan.scope));

    let _one = CHANGES.lock().unwrap_or_else(|e| e.into_inner());
    let mut nl = open()?;
    let links = all_links(&mut nl)?;
    let index_of = |name: &str| {
        links
            .iter()
            .find(|l| l.name == name)
            .map(|l| l.index)
            .ok_or_else(|| AgentError::NotFound {
                kind: "interface",
                id: name.to_string(),
            })
    };
    let indexes: BTreeSet<u32> = plans
        .iter()
        .map(|plan| index_of(&plan.device))
        .collect::<Result<_>>()?;

    // Add (or replace) first, then drop the stale routes: a route the kernel
    // refuses leaves the old table in place.
    let mut wanted = Vec::new();
    for plan in &plans {
        let index = index_of(&plan.device)?;
        nl.request(
            RouteNetlinkMessage::NewRoute(route_message(plan, index)),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map_err(AgentError::netlink(format!("add route {}", describe(plan))))?;
        wanted.push((plan.dest, plan.gateway, index));
    }
    for route in main_routes(&mut nl, &indexes)? {
        if route.header.protocol == RouteProtocol::Kernel || wanted.contains(&route_key(&route)) {
            continue;
        }
        let mut del = RouteMessage::default();
        del.header = route.header.clone();
        del.attributes = route
            .attributes
            .iter()
            .filter(|a| {
                matches!(
                    a,
                    RouteAttribute::Destination(_)
                        | RouteAttribute::Gateway(_)
                        | RouteAttribute::Oif(_)
                        | RouteAttribute::PrefSource(_)
                        | RouteAttribute::Priority(_)
                        | RouteAttribute::Table(_)
                )
            })
            .cloned()
            .collect();
        let (dest, gateway, _) = route_key(&route);
        let dest = dest.map_or("default".into(), |d| format!("{}/{}", d.ip, d.prefix));
        nl.request(RouteNetlinkMessage::DelRoute(del), 0)
            .map_err(AgentError::netlink(format!(
                "remove the old route {dest} via {gateway:?}"
            )))?;
    }

    let names: HashMap<u32, &str> = links.iter().map(|l| (l.index, l.name.as_str())).collect();
    Ok(main_routes(&mut nl, &indexes)?
        .iter()
        .map(|route| route_reply(route, &names))
        .collect())
}

/// Sets MTU and MAC of `link`, then replaces its addresses with `wanted`.
fn configure(
    nl: &mut Netlink,
    link: &Link,
    iface: &api::Interface,
    new_mac: Option<[u8; 6]>,
    wanted: &BTreeSet<Cidr>,
) -> Result<()> {
    let name = &iface.name;
    let mut attributes = Vec::new();
    if iface.mtu != 0 {
        attributes.push(LinkAttribute::Mtu(iface.mtu));
    }
    if let Some(mac) = new_mac {
        attributes.push(LinkAttribute::Address(mac.to_vec()));
    }
    if !attributes.is_empty() {
        set_link(nl, link.index, attributes, None).map_err(AgentError::netlink(format!(
            "set mtu {} / address {:?} of {name}",
            iface.mtu, iface.hw_addr
        )))?;
    }

    let present = addresses(nl, link.index)?;
    for (cidr, message) in &present {
        let kernel_made = matches!(cidr.ip, IpAddr::V6(ip) if ip.segments()[0] & 0xffc0 == 0xfe80);
        if !wanted.contains(cidr) && !kernel_made {
            let mut del = AddressMessage::default();
            del.header = message.header.clone();
            del.attributes = message
                .attributes
                .iter()
                .filter(|a| matches!(a, AddressAttribute::Address(_) | AddressAttribute::Local(_)))
                .cloned()
                .collect();
            nl.request(RouteNetlinkMessage::DelAddress(del), 0)
                .map_err(AgentError::netlink(format!(
                    "remove {}/{} from {name}",
                    cidr.ip, cidr.prefix
                )))?;
        }
    }
    for cidr in wanted {
        if present.iter().any(|(have, _)| have == cidr) {
            continue;
        }
        nl.request(
            RouteNetlinkMessage::NewAddress(address_message(link.index, cidr)),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map_err(AgentError::netlink(format!(
            "add {}/{} to {name}",
            cidr.ip, cidr.prefix
        )))?;
    }
    Ok(())
}

fn open() -> Result<Netlink> {
    Netlink::open().map_err(AgentError::netlink("open an rtnetlink socket"))
}

fn all_links(nl: &mut Netlink) -> Result<Vec<Link>> {
    let replies = nl
        .dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))
        .map_err(AgentError::netlink("list the interfaces"))?;
    Ok(replies
        .into_iter()
        .filter_map(|reply| match reply {
            RouteNetlinkMessage::NewLink(link) => Some(link_of(&link)),
            _ => None,
        })
        .collect())
}

fn find_link(nl: &mut Netlink, name: &str) -> Result<Link> {
    all_links(nl)?
        .into_iter()
        .find(|l| l.name == name)
        .ok_or_else(|| AgentError::NotFound {
            kind: "interface",
            id: name.to_string(),
        })
}

fn link_of(message: &LinkMessage) -> Link {
    let mut link = Link {
        index: message.header.index,
        name: String::new(),
        mac: Vec::new(),
        mtu: 0,
        up: message.header.flags.contains(LinkFlags::Up),
    };
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::IfName(name) => link.name = name.clone(),
            LinkAttribute::Address(mac) => link.mac = mac.clone(),
            LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
            _ => {}
        }
    }
    link
}

/// Sets `attributes` of link `index`, and its up flag when `up` is given.
fn set_link(
    nl: &mut Netlink,
    index: u32,
    attributes: Vec<LinkAttribute>,
    up: Option<bool>,
) -> std::io::Result<()> {
    let mut message = LinkMessage::default();
    message.header.index = index;
    if let Some(up) = up {
        message.header.change_mask = LinkFlags::Up;
        if up {
            message.header.flags = LinkFlags::Up;
        }
    }
    message.attributes = attributes;
    nl.request(RouteNetlinkMessage::SetLink(message), 0)
}

/// The addresses of link `index`, with the kernel's messages for them.
fn addresses(nl: &mut Netlink, index: u32) -> Result<Vec<(Cidr, AddressMessage)>> {
    let replies = nl
        .dump(RouteNetlinkMessage::GetAddress(AddressMessage::default()))
        .map_err(AgentError::netlink("list the addresses"))?;
    Ok(replies
        .into_iter()
        .filter_map(|reply| match reply {
            RouteNetlinkMessage::NewAddress(message) if message.header.index == index => {
                // IFA_LOCAL is the address itself; IFA_ADDRESS the peer on a
                // point-to-point link. IPv6 has only IFA_ADDRESS.
                let local = message.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Local(ip) => Some(*ip),
                    _ => None,
                });
                let address = message.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                });
                let ip = local.or(address)?;
                let prefix = message.header.prefix_len;
                Some((Cidr { ip, prefix }, message))
            }
            _ => None,
        })
        .collect())
}

fn address_message(index: u32, cidr: &Cidr) -> AddressMessage {
    let mut message = AddressMessage::default();
    message.header.family = cidr.family();
    message.header.prefix_len = cidr.prefix;
    message.header.index = index;
    match cidr.ip {
        IpAddr::V4(ip) => {
            message.attributes.push(AddressAttribute::Local(cidr.ip));
            message.attributes.push(AddressAttribute::Address(cidr.ip));
            // As `ip addr add ... brd +`: all host bits set.
            if cidr.prefix <= 30 {
                let host_bits = u32::MAX.checked_shr(u32::from(cidr.prefix)).unwrap_or(0);
                let broadcast = Ipv4Addr::from(u32::from(ip) | host_bits);
                message
                    .attributes
                    .push(AddressAttribute::Broadcast(broadcast));
            }
        }
        IpAddr::V6(_) => message.attributes.push(AddressAttribute::Address(cidr.ip)),
    }
    message
}

/// The main table's unicast routes whose outgoing interface is in `indexes`.
fn main_routes(nl: &mut Netlink, indexes: &BTreeSet<u32>) -> Result<Vec<RouteMessage>> {
    let replies = nl
        .dump(RouteNetlinkMessage::GetRoute(RouteMessage::default()))
        .map_err(AgentError::netlink("list the routes"))?;
    Ok(replies
        .into_iter()
        .filter_map(|reply| match reply {
            RouteNetlinkMessage::NewRoute(route) => Some(route),
            _ => None,
        })
        .filter(|route| {
            let table = route
                .attributes
                .iter()
                .find_map(|a| match a {
                    RouteAttribute::Table(table) => Some(*table),
                    _ => None,
                })
                .unwrap_or(u32::from(route.header.table));
            let oif = route.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(index) => Some(*index),
                _ => None,
            });
            table == u32::from(RouteHeader::RT_TABLE_MAIN)
                && route.header.kind == RouteType::Unicast
                && oif.is_some_and(|index| indexes.contains(&index))
        })
        .collect())
}

fn route_message(plan: &RoutePlan, index: u32) -> RouteMessage {
    let mut message = RouteMessage::default();
    message.header.address_family = plan.family;
    message.header.destination_prefix_length = plan.dest.map_or(0, |d| d.prefix);
    message.header.table = RouteHeader::RT_TABLE_MAIN;
    // What `ip route add` uses for a route an administrator set.
    message.header.protocol = RouteProtocol::Boot;
    message.header.scope = RouteScope::from(plan.scope);
    message.header.kind = RouteType::Unicast;
    if let Some(dest) = plan.dest {
        message
            .attributes
            .push(RouteAttribute::Destination(RouteAddress::from(dest.ip)));
    }
    if let Some(gateway) = plan.gateway {
        message
            .attributes
            .push(RouteAttribute::Gateway(RouteAddress::from(gateway)));
    }
    if let Some(source) = plan.source {
        message
            .attributes
            .push(RouteAttribute::PrefSource(RouteAddress::from(source)));
    }
    message.attributes.push(RouteAttribute::Oif(index));
    message
}

/// What identifies a route here: destination (None = default), gateway and
/// outgoing interface.
fn route_key(route: &RouteMessage) -> (Option<Cidr>, Option<IpAddr>, u32) {
    let (mut dest, mut gateway, mut oif) = (None, None, 0);
    for attribute in &route.attributes {
        match attribute {
            RouteAttribute::Destination(address) => {
                dest = route_ip(address).map(|ip| Cidr {
                    ip,
                    prefix: route.header.destination_prefix_length,
                });
            }
            RouteAttribute::Gateway(address) => gateway = route_ip(address),
            RouteAttribute::Oif(index) => oif = *index,
            _ => {}
        }
    }
    (dest.filter(|d| d.prefix > 0), gateway, oif)
}

fn route_ip(address: &RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        RouteAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        _ => None,
    }
}

fn route_reply(route: &RouteMessage, names: &HashMap<u32, &str>) -> api::Route {
    let ip = route_ip;
    let mut reply = api::Route {
        scope: u32::from(u8::from(route.header.scope)),
        ..Default::default()
    };
    for attribute in &route.attributes {
        match attribute {
            RouteAttribute::Destination(dest) => {
                if let Some(dest) = ip(dest) {
                    reply.dest = format!("{dest}/{}", route.header.destination_prefix_length);
                }
            }
            RouteAttribute::Gateway(gateway) => {
                reply.gateway = ip(gateway).map(|g| g.to_string()).unwrap_or_default();
            }
            RouteAttribute::PrefSource(source) => {
                reply.source = ip(source).map(|s| s.to_string()).unwrap_or_default();
            }
            RouteAttribute::Oif(index) => {
                reply.device = names.get(index).map(|n| n.to_string()).unwrap_or_default();
            }
            _ => {}
        }
    }
    reply
}

fn describe(plan: &RoutePlan) -> String {
    let mut text = match plan.dest {
        Some(dest) => format!("{}/{}", dest.ip, dest.prefix),
        None => "default".into(),
    };
    if let Some(gateway) = plan.gateway {
        text += &format!(" via {gateway}");
    }
    text += &format!(" dev {}", plan.device);
    text
}

fn family(ip: &IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

fn max_prefix(ip: &IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

fn parse_ip(field: &str, text: &str) -> Result<IpAddr> {
    text.parse()
        .map_err(|_| AgentError::InvalidArgument(format!("{field} {text:?} is not an IP address")))
}

/// An interface address: the IP and a prefix length that fits it.
fn parse_address(address: &api::IpAddress) -> Result<Cidr> {
    let ip = parse_ip("address", &address.address)?;
    match u8::try_from(address.prefix_len) {
        Ok(prefix) if prefix <= max_prefix(&ip) => Ok(Cidr { ip, prefix }),
        _ => Err(AgentError::InvalidArgument(format!(
            "prefix length {} of {ip} is out of range",
            address.prefix_len
        ))),
    }
}

/// A route destination: "" = default; "IP/LEN" without host bits; a bare IP
/// is a host route.
fn parse_destination(text: &str) -> Result<Option<Cidr>> {
    if text.is_empty() || text == "default" {
        return Ok(None);
    }
    let (ip, prefix) = match text.split_once('/') {
        Some((ip, prefix)) => {
            let ip = parse_ip("route destination", ip)?;
            let prefix = prefix.parse::<u8>().ok().filter(|p| *p <= max_prefix(&ip));
            let prefix = prefix.ok_or_else(|| {
                AgentError::InvalidArgument(format!("route destination {text:?}: bad prefix"))
            })?;
            (ip, prefix)
        }
        None => {
            let ip = parse_ip("route destination", text)?;
            (ip, max_prefix(&ip))
        }
    };
    let host_bits = match ip {
        IpAddr::V4(ip) => {
            u128::from(u32::from(ip) & u32::MAX.checked_shr(u32::from(prefix)).unwrap_or(0))
        }
        IpAddr::V6(ip) => u128::from(ip) & u128::MAX.checked_shr(u32::from(prefix)).unwrap_or(0),
    };
    if host_bits != 0 {
        return Err(AgentError::InvalidArgument(format!(
            "route destination {text:?} has host bits set"
        )));
    }
    Ok(Some(Cidr { ip, prefix }))
}

fn parse_route(route: &api::Route) -> Result<RoutePlan> {
    if route.device.is_empty() {
        return Err(AgentError::InvalidArgument(format!(
            "route {:?}: no device",
            route.dest
        )));
    }
    let dest = parse_destination(&route.dest)?;
    let optional = |field: &str, text: &str| {
        (!text.is_empty())
            .then(|| parse_ip(field, text))
            .transpose()
    };
    let gateway = optional("gateway", &route.gateway)?;
    let source = optional("source", &route.source)?;
    let scope = u8::try_from(route.scope).map_err(|_| {
        AgentError::InvalidArgument(format!("route scope {} is out of range", route.scope))
    })?;
    let families: Vec<AddressFamily> = dest
        .map(|d| d.family())
        .into_iter()
        .chain(gateway.iter().map(family))
        .chain(source.iter().map(family))
        .collect();
    let first = families.first().copied().unwrap_or(AddressFamily::Inet);
    if families.iter().any(|f| *f != first) {
        return Err(AgentError::InvalidArgument(format!(
            "route {:?} via {:?} src {:?} mixes IPv4 and IPv6",
            route.dest, route.gateway, route.source
        )));
    }
    Ok(RoutePlan {
        family: first,
        // 0.0.0.0/0 and ::/0 are the default route, as the kernel reports it.
        dest: dest.filter(|d| d.prefix > 0),
        gateway,
        source,
        device: route.device.clone(),
        scope,
    })
}

fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_are_formatted_as_the_kernel_shows_them() {
        assert_eq!(format_mac(&[2, 0, 10, 255, 0, 1]), "02:00:0a:ff:00:01");
        let err = AgentError::from(parse_mac("01:00:5e:00:00:01").unwrap_err());
        assert_eq!(err.code(), ttrpc::Code::INVALID_ARGUMENT);
    }

    #[test]
    fn destinations_and_addresses_are_checked() {
        let cidr = |ip: &str, prefix| Cidr {
            ip: ip.parse().expect("ip"),
            prefix,
        };
        assert_eq!(parse_destination("").expect("default"), None);
        assert_eq!(
            parse_destination("10.1.0.0/16").expect("net"),
            Some(cidr("10.1.0.0", 16))
        );
        assert_eq!(
            parse_destination("192.0.2.1").expect("host"),
            Some(cidr("192.0.2.1", 32))
        );
        assert_eq!(
            parse_destination("2001:db8::/32").expect("v6"),
            Some(cidr("2001:db8::", 32))
        );
        assert_eq!(
            parse_destination("0.0.0.0/0").expect("v4 default"),
            Some(cidr("0.0.0.0", 0))
        );
        for bad in [
            "10.1.0.1/16",
            "10.0.0.0/33",
            "10.0.0.0/x",
            "nope",
            "2001:db8::1/32",
        ] {
            assert!(parse_destination(bad).is_err(), "{bad:?} accepted");
        }
        let address = |address: &str, prefix_len| api::IpAddress {
            address: address.into(),
            prefix_len,
            ..Default::default()
        };
        assert!(parse_address(&address("192.0.2.10", 24)).is_ok());
        assert!(parse_address(&address("2001:db8::10", 128)).is_ok());
        for (ip, len) in [("192.0.2.10", 33), ("10.0.0.300", 24), ("192.0.2.0/24", 24)] {
            assert!(parse_address(&address(ip, len)).is_err(), "{ip}/{len}");
        }
    }

    #[test]
    fn routes_must_name_a_device_and_one_family() {
        let route = |dest: &str, gateway: &str, device: &str| api::Route {
            dest: dest.into(),
            gateway: gateway.into(),
            device: device.into(),
            ..Default::default()
        };
        let plan = parse_route(&route("", "fd00::1", "eth0")).expect("v6 default");
        assert_eq!(plan.family, AddressFamily::Inet6);
        assert!(parse_route(&route("", "10.0.0.1", "")).is_err());
        assert!(parse_route(&route("10.0.0.0/8", "fd00::1", "eth0")).is_err());
        let mut scoped = route("10.0.0.0/8", "", "eth0");
        scoped.scope = 256;
        assert!(parse_route(&scoped).is_err());
    }

    #[test]
    fn ipv4_addresses_get_a_broadcast() {
        let cidr = Cidr {
            ip: "10.88.0.2".parse().expect("ip"),
            prefix: 24,
        };
        let message = address_message(3, &cidr);
        assert!(message.attributes.contains(&AddressAttribute::Broadcast(
            "10.88.0.255".parse().expect("brd")
        )));
    }
}
