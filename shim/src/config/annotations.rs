//! The pod annotations (`io.pouch.runv.*`) that may override configured
//! values, as far as `enable_annotations` lets them and never above a maximum.

use super::{
    ConfigError, InvalidValue, RunvConfig, BOOT_TIMEOUT_LIMIT, MAX_BOOT_TIMEOUT_SECS, OVERRIDABLE,
};
use std::collections::HashMap;

/// Prefix of the pod annotations that override configuration values.
pub const ANNOTATION_PREFIX: &str = "io.pouch.runv.";

/// Most characters of a refused annotation's key or value quoted in its
/// error: both are the tenant's, and may be as long as Kubernetes allows.
pub const QUOTED_VALUE_CHARS: usize = 64;

/// The start of tenant text `text`, as an error quotes it.
fn quoted(text: &str) -> String {
    text.chars().take(QUOTED_VALUE_CHARS).collect()
}

/// Why a pod annotation is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnnotationProblem {
    /// No such key.
    #[error("unknown runv annotation (known: {keys})", keys = OVERRIDABLE.join(", "))]
    Unknown,
    /// The key is not in `enable_annotations`.
    #[error("{0} is not listed in the config's enable_annotations")]
    NotEnabled(String),
    /// Not a number.
    #[error("not a non-negative integer")]
    NotInteger,
    /// A number above its maximum, called `max_name`.
    #[error("above {max_name} = {max}")]
    AboveMax { max_name: &'static str, max: u64 },
    /// Not a boolean.
    #[error("not true or false")]
    NotBool,
    /// The configuration it makes is out of range.
    #[error(transparent)]
    Invalid(InvalidValue),
}

impl RunvConfig {
    /// This configuration with the pod's `io.pouch.runv.*` annotations applied.
    pub fn with_annotations(
        &self,
        annotations: &HashMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let mut config = self.clone();
        let mut keys: Vec<_> = annotations
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix(ANNOTATION_PREFIX)?, k, v)))
            .collect();
        keys.sort();
        for (key, full_key, value) in keys {
            let fail = |problem| ConfigError::Annotation {
                key: quoted(full_key),
                value: quoted(value),
                problem,
            };
            if !OVERRIDABLE.contains(&key) {
                return Err(fail(AnnotationProblem::Unknown));
            }
            if !config.enable_annotations.iter().any(|k| k == key) {
                return Err(fail(AnnotationProblem::NotEnabled(key.to_string())));
            }
            // Maxima are never overridable: a tenant cannot raise them.
            let (max_vcpus, max_memory) = (config.max_vcpus, config.max_memory_mib);
            let memory = || at_most(value, max_memory, "max_memory_mib").map_err(fail);
            match key {
                "default_vcpus" => {
                    config.default_vcpus = at_most(value, max_vcpus, "max_vcpus").map_err(fail)?
                }
                "default_memory_mib" => config.default_memory_mib = memory()?,
                "overhead_memory_mib" => config.overhead_memory_mib = memory()?,
                "boot_timeout_secs" => {
                    config.boot_timeout_secs =
                        at_most(value, MAX_BOOT_TIMEOUT_SECS, BOOT_TIMEOUT_LIMIT).map_err(fail)?
                }
                "debug_console" => {
                    config.debug_console = value
                        .parse()
                        .map_err(|_| fail(AnnotationProblem::NotBool))?
                }
                _ => unreachable!("OVERRIDABLE lists only the keys matched here"),
            }
            config
                .validate()
                .map_err(|invalid| fail(AnnotationProblem::Invalid(invalid)))?;
        }
        Ok(config)
    }
}

/// An annotation's `value` as a number no larger than `max` (called `max_name`
/// in the error); the lower bounds are [`RunvConfig::validate`]'s.
fn at_most<T>(value: &str, max: T, max_name: &'static str) -> Result<T, AnnotationProblem>
where
    T: Copy + Into<u64> + TryFrom<u64>,
{
    let above = || AnnotationProblem::AboveMax {
        max_name,
        max: max.into(),
    };
    let number: u64 = match value.parse() {
        Ok(number) => number,
        // All digits but too long for a u64: above any maximum.
        Err(_) if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
            return Err(above())
        }
        Err(_) => return Err(AnnotationProblem::NotInteger),
    };
    if number > max.into() {
        return Err(above());
    }
    T::try_from(number).map_err(|_| above())
}
