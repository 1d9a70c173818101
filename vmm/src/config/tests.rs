use super::*;
use crate::cli::{self, Command};
use std::io::Write;
use std::path::Path;

fn kernel_file(dir: &Path) -> PathBuf {
    let path = dir.join("vmlinux");
    std::fs::File::create(&path)
        .unwrap()
        .write_all(b"\x7fELF....")
        .unwrap();
    path
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("runv-vmm-config-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The `--config` value and flags of a command line.
fn command_line(list: &[&str]) -> (Option<String>, PartialConfig) {
    match cli::parse(list.iter().map(|s| s.to_string())).unwrap() {
        Command::Run { config, flags } => (config, *flags),
        other => panic!("not a run: {other:?}"),
    }
}

#[test]
fn flags_and_the_equivalent_json_give_the_same_config() {
    let (_, flags) = command_line(&[
        "--kernel=/k",
        "--initrd=/i",
        "--cpus=2",
        "--memory-mib=512",
        "--console=stdout",
        "--api-sock=/a.sock",
        "--vsock=cid=3,uds=/v.sock",
        "--fs=tag=runv,path=/srv,max-fds=65536",
        "--rng",
        "--free-page-reporting",
        "--seccomp=log",
        "--disk=path=/img,readonly,id=root",
        "--net=fd=7,mac=02:00:0a:d5:00:02",
        "--net=tap=runvtap0",
    ]);
    let json = r#"{
        "kernel": "/k", "initrd": "/i", "cpus": 2, "memory_mib": 512,
        "console": "stdout", "api_sock": "/a.sock",
        "vsock": {"cid": 3, "uds": "/v.sock"},
        "fs": [{"tag": "runv", "path": "/srv", "max_fds": 65536}],
        "rng": true, "free_page_reporting": true, "seccomp": "log",
        "disks": [{"path": "/img", "readonly": true, "id": "root"}],
        "net": [{"fd": 7, "mac": "02:00:0a:d5:00:02"}, {"tap": "runvtap0"}]
    }"#;
    let from_flags = flags.over(VmConfig::default());
    let from_json = parse_config_arg(json).unwrap();
    assert_eq!(from_flags, from_json);
    from_json.validate().unwrap();
    let (config, flags) = command_line(&["--config", json]);
    assert_eq!(
        flags.over(parse_config_arg(&config.unwrap()).unwrap()),
        from_json
    );
    let reencoded = serde_json::to_string(&from_json).unwrap();
    assert_eq!(parse_config_arg(&reencoded).unwrap(), from_json);
}

#[test]
fn flags_override_the_config_and_defaults_fill_in() {
    let dir = temp_dir("overlay");
    let json = format!(
        r#"{{"kernel": "{}", "cpus": 2, "memory_mib": 256, "console": "stdout"}}"#,
        kernel_file(&dir).display()
    );
    let file = dir.join("config.json");
    std::fs::write(&file, &json).unwrap();
    for arg in [json.as_str(), file.to_str().unwrap()] {
        let (config, flags) = command_line(&["--config", arg, "--cpus", "4"]);
        let config = load(config.as_deref(), flags).unwrap();
        assert_eq!((config.cpus, config.memory_mib), (4, 256));
        assert_eq!(config.console, ConsoleConfig::Stdout);
    }
    let err = load(
        Some(r#"{"kernel": "k", "vcpus": 2}"#),
        PartialConfig::default(),
    );
    assert!(matches!(err, Err(ConfigError::ParseJson(_))), "{err:?}");
    let err = load(Some("/nonexistent/config.json"), PartialConfig::default());
    assert!(matches!(err, Err(ConfigError::ReadFile { .. })), "{err:?}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bad_values_are_named() {
    let dir = temp_dir("bad");
    let kernel = Some(kernel_file(&dir));
    let with = |f: fn(&mut PartialConfig)| {
        let mut c = PartialConfig {
            kernel: kernel.clone(),
            ..Default::default()
        };
        f(&mut c);
        c.finish().unwrap_err().to_string()
    };
    assert!(with(|c| c.cpus = Some(0)).contains("--cpus must be between 1 and 32, not 0"));
    assert!(with(|c| c.cpus = Some(33)).contains("not 33"));
    assert!(with(|c| c.memory_mib = Some(16)).contains("--memory-mib must be between 64"));
    assert!(with(|c| c.kernel = Some("/nonexistent/vmlinux".into()))
        .contains("kernel /nonexistent/vmlinux"));
    assert!(
        with(|c| c.api_sock = Some("/nonexistent/dir/api.sock".into()))
            .contains("directory does not exist")
    );
    assert!(with(|c| c.net = vec![NetConfig::default()]).contains("--net: no tap or fd"));
    assert!(PartialConfig::default()
        .finish()
        .unwrap_err()
        .to_string()
        .contains("no kernel"));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn initrd_larger_than_memory_and_taken_socket_are_refused() {
    let dir = temp_dir("initrd");
    let initrd = dir.join("initrd.img");
    std::fs::File::create(&initrd)
        .unwrap()
        .set_len(65 << 20)
        .unwrap();
    let taken = dir.join("api.sock");
    std::fs::File::create(&taken).unwrap();
    let base = PartialConfig {
        kernel: Some(kernel_file(&dir)),
        memory_mib: Some(64),
        ..Default::default()
    };
    let err = PartialConfig {
        initrd: Some(initrd),
        ..base.clone()
    }
    .finish();
    assert!(matches!(
        err,
        Err(ConfigError::InitrdTooLarge { size_mib: 65, .. })
    ));
    let err = PartialConfig {
        api_sock: Some(taken),
        ..base
    }
    .finish();
    assert!(matches!(err, Err(ConfigError::ApiSocketInUse(_))));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn fs_shares_are_validated() {
    let dir = temp_dir("fs");
    let kernel = kernel_file(&dir);
    let with = |shares: Vec<(&str, PathBuf)>| {
        PartialConfig {
            kernel: Some(kernel.clone()),
            fs: shares
                .into_iter()
                .map(|(tag, path)| FsConfig::new(tag, &path))
                .collect(),
            ..Default::default()
        }
        .finish()
    };
    assert!(with(vec![("a", dir.clone()), ("b", dir.clone())]).is_ok());
    let err = |shares| with(shares).unwrap_err().to_string();
    assert!(err(vec![("a", kernel.clone())]).contains("is not a directory"));
    assert!(err(vec![("a", dir.join("missing"))]).contains("--fs tag=a"));
    assert!(err(vec![("a", dir.clone()), ("a", dir.clone())]).contains("used twice"));
    let long = "x".repeat(37);
    assert!(err(vec![(&long, dir.clone())]).contains("1 to 36 bytes"));
    assert!(err(vec![("", dir.clone())]).contains("1 to 36 bytes"));
    std::fs::remove_dir_all(dir).unwrap();
}
