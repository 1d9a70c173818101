//! The agent's errors and the ttrpc status each one answers with.

use std::io;

use libcontainer::error::LibcontainerError;
use ttrpc::Code;

/// Why an agent call failed. Each variant maps to one ttrpc status code.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The request is malformed (bad id, spec, process JSON, missing field).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A container or exec id is taken, or the sandbox was already created.
    #[error("{kind} {id:?} already exists")]
    AlreadyExists {
        /// "container", "exec" or "sandbox".
        kind: &'static str,
        /// The id asked for.
        id: String,
    },
    /// No container, exec process or network interface has this id.
    #[error("{kind} {id:?} not found")]
    NotFound {
        /// "container", "exec", "interface", ...
        kind: &'static str,
        /// The id asked for.
        id: String,
    },
    /// A rootfs or bind-mount source lies outside the sandbox's shared dir.
    #[error("{what} {path} is outside the sandbox's shared dir {shared}")]
    Escapes {
        /// "rootfs" or "bind mount source".
        what: &'static str,
        /// The path asked for.
        path: String,
        /// The shared dir.
        shared: String,
    },
    /// The object is in the wrong state for the call.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The call's deadline passed before it could answer.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The container runtime (libcontainer) failed at a step.
    #[error("{step}: {source}")]
    Runtime {
        /// What the agent was doing.
        step: String,
        /// libcontainer's error (boxed: it is large).
        source: Box<LibcontainerError>,
    },
    /// A system call or file operation failed at a step.
    #[error("{step}: {source}")]
    Io {
        /// What the agent was doing.
        step: String,
        /// The OS error.
        source: io::Error,
    },
    /// The spawn helper failed: its error, with the status code it chose.
    #[error("{message}")]
    Spawned {
        /// The status code of the helper's error.
        code: Code,
        /// The helper's error and its causes.
        message: String,
    },
    /// The kernel refused an rtnetlink request (or the socket failed).
    #[error("{step}: {source}")]
    Netlink {
        /// What the agent was asking for.
        step: String,
        /// The kernel's errno, or the socket's error.
        source: io::Error,
    },
}

impl AgentError {
    /// `NotFound` for a container id.
    pub fn no_container(id: &str) -> Self {
        Self::NotFound {
            kind: "container",
            id: id.to_string(),
        }
    }

    /// `NotFound` for an exec id of a container.
    pub fn no_exec(container_id: &str, exec_id: &str) -> Self {
        Self::NotFound {
            kind: "exec",
            id: format!("{container_id}/{exec_id}"),
        }
    }

    /// Wraps a libcontainer error with the step that failed.
    pub fn runtime(step: impl Into<String>) -> impl FnOnce(LibcontainerError) -> Self {
        let step = step.into();
        move |source| Self::Runtime {
            step,
            source: Box::new(source),
        }
    }

    /// Wraps an I/O error with the step that failed.
    pub fn io(step: impl Into<String>) -> impl FnOnce(io::Error) -> Self {
        let step = step.into();
        move |source| Self::Io { step, source }
    }

    /// Wraps an rtnetlink error with the request that failed.
    pub fn netlink(step: impl Into<String>) -> impl FnOnce(io::Error) -> Self {
        let step = step.into();
        move |source| Self::Netlink { step, source }
    }

    /// The ttrpc status code this error answers with.
    pub fn code(&self) -> Code {
        match self {
            Self::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            Self::AlreadyExists { .. } => Code::ALREADY_EXISTS,
            Self::NotFound { .. } => Code::NOT_FOUND,
            Self::Escapes { .. } => Code::PERMISSION_DENIED,
            Self::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            Self::DeadlineExceeded(_) => Code::DEADLINE_EXCEEDED,
            Self::Runtime { source, .. } => runtime_code(source),
            Self::Io { .. } => Code::INTERNAL,
            Self::Spawned { code, .. } => *code,
            Self::Netlink { source, .. } => netlink_code(source),
        }
    }
}

/// libcontainer reports some bad input itself (an invalid spec, say).
fn runtime_code(err: &LibcontainerError) -> Code {
    match err {
        LibcontainerError::InvalidID(_)
        | LibcontainerError::MissingSpec(_)
        | LibcontainerError::InvalidSpec(_)
        | LibcontainerError::InvalidInput(_)
        | LibcontainerError::Spec(_) => Code::INVALID_ARGUMENT,
        LibcontainerError::IncorrectStatus(_) => Code::FAILED_PRECONDITION,
        LibcontainerError::Exist => Code::ALREADY_EXISTS,
        _ => Code::INTERNAL,
    }
}

/// The kernel judges some network requests itself (an MTU out of range, a
/// gateway not on any link): its errno tells whose fault it was.
fn netlink_code(err: &io::Error) -> Code {
    match err.raw_os_error() {
        Some(
            libc::EINVAL
            | libc::ERANGE
            | libc::EADDRNOTAVAIL
            | libc::ENETUNREACH
            | libc::EAFNOSUPPORT
            | libc::EOPNOTSUPP,
        ) => Code::INVALID_ARGUMENT,
        Some(libc::ENODEV | libc::ESRCH) => Code::NOT_FOUND,
        Some(libc::EEXIST) => Code::ALREADY_EXISTS,
        Some(libc::EPERM | libc::EACCES) => Code::PERMISSION_DENIED,
        _ => Code::INTERNAL,
    }
}

impl From<AgentError> for ttrpc::Error {
    fn from(err: AgentError) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(err.code(), err.to_string()))
    }
}

impl From<protocol::id::InvalidId> for AgentError {
    fn from(err: protocol::id::InvalidId) -> Self {
        AgentError::InvalidArgument(err.to_string())
    }
}

impl From<protocol::mac::InvalidMac> for AgentError {
    fn from(err: protocol::mac::InvalidMac) -> Self {
        AgentError::InvalidArgument(err.to_string())
    }
}

/// Result of the agent's operations.
pub type Result<T> = std::result::Result<T, AgentError>;
