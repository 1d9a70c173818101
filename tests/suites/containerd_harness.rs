//! The tier-4 harness checked against runc, containerd's default runtime: the
//! fixture's containerd starts on its tmpfs root, `ctr run` works on the imported
//! test image, and a CRI pod goes through its whole life, with nothing left behind.
//! One containerd start serves both checks (it is the expensive part).

use std::time::Instant;

use runv_tests::containerd::{assert_clean, Containerd, CRI_NAMESPACE, TEST_IMAGE};
use runv_tests::cri::{container_config, envs, pod_config};

/// Notes how long each step took (shown with --nocapture or on failure).
fn step(started: &Instant, what: &str) {
    eprintln!(
        "harness: {what} at {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn runc_through_ctr_and_cri() {
    let started = Instant::now();
    let containerd = Containerd::start();
    step(&started, "containerd up, images imported");

    // ctr: run, output; the container is removed (--rm).
    let out = containerd.ctr(&["run", "--rm", TEST_IMAGE, "h1", "echo", "hi"]);
    assert_eq!(out, "hi\n");
    assert_eq!(containerd.ctr(&["containers", "ls", "-q"]), "");
    step(&started, "ctr run");

    // CRI: a pod with one container, exec, stats, stop, remove.
    let cri = containerd.cri();
    let pod = pod_config("harness");
    let pod_id = cri.run_pod_sandbox(&pod, "");
    let mut config = container_config("c1", TEST_IMAGE, &["sleep", "1000"]);
    config.envs = envs(&[("HARNESS", "yes")]);
    let cid = cri.create_container(&pod_id, &config, &pod);
    cri.start_container(&cid);
    step(&started, "CRI pod and container started");
    // The pod's eth0 comes from the CNI bridge of the fixture's config.
    let script = "echo $HARNESS; grep -o eth0 /proc/net/dev; echo err >&2; exit 3";
    let exec = cri.exec_sync(&cid, &["sh", "-c", script], 30);
    let got = (
        exec.stdout.as_slice(),
        exec.stderr.as_slice(),
        exec.exit_code,
    );
    assert_eq!(got, (&b"yes\neth0\n"[..], &b"err\n"[..], 3), "{exec:?}");
    let stats = cri.container_stats(&cid);
    assert!(stats.memory.is_some() && stats.cpu.is_some(), "{stats:?}");
    assert_eq!(cri.list_containers(Some(&pod_id)).len(), 1);
    cri.stop_pod_sandbox(&pod_id);
    cri.remove_pod_sandbox(&pod_id);
    assert!(cri.list_pod_sandboxes(None).is_empty());
    assert!(containerd.tasks(CRI_NAMESPACE).is_empty());

    step(&started, "CRI pod removed");
    containerd.assert_clean();
    drop(containerd);
    assert_clean();
    step(&started, "containerd stopped");
}
