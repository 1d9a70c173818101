use super::*;

fn full() -> VmConfig {
    VmConfig {
        kernel: "/k".into(),
        initrd: Some("/i".into()),
        cpus: 2,
        memory_mib: 512,
        cmdline: Some("quiet".into()),
        console: ConsoleConfig::File("/c.log".into()),
        api_sock: Some("/a.sock".into()),
        rng: true,
        free_page_reporting: true,
        disks: vec![DiskConfig {
            path: "/img".into(),
            readonly: true,
            id: Some("root".into()),
        }],
        vsock: Some(VsockConfig {
            cid: 3,
            uds: "/v.sock".into(),
        }),
        fs: vec![FsConfig {
            cache: FsCache::Never,
            privileged: true,
            ..FsConfig::new("runv", Path::new("/srv"))
        }],
        net: vec![NetConfig {
            fd: Some(7),
            mac: Some("02:00:0a:d5:00:02".into()),
            ..NetConfig::default()
        }],
        seccomp: SeccompMode::Log,
        snapshot_dir: Some("/snapshots".into()),
        restore_from: Some("/template".into()),
    }
}

#[test]
fn a_config_survives_json_and_absent_fields_take_defaults() {
    let config = full();
    config.validate().unwrap();
    let json = serde_json::to_string(&config).unwrap();
    assert_eq!(serde_json::from_str::<VmConfig>(&json).unwrap(), config);

    let small: VmConfig = serde_json::from_str(r#"{"kernel": "/k"}"#).unwrap();
    assert_eq!(
        small,
        VmConfig {
            kernel: "/k".into(),
            ..VmConfig::default()
        }
    );
    assert_eq!((small.cpus, small.memory_mib), (1, 128));
    assert_eq!(
        (small.console, small.seccomp),
        (ConsoleConfig::Off, SeccompMode::Enforce)
    );
    let share: FsConfig = serde_json::from_str(r#"{"tag": "t", "path": "/srv"}"#).unwrap();
    assert_eq!(share, FsConfig::new("t", Path::new("/srv")));
}

#[test]
fn unknown_fields_and_bad_enums_are_refused_by_name() {
    let err = |json: &str| {
        serde_json::from_str::<VmConfig>(json)
            .unwrap_err()
            .to_string()
    };
    assert!(err(r#"{"kernel": "k", "vcpus": 2}"#).contains("unknown field `vcpus`"));
    assert!(err(r#"{"console": ""}"#).contains("--console must be"));
    assert!(err(r#"{"seccomp": "lax"}"#).contains("unknown variant `lax`"));
    assert!(err(r#"{"fs": [{"tag": "t", "path": "/", "cache": "some"}]}"#).contains("`some`"));
    assert!(err(r#"{"net": [{"fd": 3, "queues": 2}]}"#).contains("unknown field `queues`"));
}

#[test]
fn each_bad_field_is_named_with_its_value() {
    let with = |change: fn(&mut VmConfig)| {
        let mut config = full();
        change(&mut config);
        config.validate().unwrap_err()
    };
    use VmConfigError as E;
    assert_eq!(with(|c| c.kernel = "".into()), E::NoKernel);
    assert_eq!(with(|c| c.cpus = 0), E::Cpus(0));
    assert_eq!(with(|c| c.cpus = 33), E::Cpus(33));
    assert_eq!(with(|c| c.memory_mib = 16), E::Memory(16));
    assert_eq!(
        with(|c| c.disks[0].id = Some("x".repeat(21))),
        E::DiskId("x".repeat(21))
    );
    assert_eq!(with(|c| c.disks[0].path = "".into()), E::DiskPath);
    let vsock = |cid| {
        let mut config = full();
        config.vsock = Some(VsockConfig {
            cid,
            uds: "/v".into(),
        });
        config.validate().unwrap_err()
    };
    assert_eq!(vsock(2), E::VsockCid(2));
    assert_eq!(vsock(u64::from(u32::MAX)), E::VsockCid(u64::from(u32::MAX)));
    assert_eq!(with(|c| c.fs[0].tag = "".into()), E::FsTag("".into()));
    assert_eq!(
        with(|c| c.fs[0].tag = "x".repeat(37)),
        E::FsTag("x".repeat(37))
    );
    assert_eq!(
        with(|c| c.fs.push(c.fs[0].clone())),
        E::FsTagTwice("runv".into())
    );
    assert_eq!(
        with(|c| c.fs[0].max_fds = 63),
        E::FsMaxFds {
            tag: "runv".into(),
            max_fds: 63
        }
    );
    assert_eq!(with(|c| c.net[0].tap = Some("t".into())), E::NetTapAndFd);
    assert_eq!(
        with(|c| {
            c.net[0].fd = None;
            c.snapshot_dir = None;
        }),
        E::NetNoTap
    );
    assert_eq!(with(|c| c.net[0].fd = None), E::NetNoTap, "restored");
    let mut template = full();
    template.net[0].fd = None;
    template.restore_from = None;
    assert!(template.net[0].is_detached());
    assert_eq!(template.validate(), Ok(()), "a VM template's card");
    assert_eq!(with(|c| c.net[0].fd = Some(2)), E::NetFd(2));
    let tap = |name: &str| {
        let mut config = full();
        config.net[0] = NetConfig {
            tap: Some(name.into()),
            ..NetConfig::default()
        };
        config.validate().unwrap_err()
    };
    assert_eq!(tap(""), E::NetTapName("".into()));
    assert_eq!(
        tap("abcdefghijklmnop"),
        E::NetTapName("abcdefghijklmnop".into())
    );
    let err = with(|c| c.net[0].mac = Some("01:00:00:00:00:01".into()));
    assert!(matches!(err, E::NetMac(_)), "{err}");
    assert!(err.to_string().contains("multicast"), "{err}");
    assert_eq!(
        E::Cpus(0).to_string(),
        "--cpus must be between 1 and 32, not 0"
    );
    assert_eq!(
        E::FsMaxFds {
            tag: "t".into(),
            max_fds: 1
        }
        .to_string(),
        "--fs tag=t: max-fds must be between 64 and 1048576, not 1"
    );
}

#[test]
fn console_and_seccomp_parse_by_name() {
    assert_eq!(
        ConsoleConfig::try_from("stdout".to_owned()),
        Ok(ConsoleConfig::Stdout)
    );
    assert_eq!(
        ConsoleConfig::try_from("/c".to_owned()),
        Ok(ConsoleConfig::File("/c".into()))
    );
    assert_eq!("log".parse::<SeccompMode>(), Ok(SeccompMode::Log));
    assert_eq!(
        "lax".parse::<SeccompMode>(),
        Err(VmConfigError::Seccomp("lax".into()))
    );
}
