//! A blocking CRI (`runtime.v1`) client on containerd's socket, for tier 4: the
//! calls the suites make, each one short, on a tokio current-thread runtime.
//!
//! Each method panics with the call's name and the status on an error; the
//! `try_` variants return the status, for the calls a suite expects to fail.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    Container, ContainerConfig, ContainerFilter, ContainerMetadata, ContainerStats,
    ContainerStatsRequest, ContainerStatus, ContainerStatusRequest, CreateContainerRequest,
    ExecSyncRequest, ExecSyncResponse, ImageSpec, ImageStatusRequest, KeyValue,
    LinuxContainerResources, LinuxPodSandboxConfig, ListContainersRequest, ListPodSandboxRequest,
    PodSandbox, PodSandboxConfig, PodSandboxFilter, PodSandboxMetadata, PodSandboxStatusRequest,
    PodSandboxStatusResponse, RemoveContainerRequest, RemovePodSandboxRequest,
    RunPodSandboxRequest, StartContainerRequest, StopContainerRequest, StopPodSandboxRequest,
    UpdateContainerResourcesRequest, VersionRequest, VersionResponse,
};
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::Status;

/// Deadline of every call: a pod's VM boots inside the emulated test host.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(240);

/// A connected CRI client.
pub struct Cri {
    rt: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
}

impl Cri {
    /// Connects to the CRI service on containerd's gRPC socket `socket`.
    pub fn connect(socket: &Path) -> Self {
        Self::try_connect(socket)
            .unwrap_or_else(|err| panic!("connect to CRI on {}: {err}", socket.display()))
    }

