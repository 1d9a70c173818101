//! The command line: `runv check|env|ps|metrics|trace|template make [flags]`.

use containerd_shim_runv_v2::config::DEFAULT_CONFIG_PATH;
use containerd_shim_runv_v2::paths::RUN_ROOT;
use std::path::PathBuf;

/// Where containerd reads its configuration unless told otherwise.
pub const DEFAULT_CONTAINERD_CONFIG: &str = "/etc/containerd/config.toml";

/// How to use `runv`.
pub const USAGE: &str = "\
usage: runv check [--json] [--config PATH] [--containerd-config PATH]
       runv env   [--json] [--config PATH]
       runv ps    [--json] [--run-root DIR]
       runv metrics [--listen ADDR] [--run-root DIR]
       runv trace POD [--run-root DIR]
       runv template make [--config PATH] [--vcpus N] [--memory-mib M] [--cards K]
       runv --version | --help

  check   can this host run runv pods: one line per check, exit status 0 only if all pass
  env     versions and paths of runv's parts and host facts, for bug reports
  ps      the pods on this host: VMM pid, state, vCPUs, memory, uptime
  metrics serve Prometheus metrics of all pods on GET http://ADDR/metrics
  trace   one pod's start timeline: one line per phase
  template make
          make the VM template pods of this shape start from (vm_templates on), now
          rather than at the first such pod; prints its directory. The shape: vCPUs,
          memory and network cards (a CRI pod in its own network namespace has one,
          a ctr run pod none), the config's defaults if unsaid

  --json                     print JSON instead of text
  --config PATH              runv's config (default /etc/runv/config.toml)
  --containerd-config PATH   containerd's config (default /etc/containerd/config.toml)
  --run-root DIR             the sandbox directories' parent (default /run/runv)
  --listen ADDR              address:port to serve on (default 127.0.0.1:8090)";

/// Where `runv metrics` listens unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8090";

/// A command line that cannot be run.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ArgsError {
    /// No command was given.
    #[error("no command given")]
    NoCommand,
    /// The command is not one of runv's.
    #[error("unknown command '{0}'")]
    UnknownCommand(String),
    /// A flag the command does not take.
    #[error("'{command}' does not take '{flag}'")]
    UnknownFlag { command: String, flag: String },
    /// A flag that needs a value came last.
    #[error("'{0}' needs a value")]
    MissingValue(String),
    /// `trace` was not given a pod.
    #[error("'trace' needs a pod id")]
    MissingPod,
}

/// The flags `runv template make` hands the shim's `--make-template`.
const TEMPLATE_MAKE_FLAGS: [&str; 4] = ["--config", "--vcpus", "--memory-mib", "--cards"];

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `--help`.
    Help,
    /// `--version`.
    Version,
    /// `runv check`.
    Check(CheckArgs),
    /// `runv env`.
    Env(EnvArgs),
    /// `runv ps`.
    Ps(PsArgs),
    /// `runv metrics`.
    Metrics(MetricsArgs),
    /// `runv trace`.
    Trace(TraceArgs),
    /// `runv template make`.
    TemplateMake(TemplateMakeArgs),
}

/// Flags of `runv template make`, as given: the shim checks their values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateMakeArgs {
    /// Each flag followed by its value.
    pub flags: Vec<String>,
}

/// Flags of `runv check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckArgs {
    /// Print JSON.
    pub json: bool,
    /// runv's config file.
    pub config: PathBuf,
    /// containerd's config file.
    pub containerd_config: PathBuf,
}

/// Flags of `runv env`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvArgs {
    /// Print JSON.
    pub json: bool,
    /// runv's config file.
    pub config: PathBuf,
}

/// Flags of `runv ps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PsArgs {
    /// Print JSON.
    pub json: bool,
    /// Parent of the sandbox directories.
    pub run_root: PathBuf,
}

/// Flags of `runv metrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsArgs {
    /// The address to listen on, as given.
    pub listen: String,
    /// Parent of the sandbox directories.
    pub run_root: PathBuf,
}

