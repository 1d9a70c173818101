//! containerd's runtime options for runv: `runtimeoptions.v1.Options`, whose
//! `config_path` (CRI: `ConfigPath` in the runtime's options table; ctr:
//! `--runtime-config-path`) names the configuration file.

use protobuf::well_known_types::any::Any;
use protobuf::CodedInputStream;
use std::path::PathBuf;

/// Type of the options message CRI and ctr send to runtimes other than runc.
const OPTIONS_TYPE: &str = "runtimeoptions.v1.Options";

/// Environment variable through which `start` hands the long-running shim
/// the configuration path containerd's start-time options named.
pub const START_CONFIG_PATH_ENV: &str = "RUNV_START_CONFIG_PATH";

/// Field number of `config_path` in `runtimeoptions.v1.Options`.
const CONFIG_PATH_FIELD: u32 = 2;

/// Runtime options runv cannot read.
#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    /// Options of another runtime's type.
    #[error("runtime options of type {0:?}: runv takes {OPTIONS_TYPE} (ConfigPath)")]
    WrongType(String),
    /// The options message does not decode.
    #[error("malformed {OPTIONS_TYPE}: {0}")]
    Malformed(#[from] protobuf::Error),
    /// A field of an unknown wire type.
    #[error("malformed {OPTIONS_TYPE}: wire type {0}")]
    WireType(u32),
}

/// The configuration path `start` was given, for a create without options.
pub fn start_config_path() -> Option<PathBuf> {
    std::env::var_os(START_CONFIG_PATH_ENV)
        .filter(|path| !path.is_empty())
        .map(PathBuf::from)
}

/// Whether `any` is of runv's options type (`runtimeoptions.v1.Options`).
pub fn is_runv_options(any: &Any) -> bool {
    any.type_url.rsplit('/').next() == Some(OPTIONS_TYPE)
}

/// The configuration path the runtime options name, if any.
pub fn config_path(options: Option<&Any>) -> Result<Option<PathBuf>, OptionsError> {
    let Some(any) = options else {
        return Ok(None);
    };
    if any.type_url.is_empty() && any.value.is_empty() {
        return Ok(None);
    }
    let type_name = any.type_url.rsplit('/').next().unwrap_or_default();
    if type_name != OPTIONS_TYPE {
        return Err(OptionsError::WrongType(any.type_url.clone()));
    }
    let mut input = CodedInputStream::from_bytes(&any.value);
    let mut path = String::new();
    while let Some(tag) = input.read_raw_tag_or_eof()? {
        let (field, wire_type) = (tag >> 3, tag & 7);
        if field == CONFIG_PATH_FIELD && wire_type == 2 {
            path = input.read_string()?;
        } else {
            let wire_type =
                protobuf::rt::WireType::new(wire_type).ok_or(OptionsError::WireType(wire_type))?;
            input.skip_field(wire_type)?;
        }
    }
    Ok((!path.is_empty()).then(|| PathBuf::from(path)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use protobuf::CodedOutputStream;

    fn options(type_url: &str, path: &str) -> Any {
        let mut value = Vec::new();
        let mut out = CodedOutputStream::vec(&mut value);
        out.write_string(1, "io.pouch.runv.v2").unwrap();
        out.write_string(CONFIG_PATH_FIELD, path).unwrap();
        out.write_uint32(7, 1).unwrap();
        out.flush().unwrap();
        drop(out);
        Any {
            type_url: type_url.into(),
            value,
            ..Default::default()
        }
    }

    #[test]
    fn reads_the_config_path() {
        let any = options("runtimeoptions.v1.Options", "/etc/runv/other.toml");
        assert_eq!(
            config_path(Some(&any)).unwrap(),
            Some(PathBuf::from("/etc/runv/other.toml"))
        );
        let any = options("types.containerd.io/runtimeoptions.v1.Options", "");
        assert_eq!(config_path(Some(&any)).unwrap(), None);
        assert_eq!(config_path(None).unwrap(), None);
        assert_eq!(config_path(Some(&Any::default())).unwrap(), None);
    }

    #[test]
    fn other_types_and_junk_are_refused() {
        let any = options("containerd.runc.v1.Options", "/x");
        assert!(config_path(Some(&any))
            .unwrap_err()
            .to_string()
            .contains("runc"));
        let junk = Any {
            type_url: OPTIONS_TYPE.into(),
            value: vec![0x12, 0x40, b'a'],
            ..Default::default()
        };
        assert!(config_path(Some(&junk))
            .unwrap_err()
            .to_string()
            .contains("malformed"));
    }
}
