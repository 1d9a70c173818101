//! Errors of the task service, each with the ttrpc status code containerd maps
//! to its errdefs (NotFound, AlreadyExists, FailedPrecondition, ...).

use crate::share::ShareError;
use crate::vmm_api::VmmApiError;
use ttrpc::{Code, Error as TtrpcError};

use crate::text::{bounded_text, MAX_GUEST_TEXT};

/// An error a task RPC answers with.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// Bad input: a malformed spec, id, config or annotation.
    #[error("{0}")]
    InvalidArgument(String),
    /// An unknown task or exec id.
    #[error("{kind} {id:?} not found")]
    NotFound { kind: &'static str, id: String },
    /// A duplicate id.
    #[error("{0}")]
    AlreadyExists(String),
    /// The call does not fit the task's state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The agent refused or failed; its status code is kept, its text cut to
    /// [`MAX_GUEST_TEXT`].
    #[error("{context}: {source}")]
    Agent { context: String, source: TtrpcError },
    /// runv does not do this.
    #[error("{0}")]
    Unimplemented(&'static str),
    /// The task's spec or annotations cannot be run.
    #[error(transparent)]
    Spec(#[from] crate::spec::SpecError),
    /// The pod's hostname, hosts, resolv.conf or sysctls cannot be read.
    #[error(transparent)]
    PodFiles(#[from] crate::pod_files::PodFilesError),
    /// The runv configuration or a pod annotation overriding it is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// containerd's runtime options for runv cannot be read.
    #[error(transparent)]
    Options(#[from] crate::options::OptionsError),
    /// Pod `pod`'s VM did not boot.
    #[error("pod {pod}: {source}")]
    BootVm {
        pod: String,
        source: Box<crate::sandbox::SandboxError>,
    },
    /// Mounting a container's rootfs into the pod's share failed.
    #[error("{0}")]
    MountRootfs(#[source] ShareError),
    /// A bind mount the spec asks for cannot be made in the pod's share.
    #[error("{0}")]
    BindVolume(#[source] ShareError),
    /// Removing a container's part of the pod's share failed.
    #[error("{0}")]
    RemoveShare(#[source] ShareError),
    /// Connecting a process's stdio to containerd's failed.
    #[error(transparent)]
    AttachStdio(#[from] crate::stdio::StdioError),
    /// Pod `pod`'s VMM API failed (pause, resume, metrics).
    #[error("pod {pod}: {source}")]
    VmmApi { pod: String, source: VmmApiError },
    /// Encoding a task's metrics failed.
    #[error("encode the metrics: {0}")]
    EncodeMetrics(#[source] protobuf::Error),
}

impl From<protocol::id::InvalidId> for TaskError {
    fn from(err: protocol::id::InvalidId) -> Self {
        TaskError::InvalidArgument(err.to_string())
    }
}

impl TaskError {
    /// An agent failure in `context`, its text bounded.
    pub fn agent(context: impl Into<String>) -> impl FnOnce(TtrpcError) -> Self {
        let context = context.into();
        move |source| Self::Agent {
            context,
            source: bounded_agent_error(source),
        }
    }

    /// An unknown id of `kind`.
    pub fn not_found(kind: &'static str, id: &str) -> Self {
        Self::NotFound {
            kind,
            id: id.to_string(),
        }
    }

    fn code(&self) -> Code {
        match self {
            Self::InvalidArgument(_)
            | Self::Spec(_)
            | Self::PodFiles(_)
            | Self::Config(_)
            | Self::Options(_)
            | Self::BindVolume(_) => Code::INVALID_ARGUMENT,
            Self::NotFound { .. } => Code::NOT_FOUND,
            Self::AlreadyExists(_) => Code::ALREADY_EXISTS,
            Self::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            Self::Agent {
                source: TtrpcError::RpcStatus(status),
                ..
            } => status.code(),
            Self::Agent { .. }
            | Self::BootVm { .. }
            | Self::MountRootfs(_)
            | Self::RemoveShare(_)
            | Self::AttachStdio(_)
            | Self::VmmApi { .. }
            | Self::EncodeMetrics(_) => Code::INTERNAL,
            Self::Unimplemented(_) => Code::UNIMPLEMENTED,
        }
    }
}

impl From<TaskError> for TtrpcError {
    fn from(err: TaskError) -> Self {
        let message = match &err {
            // The agent's own message already names the problem; keep it whole.
            TaskError::Agent {
                context,
                source: TtrpcError::RpcStatus(status),
            } => format!("{context}: {}", status.message()),
            other => other.to_string(),
        };
        TtrpcError::RpcStatus(ttrpc::get_status(err.code(), message))
    }
}

/// `err` with its guest-provided text bounded; a status loses its details
/// (opaque payloads the shim never reads).
fn bounded_agent_error(err: TtrpcError) -> TtrpcError {
    let bound = |text: &str| bounded_text(text, MAX_GUEST_TEXT);
    match err {
        TtrpcError::RpcStatus(status) => {
            TtrpcError::RpcStatus(ttrpc::get_status(status.code(), bound(status.message())))
        }
        TtrpcError::Socket(text) => TtrpcError::Socket(bound(&text)),
        TtrpcError::Others(text) => TtrpcError::Others(bound(&text)),
        other => other,
    }
}

/// Result of a task operation.
pub type Result<T> = std::result::Result<T, TaskError>;

#[cfg(test)]
mod tests {
    use super::*;

    fn status(err: TaskError) -> (Code, String) {
        match TtrpcError::from(err) {
            TtrpcError::RpcStatus(status) => (status.code(), status.message().to_string()),
            other => panic!("not a status: {other:?}"),
        }
    }

    #[test]
    fn codes_follow_the_kind_and_keep_the_agents() {
        assert_eq!(
            status(TaskError::not_found("task", "c1")).0,
            Code::NOT_FOUND
        );
        let agent = TaskError::agent("StartContainer c1")(TtrpcError::RpcStatus(
            ttrpc::get_status(Code::PERMISSION_DENIED, "rootfs escapes"),
        ));
        let (code, message) = status(agent);
        assert_eq!(code, Code::PERMISSION_DENIED);
        assert_eq!(message, "StartContainer c1: rootfs escapes");
        assert_eq!(
            status(TaskError::Unimplemented("checkpoint")).0,
            Code::UNIMPLEMENTED
        );
    }

    #[test]
    fn a_guest_message_is_cut_at_a_char_boundary() {
        // 4 MiB of two-byte chars after one byte: byte MAX_GUEST_TEXT splits a char.
        let huge = format!("x{}", "é".repeat(2 << 20));
        let mut reply = ttrpc::get_status(Code::INVALID_ARGUMENT, &huge);
        reply.details.push(Default::default());
        let agent = TaskError::agent("CreateContainer c1")(TtrpcError::RpcStatus(reply));
        let logged = agent.to_string();
        assert!(logged.len() < 2 * MAX_GUEST_TEXT, "{} bytes", logged.len());
        let (code, message) = status(agent);
        assert_eq!(code, Code::INVALID_ARGUMENT);
        let kept = MAX_GUEST_TEXT - 1;
        let cut = huge.len() - kept;
        assert_eq!(
            message,
            format!("CreateContainer c1: {}… ({cut} bytes cut)", &huge[..kept])
        );
        let other = TaskError::agent("Check")(TtrpcError::Others("y".repeat(1 << 20)));
        assert!(status(other)
            .1
            .ends_with(&format!("({} bytes cut)", (1 << 20) - MAX_GUEST_TEXT)));
    }
}