/// Arguments of `runv trace`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceArgs {
    /// The pod's sandbox id.
    pub pod: String,
    /// Parent of the sandbox directories.
    pub run_root: PathBuf,
}

/// The flags every command may be given, before each picks its own.
#[derive(Debug, Default)]
struct Flags {
    json: bool,
    config: Option<PathBuf>,
    containerd_config: Option<PathBuf>,
    run_root: Option<PathBuf>,
    listen: Option<String>,
    pod: Option<String>,
}

/// Parses the arguments after the program's name.
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Command, ArgsError> {
    let mut args = args.into_iter();
    let command = args.next().ok_or(ArgsError::NoCommand)?;
    let allowed: &[&str] = match command.as_str() {
        "-h" | "--help" | "help" => return Ok(Command::Help),
        "-V" | "--version" | "version" => return Ok(Command::Version),
        "check" => &["--json", "--config", "--containerd-config"],
        "env" => &["--json", "--config"],
        "ps" => &["--json", "--run-root"],
        "metrics" => &["--listen", "--run-root"],
        "trace" => &["--run-root"],
        "template" => return parse_template(args),
        _ => return Err(ArgsError::UnknownCommand(command)),
    };
    let mut flags = Flags::default();
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            return Ok(Command::Help);
        }
        if command == "trace" && flags.pod.is_none() && !flag.starts_with('-') {
            flags.pod = Some(flag);
            continue;
        }
        if !allowed.contains(&flag.as_str()) {
            return Err(ArgsError::UnknownFlag { command, flag });
        }
        if flag == "--json" {
            flags.json = true;
            continue;
        }
        let value = args
            .next()
            .ok_or_else(|| ArgsError::MissingValue(flag.clone()))?;
        if flag == "--listen" {
            flags.listen = Some(value);
            continue;
        }
        let value = PathBuf::from(value);
        match flag.as_str() {
            "--config" => flags.config = Some(value),
            "--containerd-config" => flags.containerd_config = Some(value),
            _ => flags.run_root = Some(value),
        }
    }
    let config = flags
        .config
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
    let run_root = flags.run_root.unwrap_or_else(|| PathBuf::from(RUN_ROOT));
    Ok(match command.as_str() {
        "check" => Command::Check(CheckArgs {
            json: flags.json,
            config,
            containerd_config: flags
                .containerd_config
                .unwrap_or_else(|| PathBuf::from(DEFAULT_CONTAINERD_CONFIG)),
        }),
        "env" => Command::Env(EnvArgs {
            json: flags.json,
            config,
        }),
        "metrics" => Command::Metrics(MetricsArgs {
            listen: flags.listen.unwrap_or_else(|| DEFAULT_LISTEN.into()),
            run_root,
        }),
        "trace" => Command::Trace(TraceArgs {
            pod: flags.pod.ok_or(ArgsError::MissingPod)?,
            run_root,
        }),
        _ => Command::Ps(PsArgs {
            json: flags.json,
            run_root,
        }),
    })
}

