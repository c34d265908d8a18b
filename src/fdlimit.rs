//! The open-file limit: raised from soft to hard at start, and the connection cap derived from it.
//!
//! Every accepted connection is a file descriptor. With the common soft limit of 1,024
//! about a thousand idle or stalled clients used to exhaust it: `accept` then failed with
//! `EMFILE`, and probes and the whole API were unreachable. [`raise`] lifts the soft limit
//! to the hard one (what an unprivileged process may do), and [`connection_cap`] keeps
//! the connections [`RESERVED_FDS`] below it, so the database, model files and logs
//! always find a descriptor and `accept` never fails for lack of one.

/// Descriptors kept free for everything but client connections: the SQLite pool (three
/// files per connection: database, WAL, shared memory), the writer, scanner and checkpoint
/// connections, model files being written or read, the listener, the runtime's own.
pub const RESERVED_FDS: u64 = 128;

/// The open-file limit before and after [`raise`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimits {
    /// The soft limit the process started with.
    pub soft_before: u64,
    /// The soft limit now (the hard limit when raising succeeded).
    pub soft: u64,
    pub hard: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit. `None` where the limit cannot be
/// read (not Linux with glibc); an `Err` when `setrlimit` refused (the limits are
/// unchanged then).
pub fn raise() -> Option<Result<FdLimits, (FdLimits, std::io::Error)>> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one `rlimit` into the valid, exclusively borrowed `lim`.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
            return None;
        }
        let before = FdLimits {
            soft_before: lim.rlim_cur,
            soft: lim.rlim_cur,
            hard: lim.rlim_max,
        };
        if lim.rlim_cur >= lim.rlim_max {
            return Some(Ok(before));
        }
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit only reads the valid `raised`; it changes a process attribute.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Some(Err((before, std::io::Error::last_os_error())));
        }
        Some(Ok(FdLimits {
            soft: lim.rlim_max,
            ..before
        }))
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    None
}

/// The soft `RLIMIT_NOFILE` in force (`None` where it cannot be read).
pub fn soft_limit() -> Option<u64> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one `rlimit` into the valid, exclusively borrowed `lim`.
        (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0).then_some(lim.rlim_cur)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    None
}

/// [`raise`], logging the limits before and after (or why they could not be raised).
/// Returns the soft limit in force, if known.
pub fn raise_and_log() -> Option<u64> {
    match raise() {
        Some(Ok(l)) => {
            tracing::info!(
                soft_before = l.soft_before,
                soft = l.soft,
                hard = l.hard,
                "open-file limit"
            );
            Some(l.soft)
        }
        Some(Err((l, e))) => {
            tracing::warn!(
                soft = l.soft,
                hard = l.hard,
                error = %e,
                "could not raise the open-file limit to its hard limit"
            );
            Some(l.soft)
        }
        None => {
            tracing::info!("open-file limit unknown on this platform");
            None
        }
    }
}

/// Open connections allowed: `configured` (0 = automatic), never more than the soft
/// limit minus [`RESERVED_FDS`] (at least 16). With an unknown limit, `configured` or
/// 10,000.
pub fn connection_cap(configured: usize, soft_limit: Option<u64>) -> usize {
    let Some(soft) = soft_limit else {
        return if configured == 0 { 10_000 } else { configured };
    };
    let room = usize::try_from(soft.saturating_sub(RESERVED_FDS).max(16)).unwrap_or(usize::MAX);
    if configured == 0 {
        room
    } else {
        configured.min(room)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_stays_below_the_limit() {
        assert_eq!(connection_cap(0, Some(1024)), 1024 - RESERVED_FDS as usize);
        assert_eq!(connection_cap(100, Some(1024)), 100);
        assert_eq!(connection_cap(5000, Some(1024)), 896, "clamped to the room");
        assert_eq!(connection_cap(0, Some(20)), 16);
        assert_eq!(connection_cap(0, None), 10_000);
        assert_eq!(connection_cap(7, None), 7);
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn raising_reaches_the_hard_limit() {
        let l = raise().unwrap().unwrap();
        assert_eq!(l.soft, l.hard);
        assert!(l.soft >= l.soft_before);
    }
}
