use super::annotations::ANNOTATION_PREFIX;
use super::*;
use std::collections::HashMap;
use std::io::Write;

fn load_text(text: &str) -> Result<RunvConfig, ConfigError> {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    RunvConfig::load(file.path())
}

#[test]
fn reads_every_key() {
    let config = load_text(
        r#"
        vmm = "/v"
        kernel = "/k"
        initrd = "/i"
        default_vcpus = 2
        default_memory_mib = 512
        overhead_memory_mib = 96
        max_vcpus = 4
        max_memory_mib = 1024
        boot_timeout_secs = 9
        log_level = "debug"
        debug_console = true
        enable_annotations = ["default_vcpus"]
        vmm_seccomp = "log"
        vmm_jail = false
        "#,
    )
    .unwrap();
    assert_eq!(config.vmm_seccomp, SeccompMode::Log);
    assert!(!config.vmm_jail);
    assert_eq!(config.kernel, PathBuf::from("/k"));
    assert_eq!(config.default_vcpus, 2);
    assert_eq!(config.default_memory_mib, 512);
    assert_eq!(config.overhead_memory_mib, 96);
    assert_eq!(config.max_memory_mib, 1024);
    assert_eq!(config.boot_timeout_secs, 9);
    assert!(config.debug_console);
}

#[test]
fn a_partial_file_keeps_the_defaults() {
    let config = load_text("kernel = \"/k\"\n").unwrap();
    assert_eq!(config.default_memory_mib, 256);
    assert_eq!(config.vmm, RunvConfig::default().vmm);
}

#[test]
fn bad_files_name_the_problem() {
    let unknown = load_text("kernal = \"/k\"\n").unwrap_err().to_string();
    assert!(unknown.contains("kernal"), "{unknown}");
    let syntax = load_text("kernel = \n").unwrap_err().to_string();
    assert!(syntax.contains("runv config"), "{syntax}");
    let range = load_text("default_vcpus = 0\n").unwrap_err().to_string();
    assert!(range.contains("default_vcpus"), "{range}");
    let memory = load_text("default_memory_mib = 20000\n")
        .unwrap_err()
        .to_string();
    assert!(memory.contains("above max_memory_mib = 16384"), "{memory}");
    let max = load_text("max_memory_mib = 128\n").unwrap_err().to_string();
    assert!(max.contains("default_memory_mib 256"), "{max}");
    let timeout = load_text("boot_timeout_secs = 18446744073709551615\n")
        .unwrap_err()
        .to_string();
    assert!(timeout.contains("above runv's maximum = 600"), "{timeout}");
    let level = load_text("log_level = \"loud\"\n").unwrap_err().to_string();
    assert!(level.contains("log_level"), "{level}");
    let missing = RunvConfig::load(Path::new("/nonexistent/runv.toml")).unwrap_err();
    assert!(missing.to_string().contains("/nonexistent/runv.toml"));
}

#[test]
fn annotations_stay_within_the_maxima() {
    let config = RunvConfig {
        enable_annotations: OVERRIDABLE.iter().map(|k| k.to_string()).collect(),
        ..RunvConfig::default()
    };
    let set = |k: &str, v: &str| HashMap::from([(format!("{ANNOTATION_PREFIX}{k}"), v.into())]);
    let err = config
        .with_annotations(&set("default_memory_mib", "1048576"))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "annotation io.pouch.runv.default_memory_mib=\"1048576\": \
         above max_memory_mib = 16384"
    );
    for (key, value, max) in [
        (
            "default_memory_mib",
            "99999999999999999999999",
            "max_memory_mib = 16384",
        ),
        (
            "overhead_memory_mib",
            "4294967295",
            "max_memory_mib = 16384",
        ),
        ("default_vcpus", "4294967296", "max_vcpus = 8"),
        (
            "boot_timeout_secs",
            "18446744073709551615",
            "runv's maximum = 600",
        ),
    ] {
        let err = config.with_annotations(&set(key, value)).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(&format!("{ANNOTATION_PREFIX}{key}")) && text.contains(max),
            "{text}"
        );
    }
    let most = config
        .with_annotations(&HashMap::from([
            (
                format!("{ANNOTATION_PREFIX}default_memory_mib"),
                "16384".into(),
            ),
            (
                format!("{ANNOTATION_PREFIX}boot_timeout_secs"),
                "600".into(),
            ),
        ]))
        .unwrap();
    assert_eq!(most.default_memory_mib, 16384);
    // The longest boot deadline is an ordinary Instant.
    let deadline = std::time::Instant::now()
        .checked_add(std::time::Duration::from_secs(most.boot_timeout_secs));
    assert!(deadline.is_some());
    let err = config
        .with_annotations(&set("boot_timeout_secs", "0"))
        .unwrap_err();
    assert!(err.to_string().contains("below 1"), "{err}");
    let err = config
        .with_annotations(&set("default_memory_mib", "-1"))
        .unwrap_err();
    assert!(
        err.to_string().contains("not a non-negative integer"),
        "{err}"
    );
}

