//! Helpers shared by runv's end-to-end suites: the guest artefacts under test,
//! the KVM precondition, guest runs watched through their serial console, and
//! tier 4's containerd fixture and CRI client.

pub mod agent_host;
pub mod artefacts;
pub mod console;
pub mod containerd;
pub mod cri;
pub mod host;
pub mod hybrid_vsock;
pub mod net;
pub mod scratch;
