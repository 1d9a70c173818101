//! Helpers the unit tests share.

use containerd_shim_runv_v2::paths::SandboxDir;
use protocol::vmm::{create_vmm, Vmm};
use std::sync::Arc;

/// Makes sandbox dir `dir` with its `vm/` and serves `vmm` on its API
/// socket, as a running VMM would; the server stops when dropped.
pub fn serve_vmm(dir: &SandboxDir, vmm: impl Vmm + Send + Sync + 'static) -> ttrpc::Server {
    std::fs::create_dir(dir.path()).unwrap();
    dir.create_vmm_dirs().unwrap();
    let addr = format!("unix://{}", dir.api_sock().display());
    let mut server = ttrpc::Server::new()
        .bind(&addr)
        .unwrap()
        .register_service(create_vmm(Arc::new(vmm)));
    server.start().unwrap();
    server
}
