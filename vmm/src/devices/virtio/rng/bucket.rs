//! A token bucket: what the guest may take from the host's entropy source,
//! in bytes, refilled at a steady rate up to a burst.

use std::time::{Duration, Instant};

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Bytes the guest may take now, refilled at `rate` bytes a second up to
/// `capacity`.
#[derive(Debug)]
pub struct TokenBucket {
    rate: u64,
    capacity: u64,
    tokens: u64,
    /// The time the tokens were counted up to.
    counted: Instant,
}

impl TokenBucket {
    /// A full bucket of `capacity` bytes refilled at `rate` bytes a second
    /// (both at least 1).
    pub fn new(rate: u64, capacity: u64, now: Instant) -> Self {
        let capacity = capacity.max(1);
        Self {
            rate: rate.max(1),
            capacity,
            tokens: capacity,
            counted: now,
        }
    }

    /// Takes `cost` bytes (at most the capacity), or says how long until
    /// the bucket holds them.
    pub fn take(&mut self, cost: u64, now: Instant) -> Result<(), Duration> {
        let cost = cost.min(self.capacity);
        self.refill(now);
        if self.tokens >= cost {
            self.tokens -= cost;
            return Ok(());
        }
        let missing = u128::from(cost - self.tokens);
        let rate = u128::from(self.rate);
        let nanos = (missing * NANOS_PER_SEC).div_ceil(rate);
        Err(Duration::from_nanos(
            u64::try_from(nanos).unwrap_or(u64::MAX),
        ))
    }

    /// Adds what flowed in since the last count; the fraction of a byte not
    /// yet earned carries over.
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.counted).as_nanos();
        let rate = u128::from(self.rate);
        let earned = elapsed * rate / NANOS_PER_SEC;
        let room = u128::from(self.capacity - self.tokens);
        if earned >= room {
            self.tokens = self.capacity;
            self.counted = now;
        } else if earned > 0 {
            // `earned` < `room` <= u64::MAX, and its time <= `elapsed`.
            self.tokens += earned as u64;
            let spent = earned * NANOS_PER_SEC / rate;
            self.counted += Duration::from_nanos(spent as u64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_full_bucket_gives_its_burst_then_waits_for_the_rate() {
        let start = Instant::now();
        // 1000 bytes a second, 100 at once.
        let mut bucket = TokenBucket::new(1000, 100, start);
        assert_eq!(bucket.take(60, start), Ok(()));
        assert_eq!(bucket.take(40, start), Ok(()));
        assert_eq!(bucket.take(10, start), Err(10 * MS));
        assert_eq!(bucket.take(10, start + 5 * MS), Err(5 * MS));
        assert_eq!(bucket.take(10, start + 10 * MS), Ok(()));
    }

    #[test]
    fn fractions_of_a_byte_carry_over() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(3, 10, start);
        assert_eq!(bucket.take(10, start), Ok(()));
        // One byte every 333.3 ms: three arrive in one second however
        // finely it is sampled.
        for step in 1..=100 {
            let _ = bucket.take(0, start + 10 * MS * step);
        }
        assert_eq!(bucket.take(3, start + Duration::from_secs(1)), Ok(()));
        assert!(bucket.take(1, start + Duration::from_secs(1)).is_err());
    }

    #[test]
    fn a_quiet_spell_refills_no_more_than_the_capacity() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(1 << 20, 4096, start);
        assert_eq!(bucket.take(4096, start), Ok(()));
        let later = start + Duration::from_secs(3600);
        assert_eq!(bucket.take(4096, later), Ok(()));
        assert!(bucket.take(1, later).is_err());
    }

    #[test]
    fn a_cost_above_the_capacity_costs_the_capacity() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(100, 50, start);
        assert_eq!(bucket.take(1000, start), Ok(()));
        assert_eq!(bucket.take(1000, start), Err(500 * MS));
    }
}
