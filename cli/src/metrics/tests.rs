use super::*;
use crate::test_utils::{serve_vmm, spawn_vmm_stand_in, start_phases};

fn fixture() -> Vec<PodSample> {
    vec![
        PodSample {
            id: "pod-a".into(),
            vmm: Some(VmmSample {
                exits: BTreeMap::from([("hlt".into(), 7), ("io".into(), 1200)]),
                rss_bytes: 150 << 20,
                guest_memory_bytes: 256 << 20,
                returned_memory_bytes: 200 << 20,
            }),
            process: Some(ProcessSample {
                cpu_seconds: 1.5,
                threads: 6,
                open_fds: 31,
            }),
            phases: Some(start_phases()),
            errors: Vec::new(),
        },
        PodSample {
            id: "pod-b".into(),
            errors: vec!["connect: refused".into()],
            ..PodSample::default()
        },
    ]
}

#[test]
fn encodes_each_pods_metrics_and_skips_a_silent_vmm() {
    let mut collector = Collector::new(Path::new("/nonexistent"));
    let text = collector.encode(&fixture()).unwrap();
    for line in [
        "runv_pods 2",
        "# HELP runv_vm_exits_total KVM exits of the pod's VM by exit reason, over all vCPUs.",
        "# TYPE runv_vm_exits_total counter",
        "runv_vm_exits_total{pod=\"pod-a\",reason=\"io\"} 1200",
        "runv_vm_exits_total{pod=\"pod-a\",reason=\"hlt\"} 7",
        "# TYPE runv_vmm_rss_bytes gauge",
        "runv_vmm_rss_bytes{pod=\"pod-a\"} 157286400",
        "runv_guest_memory_bytes{pod=\"pod-a\"} 268435456",
        "# TYPE runv_guest_memory_returned_bytes_total counter",
        "runv_guest_memory_returned_bytes_total{pod=\"pod-a\"} 209715200",
        "# TYPE runv_vmm_cpu_seconds_total counter",
        "runv_vmm_cpu_seconds_total{pod=\"pod-a\"} 1.5",
        "runv_vmm_threads{pod=\"pod-a\"} 6",
        "runv_vmm_open_fds{pod=\"pod-a\"} 31",
        "# TYPE runv_pod_start_phase_seconds histogram",
        "runv_pod_start_phase_seconds_count{phase=\"guest_boot\"} 1",
        "runv_pod_start_phase_seconds_sum{phase=\"guest_boot\"} 0.3",
        "runv_pod_start_phase_seconds_bucket{phase=\"guest_boot\",le=\"0.512\"} 1",
        "runv_pod_start_phase_seconds_bucket{phase=\"guest_boot\",le=\"0.256\"} 0",
        "runv_scrape_errors_total{pod=\"pod-a\"} 0",
        "runv_scrape_errors_total{pod=\"pod-b\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "no line {line} in\n{text}");
    }
    assert!(
        !text.contains("runv_vmm_rss_bytes{pod=\"pod-b\"}"),
        "{text}"
    );

    // A second scrape: the timeline is not observed again, errors add up.
    let text = collector.encode(&fixture()).unwrap();
    assert!(text.contains("runv_pod_start_phase_seconds_count{phase=\"vmm_setup\"} 1\n"));
    assert!(text.contains("runv_scrape_errors_total{pod=\"pod-b\"} 2\n"));
    // Pod b gone: its counter goes too.
    let text = collector.encode(&fixture()[..1]).unwrap();
    assert!(!text.contains("pod-b"), "{text}");
}

#[test]
fn with_no_pods_the_count_and_histograms_are_still_there() {
    let run = tempfile::tempdir().unwrap();
    let text = Collector::new(run.path()).scrape().unwrap();
    assert!(
        text.contains("# TYPE runv_pods gauge\nrunv_pods 0\n"),
        "{text}"
    );
    assert!(text.contains("# TYPE runv_pod_start_phase_seconds histogram\n"));
    assert!(text.contains("runv_pod_start_phase_seconds_count{phase=\"agent_ready\"} 0\n"));
    // Families without a sample are left out, as the Go client does.
    assert!(!text.contains("runv_vmm_rss_bytes"), "{text}");
}

#[test]
fn a_pod_without_a_vmm_is_counted_not_fatal() {
    let run = tempfile::tempdir().unwrap();
    let dir = SandboxDir::under(run.path(), "pod");
    std::fs::create_dir(dir.path()).unwrap();
    let text = Collector::new(run.path()).scrape().unwrap();
    // No vmm.pid, no API socket: two errors; no phases yet is none.
    assert!(
        text.contains("runv_scrape_errors_total{pod=\"pod\"} 2\n"),
        "{text}"
    );
}

#[test]
fn scrapes_a_pod_from_its_vmm_its_process_and_its_phases_file() {
    let root = tempfile::tempdir().unwrap();
    let dir = SandboxDir::under(root.path(), "live");
    let server = serve_vmm(&dir);
    let mut vmm = spawn_vmm_stand_in(&dir);
    start_phases()
        .write_atomic(&dir.start_phases_file())
        .unwrap();

    let text = Collector::new(root.path()).scrape();
    let _ = vmm.kill();
    let _ = vmm.wait();
    server.shutdown();
    let text = text.unwrap();
    for line in [
        "runv_vm_exits_total{pod=\"live\",reason=\"mmio\"} 42",
        "runv_vmm_rss_bytes{pod=\"live\"} 134217728",
        "runv_guest_memory_bytes{pod=\"live\"} 268435456",
        "runv_guest_memory_returned_bytes_total{pod=\"live\"} 67108864",
        "runv_vmm_threads{pod=\"live\"} 1",
        "runv_pod_start_phase_seconds_count{phase=\"guest_boot\"} 1",
        "runv_scrape_errors_total{pod=\"live\"} 0",
    ] {
        assert!(text.lines().any(|l| l == line), "no line {line} in\n{text}");
    }
    assert!(text.contains("runv_vmm_open_fds{pod=\"live\"} "), "{text}");
    assert!(
        text.contains("runv_vmm_cpu_seconds_total{pod=\"live\"} "),
        "{text}"
    );
}
