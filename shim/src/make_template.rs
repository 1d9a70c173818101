//! `containerd-shim-runv-v2 --make-template [flags]`: makes the VM template
//! for pods of one shape before any of them starts, and prints its
//! directory. `runv template make` runs it; a pod of that shape then starts
//! from the template without paying for the snapshot itself.

use crate::network::MAX_INTERFACES;
use crate::sandbox::template::{self, TemplateError, VmShape};
use crate::serve::handle_signals;
use crate::share::{self, ShareError};
use crate::spec::{host_cpus, VmSize};
use containerd_shim_runv_v2::config::{ConfigError, RunvConfig, DEFAULT_CONFIG_PATH};
use signal_hook::consts::SIGCHLD;
use signal_hook::iterator::Signals;
use std::path::PathBuf;

/// The flags, after `--make-template`.
pub const USAGE: &str = "usage: containerd-shim-runv-v2 --make-template [--config PATH] \
                         [--vcpus N] [--memory-mib M] [--cards K]";

/// Why no template was made.
#[derive(Debug, thiserror::Error)]
pub enum MakeTemplateError {
    /// A flag with no value after it.
    #[error("{0} needs a value\n{USAGE}")]
    MissingValue(String),
    /// A flag this mode does not take.
    #[error("unknown flag '{0}'\n{USAGE}")]
    UnknownFlag(String),
    /// A count that is not a whole number.
    #[error("{flag}: '{value}' is not a whole number")]
    Number { flag: String, value: String },
    /// A shape no pod gets under the config on this host.
    #[error("{flag} {value} is outside {min} to {max}, which pods may have here")]
    Shape {
        flag: &'static str,
        value: usize,
        min: u32,
        max: u32,
    },
    /// More network cards than a pod may have.
    #[error("--cards {0} is more than the {MAX_INTERFACES} network cards a pod may have")]
    Cards(usize),
    /// runv's config.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Templates are off: no pod would start from one.
    #[error("vm_templates is off in {0}: no pod would start from a template")]
    TemplatesOff(PathBuf),
    /// The mount namespace the template's share is mounted in.
    #[error(transparent)]
    Share(#[from] ShareError),
    /// Reaping the template VMM's exit.
    #[error("watch for children's exits: {0}")]
    Reaper(#[source] std::io::Error),
    /// Making the template.
    #[error(transparent)]
    Template(#[from] TemplateError),
}

/// The parsed flags.
#[derive(Debug, PartialEq, Eq)]
struct Args {
    config: PathBuf,
    vcpus: Option<usize>,
    memory_mib: Option<usize>,
    cards: usize,
}

fn parse(args: &[String]) -> Result<Args, MakeTemplateError> {
    let mut parsed = Args {
        config: PathBuf::from(DEFAULT_CONFIG_PATH),
        vcpus: None,
        memory_mib: None,
        cards: 0,
    };
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .ok_or_else(|| MakeTemplateError::MissingValue(flag.clone()))?;
        let number = || {
            value
                .parse::<usize>()
                .map_err(|_| MakeTemplateError::Number {
                    flag: flag.clone(),
                    value: value.clone(),
                })
        };
        match flag.as_str() {
            "--config" => parsed.config = PathBuf::from(value),
            "--vcpus" => parsed.vcpus = Some(number()?),
            "--memory-mib" => parsed.memory_mib = Some(number()?),
            "--cards" => parsed.cards = number()?,
            _ => return Err(MakeTemplateError::UnknownFlag(flag.clone())),
        }
    }
    Ok(parsed)
}

/// `value` if it is within `min` to `max`.
fn within(
    flag: &'static str,
    value: usize,
    (min, max): (u32, u32),
) -> Result<u32, MakeTemplateError> {
    match u32::try_from(value) {
        Ok(value) if (min..=max).contains(&value) => Ok(value),
        _ => Err(MakeTemplateError::Shape {
            flag,
            value,
            min,
            max,
        }),
    }
}

/// The shape `args` ask for, a pod's defaults where they say nothing, as a
/// pod may have it here ([`VmSize::for_pod`]: at least the default vCPUs,
/// at most the config's maxima and this host's CPUs).
fn shape(config: &RunvConfig, args: &Args) -> Result<VmShape, MakeTemplateError> {
    let default = VmSize::for_pod(config, None);
    let vcpus = args.vcpus.unwrap_or(default.vcpus as usize);
    let memory_mib = args.memory_mib.unwrap_or(default.memory_mib as usize);
    if args.cards > MAX_INTERFACES {
        return Err(MakeTemplateError::Cards(args.cards));
    }
    let pod_vcpus = (default.vcpus, config.max_vcpus.min(host_cpus()));
    Ok(VmShape {
        size: VmSize {
            vcpus: within("--vcpus", vcpus, pod_vcpus)?,
            memory_mib: within("--memory-mib", memory_mib, (1, config.max_memory_mib))?,
        },
        cards: args.cards,
    })
}

/// Makes the template `args` (the flags after `--make-template`) ask for;
/// its directory. Call while the process has one thread: it enters a mount
/// namespace of its own for the template's share, as the shim does.
pub fn run(args: &[String]) -> Result<PathBuf, MakeTemplateError> {
    let args = parse(args)?;
    let config = RunvConfig::load(&args.config)?;
    if !config.vm_templates {
        return Err(MakeTemplateError::TemplatesOff(args.config));
    }
    let shape = shape(&config, &args)?;
    share::enter_own_mount_namespace()?;
    // The template's VM is watched as a pod's is: through exits reaped here.
    let signals = Signals::new([SIGCHLD]).map_err(MakeTemplateError::Reaper)?;
    std::thread::spawn(move || handle_signals(signals));
    Ok(template::make_ahead(&config, shape)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn flags_parse_and_bad_ones_are_named() {
        assert_eq!(
            parse(&args(
                "--config /c.toml --vcpus 2 --memory-mib 512 --cards 1"
            ))
            .unwrap(),
            Args {
                config: "/c.toml".into(),
                vcpus: Some(2),
                memory_mib: Some(512),
                cards: 1,
            }
        );
        let err = |line: &str| parse(&args(line)).unwrap_err().to_string();
        assert!(err("--vcpus").contains("--vcpus needs a value"));
        assert!(err("--vcpus two").contains("'two' is not a whole number"));
        assert!(err("--size 2").contains("unknown flag '--size'"));
    }

    #[test]
    fn the_shape_takes_the_pods_defaults_and_their_bounds() {
        let config = RunvConfig::default();
        let defaults = shape(&config, &parse(&[]).unwrap()).unwrap();
        assert_eq!(
            defaults.size,
            VmSize {
                vcpus: config.default_vcpus,
                memory_mib: config.default_memory_mib
            }
        );
        assert_eq!(defaults.cards, 0);
        let err = |line: &str| {
            shape(&config, &parse(&args(line)).unwrap())
                .unwrap_err()
                .to_string()
        };
        assert!(err("--vcpus 0").contains("--vcpus 0 is outside 1 to"));
        let more = format!("--vcpus {}", host_cpus() + 1);
        assert!(err(&more).contains("which pods may have here"));
        let too_much = format!("--memory-mib {}", config.max_memory_mib + 1);
        assert!(err(&too_much).contains("--memory-mib"));
        assert!(err("--cards 9").contains("--cards 9 is more than the 8 network cards"));
    }
}