    /// [`Cri::connect`], returning the error.
    pub fn try_connect(socket: &Path) -> Result<Self, tonic::transport::Error> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .expect("tokio runtime for the CRI client");
        let path = socket.to_path_buf();
        let channel = rt.block_on(async {
            // The URI is required by the API but unused: the connector dials the socket.
            Endpoint::from_static("http://[::1]:50051")
                .timeout(CALL_TIMEOUT)
                .connect_timeout(Duration::from_secs(10))
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path: PathBuf = path.clone();
                    async move {
                        let stream = tokio::net::UnixStream::connect(path).await?;
                        Ok::<_, std::io::Error>(TokioIo::new(stream))
                    }
                }))
                .await
        })?;
        Ok(Self {
            rt,
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        })
    }

    fn call<T>(
        &self,
        fut: impl Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> Result<T, Status> {
        self.rt.block_on(fut).map(tonic::Response::into_inner)
    }

    /// Version: the runtime's name and CRI API version.
    pub fn version(&self) -> VersionResponse {
        self.try_version().unwrap_or_else(|s| fail("Version", s))
    }

    /// [`Cri::version`], returning the status on an error.
    pub fn try_version(&self) -> Result<VersionResponse, Status> {
        let mut client = self.runtime.clone();
        let req = VersionRequest {
            version: "v1".into(),
        };
        self.call(client.version(req))
    }

    /// Whether the CRI knows image `reference` (in containerd namespace `k8s.io`).
    pub fn image_present(&self, reference: &str) -> bool {
        let mut client = self.images.clone();
        let req = ImageStatusRequest {
            image: Some(image_spec(reference)),
            verbose: false,
        };
        let status = self
            .call(client.image_status(req))
            .unwrap_or_else(|s| fail("ImageStatus", s));
        status.image.is_some()
    }

    /// RunPodSandbox with runtime `handler` ("" for the default); the pod's id.
    pub fn run_pod_sandbox(&self, config: &PodSandboxConfig, handler: &str) -> String {
        self.try_run_pod_sandbox(config, handler)
            .unwrap_or_else(|s| fail("RunPodSandbox", s))
    }

    /// [`Cri::run_pod_sandbox`], returning the status on an error.
    pub fn try_run_pod_sandbox(
        &self,
        config: &PodSandboxConfig,
        handler: &str,
    ) -> Result<String, Status> {
        let mut client = self.runtime.clone();
        let req = RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.into(),
        };
        Ok(self.call(client.run_pod_sandbox(req))?.pod_sandbox_id)
    }

    /// CreateContainer in pod `pod_id` (made from `sandbox`); the container's id.
    pub fn create_container(
        &self,
        pod_id: &str,
        config: &ContainerConfig,
        sandbox: &PodSandboxConfig,
    ) -> String {
        self.try_create_container(pod_id, config, sandbox)
            .unwrap_or_else(|s| fail("CreateContainer", s))
    }

    /// [`Cri::create_container`], returning the status on an error.
    pub fn try_create_container(
        &self,
        pod_id: &str,
        config: &ContainerConfig,
        sandbox: &PodSandboxConfig,
    ) -> Result<String, Status> {
        let mut client = self.runtime.clone();
        let req = CreateContainerRequest {
            pod_sandbox_id: pod_id.into(),
            config: Some(config.clone()),
            sandbox_config: Some(sandbox.clone()),
        };
        Ok(self.call(client.create_container(req))?.container_id)
    }

    /// StartContainer.
    pub fn start_container(&self, id: &str) {
        self.try_start_container(id)
            .unwrap_or_else(|s| fail("StartContainer", s))
    }

    /// [`Cri::start_container`], returning the status on an error.
    pub fn try_start_container(&self, id: &str) -> Result<(), Status> {
        let mut client = self.runtime.clone();
        let req = StartContainerRequest {
            container_id: id.into(),
        };
        self.call(client.start_container(req)).map(drop)
    }

    /// ExecSync of `cmd` in container `id`, killed after `timeout_secs` (0: none).
    pub fn exec_sync(&self, id: &str, cmd: &[&str], timeout_secs: i64) -> ExecSyncResponse {
        self.try_exec_sync(id, cmd, timeout_secs)
            .unwrap_or_else(|s| fail("ExecSync", s))
    }

    /// [`Cri::exec_sync`], returning the status on an error.
    pub fn try_exec_sync(
        &self,
        id: &str,
        cmd: &[&str],
        timeout_secs: i64,
    ) -> Result<ExecSyncResponse, Status> {
        let mut client = self.runtime.clone();
        let req = ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|arg| arg.to_string()).collect(),
            timeout: timeout_secs,
        };
        self.call(client.exec_sync(req))
    }

    /// ContainerStats of container `id`.
    pub fn container_stats(&self, id: &str) -> ContainerStats {
        let mut client = self.runtime.clone();
        let req = ContainerStatsRequest {
            container_id: id.into(),
        };
        let response = self
            .call(client.container_stats(req))
            .unwrap_or_else(|s| fail("ContainerStats", s));
        response
            .stats
            .unwrap_or_else(|| panic!("ContainerStats of {id}: no stats in the response"))
    }

    /// UpdateContainerResources of container `id` to `resources`.
    pub fn update_container_resources(&self, id: &str, resources: &LinuxContainerResources) {
        let mut client = self.runtime.clone();
        let req = UpdateContainerResourcesRequest {
            container_id: id.into(),
            linux: Some(resources.clone()),
            ..Default::default()
        };
        self.call(client.update_container_resources(req))
            .unwrap_or_else(|s| fail("UpdateContainerResources", s));
    }

    /// ContainerStatus of container `id`.
    pub fn container_status(&self, id: &str) -> ContainerStatus {
        let mut client = self.runtime.clone();
        let req = ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        };
        let response = self
            .call(client.container_status(req))
            .unwrap_or_else(|s| fail("ContainerStatus", s));
        response
            .status
            .unwrap_or_else(|| panic!("ContainerStatus of {id}: no status in the response"))
    }

    /// StopContainer, giving it `timeout_secs` after SIGTERM.
    pub fn stop_container(&self, id: &str, timeout_secs: i64) {
        let mut client = self.runtime.clone();
        let req = StopContainerRequest {
            container_id: id.into(),
            timeout: timeout_secs,
        };
        self.call(client.stop_container(req))
            .unwrap_or_else(|s| fail("StopContainer", s));
    }

    /// RemoveContainer.
    pub fn remove_container(&self, id: &str) {
        let mut client = self.runtime.clone();
        let req = RemoveContainerRequest {
            container_id: id.into(),
        };
        self.call(client.remove_container(req))
            .unwrap_or_else(|s| fail("RemoveContainer", s));
    }

    /// PodSandboxStatus of pod `id`, with the verbose info map.
    pub fn pod_sandbox_status(&self, id: &str) -> PodSandboxStatusResponse {
        let mut client = self.runtime.clone();
        let req = PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: true,
        };
        self.call(client.pod_sandbox_status(req))
            .unwrap_or_else(|s| fail("PodSandboxStatus", s))
    }

    /// StopPodSandbox: stops every container of the pod and the pod.
    pub fn stop_pod_sandbox(&self, id: &str) {
        let mut client = self.runtime.clone();
        let req = StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        self.call(client.stop_pod_sandbox(req))
            .unwrap_or_else(|s| fail("StopPodSandbox", s));
    }

    /// RemovePodSandbox: removes the pod and its containers.
    pub fn remove_pod_sandbox(&self, id: &str) {
        let mut client = self.runtime.clone();
        let req = RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        self.call(client.remove_pod_sandbox(req))
            .unwrap_or_else(|s| fail("RemovePodSandbox", s));
    }

    /// Every pod the CRI knows, or only pod `id`.
    pub fn list_pod_sandboxes(&self, id: Option<&str>) -> Vec<PodSandbox> {
        let mut client = self.runtime.clone();
        let filter = id.map(|id| PodSandboxFilter {
            id: id.into(),
            ..Default::default()
        });
        let response = self
            .call(client.list_pod_sandbox(ListPodSandboxRequest { filter }))
            .unwrap_or_else(|s| fail("ListPodSandbox", s));
        response.items
    }

    /// Every container the CRI knows, or only those of pod `pod_id`.
    pub fn list_containers(&self, pod_id: Option<&str>) -> Vec<Container> {
        let mut client = self.runtime.clone();
        let filter = pod_id.map(|pod| ContainerFilter {
            pod_sandbox_id: pod.into(),
            ..Default::default()
        });
        let response = self
            .call(client.list_containers(ListContainersRequest { filter }))
            .unwrap_or_else(|s| fail("ListContainers", s));
        response.containers
    }
}

