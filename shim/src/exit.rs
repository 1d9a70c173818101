//! The exit of one process, set once and awaited by any number of callers.

use protobuf::well_known_types::timestamp::Timestamp;
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Exit status containerd reports for a process whose VM died under it.
pub const VM_GONE_STATUS: u32 = 255;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// Exit code, or 128 + signal number.
    pub status: u32,
    /// When it ended.
    pub at: SystemTime,
}

impl Exit {
    /// An exit with `status` now.
    pub fn now(status: u32) -> Self {
        Self {
            status,
            at: SystemTime::now(),
        }
    }

    /// An exit at `nanos` since the Unix epoch (now if 0).
    pub fn at_unix_nanos(status: u32, nanos: u64) -> Self {
        let at = if nanos == 0 {
            SystemTime::now()
        } else {
            UNIX_EPOCH + Duration::from_nanos(nanos)
        };
        Self { status, at }
    }

    /// The time as containerd's protobuf timestamp.
    pub fn timestamp(&self) -> Timestamp {
        timestamp(self.at)
    }
}

/// `at` as a protobuf timestamp.
pub fn timestamp(at: SystemTime) -> Timestamp {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(since.subsec_nanos()).unwrap_or(0),
        ..Default::default()
    }
}

/// A process's exit: unset while it runs, set exactly once.
#[derive(Debug, Default)]
pub struct ExitCell {
    exit: Mutex<Option<Exit>>,
    changed: Condvar,
}

impl ExitCell {
    /// Records `exit` unless an exit is already recorded; true if this call set it.
    pub fn set(&self, exit: Exit) -> bool {
        let mut slot = self.exit.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.is_some() {
            return false;
        }
        *slot = Some(exit);
        self.changed.notify_all();
        true
    }

    /// The exit, if the process ended.
    pub fn get(&self) -> Option<Exit> {
        *self.exit.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Blocks until the process ended.
    pub fn wait(&self) -> Exit {
        let mut slot = self.exit.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(exit) = *slot {
                return exit;
            }
            slot = self
                .changed
                .wait(slot)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Blocks until the process ended or `timeout` passed.
    pub fn wait_for(&self, timeout: Duration) -> Option<Exit> {
        let slot = self.exit.lock().unwrap_or_else(PoisonError::into_inner);
        let (slot, _) = self
            .changed
            .wait_timeout_while(slot, timeout, |exit| exit.is_none())
            .unwrap_or_else(PoisonError::into_inner);
        *slot
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn the_first_exit_wins_and_wakes_every_waiter() {
        let cell = Arc::new(ExitCell::default());
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let cell = Arc::clone(&cell);
                std::thread::spawn(move || cell.wait().status)
            })
            .collect();
        assert_eq!(cell.wait_for(Duration::from_millis(10)), None);
        assert!(cell.set(Exit::now(42)));
        assert!(!cell.set(Exit::now(VM_GONE_STATUS)));
        for waiter in waiters {
            assert_eq!(waiter.join().unwrap(), 42);
        }
        assert_eq!(cell.get().map(|e| e.status), Some(42));
    }

    #[test]
    fn timestamps_keep_nanoseconds() {
        let exit = Exit::at_unix_nanos(0, 1_500_000_123);
        let ts = exit.timestamp();
        assert_eq!((ts.seconds, ts.nanos), (1, 500_000_123));
    }
}
