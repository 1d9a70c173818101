//! The `start` handshake with containerd. containerd 2.3+ writes a protobuf
//! `containerd.runtime.bootstrap.v1.BootstrapParams` on the shim's stdin and
//! reads a `BootstrapResult` from its stdout; containerd 1.6 to 2.2 write
//! nothing or the runtime options (a bare `google.protobuf.Any`) and read the
//! plain socket address. Both are answered here, in the form that was asked.

use crate::options::{self, OptionsError};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use protobuf::well_known_types::any::Any;
use protobuf::{CodedInputStream, CodedOutputStream, Message};
use std::io::IsTerminal;
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;

/// Most bytes of stdin `start` reads (containerd's own shims take 10 MiB;
/// the params are a few hundred bytes).
const MAX_INPUT: usize = 1 << 20;

/// How long `start` waits for more stdin before it takes what it has:
/// containerd writes it all at once and closes the pipe.
const STDIN_IDLE_MS: u16 = 2000;

/// Task API version runv answers containerd 2.3+ with: its server serves task
/// v3 beside v2 (`serve.rs`). containerd then reaches every container of a
/// pod through the pod's shim (the sandbox's `bootstrap.json`) without running
/// `start` for each, as runv's one shim per pod expects. Before 2.3 the answer
/// is the plain address, which containerd reads as version 2: containerd 1.x
/// refuses a version above 2.
const TASK_API_VERSION: i32 = 3;

/// Protocol of runv's task service.
const PROTOCOL: &str = "ttrpc";

// Field numbers of containerd/api/runtime/bootstrap/v1/bootstrap.proto.
const PARAMS_INSTANCE_ID: u32 = 1;
const PARAMS_NAMESPACE: u32 = 2;
const PARAMS_LOG_LEVEL: u32 = 3;
const PARAMS_CONTAINERD_VERSION: u32 = 4;
const PARAMS_TTRPC_ADDRESS: u32 = 5;
const PARAMS_GRPC_ADDRESS: u32 = 6;
const PARAMS_CONTAINERD_BINARY: u32 = 7;
const PARAMS_EXTENSIONS: u32 = 8;
const PARAMS_SOCKET_DIR: u32 = 9;
const EXTENSION_VALUE: u32 = 1;
const RESULT_VERSION: u32 = 1;
const RESULT_ADDRESS: u32 = 2;
const RESULT_PROTOCOL: u32 = 3;

// Protobuf wire types.
const WIRE_VARINT: u32 = 0;
const WIRE_LEN: u32 = 2;

/// A failed `start` handshake.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// The runtime options containerd passed cannot be read.
    #[error("start: {0}")]
    Options(#[from] OptionsError),
    /// The `BootstrapResult` could not be encoded.
    #[error("start: encode the BootstrapResult: {0}")]
    Encode(#[source] protobuf::Error),
}

/// `containerd.runtime.bootstrap.v1.BootstrapParams`, the fields runv reads
/// or logs.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct BootstrapParams {
    /// The task (or sandbox) id, as `-id` on the command line.
    pub instance_id: String,
    /// containerd's namespace, as `-namespace`.
    pub namespace: String,
    /// INFO = 0, more verbose negative (DEBUG = -4, TRACE = -8).
    pub log_level: i32,
    /// The version of the containerd starting the shim.
    pub containerd_version: String,
    /// containerd's ttrpc socket (also in `TTRPC_ADDRESS`).
    pub ttrpc_address: String,
    /// containerd's gRPC socket (also `-address`).
    pub grpc_address: String,
    /// containerd's binary, for publishing events (also `-publish-binary`).
    pub containerd_binary: String,
    /// Each `Extension.value`: typed configuration, runtime options among them.
    pub extensions: Vec<Any>,
    /// Where containerd wants shim sockets (its default, `/run/containerd/s`,
    /// is where containerd-shim puts them).
    pub socket_dir: Option<String>,
}

/// What containerd sent `start` on stdin.
#[derive(Debug, Clone, PartialEq)]
pub enum StartInput {
    /// containerd 2.3+: the bootstrap protocol.
    Bootstrap(BootstrapParams),
    /// containerd up to 2.2: nothing, or the runtime options as a bare `Any`.
    Legacy(Option<Any>),
}

impl StartInput {
    /// Tells the two protocols apart. A bare `Any` also decodes as a
    /// `BootstrapParams` (its type URL and value landing in the id and
    /// namespace), so the params count only when their id and namespace are
    /// the ones on the command line, as containerd's own shims decide.
    pub fn parse(input: &[u8], id: &str, namespace: &str) -> Self {
        if input.is_empty() {
            return Self::Legacy(None);
        }
        match parse_params(input) {
            Some(params) if params.instance_id == id && params.namespace == namespace => {
                Self::Bootstrap(params)
            }
            _ => Self::Legacy(Any::parse_from_bytes(input).ok()),
        }
    }

