use super::*;
use crate::mounts::MountAttrs;
use crate::paths::SharedPath;
use serde_json::json;

fn config() -> RunvConfig {
    RunvConfig {
        default_vcpus: 1,
        default_memory_mib: 256,
        overhead_memory_mib: 128,
        max_vcpus: 1,
        ..RunvConfig::default()
    }
}

#[test]
fn roles_follow_the_cri_annotations() {
    let ann = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    assert_eq!(PodRole::of(&ann(&[])).unwrap(), PodRole::Standalone);
    assert_eq!(
        PodRole::of(&ann(&[(CONTAINER_TYPE_ANNOTATION, "sandbox")])).unwrap(),
        PodRole::Sandbox
    );
    let member = ann(&[
        (CONTAINER_TYPE_ANNOTATION, "container"),
        (SANDBOX_ID_ANNOTATION, "pod1"),
    ]);
    assert_eq!(
        PodRole::of(&member).unwrap(),
        PodRole::Container {
            sandbox_id: "pod1".into()
        }
    );
    assert_eq!(sandbox_id("c1", &member), "pod1");
    assert_eq!(sandbox_id("c1", &ann(&[])), "c1");
    assert!(PodRole::of(&ann(&[(CONTAINER_TYPE_ANNOTATION, "container")])).is_err());
    assert!(PodRole::of(&ann(&[(CONTAINER_TYPE_ANNOTATION, "vm")])).is_err());
}

#[test]
fn vm_size_follows_the_limits() {
    let config = config();
    assert_eq!(
        VmSize::for_pod(&config, None),
        VmSize {
            vcpus: 1,
            memory_mib: 256
        }
    );
    let limited =
        json!({"memory": {"limit": 32 * MIB + 1}, "cpu": {"quota": 150000, "period": 100000}});
    let size = VmSize::for_pod(&config, Some(&limited));
    assert_eq!(size.memory_mib, 128 + 33);
    assert_eq!(size.vcpus, 1, "capped by max_vcpus");
    let huge = json!({"memory": {"limit": 1i64 << 50}});
    let size = VmSize::for_pod(&config, Some(&huge));
    assert_eq!(
        size.memory_mib, config.max_memory_mib,
        "capped by max_memory_mib"
    );
}

#[test]
fn the_oom_score_adjustment_is_bounded() {
    assert_eq!(oom_score_adj(&json!({})).unwrap(), None);
    let with = |adj: Value| json!({"process": {"oomScoreAdj": adj}});
    assert_eq!(oom_score_adj(&with(json!(-998))).unwrap(), Some(-998));
    assert_eq!(oom_score_adj(&with(json!(1000))).unwrap(), Some(1000));
    for bad in [json!(-1001), json!(1_i64 << 40), json!("5"), json!(1.5)] {
        let err = oom_score_adj(&with(bad)).unwrap_err().to_string();
        assert!(err.contains("process.oomScoreAdj"), "{err}");
    }
}

#[test]
fn the_pods_cgroup_is_taken_from_the_spec_and_checked() {
    let with = |path: Value| json!({"linux": {"cgroupsPath": path}});
    let placement = host_placement(&with(json!("/kubepods/pod1/abc"))).unwrap();
    assert_eq!(
        placement.cgroups_path.as_deref(),
        Some("/kubepods/pod1/abc")
    );
    assert_eq!(
        host_placement(&json!({})).unwrap(),
        HostPlacement::default()
    );
    assert_eq!(host_placement(&with(json!(""))).unwrap().cgroups_path, None);
    for bad in [json!("/a/../../etc"), json!(5)] {
        let err = host_placement(&with(bad)).unwrap_err().to_string();
        assert!(err.contains("linux.cgroupsPath"), "{err}");
    }
}

#[test]
fn a_join_of_the_pods_pid_namespace_becomes_the_guests_pod_one() {
    let rootfs = SharedPath::new("c1", "rootfs");
    let spec = json!({"linux": {"namespaces": [
        {"type": "pid", "path": "/proc/42/ns/pid"},
        {"type": "network", "path": "/var/run/netns/cni-1"},
        {"type": "ipc", "path": "/proc/42/ns/ipc"}
    ]}});
    let out = guest_spec(&spec, "c1", &rootfs).unwrap();
    assert!(out.sandbox_pidns);
    assert_eq!(out.spec["linux"]["namespaces"], json!([{"type": "pid"}]));
}

