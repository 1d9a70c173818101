//! What a guest refreshes from the host when its sandbox is made: its random
//! generator and its clock. A guest started from a VM template shares the
//! template's generator state and wakes with the template's time; a cold
//! boot only gains more entropy and keeps its clock.

use crate::error::{AgentError, Result};
use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Most host randomness taken in one request.
pub const MAX_ENTROPY_BYTES: usize = 512;
/// How far off the guest's clock may be before it is set.
const CLOCK_SLACK: Duration = Duration::from_secs(1);
/// `RNDADDENTROPY`: `_IOW('R', 0x03, int[2])`.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `RNDRESEEDCRNG`: `_IO('R', 0x07)`.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// Adds `seed` to the kernel's pool, credited in full, and reseeds the
/// generator from it, so that what follows differs from any other guest's.
pub fn reseed(seed: &[u8]) -> Result<()> {
    check_entropy(seed)?;
    if seed.is_empty() {
        return Ok(());
    }
    let random = OpenOptions::new()
        .write(true)
        .open("/dev/urandom")
        .map_err(|source| AgentError::Io {
            step: "open /dev/urandom".into(),
            source,
        })?;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut info = Vec::with_capacity(8 + seed.len().next_multiple_of(4));
    let bits = i32::try_from(seed.len() * 8).unwrap_or(i32::MAX);
    let size = i32::try_from(seed.len()).unwrap_or(i32::MAX);
    info.extend_from_slice(&bits.to_ne_bytes());
    info.extend_from_slice(&size.to_ne_bytes());
    info.extend_from_slice(seed);
    info.resize(info.capacity(), 0);
    // SAFETY: `info` is a rand_pool_info header followed by `buf_size`
    // bytes, the layout RNDADDENTROPY reads; the fd is open.
    if unsafe { libc::ioctl(random.as_raw_fd(), RNDADDENTROPY, info.as_ptr()) } != 0 {
        return Err(os_error("add host entropy (RNDADDENTROPY)"));
    }
    // SAFETY: RNDRESEEDCRNG takes no argument.
    if unsafe { libc::ioctl(random.as_raw_fd(), RNDRESEEDCRNG) } != 0 {
        return Err(os_error("reseed the generator (RNDRESEEDCRNG)"));
    }
    Ok(())
}

/// Refuses more than [`MAX_ENTROPY_BYTES`] of host randomness.
pub fn check_entropy(seed: &[u8]) -> Result<()> {
    if seed.len() > MAX_ENTROPY_BYTES {
        return Err(AgentError::InvalidArgument(format!(
            "entropy: {} bytes, at most {MAX_ENTROPY_BYTES}",
            seed.len()
        )));
    }
    Ok(())
}

/// Sets the wall clock to `realtime_ns` (the host's) when it is more than
/// [`CLOCK_SLACK`] off; 0 leaves it.
pub fn set_clock(realtime_ns: u64) -> Result<()> {
    if realtime_ns == 0 {
        return Ok(());
    }
    let host = Duration::from_nanos(realtime_ns);
    let guest = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let off = host.max(guest) - host.min(guest);
    if off <= CLOCK_SLACK {
        return Ok(());
    }
    let time = libc::timespec {
        tv_sec: libc::time_t::try_from(host.as_secs())
            .map_err(|_| AgentError::InvalidArgument(format!("realtime_ns {realtime_ns}")))?,
        tv_nsec: libc::c_long::from(host.subsec_nanos()),
    };
    // SAFETY: `time` is a valid timespec that outlives the call.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &time) } != 0 {
        return Err(os_error("set the clock"));
    }
    log::info!(
        "the guest's clock was {} s off the host's: set",
        off.as_secs()
    );
    Ok(())
}

fn os_error(step: &str) -> AgentError {
    AgentError::Io {
        step: step.into(),
        source: std::io::Error::last_os_error(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_entropy_than_the_limit_is_refused_naming_it() {
        assert!(check_entropy(&[7; MAX_ENTROPY_BYTES]).is_ok());
        let err = check_entropy(&[7; MAX_ENTROPY_BYTES + 1]).unwrap_err();
        assert!(err.to_string().contains("entropy: 513 bytes"), "{err}");
        assert!(reseed(&[7; MAX_ENTROPY_BYTES + 1]).is_err());
        assert!(reseed(&[]).is_ok(), "none asked, none added");
    }

    #[test]
    fn a_clock_within_a_second_of_the_hosts_is_left_alone() {
        // Setting it would need CAP_SYS_TIME; these must not try.
        set_clock(0).unwrap();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        set_clock(u64::try_from((now + Duration::from_millis(500)).as_nanos()).unwrap()).unwrap();
    }
}
