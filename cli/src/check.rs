//! `runv check`: can this host run runv pods. Each check gives one outcome:
//! its name, pass or fail and the reason; the command fails if any fails.

use crate::args::CheckArgs;
use crate::cgroup::{self, Layout};
use crate::containerd;
use crate::cpu;
use crate::probe::{self, Speed};
use containerd_shim_runv_v2::config::RunvConfig;
use serde::Serialize;
use std::path::Path;

/// The result of one check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outcome {
    /// What was checked.
    pub name: &'static str,
    /// Whether it passed.
    pub ok: bool,
    /// What was found, and why it fails if it does.
    pub reason: String,
}

impl Outcome {
    fn pass(name: &'static str, reason: impl Into<String>) -> Self {
        Self {
            name,
            ok: true,
            reason: reason.into(),
        }
    }

    fn fail(name: &'static str, reason: impl Into<String>) -> Self {
        Self {
            name,
            ok: false,
            reason: reason.into(),
        }
    }

    /// `name  ok|fail  reason`.
    pub fn line(&self) -> String {
        let status = if self.ok { "ok" } else { "fail" };
        format!("{:<11} {:<4}  {}", self.name, status, self.reason)
    }
}

/// Runs every check, in order.
pub fn run_all(args: &CheckArgs) -> Vec<Outcome> {
    let kvm = check_kvm();
    let speed = if kvm.ok {
        check_speed()
    } else {
        Outcome::fail("kvm-speed", "not measured: /dev/kvm is not usable")
    };
    let cpuinfo = crate::files::read_bounded(Path::new(cpu::CPUINFO), cpu::MAX_CPUINFO)
        .unwrap_or_else(|err| {
            log::warn!("cannot read {}: {err}", cpu::CPUINFO);
            String::new()
        });
    vec![
        kvm,
        check_cpu(&cpuinfo, &cpu::kvm_modules()),
        speed,
        check_assets(&args.config),
        check_cgroup(&cgroup::layout()),
        check_containerd(&args.containerd_config),
    ]
}

/// `/dev/kvm` speaks API 12 and creates a VM.
fn check_kvm() -> Outcome {
    match probe::kvm_usable() {
        Ok(()) => Outcome::pass(
            "kvm",
            format!(
                "/dev/kvm: API version {}, a VM was created",
                probe::KVM_API_VERSION
            ),
        ),
        Err(err) => Outcome::fail("kvm", format!("/dev/kvm is not usable: {err}")),
    }
}

/// The CPU advertises VT-x or AMD-V, or a paravirtual KVM (kvm_pvm) stands
/// in for them.
pub fn check_cpu(cpuinfo: &str, kvm_modules: &[&str]) -> Outcome {
    let modules = if kvm_modules.is_empty() {
        "no KVM module loaded".to_string()
    } else {
        format!("KVM module {}", kvm_modules.join(", "))
    };
    if let Some(flag) = cpu::virt_flag(cpuinfo) {
        return Outcome::pass("cpu", format!("{}; {modules}", flag.describe()));
    }
    let hypervisor = if cpu::under_hypervisor(cpuinfo) {
        " (this host is itself a VM)"
    } else {
        ""
    };
    if kvm_modules.contains(&"kvm_pvm") {
        Outcome::pass(
            "cpu",
            format!(
                "no vmx or svm flag{hypervisor}; KVM is kvm_pvm, paravirtual without \
                 hardware assistance (kvm-speed tells whether it is fast enough)"
            ),
        )
    } else {
        Outcome::fail(
            "cpu",
            format!(
                "no vmx or svm flag in {}{hypervisor}; {modules}",
                cpu::CPUINFO
            ),
        )
    }
}

/// Times the guest loop (the fastest of up to [`probe::RUNS`] runs) and
/// classifies it.
fn check_speed() -> Outcome {
    let measured = probe::fastest_run(probe::RUNS, probe::THRESHOLD, || {
        probe::time_guest_loop(probe::ITERATIONS, probe::RUN_LIMIT)
    });
    match measured {
        Ok(measured) => speed_outcome(measured, probe::ITERATIONS, probe::THRESHOLD),
        Err(probe::ProbeError::TooSlow(limit)) => Outcome::fail(
            "kvm-speed",
            format!(
                "{} guest loop rounds did not end within {} s (threshold {} ms): \
                 emulated or nested without hardware assistance",
                probe::ITERATIONS,
                limit.as_secs(),
                probe::THRESHOLD.as_millis()
            ),
        ),
        Err(err) => Outcome::fail("kvm-speed", format!("KVM cannot run a guest: {err}")),
    }
}