#[test]
fn guest_spec_moves_root_and_binds_into_the_share() {
    let rootfs = SharedPath::new("c1", "rootfs");
    let spec = json!({
        "root": {"path": "rootfs", "readonly": true},
        "hooks": {"prestart": [{"path": "/usr/bin/evil"}]},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/data", "type": "bind", "source": "/srv/data", "options": ["rbind", "ro"]},
            {"destination": "/etc/hosts", "source": "/var/lib/x/hosts", "options": ["bind"]}
        ],
        "linux": {
            "cgroupsPath": "kubepods-besteffort.slice:cri-containerd:c1",
            "namespaces": [
                {"type": "pid"},
                {"type": "network", "path": "/var/run/netns/cni-1"},
                {"type": "ipc", "path": "/proc/42/ns/ipc"},
                {"type": "mount"}
            ]
        }
    });
    let out = guest_spec(&spec, "c1", &rootfs).unwrap();
    assert_eq!(
        out.spec["root"],
        json!({"path": "/run/runv/shared/c1/rootfs", "readonly": true})
    );
    assert!(out.spec.get("hooks").is_none());
    assert_eq!(out.spec["mounts"][0]["source"], "proc");
    assert_eq!(
        out.spec["mounts"][1]["source"],
        "/run/runv/shared/c1/mounts/1"
    );
    assert_eq!(
        out.spec["mounts"][2]["source"],
        "/run/runv/shared/c1/mounts/2"
    );
    assert_eq!(out.binds.len(), 2);
    assert_eq!(out.binds[0].source, PathBuf::from("/srv/data"));
    assert!(out.binds[0].recursive);
    assert_eq!(
        out.binds[0].attrs,
        MountAttrs {
            readonly: true,
            ..MountAttrs::default()
        }
    );
    assert!(!out.binds[1].recursive);
    assert_eq!(out.binds[1].target.rel, PathBuf::from("c1/mounts/2"));
    assert_eq!(
        out.spec["linux"]["namespaces"],
        json!([{"type": "pid"}, {"type": "mount"}])
    );
    assert!(!out.sandbox_pidns, "a pid namespace of its own");
    assert_eq!(out.spec["linux"]["cgroupsPath"], "/runv/c1");
}

#[test]
fn the_pod_network_comes_from_the_network_namespace_entry() {
    let spec = json!({"linux": {"namespaces": [
        {"type": "pid"},
        {"type": "network", "path": "/var/run/netns/cni-1"}
    ]}});
    assert_eq!(
        pod_network(&spec).unwrap(),
        PodNetworkRequest::Namespace(PathBuf::from("/var/run/netns/cni-1"))
    );
    let spec = json!({"linux": {"namespaces": [{"type": "network"}]}});
    assert_eq!(pod_network(&spec).unwrap(), PodNetworkRequest::Isolated);
    let err = pod_network(&json!({"linux": {"namespaces": [{"type": "pid"}]}}))
        .unwrap_err()
        .to_string();
    assert!(err.contains("host's network"), "{err}");
    let spec = json!({"linux": {"namespaces": [{"type": "network", "path": "netns/x"}]}});
    assert!(pod_network(&spec)
        .unwrap_err()
        .to_string()
        .contains("netns/x"));
}

#[test]
fn host_namespaces_are_refused_by_name() {
    let with = |kinds: &[&str]| {
        let namespaces: Vec<Value> = kinds.iter().map(|k| json!({"type": k})).collect();
        json!({"linux": {"namespaces": namespaces}})
    };
    refuse_host_namespaces(&with(&["pid", "network", "ipc", "uts", "mount"])).unwrap();
    let err = refuse_host_namespaces(&with(&["network", "ipc", "mount"]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("host's pid namespace (hostPID"), "{err}");
    let err = refuse_host_namespaces(&with(&["pid", "network", "mount"]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("host's ipc namespace (hostIPC"), "{err}");
    let err = refuse_host_namespaces(&with(&["mount"]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("network, pid, ipc namespaces (hostNetwork, hostPID, hostIPC"),
        "{err}"
    );
    assert!(refuse_host_namespaces(&json!({})).is_err());
    let rootfs = SharedPath::new("c1", "rootfs");
    let err = guest_spec(&with(&["network", "ipc"]), "c1", &rootfs)
        .unwrap_err()
        .to_string();
    assert!(err.contains("hostPID"), "{err}");
}

#[test]
fn a_relative_bind_source_is_refused() {
    let rootfs = SharedPath::new("c1", "rootfs");
    let spec = json!({
        "mounts": [{"destination": "/d", "type": "bind", "source": "../../etc"}],
        "linux": {"namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}]}
    });
    let err = guest_spec(&spec, "c1", &rootfs).unwrap_err().to_string();
    assert!(err.contains("/d"), "{err}");
}

#[test]
fn a_spec_error_is_an_invalid_argument_with_its_text() {
    let err = PodRole::of(&HashMap::from([(
        CONTAINER_TYPE_ANNOTATION.to_string(),
        "vm".to_string(),
    )]))
    .unwrap_err();
    let text = err.to_string();
    match ttrpc::Error::from(crate::error::TaskError::from(err)) {
        ttrpc::Error::RpcStatus(status) => {
            assert_eq!(status.code(), ttrpc::Code::INVALID_ARGUMENT);
            assert_eq!(status.message(), text);
        }
        other => panic!("not a status: {other:?}"),
    }
}
