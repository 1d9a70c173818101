//! Errors of the task service, each with the ttrpc status code containerd maps
//! to its errdefs (NotFound, AlreadyExists, FailedPrecondition, ...).

use ttrpc::{Code, Error as TtrpcError};

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
    /// The agent refused or failed; its status code is kept.
    #[error("{context}: {source}")]
    Agent { context: String, source: TtrpcError },
    /// The shim or the VM failed.
    #[error("{0}")]
    Internal(String),
    /// runv does not do this.
    #[error("{0}")]
    Unimplemented(&'static str),
}

impl TaskError {
    /// An agent failure in `context`.
    pub fn agent(context: impl Into<String>) -> impl FnOnce(TtrpcError) -> Self {
        let context = context.into();
        move |source| Self::Agent { context, source }
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
            Self::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            Self::NotFound { .. } => Code::NOT_FOUND,
            Self::AlreadyExists(_) => Code::ALREADY_EXISTS,
            Self::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            Self::Agent {
                source: TtrpcError::RpcStatus(status),
                ..
            } => status.code(),
            Self::Agent { .. } | Self::Internal(_) => Code::INTERNAL,
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
}