    /// The configuration path runv's runtime options name, if any: from the
    /// `runtimeoptions.v1.Options` extension (2.3+) or the bare options
    /// (before 2.3, read leniently: the task's create names them again).
    pub fn config_path(&self) -> Result<Option<PathBuf>, OptionsError> {
        match self {
            Self::Bootstrap(params) => {
                let Some(any) = params
                    .extensions
                    .iter()
                    .find(|any| options::is_runv_options(any))
                else {
                    return Ok(None);
                };
                options::config_path(Some(any))
            }
            Self::Legacy(any) => Ok(options::config_path(any.as_ref()).ok().flatten()),
        }
    }

    /// What `start` writes on stdout for a shim serving at `address`: a
    /// `BootstrapResult` to 2.3+, the plain address before.
    pub fn answer(&self, address: &str) -> Result<Vec<u8>, BootstrapError> {
        match self {
            Self::Bootstrap(_) => encode_result(TASK_API_VERSION, address, PROTOCOL),
            Self::Legacy(_) => Ok(address.as_bytes().to_vec()),
        }
    }
}

/// Decodes a `BootstrapParams`; `None` if `input` is not one (bad wire types
/// on its known fields, truncation). Unknown fields are skipped.
fn parse_params(input: &[u8]) -> Option<BootstrapParams> {
    let mut params = BootstrapParams::default();
    let mut input = CodedInputStream::from_bytes(input);
    while let Some(tag) = input.read_raw_tag_or_eof().ok()? {
        let (field, wire_type) = (tag >> 3, tag & 7);
        let string_field = match field {
            PARAMS_INSTANCE_ID => Some(&mut params.instance_id),
            PARAMS_NAMESPACE => Some(&mut params.namespace),
            PARAMS_CONTAINERD_VERSION => Some(&mut params.containerd_version),
            PARAMS_TTRPC_ADDRESS => Some(&mut params.ttrpc_address),
            PARAMS_GRPC_ADDRESS => Some(&mut params.grpc_address),
            PARAMS_CONTAINERD_BINARY => Some(&mut params.containerd_binary),
            _ => None,
        };
        match (field, wire_type) {
            (_, WIRE_LEN) if string_field.is_some() => {
                *string_field? = input.read_string().ok()?;
            }
            (PARAMS_LOG_LEVEL, WIRE_VARINT) => params.log_level = input.read_int32().ok()?,
            (PARAMS_EXTENSIONS, WIRE_LEN) => {
                let extension = input.read_bytes().ok()?;
                if let Some(any) = parse_extension(&extension)? {
                    params.extensions.push(any);
                }
            }
            (PARAMS_SOCKET_DIR, WIRE_LEN) => params.socket_dir = Some(input.read_string().ok()?),
            (PARAMS_INSTANCE_ID..=PARAMS_SOCKET_DIR, _) => return None,
            _ => input
                .skip_field(protobuf::rt::WireType::new(wire_type)?)
                .ok()?,
        }
    }
    Some(params)
}

/// Decodes an `Extension`: its `Any`, if set.
fn parse_extension(input: &[u8]) -> Option<Option<Any>> {
    let mut value = None;
    let mut input = CodedInputStream::from_bytes(input);
    while let Some(tag) = input.read_raw_tag_or_eof().ok()? {
        let (field, wire_type) = (tag >> 3, tag & 7);
        if field == EXTENSION_VALUE && wire_type == WIRE_LEN {
            value = Some(Any::parse_from_bytes(&input.read_bytes().ok()?).ok()?);
        } else {
            input
                .skip_field(protobuf::rt::WireType::new(wire_type)?)
                .ok()?;
        }
    }
    Some(value)
}

/// Encodes a `BootstrapResult` with no capabilities and no metadata.
fn encode_result(version: i32, address: &str, protocol: &str) -> Result<Vec<u8>, BootstrapError> {
    let mut bytes = Vec::new();
    let mut out = CodedOutputStream::vec(&mut bytes);
    out.write_int32(RESULT_VERSION, version)
        .and_then(|()| out.write_string(RESULT_ADDRESS, address))
        .and_then(|()| out.write_string(RESULT_PROTOCOL, protocol))
        .and_then(|()| out.flush())
        .map_err(BootstrapError::Encode)?;
    drop(out);
    Ok(bytes)
}

/// Reads what containerd wrote on stdin, without ever blocking for long: a
/// terminal gives nothing, an idle pipe ends the read after
/// [`STDIN_IDLE_MS`], and at most [`MAX_INPUT`] bytes are taken.
pub fn read_stdin() -> Vec<u8> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return Vec::new();
    }
    let fd = stdin.as_fd();
    let mut input = Vec::new();
    let mut chunk = [0u8; 8192];
    while input.len() < MAX_INPUT {
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(STDIN_IDLE_MS)) {
            Ok(0) => break,
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(_) => break,
        }
        let want = chunk.len().min(MAX_INPUT - input.len());
        match nix::unistd::read(fd.as_raw_fd(), &mut chunk[..want]) {
            Ok(0) => break,
            Ok(n) => input.extend_from_slice(&chunk[..n]),
            Err(Errno::EINTR | Errno::EAGAIN) => {}
            Err(_) => break,
        }
    }
    input
}

#[cfg(test)]
mod tests;
