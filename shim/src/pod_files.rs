//! The pod's hostname, hosts, resolv.conf and sysctls, as CreateSandbox hands
//! them to the guest. They come from the spec of the container that boots the
//! VM: its `hostname`, the files bind-mounted on `/etc/hosts` and
//! `/etc/resolv.conf` (containerd's CRI gives the sandbox container its pod's
//! resolv.conf this way, for VM runtimes), and its `linux.sysctl` (containerd
//! puts the pod's sysctls in the sandbox's spec only).

use serde_json::Value;
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

/// Guest path of the hosts file.
const HOSTS: &str = "/etc/hosts";
/// Guest path of the resolver configuration.
const RESOLV_CONF: &str = "/etc/resolv.conf";
/// Largest hosts or resolv.conf file the shim passes on.
const MAX_FILE_BYTES: u64 = 64 << 10;

/// Errors of reading the pod's files from its spec.
#[derive(Debug, thiserror::Error)]
pub enum PodFilesError {
    /// A bind source could not be opened, examined or read.
    #[error("{path}: {source}")]
    Read { path: String, source: io::Error },
    /// A bind source is not a regular file.
    #[error("{path}: not a regular file")]
    NotFile { path: String },
    /// A bind source is larger than [`MAX_FILE_BYTES`].
    #[error("{path}: {len} bytes, more than the {MAX_FILE_BYTES} a pod file may hold")]
    TooLarge { path: String, len: u64 },
    /// A `linux.sysctl` value is not a string.
    #[error("linux.sysctl: the value of {key} is not a string")]
    SysctlValue { key: String },
}

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
    pub fn of(spec: &Value) -> Result<Self, PodFilesError> {
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
                None => Err(PodFilesError::SysctlValue { key: key.clone() }),
            })
            .collect::<Result<_, _>>()?;
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

fn read_small_file(path: &str) -> Result<String, PodFilesError> {
    let context = |source: io::Error| PodFilesError::Read {
        path: path.to_string(),
        source,
    };
    let file = File::open(path).map_err(context)?;
    let meta = file.metadata().map_err(context)?;
    if !meta.is_file() {
        return Err(PodFilesError::NotFile {
            path: path.to_string(),
        });
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(PodFilesError::TooLarge {
            path: path.to_string(),
            len: meta.len(),
        });
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
mod tests;