/// `template make` and its flags, each with a value.
fn parse_template(mut args: impl Iterator<Item = String>) -> Result<Command, ArgsError> {
    match args.next().as_deref() {
        Some("make") => {}
        Some("-h" | "--help") => return Ok(Command::Help),
        Some(other) => return Err(ArgsError::UnknownCommand(format!("template {other}"))),
        None => return Err(ArgsError::UnknownCommand("template".into())),
    }
    let mut flags = Vec::new();
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            return Ok(Command::Help);
        }
        if !TEMPLATE_MAKE_FLAGS.contains(&flag.as_str()) {
            return Err(ArgsError::UnknownFlag {
                command: "template make".into(),
                flag,
            });
        }
        let value = args
            .next()
            .ok_or_else(|| ArgsError::MissingValue(flag.clone()))?;
        flags.extend([flag, value]);
    }
    Ok(Command::TemplateMake(TemplateMakeArgs { flags }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_line(line: &str) -> Result<Command, ArgsError> {
        parse(line.split_whitespace().map(String::from))
    }

    #[test]
    fn check_takes_its_defaults_and_flags() {
        assert_eq!(
            parse_line("check"),
            Ok(Command::Check(CheckArgs {
                json: false,
                config: DEFAULT_CONFIG_PATH.into(),
                containerd_config: DEFAULT_CONTAINERD_CONFIG.into(),
            }))
        );
        assert_eq!(
            parse_line("check --json --config /c.toml --containerd-config /d.toml"),
            Ok(Command::Check(CheckArgs {
                json: true,
                config: "/c.toml".into(),
                containerd_config: "/d.toml".into(),
            }))
        );
    }

    #[test]
    fn env_and_ps_take_their_flags() {
        assert_eq!(
            parse_line("env --json"),
            Ok(Command::Env(EnvArgs {
                json: true,
                config: DEFAULT_CONFIG_PATH.into(),
            }))
        );
        assert_eq!(
            parse_line("ps --run-root /tmp/r"),
            Ok(Command::Ps(PsArgs {
                json: false,
                run_root: "/tmp/r".into(),
            }))
        );
    }

    #[test]
    fn metrics_and_trace_take_their_arguments() {
        assert_eq!(
            parse_line("metrics"),
            Ok(Command::Metrics(MetricsArgs {
                listen: DEFAULT_LISTEN.into(),
                run_root: RUN_ROOT.into(),
            }))
        );
        assert_eq!(
            parse_line("metrics --listen 0.0.0.0:9100 --run-root /tmp/r"),
            Ok(Command::Metrics(MetricsArgs {
                listen: "0.0.0.0:9100".into(),
                run_root: "/tmp/r".into(),
            }))
        );
        assert_eq!(
            parse_line("trace pod1 --run-root /tmp/r"),
            Ok(Command::Trace(TraceArgs {
                pod: "pod1".into(),
                run_root: "/tmp/r".into(),
            }))
        );
        assert_eq!(parse_line("trace"), Err(ArgsError::MissingPod));
        assert_eq!(
            parse_line("trace a b"),
            Err(ArgsError::UnknownFlag {
                command: "trace".into(),
                flag: "b".into()
            })
        );
        assert_eq!(
            parse_line("metrics --json"),
            Err(ArgsError::UnknownFlag {
                command: "metrics".into(),
                flag: "--json".into()
            })
        );
    }

    #[test]
    fn template_make_passes_its_flags_on() {
        assert_eq!(
            parse_line("template make --vcpus 2 --cards 1"),
            Ok(Command::TemplateMake(TemplateMakeArgs {
                flags: ["--vcpus", "2", "--cards", "1"].map(String::from).to_vec(),
            }))
        );
        assert_eq!(
            parse_line("template make"),
            Ok(Command::TemplateMake(TemplateMakeArgs {
                flags: Vec::new()
            }))
        );
        assert_eq!(
            parse_line("template rm"),
            Err(ArgsError::UnknownCommand("template rm".into()))
        );
        assert_eq!(
            parse_line("template make --json"),
            Err(ArgsError::UnknownFlag {
                command: "template make".into(),
                flag: "--json".into()
            })
        );
        assert_eq!(
            parse_line("template make --cards"),
            Err(ArgsError::MissingValue("--cards".into()))
        );
    }

    #[test]
    fn refuses_what_it_does_not_know() {
        assert_eq!(parse_line(""), Err(ArgsError::NoCommand));
        assert_eq!(
            parse_line("start"),
            Err(ArgsError::UnknownCommand("start".into()))
        );
        assert_eq!(
            parse_line("ps --config /c"),
            Err(ArgsError::UnknownFlag {
                command: "ps".into(),
                flag: "--config".into()
            })
        );
        assert_eq!(
            parse_line("check --config"),
            Err(ArgsError::MissingValue("--config".into()))
        );
        assert_eq!(parse_line("env --help"), Ok(Command::Help));
    }
}
