//! `runv metrics`: a Prometheus endpoint for every runv pod on the node.
//!
//! Each scrape looks at the pods as `runv ps` finds them and asks, for each:
//! the VMM's API (`Metrics`: exits by reason, RSS, guest memory), its
//! `/proc/<pid>` (CPU time, threads, fds) and its `start-phases.json` (the
//! start timeline, observed once per pod into histograms). A pod that does
//! not answer is counted in `runv_scrape_errors_total`, never failing the
//! scrape. As in Prometheus' Go client, a family with no sample yet (no pod)
//! is left out of the text: `runv_pods` and the start histograms are always
//! there.

mod http;
mod process;

pub use http::serve;

use crate::{ps, trace};
use containerd_shim_runv_v2::paths::SandboxDir;
use containerd_shim_runv_v2::start_phases::StartPhases;
use process::ProcessSample;
use prometheus_client::encoding::{prometheus_text, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;

/// Why a scrape failed as a whole.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The pods could not be listed.
    #[error(transparent)]
    List(#[from] ps::PsError),
    /// The text could not be encoded.
    #[error("encode the metrics: {0}")]
    Encode(#[from] std::fmt::Error),
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PodLabels {
    pod: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExitLabels {
    pod: String,
    reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: String,
}

/// What the VMM's API said.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct VmmSample {
    /// KVM exits by reason.
    pub exits: BTreeMap<String, u64>,
    /// The VMM's resident set (bytes).
    pub rss_bytes: u64,
    /// The guest's memory (bytes).
    pub guest_memory_bytes: u64,
    /// Guest memory given back to the host after free page reports (bytes,
    /// since the VMM started).
    pub returned_memory_bytes: u64,
}

/// What one scrape found of one pod.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PodSample {
    /// The sandbox id.
    pub id: String,
    /// From the VMM's API, if it answered.
    pub vmm: Option<VmmSample>,
    /// From `/proc/<vmm pid>`, if the VMM runs.
    pub process: Option<ProcessSample>,
    /// The start timeline, once the shim recorded it.
    pub phases: Option<StartPhases>,
    /// What could not be found out.
    pub errors: Vec<String>,
}

/// The scrapes' state: the start histograms and the error counters, which
/// outlive one scrape.
pub struct Collector {
    run_root: PathBuf,
    phases: Family<PhaseLabels, Histogram, fn() -> Histogram>,
    /// Pods whose timeline the histograms hold.
    observed: HashSet<String>,
    scrape_errors: Family<PodLabels, Counter>,
    /// Pods with an error counter.
    counted: HashSet<String>,
}

/// Buckets from 1 ms to about 65 s.
fn phase_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

impl Collector {
    /// A collector of the pods under `run_root`.
    pub fn new(run_root: &Path) -> Self {
        let phases = Family::new_with_constructor(phase_histogram as fn() -> Histogram);
        // Every phase is shown from the start, with no observation yet.
        for (phase, _) in StartPhases::default().seconds() {
            let _ = phases.get_or_create(&PhaseLabels {
                phase: phase.into(),
            });
        }
        Self {
            run_root: run_root.into(),
            phases,
            observed: HashSet::new(),
            scrape_errors: Family::default(),
            counted: HashSet::new(),
        }
    }

    /// Samples every pod and encodes the metrics.
    pub fn scrape(&mut self) -> Result<String, MetricsError> {
        let pods: Vec<PodSample> = ps::sandbox_ids(&self.run_root)?
            .into_iter()
            .map(|id| sample(&self.run_root, id))
            .collect();
        for pod in &pods {
            for err in &pod.errors {
                log::debug!("pod {}: {err}", pod.id);
            }
        }
        Ok(self.encode(&pods)?)
    }

    /// The Prometheus text for `pods`, observing the timelines not seen yet.
    pub fn encode(&mut self, pods: &[PodSample]) -> Result<String, std::fmt::Error> {
        // Pods gone: their error counts go, a new pod of the same id is new.
        let present: HashSet<&str> = pods.iter().map(|pod| pod.id.as_str()).collect();
        self.observed.retain(|id| present.contains(id.as_str()));
        let known: HashSet<String> = self.observed.clone();
        for id in self
            .counted
            .iter()
            .filter(|id| !present.contains(id.as_str()))
        {
            self.scrape_errors.remove(&PodLabels { pod: id.clone() });
        }
        self.counted = present.iter().map(|id| id.to_string()).collect();

        let exits = Family::<ExitLabels, Counter>::default();
        let rss = Family::<PodLabels, Gauge>::default();
        let guest_memory = Family::<PodLabels, Gauge>::default();
        let returned = Family::<PodLabels, Counter>::default();
        let cpu = Family::<PodLabels, Counter<f64, AtomicU64>>::default();
        let threads = Family::<PodLabels, Gauge>::default();
        let fds = Family::<PodLabels, Gauge>::default();
        let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        for pod in pods {
            let labels = PodLabels {
                pod: pod.id.clone(),
            };
            if let Some(vmm) = &pod.vmm {
                for (reason, count) in &vmm.exits {
                    exits
                        .get_or_create(&ExitLabels {
                            pod: pod.id.clone(),
                            reason: reason.clone(),
                        })
                        .inc_by(*count);
                }
                rss.get_or_create(&labels).set(gauge(vmm.rss_bytes));
                guest_memory
                    .get_or_create(&labels)
                    .set(gauge(vmm.guest_memory_bytes));
                returned
                    .get_or_create(&labels)
                    .inc_by(vmm.returned_memory_bytes);
            }
            if let Some(process) = &pod.process {
                cpu.get_or_create(&labels).inc_by(process.cpu_seconds);
                threads.get_or_create(&labels).set(gauge(process.threads));
                fds.get_or_create(&labels).set(gauge(process.open_fds));
            }
            if let (Some(phases), false) = (&pod.phases, known.contains(&pod.id)) {
                for (phase, secs) in phases.seconds() {
                    self.phases
                        .get_or_create(&PhaseLabels {
                            phase: phase.into(),
                        })
                        .observe(secs);
                }
                self.observed.insert(pod.id.clone());
            }
            self.scrape_errors
                .get_or_create(&labels)
                .inc_by(pod.errors.len() as u64);
        }

        let mut registry = Registry::default();
        let found = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
        found.set(gauge(pods.len() as u64));
        registry.register("runv_pods", "runv pods found on the node", found);
        registry.register(
            "runv_vm_exits",
            "KVM exits of the pod's VM by exit reason, over all vCPUs",
            exits,
        );
        registry.register(
            "runv_vmm_rss_bytes",
            "Resident set of the pod's VMM, touched guest memory included",
            rss,
        );
        registry.register(
            "runv_guest_memory_bytes",
            "Memory of the pod's VM as configured",
            guest_memory,
        );
        registry.register(
            "runv_guest_memory_returned_bytes",
            "Guest memory the pod's VMM gave back to the host after the guest reported it free",
            returned,
        );
        registry.register(
            "runv_vmm_cpu_seconds",
            "User and system CPU time of the pod's VMM",
            cpu,
        );
        registry.register("runv_vmm_threads", "Threads of the pod's VMM", threads);
        registry.register(
            "runv_vmm_open_fds",
            "Open file descriptors of the pod's VMM",
            fds,
        );
        registry.register(
            "runv_pod_start_phase_seconds",
            "Duration of each phase of a pod's start, over the pods seen",
            self.phases.clone(),
        );
        registry.register(
            "runv_scrape_errors",
            "What could not be read of a pod (VMM API, /proc, start phases)",
            self.scrape_errors.clone(),
        );
        let mut text = String::new();
        prometheus_text::encode(&mut text, &registry)?;
        Ok(text)
    }
}

/// What can be found out of pod `id`.
fn sample(run_root: &Path, id: String) -> PodSample {
    let dir = SandboxDir::under(run_root, &id);
    let mut pod = PodSample {
        id,
        ..PodSample::default()
    };
    match ps::vmm_pid(&dir) {
        Ok(pid) => match process::sample(pid) {
            Ok(process) => pod.process = Some(process),
            Err(err) => pod.errors.push(err.to_string()),
        },
        Err(err) => pod.errors.push(err.to_string()),
    }
    match vmm_metrics(&dir) {
        Ok(vmm) => pod.vmm = Some(vmm),
        Err(err) => pod.errors.push(err.to_string()),
    }
    match trace::read(run_root, &pod.id) {
        Ok(phases) => pod.phases = phases,
        Err(err) => pod.errors.push(err.to_string()),
    }
    pod
}

/// The VMM's `Metrics`, within the API's deadline.
fn vmm_metrics(dir: &SandboxDir) -> Result<VmmSample, ps::ApiError> {
    let metrics = ps::vmm_api(dir)?.metrics()?;
    Ok(VmmSample {
        exits: metrics.exits_by_reason.into_iter().collect(),
        rss_bytes: metrics.vmm_rss_bytes,
        guest_memory_bytes: metrics.guest_memory_bytes,
        returned_memory_bytes: metrics.returned_memory_bytes,
    })
}

#[cfg(test)]
mod tests;