fn fail<T>(call: &str, status: Status) -> T {
    panic!(
        "CRI {call} failed: {:?}: {}",
        status.code(),
        status.message()
    )
}

/// An image reference as the CRI takes it.
pub fn image_spec(reference: &str) -> ImageSpec {
    ImageSpec {
        image: reference.into(),
        ..Default::default()
    }
}

/// A pod config named `name` (metadata uid and namespace derived from it), with
/// a hostname and no log directory.
pub fn pod_config(name: &str) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "runv-tests".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        linux: Some(LinuxPodSandboxConfig::default()),
        ..Default::default()
    }
}

/// [`pod_config`] with `annotations` (e.g. `io.pouch.runv.*` overrides).
pub fn pod_config_annotated(name: &str, annotations: &[(&str, &str)]) -> PodSandboxConfig {
    let mut config = pod_config(name);
    config.annotations = string_map(annotations);
    config
}

/// A container config named `name` running `command` in `image`.
pub fn container_config(name: &str, image: &str, command: &[&str]) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(image_spec(image)),
        command: command.iter().map(|arg| arg.to_string()).collect(),
        ..Default::default()
    }
}

/// Environment entries for [`ContainerConfig::envs`].
pub fn envs(pairs: &[(&str, &str)]) -> Vec<KeyValue> {
    pairs
        .iter()
        .map(|(key, value)| KeyValue {
            key: key.to_string(),
            value: value.to_string(),
        })
        .collect()
}

fn string_map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect()
}
