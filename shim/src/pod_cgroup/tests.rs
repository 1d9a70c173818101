use super::*;

#[test]
fn cgroupfs_paths_are_taken_below_the_root() {
    assert_eq!(
        relative_path("/kubepods/besteffort/pod1/abc").unwrap(),
        PathBuf::from("kubepods/besteffort/pod1/abc")
    );
    assert_eq!(
        relative_path("default/c1").unwrap(),
        PathBuf::from("default/c1")
    );
}

#[test]
fn systemd_paths_expand_their_slices() {
    assert_eq!(
        relative_path("kubepods-besteffort-pod1.slice:cri-containerd:abc").unwrap(),
        PathBuf::from(
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/\
             cri-containerd-abc.scope"
        )
    );
    assert_eq!(
        relative_path(":runv:abc").unwrap(),
        PathBuf::from("system.slice/runv-abc.scope")
    );
}

#[test]
fn paths_that_could_leave_the_hierarchy_are_refused_by_name() {
    for bad in [
        "/a/../../etc",
        "/a/./b",
        "/",
        "",
        "..",
        "kubepods-.slice:p:n",
        "x.slice:p:../n",
        "a:b",
    ] {
        let err = relative_path(bad).unwrap_err().to_string();
        assert!(err.contains("linux.cgroupsPath"), "{bad}: {err}");
    }
    assert!(relative_path(&"a/".repeat(600)).is_err());
}

#[test]
fn v1_hierarchies_are_joined_once_each() {
    let root = tempfile::tempdir().unwrap();
    for name in ["memory", "cpu,cpuacct", "pids"] {
        fs::create_dir(root.path().join(name)).unwrap();
        fs::write(root.path().join(name).join("cgroup.procs"), "").unwrap();
    }
    std::os::unix::fs::symlink("cpu,cpuacct", root.path().join("cpu")).unwrap();
    std::os::unix::fs::symlink("cpu,cpuacct", root.path().join("cpuacct")).unwrap();
    let found = hierarchies(root.path());
    let names: Vec<_> = found
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap())
        .collect();
    assert_eq!(names, ["memory", "cpu", "pids"]);
}

#[test]
fn a_v2_host_has_one_hierarchy() {
    let root = tempfile::tempdir().unwrap();
    fs::write(root.path().join("cgroup.controllers"), "memory cpu").unwrap();
    assert_eq!(hierarchies(root.path()), [root.path().to_owned()]);
}
