//! The VMM control API (`protos/vmm.proto`, ttrpc service `runv.vmm.v1.Vmm`).
//!
//! runv-vmm serves it on `<sandbox dir>/vm/api.sock`; the shim calls it (see `README.md`).
//! Everything is re-exported here: the messages and [`VmState`] (generated into
//! [`vmm`]), and the sync ttrpc service trait [`Vmm`], its client [`VmmClient`] and
//! [`create_vmm`], the method table for `ttrpc::Server::register_service` (generated
//! into [`vmm_ttrpc`]).
//!
//! ```
//! use std::sync::Arc;
//! use protocol::vmm::{create_vmm, DescribeRequest, Vmm, VmmClient, VmInfo, VmState};
//!
//! struct MyVmm;
//! impl Vmm for MyVmm {
//!     fn describe(&self, _: &ttrpc::TtrpcContext, _: DescribeRequest) -> ttrpc::Result<VmInfo> {
//!         let mut info = VmInfo::new();
//!         info.set_state(VmState::RUNNING);
//!         info.set_vcpus(1);
//!         Ok(info)
//!     }
//! }
//!
//! # let dir = tempfile::tempdir().unwrap();
//! # let api_sock = dir.path().join("api.sock");
//! // VMM side: serve on <sandbox dir>/vm/api.sock (remove a stale socket file first).
//! let addr = format!("unix://{}", api_sock.display());
//! let mut server = ttrpc::Server::new()
//!     .bind(&addr)?
//!     .register_service(create_vmm(Arc::new(MyVmm)));
//! server.start()?; // serves on its own threads
//!
//! // Shim side.
//! let client = VmmClient::new(ttrpc::Client::connect(&addr)?);
//! let ctx = ttrpc::context::with_duration(std::time::Duration::from_secs(5));
//! let info = client.describe(ctx, &DescribeRequest::new())?;
//! assert_eq!((info.state(), info.vcpus()), (VmState::RUNNING, 1));
//! # drop(client);
//! # server.shutdown();
//! # Ok::<(), ttrpc::Error>(())
//! ```

pub use self::vmm::*;
pub use self::vmm_ttrpc::*;

generated_modules!(vmm, vmm_ttrpc);

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, sync::Arc, time::Duration};

    use super::*;

    /// Test double of runv-vmm: answers Describe and Metrics with fixed values and
    /// leaves the other calls to the generated defaults.
    struct FakeVmm;

    fn vm_info() -> VmInfo {
        let mut info = VmInfo::new();
        info.set_state(VmState::PAUSED);
        info.set_vcpus(2);
        info.set_memory_mib(512);
        info.set_boot_time_us(123_456);
        info.set_vmm_setup_us(7_890);
        info.set_pid(4242);
        info
    }

    fn vm_metrics() -> VmMetrics {
        let mut metrics = VmMetrics::new();
        metrics.exits_by_reason = HashMap::from([("io".to_string(), 17), ("hlt".to_string(), 3)]);
        metrics.vmm_rss_bytes = 64 << 20;
        metrics.guest_memory_bytes = 512 << 20;
        metrics
    }

    impl Vmm for FakeVmm {
        fn describe(&self, _: &ttrpc::TtrpcContext, _: DescribeRequest) -> ttrpc::Result<VmInfo> {
            Ok(vm_info())
        }

        fn metrics(&self, _: &ttrpc::TtrpcContext, _: MetricsRequest) -> ttrpc::Result<VmMetrics> {
            Ok(vm_metrics())
        }
    }

    fn ctx() -> ttrpc::context::Context {
        ttrpc::context::with_duration(Duration::from_secs(5))
    }

    #[test]
    fn describe_and_metrics_round_trip_over_a_unix_socket() {
        let dir = tempfile::tempdir().unwrap();
        let addr = format!("unix://{}", dir.path().join("api.sock").display());
        let mut server = ttrpc::Server::new()
            .bind(&addr)
            .unwrap()
            .register_service(create_vmm(Arc::new(FakeVmm)));
        server.start().unwrap();

        let client = VmmClient::new(ttrpc::Client::connect(&addr).unwrap());

        let info = client.describe(ctx(), &DescribeRequest::new()).unwrap();
        assert_eq!(info, vm_info());
        assert_eq!(info.state(), VmState::PAUSED);
        assert_eq!(info.memory_mib(), 512);

        let metrics = client.metrics(ctx(), &MetricsRequest::new()).unwrap();
        assert_eq!(metrics, vm_metrics());
        assert_eq!(metrics.exits_by_reason["io"], 17);

        // A call the service does not implement fails with NOT_FOUND.
        match client.pause(ctx(), &PauseRequest::new()) {
            Err(ttrpc::Error::RpcStatus(status)) => {
                assert_eq!(status.code(), ttrpc::Code::NOT_FOUND)
            }
            other => panic!("unimplemented Pause answered {other:?}"),
        }

        drop(client);
        server.shutdown();
    }
}
