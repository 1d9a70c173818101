//! The container's seccomp filter for its exec processes.
//!
//! libcontainer 0.7 runs an exec (a "tenant") with a spec rebuilt without the
//! container's `linux.seccomp`, so the process would run unfiltered; runc gives
//! it the container's filter. This executor loads that filter in the exec'd
//! process itself, last thing before `execve`.

use libcontainer::seccomp::initialize_seccomp;
use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use oci_spec::runtime::{LinuxSeccomp, Spec};

/// Runs an exec process under the container's seccomp profile, if it has one.
#[derive(Clone, Default)]
pub struct ExecSeccomp {
    profile: Option<LinuxSeccomp>,
}

impl ExecSeccomp {
    /// The executor for execs of a container whose spec carries `profile`.
    pub fn new(profile: Option<LinuxSeccomp>) -> Self {
        Self { profile }
    }

    fn load_filter(profile: &LinuxSeccomp) -> Result<(), ExecutorError> {
        // Capabilities are dropped by now, so the kernel only lets an
        // unprivileged process load a filter with no_new_privs set: the exec
        // gets it, as it would have under runc with noNewPrivileges.
        nix::sys::prctl::set_no_new_privs()
            .map_err(|e| ExecutorError::Other(format!("set no_new_privs for seccomp: {e}")))?;
        match initialize_seccomp(profile) {
            Ok(None) => Ok(()),
            Ok(Some(_notify_fd)) => Err(ExecutorError::Other(
                "the seccomp profile asks for SCMP_ACT_NOTIFY, which execs do not support".into(),
            )),
            Err(e) => Err(ExecutorError::Other(format!(
                "load the seccomp filter: {e}"
            ))),
        }
    }
}

impl Executor for ExecSeccomp {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        if let Some(profile) = &self.profile {
            Self::load_filter(profile)?;
        }
        DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)
    }
}