#[test]
fn annotations_override_only_enabled_keys() {
    let config = RunvConfig::default();
    let set = |k: &str, v: &str| HashMap::from([(format!("{ANNOTATION_PREFIX}{k}"), v.into())]);
    let bigger = config
        .with_annotations(&set("default_memory_mib", "512"))
        .unwrap();
    assert_eq!(bigger.default_memory_mib, 512);
    let err = config
        .with_annotations(&set("default_vcpus", "many"))
        .unwrap_err();
    assert!(
        err.to_string().contains("io.pouch.runv.default_vcpus"),
        "{err}"
    );
    let err = config
        .with_annotations(&set("kernel", "/evil"))
        .unwrap_err();
    assert!(err.to_string().contains("unknown runv annotation"), "{err}");
    let err = config
        .with_annotations(&set("boot_timeout_secs", "5"))
        .unwrap_err();
    assert!(err.to_string().contains("enable_annotations"), "{err}");
    let err = config
        .with_annotations(&set("default_vcpus", "0"))
        .unwrap_err();
    assert!(err.to_string().contains("default_vcpus"), "{err}");
    let err = config
        .with_annotations(&set("default_vcpus", "9"))
        .unwrap_err();
    assert!(err.to_string().ends_with("above max_vcpus = 8"), "{err}");
    let other = HashMap::from([("io.kubernetes.cri.sandbox-id".into(), "x".into())]);
    assert_eq!(config.with_annotations(&other).unwrap(), config);
}

#[test]
fn a_config_written_as_toml_reads_back_the_same() {
    let config = RunvConfig {
        kernel: "/k".into(),
        debug_console: true,
        enable_annotations: vec!["default_vcpus".into()],
        vmm_seccomp: SeccompMode::Log,
        free_page_reporting: false,
        ..RunvConfig::default()
    };
    let text = toml::to_string(&config).unwrap();
    assert_eq!(load_text(&text).unwrap(), config, "{text}");
}

#[test]
fn a_refused_annotation_quotes_only_the_start_of_its_value() {
    let config = RunvConfig {
        enable_annotations: vec!["default_vcpus".into()],
        ..RunvConfig::default()
    };
    let long = "9".repeat(100_000);
    let annotations = HashMap::from([(format!("{ANNOTATION_PREFIX}default_vcpus"), long)]);
    let err = config
        .with_annotations(&annotations)
        .unwrap_err()
        .to_string();
    assert!(err.len() < 400, "{} bytes: {}", err.len(), &err[..200]);
    let quoted = "9".repeat(super::annotations::QUOTED_VALUE_CHARS);
    assert!(err.contains(&quoted), "{err}");
}

#[test]
fn a_refused_annotation_quotes_only_the_start_of_its_key() {
    let key = format!("{ANNOTATION_PREFIX}{}", "k".repeat(100_000));
    let annotations = HashMap::from([(key.clone(), "1".to_string())]);
    let err = RunvConfig::default()
        .with_annotations(&annotations)
        .unwrap_err()
        .to_string();
    assert!(err.len() < 1000, "{} bytes: {}", err.len(), &err[..200]);
    let quoted: String = key
        .chars()
        .take(super::annotations::QUOTED_VALUE_CHARS)
        .collect();
    assert!(err.contains(&quoted), "{err}");
}

#[test]
fn free_page_reporting_is_the_operators_alone() {
    let config = load_text("free_page_reporting = false").unwrap();
    assert!(!config.free_page_reporting);
    // A wrong type names its line, and with it the key.
    let err = load_text("vmm_jail = true\nfree_page_reporting = \"no\"\n").unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("line 2 (`free_page_reporting = \"no\"`): invalid type"),
        "{text}"
    );
    assert_operators_alone("free_page_reporting", "false");
}

/// Neither the config's `enable_annotations` nor a tenant's annotation may
/// make `key` a pod's choice.
fn assert_operators_alone(key: &str, value: &str) {
    let err = load_text(&format!("enable_annotations = [\"{key}\"]")).unwrap_err();
    assert!(err.to_string().contains(key), "{err}");
    let annotations = HashMap::from([(format!("{ANNOTATION_PREFIX}{key}"), value.to_string())]);
    let err = RunvConfig::default()
        .with_annotations(&annotations)
        .unwrap_err();
    assert!(err.to_string().contains("unknown runv annotation"), "{err}");
}

#[test]
fn vm_templates_are_the_operators_alone() {
    assert!(load_text("vm_templates = true").unwrap().vm_templates);
    assert!(!RunvConfig::default().vm_templates, "off unless asked");
    // A tenant cannot turn them on (and so make templates) for its pod.
    assert_operators_alone("vm_templates", "true");
}

#[test]
fn a_parse_error_quotes_only_the_start_of_a_long_line() {
    let value = "x".repeat(100_000);
    let err = load_text(&format!("log_level = \"info\"\nkernel = {value}\n"))
        .unwrap_err()
        .to_string();
    assert!(err.len() < 1000, "{} bytes: {}", err.len(), &err[..200]);
    let quoted: String = format!("kernel = {value}")
        .chars()
        .take(QUOTED_LINE_CHARS)
        .collect();
    assert!(err.contains(&format!("line 2 (`{quoted}`)")), "{err}");
}