/// The outcome of guest loops of `iterations` rounds, the fastest of which
/// took `measured.fastest`.
pub fn speed_outcome(
    measured: probe::Measured,
    iterations: u32,
    threshold: std::time::Duration,
) -> Outcome {
    let runs = match measured.runs {
        1 => String::new(),
        n => format!(", the fastest of {n} runs"),
    };
    let measured_text = format!(
        "{iterations} guest loop rounds in {:.1} ms{runs} (threshold {} ms)",
        measured.fastest.as_secs_f64() * 1000.0,
        threshold.as_millis()
    );
    match probe::classify(measured.fastest, iterations, threshold) {
        Speed::Hardware => {
            Outcome::pass("kvm-speed", format!("{measured_text}: hardware-assisted"))
        }
        Speed::Emulated => Outcome::fail(
            "kvm-speed",
            format!("{measured_text}: emulated or nested without hardware assistance"),
        ),
    }
}

/// runv's config loads and the VMM, kernel and initrd it names exist.
fn check_assets(config_path: &Path) -> Outcome {
    let config = match RunvConfig::load(config_path) {
        Ok(config) => config,
        Err(err) => return Outcome::fail("assets", err.to_string()),
    };
    assets_outcome(config_path, &config, |path| path.is_file())
}

/// The outcome for `config`'s files, `exists` telling which are present.
pub fn assets_outcome(
    config_path: &Path,
    config: &RunvConfig,
    exists: impl Fn(&Path) -> bool,
) -> Outcome {
    let files = [
        ("vmm", &config.vmm),
        ("kernel", &config.kernel),
        ("initrd", &config.initrd),
    ];
    let missing: Vec<String> = files
        .iter()
        .filter(|(_, path)| !exists(path))
        .map(|(what, path)| format!("{what} {}", path.display()))
        .collect();
    if missing.is_empty() {
        let present: Vec<String> = files
            .iter()
            .map(|(what, path)| format!("{what} {}", path.display()))
            .collect();
        Outcome::pass(
            "assets",
            format!("{}: {}", config_path.display(), present.join(", ")),
        )
    } else {
        Outcome::fail(
            "assets",
            format!("{}: missing {}", config_path.display(), missing.join(", ")),
        )
    }
}

/// cgroups are mounted in a layout the shim charges the VMM in.
pub fn check_cgroup(layout: &Layout) -> Outcome {
    match layout {
        Layout::V2 => Outcome::pass("cgroup", "v2 (unified)"),
        Layout::None => Outcome::fail("cgroup", "no cgroup file system under /sys/fs/cgroup"),
        Layout::V1 { controllers } | Layout::Hybrid { controllers } => {
            let missing = layout.missing_controllers();
            let found = format!(
                "{} (v1 controllers: {})",
                layout.name(),
                controllers.join(" ")
            );
            if missing.contains(&"memory") {
                Outcome::fail("cgroup", format!("{found}: no memory controller mounted"))
            } else if missing.is_empty() {
                Outcome::pass("cgroup", found)
            } else {
                Outcome::pass(
                    "cgroup",
                    format!("{found}; not charged in: {}", missing.join(" ")),
                )
            }
        }
    }
}

/// containerd and the shim are on PATH and containerd's config names runv.
fn check_containerd(config: &Path) -> Outcome {
    let names = containerd::config_names_runtime(config);
    containerd_outcome(
        containerd::binary().as_deref(),
        crate::command::find_on_path(containerd::SHIM_BINARY).as_deref(),
        config,
        names,
    )
}

/// The outcome for the binaries found and what the config said.
pub fn containerd_outcome(
    containerd: Option<&Path>,
    shim: Option<&Path>,
    config: &Path,
    names_runtime: std::io::Result<bool>,
) -> Outcome {
    let Some(containerd) = containerd else {
        return Outcome::fail("containerd", "containerd is not on PATH");
    };
    let Some(shim) = shim else {
        return Outcome::fail(
            "containerd",
            format!(
                "{} is not on PATH (containerd looks for it there)",
                containerd::SHIM_BINARY
            ),
        );
    };
    let found = format!("{}, shim {}", containerd.display(), shim.display());
    let config_name = config.display();
    match names_runtime {
        Ok(true) => Outcome::pass(
            "containerd",
            format!(
                "{found}; {config_name} names runtime_type \"{}\"",
                containerd::RUNTIME_TYPE
            ),
        ),
        Ok(false) => Outcome::fail(
            "containerd",
            format!(
                "{found}; {config_name} names no runtime_type \"{}\"",
                containerd::RUNTIME_TYPE
            ),
        ),
        Err(err) => Outcome::fail(
            "containerd",
            format!("{found}; cannot read {config_name}: {err}"),
        ),
    }
}

/// The outcomes as lines or a JSON array.
pub fn render(outcomes: &[Outcome], json: bool) -> Result<String, serde_json::Error> {
    if json {
        return serde_json::to_string_pretty(outcomes).map(|text| text + "\n");
    }
    Ok(outcomes
        .iter()
        .map(|outcome| outcome.line() + "\n")
        .collect())
}

/// Whether every check passed.
pub fn all_passed(outcomes: &[Outcome]) -> bool {
    outcomes.iter().all(|outcome| outcome.ok)
}

#[cfg(test)]
mod tests;
