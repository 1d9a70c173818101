//! The pod's hostname, hosts, resolv.conf and sysctls, as CreateSandbox hands
//! them to the guest. They come from the spec of the container that boots the
//! VM: its `hostname`, the files bind-mounted on `/etc/hosts` and
//! `/etc/resolv.conf` (containerd's CRI gives the sandbox container its pod's
//! resolv.conf this way, for VM runtimes), and its `linux.sysctl` (containerd
//! puts the pod's sysctls in the sandbox's spec only).

use serde_json::Value;
use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;

/// Guest path of the hosts file.
const HOSTS: &str = "/etc/hosts";
/// Guest path of the resolver configuration.
const RESOLV_CONF: &str = "/etc/resolv.conf";
/// Largest hosts or resolv.conf file the shim passes on.
const MAX_FILE_BYTES: u64 = 64 << 10;

/// What the guest's hostname, hosts and resolv.conf are made of; an empty
/// field leaves the guest's file alone.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PodFiles {
    /// The hostname.
    pub hostname: String,
    /// The content of /etc/hosts.
    pub hosts: String,
    /// The lines of /etc/resolv.conf.
    pub dns: Vec<String>,
    /// The pod's sysctls (the agent checks the names and values).
    pub sysctls: HashMap<String, String>,
}

impl PodFiles {
    /// Reads them from `spec`. A bind source that cannot be read, is not a
    /// regular file or is too large is an error naming it.
    pub fn of(spec: &Value) -> Result<Self, String> {
        let hostname = spec
            .get("hostname")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let hosts = bind_source(spec, HOSTS)
            .map(read_small_file)
            .transpose()?
            .unwrap_or_default();
        let dns = bind_source(spec, RESOLV_CONF)
            .map(read_small_file)
            .transpose()?
            .map(|text| resolv_lines(&text))
            .unwrap_or_default();
        let sysctls = spec
            .pointer("/linux/sysctl")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .map(|(key, value)| match value.as_str() {
                Some(value) => Ok((key.clone(), value.to_string())),
                None => Err(format!("linux.sysctl: the value of {key} is not a string")),
            })
            .collect::<Result<_, String>>()?;
        Ok(Self {
            hostname,
            hosts,
            dns,
            sysctls,
        })
    }
}

/// The host source of the last bind mount on `destination` (the one that
/// wins in the container).
fn bind_source<'a>(spec: &'a Value, destination: &str) -> Option<&'a str> {
    spec.get("mounts")?
        .as_array()?
        .iter()
        .filter(|m| {
            m.get("destination")
                .and_then(Value::as_str)
                .is_some_and(|d| Path::new(d) == Path::new(destination))
        })
        .filter(|m| is_bind(m))
        .filter_map(|m| m.get("source").and_then(Value::as_str))
        .next_back()
}

fn is_bind(mount: &Value) -> bool {
    mount.get("type").and_then(Value::as_str) == Some("bind")
        || mount
            .get("options")
            .and_then(Value::as_array)
            .is_some_and(|o| {
                o.iter()
                    .any(|o| matches!(o.as_str(), Some("bind" | "rbind")))
            })
}

fn read_small_file(path: &str) -> Result<String, String> {
    let context = |err: std::io::Error| format!("{path}: {err}");
    let file = File::open(path).map_err(context)?;
    let meta = file.metadata().map_err(context)?;
    if !meta.is_file() {
        return Err(format!("{path}: not a regular file"));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!(
            "{path}: {} bytes, more than the {MAX_FILE_BYTES} a pod file may hold",
            meta.len()
        ));
    }
    let mut text = String::new();
    file.take(MAX_FILE_BYTES)
        .read_to_string(&mut text)
        .map_err(context)?;
    Ok(text)
}

/// The lines of a resolv.conf that say something (no blanks, no comments).
fn resolv_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with(['#', ';']))
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
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
        let spec = json!({"linux": {"sysctl": {"kernel.shm_rmid_forced": "1", "net.ipv4.ip_forward": "0"}}});
        let files = PodFiles::of(&spec).expect("pod files");
        assert_eq!(files.sysctls.len(), 2);
        assert_eq!(files.sysctls["kernel.shm_rmid_forced"], "1");
        let spec = json!({"linux": {"sysctl": {"net.ipv4.ip_forward": 1}}});
        let err = PodFiles::of(&spec).expect_err("a number");
        assert!(err.contains("net.ipv4.ip_forward"), "{err}");
    }

    #[test]
    fn a_spec_without_them_gives_nothing() {
        let spec =
            json!({"mounts": [{"destination": "/etc/hosts", "type": "tmpfs", "source": "x"}]});
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
            let err = PodFiles::of(&spec).expect_err("must fail");
            assert!(
                err.contains(&source.display().to_string()) && err.contains(expected),
                "{err}"
            );
        }
    }
}
