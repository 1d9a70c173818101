//! The stdio port: accepts stream connections, reads their header and binds each
//! to one stream of one process (see `protocol::stdio` and protocol/README.md).

use std::io;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;

use protocol::stdio::{write_error, StreamHeader};

use crate::error::AgentError;
use crate::process::BindError;
use crate::sandbox::Sandbox;

/// Why a stream connection was refused (the reason the client is sent).
#[derive(Debug, thiserror::Error)]
enum RefusalError {
    /// The header names no container or process of the sandbox.
    #[error(transparent)]
    Lookup(#[from] AgentError),
    /// The connection cannot be duplicated for its copier.
    #[error(transparent)]
    Duplicate(io::Error),
    /// The process refuses the stream.
    #[error(transparent)]
    Bind(#[from] BindError),
}

/// Serves `listener` on a thread of its own, one short-lived thread per header.
pub fn spawn(listener: UnixListener, sandbox: Arc<Sandbox>) -> io::Result<()> {
    spawn_accepting(move || listener.accept().map(|(conn, _)| conn), sandbox)
}

/// Serves the connections `accept` returns (a Unix or a vsock listener), on a
/// thread of its own, one short-lived thread per header.
pub fn spawn_accepting(
    mut accept: impl FnMut() -> io::Result<UnixStream> + Send + 'static,
    sandbox: Arc<Sandbox>,
) -> io::Result<()> {
    std::thread::Builder::new()
        .name("stdio-accept".into())
        .spawn(move || loop {
            let Ok(conn) = accept() else { continue };
            let sandbox = Arc::clone(&sandbox);
            let spawned = std::thread::Builder::new()
                .name("stdio-bind".into())
                .spawn(move || bind(conn, &sandbox));
            if let Err(err) = spawned {
                // The host opens stdio connections as often as it likes.
                protocol::log_limited!(log::Level::Error, "cannot serve a stdio connection: {err}");
            }
        })
        .map(drop)
}

/// Reads the header and hands the connection to its process, or refuses it.
fn bind(mut conn: UnixStream, sandbox: &Sandbox) {
    let header = match StreamHeader::read_from(&mut conn) {
        Ok(header) => header,
        Err(err) => {
            let _ = write_error(&mut conn, &err.to_string());
            return;
        }
    };
    let bound = (|| -> Result<(), RefusalError> {
        let process = sandbox
            .container(&header.container_id)?
            .process(&header.exec_id)?;
        let copy = conn.try_clone().map_err(RefusalError::Duplicate)?;
        Ok(process.bind(header.kind, copy)?)
    })();
    if let Err(reason) = bound {
        let _ = write_error(&mut conn, &reason.to_string());
    }
}
