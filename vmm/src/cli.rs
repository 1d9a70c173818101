//! The `runv-vmm` command line: flags into a [`PartialConfig`], device
//! values through the one `key=value` grammar of [`options`].

pub mod devices;
pub mod options;

use crate::config::{PartialConfig, VmConfigError};
use options::OptionError;

/// Usage text.
pub const USAGE: &str = "usage: runv-vmm --kernel PATH [--initrd PATH] [--cpus N] [--memory-mib M]
                [--cmdline EXTRA] [--console stdout|off|PATH] [--api-sock PATH] [--rng]
                [--free-page-reporting]
                [--disk path=FILE[,readonly][,id=S]]... [--vsock cid=N,uds=PATH]
                [--fs tag=T,path=DIR[,cache=never|auto|always][,privileged][,max-fds=N]]...
                [--net [tap=NAME|fd=N][,mac=M]]... [--seccomp enforce|log|off]
                [--snapshot-dir DIR] [--restore-from DIR]
       runv-vmm --config JSON|FILE [flags that override its fields]
       runv-vmm --help | --version";

/// A command line that cannot be understood.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A flag runv-vmm does not have.
    #[error("unknown flag '{0}'\n{USAGE}")]
    UnknownFlag(String),
    /// A flag given no value.
    #[error("{0} needs a value")]
    NoValue(String),
    /// A flag whose value is not a number.
    #[error("{flag}: '{value}' is not a whole number")]
    Number {
        /// The flag.
        flag: String,
        /// Its value.
        value: String,
    },
    /// A device flag's value outside its grammar.
    #[error(transparent)]
    Option(#[from] OptionError),
    /// A value no config may hold (a console, a seccomp mode, a vCPU count).
    #[error(transparent)]
    Invalid(#[from] VmConfigError),
}

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    /// Boot a VM with this configuration.
    Run {
        /// `--config`: inline JSON or a JSON file's path, laid under the flags.
        config: Option<String>,
        /// Flags given on the command line.
        flags: Box<PartialConfig>,
    },
    /// Print usage.
    Help,
    /// Print the version.
    Version,
}

fn number(flag: &str, value: &str) -> Result<u64, CliError> {
    value.parse().map_err(|_| CliError::Number {
        flag: flag.to_owned(),
        value: value.to_owned(),
    })
}

/// Parses the arguments after the program name.
pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Command, CliError> {
    let mut args = args.into_iter();
    let mut flags = PartialConfig::default();
    let mut config = None;
    while let Some(flag) = args.next() {
        let (name, inline) = match flag.split_once('=') {
            Some((name, value)) if name.starts_with("--") => {
                (name.to_owned(), Some(value.to_owned()))
            }
            _ => (flag.clone(), None),
        };
        match name.as_str() {
            "--help" | "-h" => return Ok(Command::Help),
            "--rng" => {
                flags.rng = Some(true);
                continue;
            }
            "--free-page-reporting" => {
                flags.free_page_reporting = Some(true);
                continue;
            }
            "--version" | "-V" => return Ok(Command::Version),
            _ => {}
        }
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| CliError::NoValue(name.clone()))
        };
        match name.as_str() {
            "--kernel" => flags.kernel = Some(value()?.into()),
            "--initrd" => flags.initrd = Some(value()?.into()),
            "--cpus" => {
                let cpus = number(&name, &value()?)?;
                flags.cpus = Some(u8::try_from(cpus).map_err(|_| VmConfigError::Cpus(cpus))?);
            }
            "--memory-mib" => flags.memory_mib = Some(number(&name, &value()?)?),
            "--cmdline" => flags.cmdline = Some(value()?),
            "--console" => flags.console = Some(value()?.try_into()?),
            "--api-sock" => flags.api_sock = Some(value()?.into()),
            "--disk" => flags.disks.push(devices::disk(&value()?)?),
            "--vsock" => flags.vsock = Some(devices::vsock(&value()?)?),
            "--fs" => flags.fs.push(devices::fs(&value()?)?),
            "--net" => flags.net.push(devices::net(&value()?)?),
            "--seccomp" => flags.seccomp = Some(value()?.parse()?),
            "--snapshot-dir" => flags.snapshot_dir = Some(value()?.into()),
            "--restore-from" => flags.restore_from = Some(value()?.into()),
            "--config" => config = Some(value()?),
            other => return Err(CliError::UnknownFlag(other.to_owned())),
        }
    }
    Ok(Command::Run {
        config,
        flags: Box::new(flags),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConsoleConfig;
    use std::path::PathBuf;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_every_flag_in_both_forms() {
        let cmd = parse(args(&[
            "--kernel",
            "/k",
            "--initrd=/i",
            "--cpus",
            "2",
            "--memory-mib=512",
            "--cmdline",
            "quiet",
            "--console",
            "stdout",
            "--api-sock",
            "/a.sock",
            "--config",
            "/c.json",
            "--fs",
            "tag=a,path=/srv/a",
            "--fs=tag=b,path=/srv/b,cache=never",
        ]))
        .unwrap();
        let Command::Run { config, flags } = cmd else {
            panic!("not a run")
        };
        assert_eq!(config.as_deref(), Some("/c.json"));
        assert_eq!(flags.kernel, Some(PathBuf::from("/k")));
        assert_eq!(flags.initrd, Some(PathBuf::from("/i")));
        assert_eq!((flags.cpus, flags.memory_mib), (Some(2), Some(512)));
        assert_eq!(flags.console, Some(ConsoleConfig::Stdout));
        assert_eq!(flags.api_sock, Some(PathBuf::from("/a.sock")));
        let tags: Vec<_> = flags.fs.iter().map(|f| f.tag.as_str()).collect();
        assert_eq!(tags, ["a", "b"]);
    }

    #[test]
    fn rejects_unknown_flags_missing_values_and_bad_numbers() {
        let err = |list: &[&str]| parse(args(list)).unwrap_err().to_string();
        assert!(err(&["--vcpus", "2"]).contains("unknown flag '--vcpus'"));
        assert!(err(&["--kernel"]).contains("--kernel needs a value"));
        assert!(err(&["--cpus", "two"]).contains("'two' is not a whole number"));
        assert!(err(&["--cpus", "300"]).contains("--cpus must be between 1 and 32, not 300"));
        assert!(err(&["--console", ""]).contains("--console must be"));
        assert!(err(&["--seccomp", "lax"]).contains("unknown mode 'lax'"));
        assert!(err(&["--disk", "readonly"]).contains("--disk readonly: no path"));
        assert_eq!(parse(args(&["--version"])).unwrap(), Command::Version);
    }
}
