//! The `runv-vmm` command line.

use crate::config::{ConfigError, PartialConfig};
use std::path::PathBuf;

/// Usage text.
pub const USAGE: &str = "usage: runv-vmm --kernel PATH [--initrd PATH] [--cpus N] [--memory-mib M]
                [--cmdline EXTRA] [--console stdout|off|PATH] [--api-sock PATH] [--rng]
                [--disk path=FILE[,readonly][,id=S]]... [--vsock cid=N,uds=PATH]
                [--fs tag=T,path=DIR[,cache=never|auto|always][,privileged][,max-fds=N]]...
                [--net tap=NAME|fd=N[,mac=M]]... [--seccomp enforce|log|off]
       runv-vmm --config FILE [flags that override the file's fields]
       runv-vmm --help | --version";

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    /// Boot a VM with this configuration (the file, if any, is layered below).
    Run {
        /// `--config FILE`.
        config_file: Option<PathBuf>,
        /// Flags given on the command line.
        flags: Box<PartialConfig>,
    },
    /// Print usage.
    Help,
    /// Print the version.
    Version,
}

fn number(flag: &str, value: &str) -> Result<u64, ConfigError> {
    value
        .parse()
        .map_err(|_| ConfigError::Usage(format!("{flag}: '{value}' is not a whole number")))
}

/// Parses the arguments after the program name.
pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Command, ConfigError> {
    let mut args = args.into_iter();
    let mut flags = PartialConfig::default();
    let mut config_file = None;
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
            "--version" | "-V" => return Ok(Command::Version),
            _ => {}
        }
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| ConfigError::Usage(format!("{name} needs a value")))
        };
        match name.as_str() {
            "--kernel" => flags.kernel = Some(value()?.into()),
            "--initrd" => flags.initrd = Some(value()?.into()),
            "--cpus" => flags.cpus = Some(number(&name, &value()?)?),
            "--memory-mib" => flags.memory_mib = Some(number(&name, &value()?)?),
            "--cmdline" => flags.cmdline = Some(value()?),
            "--console" => {
                let console = value()?.try_into().map_err(ConfigError::Usage)?;
                flags.console = Some(console);
            }
            "--api-sock" => flags.api_sock = Some(value()?.into()),
            "--disk" => flags
                .disks
                .get_or_insert_with(Vec::new)
                .push(value()?.parse()?),
            "--vsock" => flags.vsock = Some(value()?.parse()?),
            "--fs" => flags
                .fs
                .get_or_insert_with(Vec::new)
                .push(value()?.parse()?),
            "--net" => flags
                .net
                .get_or_insert_with(Vec::new)
                .push(value()?.parse()?),
            "--seccomp" => {
                flags.seccomp = Some(value()?.parse().map_err(ConfigError::Usage)?);
            }
            "--config" => config_file = Some(value()?.into()),
            other => {
                return Err(ConfigError::Usage(format!(
                    "unknown flag '{other}'\n{USAGE}"
                )))
            }
        }
    }
    Ok(Command::Run {
        config_file,
        flags: Box::new(flags),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConsoleConfig;

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
        let Command::Run { config_file, flags } = cmd else {
            panic!("not a run")
        };
        assert_eq!(config_file, Some(PathBuf::from("/c.json")));
        assert_eq!(flags.kernel, Some(PathBuf::from("/k")));
        assert_eq!(flags.initrd, Some(PathBuf::from("/i")));
        assert_eq!((flags.cpus, flags.memory_mib), (Some(2), Some(512)));
        assert_eq!(flags.console, Some(ConsoleConfig::Stdout));
        assert_eq!(flags.api_sock, Some(PathBuf::from("/a.sock")));
        let tags: Vec<_> = flags.fs.iter().flatten().map(|f| f.tag.as_str()).collect();
        assert_eq!(tags, ["a", "b"]);
    }

    #[test]
    fn rejects_unknown_flags_missing_values_and_bad_numbers() {
        assert!(parse(args(&["--vcpus", "2"]))
            .unwrap_err()
            .to_string()
            .contains("unknown flag '--vcpus'"));
        assert!(parse(args(&["--kernel"]))
            .unwrap_err()
            .to_string()
            .contains("--kernel needs a value"));
        assert!(parse(args(&["--cpus", "two"]))
            .unwrap_err()
            .to_string()
            .contains("'two' is not a whole number"));
        assert_eq!(parse(args(&["--version"])).unwrap(), Command::Version);
    }
}
