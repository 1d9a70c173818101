use super::*;

fn snapshot_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("runv-snapshot-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The error of a read that must fail.
fn refused(result: Result<VmSnapshot, SnapshotError>) -> SnapshotError {
    match result {
        Ok(_) => panic!("the snapshot was accepted"),
        Err(err) => err,
    }
}

fn two_vcpus(boot: &str) -> VmSnapshot {
    VmSnapshot::new(
        128,
        boot.to_owned(),
        VmState::default(),
        vec![VcpuState::default(), VcpuState::default()],
        SerialSnapshot::default(),
        Vec::new(),
    )
}

#[test]
fn a_state_file_reads_back_for_its_own_shape_and_boot_only() {
    let dir = snapshot_dir("shape");
    two_vcpus("kernel k").write(&dir).unwrap();
    assert!(!dir.join(format!("{STATE_FILE}.tmp")).exists());
    let back = VmSnapshot::read(&dir, 2, 128, "kernel k").unwrap();
    assert_eq!((back.vcpus.len(), back.memory_mib), (2, 128));

    let err = refused(VmSnapshot::read(&dir, 1, 128, "kernel k"));
    assert!(err.to_string().contains("made with vCPUs 2"), "{err}");
    let err = refused(VmSnapshot::read(&dir, 2, 256, "kernel k"));
    assert!(err.to_string().contains("MiB of memory 128"), "{err}");
    let err = refused(VmSnapshot::read(&dir, 2, 128, "kernel other"));
    assert!(matches!(err, SnapshotError::OtherBoot { .. }), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn another_version_a_huge_or_broken_state_file_is_refused() {
    let dir = snapshot_dir("format");
    let path = dir.join(STATE_FILE);
    let mut other = serde_json::to_value(two_vcpus("b")).unwrap();
    other["version"] = 99.into();
    std::fs::write(&path, other.to_string()).unwrap();
    let err = refused(VmSnapshot::read(&dir, 2, 128, "b"));
    assert!(
        matches!(err, SnapshotError::Version { found: 99, .. }),
        "{err}"
    );

    std::fs::write(&path, b"{\"version\": 1").unwrap();
    let err = refused(VmSnapshot::read(&dir, 2, 128, "b"));
    assert!(matches!(err, SnapshotError::Format { .. }), "{err}");

    std::fs::write(&path, vec![b' '; MAX_STATE_BYTES as usize + 1]).unwrap();
    let err = refused(VmSnapshot::read(&dir, 2, 128, "b"));
    assert!(matches!(err, SnapshotError::TooLarge { .. }), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_memory_file_of_another_size_is_refused() {
    let dir = snapshot_dir("memory");
    let memory = create_memory(&dir).unwrap();
    memory.set_len(64 << 20).unwrap();
    assert!(open_memory(&dir, 64).is_ok());
    let err = open_memory(&dir, 128).unwrap_err();
    assert!(
        matches!(err, SnapshotError::MemorySize { found, expected, .. }
            if found == 64 << 20 && expected == 128 << 20),
        "{err}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_memory_file_is_never_created_through_a_symlink() {
    let dir = snapshot_dir("symlink");
    let target = dir.join("elsewhere");
    std::fs::write(&target, b"keep").unwrap();
    std::os::unix::fs::symlink(&target, dir.join(MEMORY_FILE)).unwrap();
    assert!(create_memory(&dir).is_err());
    assert_eq!(std::fs::read(&target).unwrap(), b"keep");
    std::fs::remove_dir_all(dir).unwrap();
}
