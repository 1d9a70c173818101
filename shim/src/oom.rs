//! Which of the OOM kills the guest reports become TaskOOM events.
//!
//! The guest is hostile: it may report OOM kills of containers it does not run
//! (another pod's ids) or flood the shim with reports. Only the pod's containers
//! that run in the guest pass, each at most once per [`OOM_INTERVAL`]. A TaskOOM
//! carries nothing but the container id, and containerd's CRI records each one
//! as the container's OOMKilled reason (a status write): a second report within
//! the interval tells containerd nothing new and costs it a write.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Shortest time between two TaskOOM events of one container.
pub const OOM_INTERVAL: Duration = Duration::from_secs(1);

/// Shortest time between two warnings about reports of unknown containers.
const UNKNOWN_WARN_INTERVAL: Duration = Duration::from_secs(10);

/// What to do with one OOM report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Publish it.
    Publish,
    /// A known container already had one within the interval: drop it.
    Limited,
    /// Not a container of this pod in the guest: drop it. `warn` is the number
    /// of such reports since the last warning when one is due now.
    Unknown { warn: Option<u64> },
}

/// The filter and per-container rate limit of OOM reports. It remembers only
/// known containers published within the last interval, so its memory is
/// bounded by the pod's containers whatever the guest sends.
#[derive(Debug)]
pub struct OomGate {
    interval: Duration,
    /// When each known container's last event was published.
    published: HashMap<String, Instant>,
    /// Unknown reports since the last warning.
    unknown: u64,
    last_warning: Option<Instant>,
}

impl OomGate {
    /// A gate letting through one event per container per `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            published: HashMap::new(),
            unknown: 0,
            last_warning: None,
        }
    }

    /// The verdict on a report for container `id` at `now`; `known` says
    /// whether `id` is one of the pod's containers that run in the guest.
    pub fn admit(&mut self, id: &str, known: bool, now: Instant) -> Verdict {
        if !known {
            self.unknown += 1;
            let due = self.last_warning.map_or(true, |last| {
                now.saturating_duration_since(last) >= UNKNOWN_WARN_INTERVAL
            });
            if !due {
                return Verdict::Unknown { warn: None };
            }
            self.last_warning = Some(now);
            return Verdict::Unknown {
                warn: Some(std::mem::take(&mut self.unknown)),
            };
        }
        let recent = |last: &Instant| now.saturating_duration_since(*last) < self.interval;
        if self.published.get(id).is_some_and(recent) {
            return Verdict::Limited;
        }
        self.published.retain(|_, last| recent(last));
        self.published.insert(id.to_string(), now);
        Verdict::Publish
    }

    /// How many containers it remembers.
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.published.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_filtered_limited_and_bounded() {
        let mut gate = OomGate::new(OOM_INTERVAL);
        let known = ["c1", "c2"];
        let start = Instant::now();
        let step = Duration::from_micros(10);
        let (mut published, mut limited, mut unknown, mut warnings) =
            (HashMap::new(), 0u64, 0u64, Vec::new());
        let mut most_tracked = 0;
        // 1,000,000 reports over 10 simulated seconds: half of them for the
        // pod's two containers, half for ids it does not know (all different).
        for i in 0..1_000_000u32 {
            let now = start + step * i;
            let id = match i % 4 {
                0 => known[0].to_string(),
                1 => known[1].to_string(),
                _ => format!("evil-{i}"),
            };
            match gate.admit(&id, known.contains(&id.as_str()), now) {
                Verdict::Publish => *published.entry(id).or_insert(0u32) += 1,
                Verdict::Limited => limited += 1,
                Verdict::Unknown { warn } => {
                    unknown += 1;
                    warnings.extend(warn);
                }
            }
            most_tracked = most_tracked.max(gate.tracked());
        }
        // One per container per second of the 10 s.
        assert_eq!(
            published,
            HashMap::from([("c1".into(), 10), ("c2".into(), 10)])
        );
        assert_eq!(limited, 500_000 - 20);
        assert_eq!(unknown, 500_000);
        assert_eq!(warnings, [1], "one warning per 10 s");
        assert!(most_tracked <= known.len(), "{most_tracked} tracked");
        // The next warning counts every report dropped since the last one.
        let later = start + Duration::from_secs(20);
        assert_eq!(
            gate.admit("evil", false, later),
            Verdict::Unknown {
                warn: Some(500_000)
            }
        );
    }

    #[test]
    fn a_quiet_container_is_forgotten() {
        let mut gate = OomGate::new(Duration::from_millis(100));
        let start = Instant::now();
        assert_eq!(gate.admit("c1", true, start), Verdict::Publish);
        assert_eq!(gate.admit("c1", true, start), Verdict::Limited);
        let later = start + Duration::from_millis(100);
        assert_eq!(gate.admit("c2", true, later), Verdict::Publish);
        assert_eq!(gate.tracked(), 1, "c1's entry expired");
        assert_eq!(gate.admit("c1", true, later), Verdict::Publish);
    }
}
