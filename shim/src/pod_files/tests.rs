use super::*;
use serde_json::json;
use std::fs;

#[test]
fn files_come_from_the_bind_mounts_on_etc() {
    let dir = tempfile::tempdir().expect("tempdir");
    let resolv = dir.path().join("resolv.conf");
    let hosts = dir.path().join("hosts");
    let other = dir.path().join("other");
    fs::write(
        &resolv,
        "# from the pod\nnameserver 192.0.2.53\n\nsearch example.test\n",
    )
    .expect("write");
    fs::write(&hosts, "127.0.0.1 localhost\n192.0.2.9 db\n").expect("write");
    fs::write(&other, "nameserver 203.0.113.1\n").expect("write");
    let spec = json!({
        "hostname": "pod-a",
        "mounts": [
            {"destination": "/etc/resolv.conf", "type": "bind", "source": other},
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/etc/resolv.conf", "type": "bind", "source": resolv,
             "options": ["rbind", "ro"]},
            {"destination": "/etc/hosts/", "source": hosts, "options": ["bind"]}
        ]
    });
    let files = PodFiles::of(&spec).expect("pod files");
    assert_eq!(
        files,
        PodFiles {
            hostname: "pod-a".into(),
            hosts: "127.0.0.1 localhost\n192.0.2.9 db\n".into(),
            dns: vec!["nameserver 192.0.2.53".into(), "search example.test".into()],
            sysctls: HashMap::new(),
        }
    );
}

#[test]
fn sysctls_come_from_the_spec_and_must_be_strings() {
    let spec =
        json!({"linux": {"sysctl": {"kernel.shm_rmid_forced": "1", "net.ipv4.ip_forward": "0"}}});
    let files = PodFiles::of(&spec).expect("pod files");
    assert_eq!(files.sysctls.len(), 2);
    assert_eq!(files.sysctls["kernel.shm_rmid_forced"], "1");
    let spec = json!({"linux": {"sysctl": {"net.ipv4.ip_forward": 1}}});
    let err = PodFiles::of(&spec).expect_err("a number").to_string();
    assert!(err.contains("net.ipv4.ip_forward"), "{err}");
}

#[test]
fn a_spec_without_them_gives_nothing() {
    let spec = json!({"mounts": [{"destination": "/etc/hosts", "type": "tmpfs", "source": "x"}]});
    assert_eq!(PodFiles::of(&spec).expect("pod files"), PodFiles::default());
    assert_eq!(
        PodFiles::of(&json!({})).expect("pod files"),
        PodFiles::default()
    );
}

#[test]
fn unreadable_or_odd_sources_are_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let big = dir.path().join("big");
    fs::write(&big, vec![b'#'; MAX_FILE_BYTES as usize + 1]).expect("write");
    let missing = dir.path().join("missing");
    for (source, expected) in [
        (missing.clone(), "No such file"),
        (dir.path().to_path_buf(), "not a regular file"),
        (big.clone(), "more than"),
    ] {
        let spec = json!({"mounts": [
            {"destination": "/etc/resolv.conf", "type": "bind", "source": source}
        ]});
        let err = PodFiles::of(&spec).expect_err("must fail").to_string();
        assert!(
            err.contains(&source.display().to_string()) && err.contains(expected),
            "{err}"
        );
    }
}
