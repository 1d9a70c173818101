//! Helpers shared by runv's end-to-end suites: the guest artefacts under test,
//! the KVM precondition, and guest runs watched through their serial console.

pub mod agent_host;
pub mod artefacts;
pub mod console;
pub mod host;
pub mod hybrid_vsock;
pub mod scratch;
