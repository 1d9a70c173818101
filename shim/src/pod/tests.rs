use super::*;

#[test]
fn the_pod_answers_while_a_create_boots_its_vm() {
    let pods = Arc::new(PodTable::default());
    let (booting, running) = pods
        .reserve("c1", "/bundles/c1", &PodRole::Standalone)
        .unwrap();
    assert!(running.is_none(), "this create boots the VM");
    // The create now boots without the pod lock: another thread's RPCs on
    // the pod answer at once.
    let other = Arc::clone(&pods);
    let answers = std::thread::spawn(move || {
        let state = match other.snapshot("c1", "").unwrap() {
            Snapshot::Creating { bundle } => bundle,
            Snapshot::Task { .. } => panic!("c1 is not created yet"),
        };
        let delete = other.remove("c1", "").err();
        let twice = other.reserve("c1", "/b", &PodRole::Standalone).err();
        let second_pod = other.reserve("c2", "/b", &PodRole::Standalone).err();
        let member = PodRole::Container {
            sandbox_id: "c1".into(),
        };
        let joins = other.reserve("c3", "/b", &member).err();
        (state, delete, twice, second_pod, joins)
    });
    let (state, delete, twice, second_pod, joins) = answers.join().unwrap();
    assert_eq!(state, "/bundles/c1");
    assert!(
        matches!(delete, Some(TaskError::FailedPrecondition(m)) if m.contains("being created"))
    );
    assert!(matches!(twice, Some(TaskError::AlreadyExists(_))));
    assert!(matches!(second_pod, Some(TaskError::FailedPrecondition(m)) if m.contains("booting")));
    assert!(matches!(joins, Some(TaskError::FailedPrecondition(m)) if m.contains("booting")));
    // A create that fails drops its reservation: the id and the VM are free.
    drop(booting);
    assert!(matches!(
        pods.snapshot("c1", ""),
        Err(TaskError::NotFound { .. })
    ));
    let (_again, running) = pods.reserve("c2", "/b", &PodRole::Standalone).unwrap();
    assert!(running.is_none());
}

#[test]
fn shutdown_waits_for_every_task_and_create() {
    let pods = PodTable::default();
    let reservation = pods.reserve("c1", "/b", &PodRole::Standalone).unwrap();
    assert_eq!(pods.take_if_idle().err(), Some(1));
    drop(reservation);
    assert!(matches!(pods.take_if_idle(), Ok(None)));
}
