use super::*;

#[test]
fn the_vmm_keeps_only_virtio_fs_capabilities() {
    let privileges = VmmPrivileges::new();
    assert!(VMM_CAPABILITIES
        .iter()
        .all(|cap| !privileges.drop.contains(cap)));
    // CAP_DAC_READ_SEARCH, CAP_NET_ADMIN, CAP_SYS_PTRACE, CAP_SYS_ADMIN,
    // CAP_SYS_RESOURCE.
    assert!(
        [2, 12, 19, 21, 24]
            .iter()
            .all(|cap| privileges.drop.contains(cap)),
        "{:?}",
        privileges.drop
    );
}
