use super::*;
use netlink_packet_core::{Emitable, Parseable};
use netlink_packet_route::tc::TcMessageBuffer;

#[test]
fn a_redirect_survives_a_round_trip_and_is_recognised() {
    let mut filter = TcMessage::with_index(3);
    filter.header.parent = INGRESS;
    filter.attributes = vec![
        TcAttribute::Kind("u32".into()),
        TcAttribute::Options(vec![
            TcOption::U32(TcFilterU32Option::Selector(match_all())),
            TcOption::U32(TcFilterU32Option::Action(vec![redirect_to(9)])),
        ]),
    ];
    let mut buffer = vec![0; filter.buffer_len()];
    filter.emit(&mut buffer);
    let parsed = TcMessage::parse(&TcMessageBuffer::new(&buffer)).expect("parse");
    assert_eq!(redirect_target(&parsed), Some(9));

    // Someone else's redirect (no cookie) is not ours.
    let mut theirs = redirect_to(9);
    theirs.attributes.pop();
    filter.attributes[1] =
        TcAttribute::Options(vec![TcOption::U32(TcFilterU32Option::Action(vec![theirs]))]);
    assert_eq!(redirect_target(&filter), None);
    assert!(COOKIE.len() <= 16);
}
