use super::*;

#[test]
fn tap_names_are_recognised() {
    assert_eq!(name(0), "tap0_runv");
    assert!(is_ours(&name(7)));
    for other in [
        "tap_runv",
        "tap0",
        "tapx_runv",
        "tap0_runv2",
        "eth0",
        "tap0_kata",
    ] {
        assert!(!is_ours(other), "{other}");
    }
}
