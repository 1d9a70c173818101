//! Host mode: the agent's service as an ordinary process on Unix sockets, for
//! tier-3 tests (`runv-agent --listen unix:///PATH --state-dir DIR`).

use std::fs;
use std::io;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::container::StatePaths;
use crate::oom::OomMonitor;
use crate::reaper::Reaper;
use crate::rpc::AgentService;
use crate::sandbox::{Sandbox, SandboxHome};
use crate::{shutdown, stdio_server};

/// Command line of host mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostArgs {
    /// The ttrpc socket.
    pub listen: PathBuf,
    /// The stdio socket (default: the ttrpc socket's path + ".stdio").
    pub stdio_listen: PathBuf,
    /// Where container state and bundles go.
    pub state_dir: PathBuf,
}

/// Errors of host mode.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The command line is wrong.
    #[error("{0}\nusage: runv-agent --listen unix:///PATH --state-dir DIR [--stdio-listen unix:///PATH]")]
    Usage(#[from] UsageError),
    /// Setting up failed.
    #[error("{step}: {source}")]
    Setup {
        /// What failed.
        step: String,
        /// Why.
        source: io::Error,
    },
    /// The ttrpc server failed.
    #[error("ttrpc server on {path}: {source}")]
    Server {
        /// The socket.
        path: String,
        /// Why.
        source: ttrpc::Error,
    },
    /// The agent's state failed.
    #[error(transparent)]
    Agent(#[from] crate::error::AgentError),
}

/// What is wrong with a host-mode command line.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    /// An argument that is no flag of host mode.
    #[error("unknown argument {0:?}")]
    UnknownArgument(String),
    /// A flag at the end, without its value.
    #[error("{0} needs a value")]
    MissingValue(String),
    /// A required flag is absent.
    #[error("{0} is required")]
    Required(&'static str),
    /// An address that is not an absolute Unix socket path.
    #[error("{0:?} is not unix:///ABSOLUTE/PATH")]
    NotUnixPath(String),
}

impl HostArgs {
    /// Parses the arguments after the program name.
    pub fn parse(args: &[String]) -> Result<Self, HostError> {
        let (mut listen, mut stdio, mut state) = (None, None, None);
        let mut rest = args.iter();
        while let Some(flag) = rest.next() {
            let slot = match flag.as_str() {
                "--listen" => &mut listen,
                "--stdio-listen" => &mut stdio,
                "--state-dir" => &mut state,
                other => return Err(UsageError::UnknownArgument(other.to_owned()).into()),
            };
            let value = rest
                .next()
                .ok_or_else(|| UsageError::MissingValue(flag.clone()))?;
            *slot = Some(value.clone());
        }
        let listen = unix_path(&listen.ok_or(UsageError::Required("--listen"))?)?;
        let stdio_listen = match stdio {
            Some(addr) => unix_path(&addr)?,
            None => {
                let mut path = listen.clone().into_os_string();
                path.push(".stdio");
                PathBuf::from(path)
            }
        };
        let state_dir = state
            .map(PathBuf::from)
            .ok_or(UsageError::Required("--state-dir"))?;
        Ok(Self {
            listen,
            stdio_listen,
            state_dir,
        })
    }
}

fn unix_path(addr: &str) -> Result<PathBuf, UsageError> {
    match addr.strip_prefix("unix://") {
        Some(path) if path.starts_with('/') => Ok(PathBuf::from(path)),
        _ => Err(UsageError::NotUnixPath(addr.to_owned())),
    }
}

pub fn setup(step: impl Into<String>) -> impl FnOnce(io::Error) -> HostError {
    let step = step.into();
    move |source| HostError::Setup { step, source }
}

/// The sandbox state with its reaper and OOM monitor running, containers'
/// state under `state_dir`, the sandbox's own settings in `home`.
pub fn start_sandbox(state_dir: &Path, home: SandboxHome) -> Result<Arc<Sandbox>, HostError> {
    // Orphans of container processes come to us, not to the host's init.
    // SAFETY: PR_SET_CHILD_SUBREAPER only sets a flag of this process.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(setup("become a child subreaper")(io::Error::last_os_error()));
    }
    let reaper = Reaper::start().map_err(setup("start the reaper"))?;
    let oom = OomMonitor::start().map_err(setup("start the OOM monitor"))?;
    let paths = StatePaths::create(state_dir)?;
    Ok(Arc::new(Sandbox::new(paths, home, reaper, oom)))
}

/// Serves until SIGTERM or SIGINT, then removes every container, the sandbox
/// mounts and the sockets.
pub fn run(args: &HostArgs) -> Result<(), HostError> {
    let stop = shutdown::install().map_err(setup("install signal handlers"))?;
    let sandbox = start_sandbox(&args.state_dir, SandboxHome::host(&args.state_dir))?;

    for path in [&args.listen, &args.stdio_listen] {
        match fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(setup(format!("remove stale {}", path.display()))(e)),
        }
    }
    let stdio = UnixListener::bind(&args.stdio_listen)
        .map_err(setup(format!("listen on {}", args.stdio_listen.display())))?;
    stdio_server::spawn(stdio, Arc::clone(&sandbox)).map_err(setup("start the stdio listener"))?;

    let addr = format!("unix://{}", args.listen.display());
    let service = AgentService::new(Arc::clone(&sandbox), false);
    let server_error = |source| HostError::Server {
        path: addr.clone(),
        source,
    };
    let mut server = ttrpc::Server::new()
        .bind(&addr)
        .map_err(server_error)?
        .register_service(protocol::agent::create_agent(Arc::new(service)));
    server.start().map_err(server_error)?;
    log::info!(
        "serving on {addr}, stdio on {}",
        args.stdio_listen.display()
    );

    stop.wait();
    server.shutdown();
    let removed = sandbox.destroy();
    let _ = fs::remove_file(&args.stdio_listen);
    let _ = fs::remove_file(&args.listen);
    removed.map_err(HostError::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_the_host_mode_command_line() {
        let parsed = HostArgs::parse(&args(&[
            "--listen",
            "unix:///r/a.sock",
            "--state-dir",
            "/s",
        ]))
        .unwrap();
        assert_eq!(parsed.listen, PathBuf::from("/r/a.sock"));
        assert_eq!(parsed.stdio_listen, PathBuf::from("/r/a.sock.stdio"));
        assert_eq!(parsed.state_dir, PathBuf::from("/s"));
        let parsed = HostArgs::parse(&args(&[
            "--state-dir",
            "/s",
            "--listen",
            "unix:///a",
            "--stdio-listen",
            "unix:///b",
        ]))
        .unwrap();
        assert_eq!(parsed.stdio_listen, PathBuf::from("/b"));
    }

    #[test]
    fn refuses_bad_command_lines() {
        for bad in [
            &["--listen", "unix:///a"][..],
            &["--state-dir", "/s"],
            &["--listen", "/a", "--state-dir", "/s"],
            &["--listen", "unix://rel", "--state-dir", "/s"],
            &["--listen"],
            &["--bogus", "x"],
        ] {
            assert!(
                matches!(HostArgs::parse(&args(bad)), Err(HostError::Usage(_))),
                "{bad:?}"
            );
        }
        let err = HostArgs::parse(&args(&["--listen", "unix://rel"])).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("\"unix://rel\" is not unix:///ABSOLUTE/PATH\nusage: "),
            "{err}"
        );
    }
}
