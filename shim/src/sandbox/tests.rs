use super::*;
use crate::error::TaskError;

fn status(err: SandboxError) -> (ttrpc::Code, String) {
    let boot = TaskError::BootVm {
        pod: "pod1".into(),
        source: Box::new(err),
    };
    match ttrpc::Error::from(boot) {
        ttrpc::Error::RpcStatus(status) => (status.code(), status.message().to_string()),
        other => panic!("not a status: {other:?}"),
    }
}

#[test]
fn a_dead_vmm_and_a_silent_agent_read_differently() {
    let log = PathBuf::from("/run/runv/pod1/vmm.log");
    let exited = SandboxError::VmmExited {
        source: io::Error::other("the VMM exited during boot"),
        log: log.clone(),
        tail: "KVM_CREATE_VM: EPERM".into(),
    };
    let timeout = SandboxError::AgentTimeout {
        secs: 30,
        source: io::Error::from(io::ErrorKind::TimedOut),
        log,
        tail: String::new(),
    };
    let (code, exited) = status(exited);
    assert_eq!(code, ttrpc::Code::INTERNAL);
    assert_eq!(
        exited,
        "pod pod1: the VMM exited during boot; VMM log /run/runv/pod1/vmm.log: KVM_CREATE_VM: EPERM"
    );
    let (code, timeout) = status(timeout);
    assert_eq!(code, ttrpc::Code::INTERNAL);
    assert!(
        timeout.starts_with(
            "pod pod1: the guest agent did not answer within boot_timeout_secs = 30 ("
        ),
        "{timeout}"
    );
}
