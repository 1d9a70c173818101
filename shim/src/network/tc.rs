//! Traffic control over rtnetlink: an ingress qdisc on a link and, on it, a
//! u32 filter that matches every frame and redirects it (mirred egress
//! redirect) to another link. Two of them, crosswise, join a pod interface
//! and its tap: what arrives on one leaves by the other.
//!
//! u32 with one all-zero key rather than matchall: the hosts' kernels have
//! cls_u32 but not always cls_matchall. Each redirect carries
//! [`COOKIE`], so teardown can tell our filters from anyone else's.

use std::io;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionMirrorOption, TcActionOption, TcActionType, TcAttribute,
    TcFilterU32Option, TcHandle, TcMessage, TcMirror, TcMirrorActionType, TcOption, TcU32Key,
    TcU32Selector, TcU32SelectorFlags,
};
use netlink_packet_route::RouteNetlinkMessage;
use protocol::netlink::Netlink;

use super::{dump, NetworkError};

/// The action cookie (TCA_ACT_COOKIE, at most 16 bytes) that marks our
/// redirects.
pub const COOKIE: &[u8] = b"runv-tcfilter";
/// The ingress qdisc's handle, `ffff:`.
const INGRESS: TcHandle = TcHandle {
    major: 0xffff,
    minor: 0,
};
/// Priority of our filter (the only one on a qdisc of ours).
const PRIORITY: u16 = 1;
/// `ETH_P_ALL`: the filter sees every protocol.
const ETH_P_ALL: u16 = 0x0003;

/// Adds an ingress qdisc to link `index`; EEXIST if it has one already.
pub fn add_ingress(nl: &mut Netlink, index: u32) -> io::Result<()> {
    let message = qdisc_message(index, vec![TcAttribute::Kind("ingress".into())])?;
    nl.request(
        RouteNetlinkMessage::NewQueueDiscipline(message),
        NLM_F_CREATE | NLM_F_EXCL,
    )
}

/// Removes the ingress qdisc of link `index`, and so its filters; Ok if it
/// has none (or the link is gone).
pub fn remove_ingress(nl: &mut Netlink, index: u32) -> io::Result<()> {
    let message = qdisc_message(index, Vec::new())?;
    match nl.request(RouteNetlinkMessage::DelQueueDiscipline(message), 0) {
        Err(err)
            if matches!(
                err.raw_os_error(),
                Some(libc::ENOENT | libc::EINVAL | libc::ENODEV)
            ) =>
        {
            Ok(())
        }
        other => other,
    }
}

/// Adds to the ingress qdisc of link `from` a filter that redirects every
/// frame out of link `to`.
pub fn add_redirect(nl: &mut Netlink, from: u32, to: u32) -> io::Result<()> {
    let mut message = TcMessage::with_index(ifindex(from)?);
    message.header.parent = INGRESS;
    // tcm_info: priority in the upper half, protocol (network order) below.
    message.header.info = (u32::from(PRIORITY) << 16) | u32::from(ETH_P_ALL.to_be());
    message.attributes = vec![
        TcAttribute::Kind("u32".into()),
        TcAttribute::Options(vec![
            TcOption::U32(TcFilterU32Option::Selector(match_all())),
            TcOption::U32(TcFilterU32Option::Action(vec![redirect_to(to)])),
        ]),
    ];
    nl.request(
        RouteNetlinkMessage::NewTrafficFilter(message),
        NLM_F_CREATE | NLM_F_EXCL,
    )
}

/// Whether the ingress of link `index` has a redirect of ours (whether or
/// not its target link still exists).
pub fn has_our_redirect(nl: &mut Netlink, index: u32) -> Result<bool, NetworkError> {
    let mut message =
        TcMessage::with_index(ifindex(index).map_err(|source| NetworkError::Netlink {
            step: "list filters".into(),
            source,
        })?);
    message.header.parent = INGRESS;
    let mut ours = false;
    dump(
        nl,
        "list the ingress filters",
        RouteNetlinkMessage::GetTrafficFilter(message),
        |reply| {
            if let RouteNetlinkMessage::NewTrafficFilter(filter) = reply {
                ours |= redirect_target(&filter).is_some();
            }
            Ok(())
        },
    )?;
    Ok(ours)
}

fn qdisc_message(index: u32, attributes: Vec<TcAttribute>) -> io::Result<TcMessage> {
    let mut message = TcMessage::with_index(ifindex(index)?);
    message.header.handle = INGRESS;
    message.header.parent = TcHandle::INGRESS;
    message.attributes = attributes;
    Ok(message)
}

/// One key that ignores every bit: it matches any frame.
fn match_all() -> TcU32Selector {
    let mut selector = TcU32Selector::default();
    selector.flags = TcU32SelectorFlags::Terminal;
    selector.nkeys = 1;
    selector.keys = vec![TcU32Key::default()];
    selector
}

/// `mirred egress redirect dev <to>`, marked with [`COOKIE`].
fn redirect_to(to: u32) -> TcAction {
    let mut mirror = TcMirror::default();
    // What a redirect does with the frame here: it is consumed (stolen).
    mirror.generic.action = TcActionType::Stolen;
    mirror.eaction = TcMirrorActionType::EgressRedir;
    mirror.ifindex = to;
    let mut action = TcAction::default();
    action.attributes = vec![
        TcActionAttribute::Kind("mirred".into()),
        TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
            mirror,
        ))]),
        TcActionAttribute::Cookie(COOKIE.to_vec()),
    ];
    action
}

/// The target ifindex of `filter`'s mirred action with our cookie, if any.
fn redirect_target(filter: &TcMessage) -> Option<u32> {
    let actions = filter.attributes.iter().flat_map(|a| match a {
        TcAttribute::Options(options) => options.as_slice(),
        _ => &[],
    });
    actions
        .filter_map(|option| match option {
            TcOption::U32(TcFilterU32Option::Action(actions)) => Some(actions),
            _ => None,
        })
        .flatten()
        .filter(|action| {
            action
                .attributes
                .contains(&TcActionAttribute::Cookie(COOKIE.to_vec()))
        })
        .flat_map(|action| &action.attributes)
        .find_map(|attribute| match attribute {
            TcActionAttribute::Options(options) => options.iter().find_map(|o| match o {
                TcActionOption::Mirror(TcActionMirrorOption::Parms(mirror)) => Some(mirror.ifindex),
                _ => None,
            }),
            _ => None,
        })
}

/// tcmsg's ifindex is signed.
fn ifindex(index: u32) -> io::Result<i32> {
    i32::try_from(index).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("ifindex {index} is out of range"),
        )
    })
}

#[cfg(test)]
mod tests;
