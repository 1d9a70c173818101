use super::*;
use netlink_packet_route::route::RouteScope;
use netlink_packet_route::AddressFamily;

fn route(
    dest: Option<(&str, u8)>,
    gateway: Option<&str>,
    oif: u32,
    protocol: RouteProtocol,
) -> RouteMessage {
    let mut message = RouteMessage::default();
    message.header.address_family = AddressFamily::Inet;
    message.header.table = RouteHeader::RT_TABLE_MAIN;
    message.header.kind = RouteType::Unicast;
    message.header.protocol = protocol;
    message.header.scope = RouteScope::Universe;
    let ip = |text: &str| RouteAddress::from(text.parse::<IpAddr>().unwrap());
    if let Some((dest, prefix)) = dest {
        message.header.destination_prefix_length = prefix;
        message
            .attributes
            .push(RouteAttribute::Destination(ip(dest)));
    }
    if let Some(gateway) = gateway {
        message
            .attributes
            .push(RouteAttribute::Gateway(ip(gateway)));
    }
    message.attributes.push(RouteAttribute::Oif(oif));
    message
}

#[test]
fn routes_are_translated_or_left_out() {
    let devices = BTreeMap::from([(7, "eth0".to_string())]);
    let default = guest_route(
        &route(None, Some("10.0.0.1"), 7, RouteProtocol::Boot),
        &devices,
    )
    .expect("default route");
    assert_eq!(
        (
            default.dest.as_str(),
            default.gateway.as_str(),
            default.device.as_str()
        ),
        ("", "10.0.0.1", "eth0")
    );
    let net = guest_route(
        &route(
            Some(("10.1.0.0", 16)),
            Some("10.0.0.1"),
            7,
            RouteProtocol::Static,
        ),
        &devices,
    )
    .expect("subnet route");
    assert_eq!(net.dest, "10.1.0.0/16");
    // The kernel's prefix route, another device, RA, link-local v6.
    for left_out in [
        route(Some(("10.0.0.0", 24)), None, 7, RouteProtocol::Kernel),
        route(None, Some("10.0.0.1"), 8, RouteProtocol::Boot),
        route(None, Some("fe80::1"), 7, RouteProtocol::Ra),
        route(Some(("fe80::", 64)), None, 7, RouteProtocol::Boot),
        route(Some(("ff00::", 8)), None, 7, RouteProtocol::Boot),
    ] {
        assert_eq!(guest_route(&left_out, &devices), None, "{left_out:?}");
    }
    let mut local = route(Some(("10.0.0.2", 32)), None, 7, RouteProtocol::Boot);
    local.header.table = 255; // RT_TABLE_LOCAL
    local.header.kind = RouteType::Local;
    assert_eq!(guest_route(&local, &devices), None);
}
