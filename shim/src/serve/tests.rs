use super::*;
use containerd_shim::protos::api::{ConnectRequest, ConnectResponse};
use containerd_shim::protos::protobuf::Message;
use containerd_shim::TtrpcContext;
use ttrpc::{Code, Request};

/// Unit-test double of the task service: answers Connect with a fixed pid and
/// the task id as its version, everything else with the trait's Unimplemented.
struct Connectable;

impl Task for Connectable {
    fn connect(&self, _: &TtrpcContext, req: ConnectRequest) -> ttrpc::Result<ConnectResponse> {
        Ok(ConnectResponse {
            shim_pid: 4242,
            version: req.id,
            ..Default::default()
        })
    }
}

/// Calls `service`'s Connect for task `id`.
fn connect(client: &ttrpc::Client, service: &str, id: &str) -> ttrpc::Result<ttrpc::Response> {
    let request = ConnectRequest {
        id: id.to_string(),
        ..Default::default()
    };
    client.request(Request {
        service: service.to_string(),
        method: "Connect".to_string(),
        payload: request.write_to_bytes().unwrap(),
        timeout_nano: Duration::from_secs(10).as_nanos() as i64,
        ..Default::default()
    })
}

#[test]
fn every_task_v2_method_is_also_served_as_v3() {
    let methods = task_methods(Arc::new(Connectable));
    let v2: Vec<&str> = methods
        .keys()
        .filter_map(|name| name.strip_prefix(TASK_V2_PREFIX))
        .collect();
    assert!(v2.contains(&"Create") && v2.contains(&"Wait"), "{v2:?}");
    for method in &v2 {
        assert!(
            methods.contains_key(&format!("{TASK_V3_PREFIX}{method}")),
            "{method} not served as task v3"
        );
    }
    assert_eq!(methods.len(), 2 * v2.len(), "{:?}", methods.keys());
}

#[test]
fn one_service_answers_task_v2_and_v3_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let address = format!("unix://{}", dir.path().join("s").display());
    let listener = bind(&address).unwrap().expect("a fresh socket binds");
    let mut server = ttrpc::Server::new()
        .add_listener(listener.into_raw_fd())
        .unwrap()
        .register_service(task_methods(Arc::new(Connectable)));
    server.start().unwrap();
    let client = ttrpc::Client::connect(&address).unwrap();

    for (service, id) in [
        ("containerd.task.v2.Task", "two"),
        ("containerd.task.v3.Task", "three"),
    ] {
        let response = connect(&client, service, id).unwrap();
        assert_eq!(
            response.status().code(),
            Code::OK,
            "{service}: {response:?}"
        );
        let answer = ConnectResponse::parse_from_bytes(&response.payload).unwrap();
        assert_eq!((answer.shim_pid, answer.version.as_str()), (4242, id));
    }
    let unknown = connect(&client, "containerd.task.v4.Task", "four");
    assert!(
        matches!(&unknown, Err(ttrpc::Error::RpcStatus(status)) if status.message.contains("does not exist")),
        "{unknown:?}"
    );
    drop(client);
    server.shutdown();
}

#[test]
fn a_socket_a_live_shim_serves_is_left_to_it_and_a_dead_ones_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let address = format!("unix://{}", path.display());
    let live = UnixListener::bind(&path).unwrap();
    assert!(
        bind(&address).unwrap().is_none(),
        "a second server for a live shim's socket"
    );

    drop(live); // the socket file stays; nothing listens on it
    assert!(
        bind(&address).unwrap().is_some(),
        "a dead shim's socket is replaced"
    );
}
