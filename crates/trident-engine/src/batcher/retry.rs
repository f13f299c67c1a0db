//! What the batcher does with a batch that failed on a worker. A failure may be the worker's
//! (a device error, a crash) or a record's (poison), so a batch is first retried as it is on
//! another worker; a batch that fails on two workers is split in halves, a half that fails again
//! is split again, and a record is declared poison only once it has failed alone on two
//! different workers (or twice on the only one), so one flaky worker cannot dead-letter good
//! records.

use std::time::Duration;

use crate::job::RetryState;

#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Retry the batch as it is, on a worker outside `failed_on` if one is up.
    Retry,
    /// Split it in halves.
    Split,
    /// Its single record is poison: report it failed.
    Poison,
}

/// The verdict for a batch of `len` records that just failed (its failing slot already pushed
/// onto `r.failed_on`). `alternative`: a worker outside `r.failed_on` is up or starting.
pub fn verdict(len: usize, r: &RetryState, alternative: bool) -> Verdict {
    let mut distinct = r.failed_on.clone();
    distinct.sort_unstable();
    distinct.dedup();
    let exhausted = distinct.len() >= 2 || (r.failed_on.len() >= 2 && !alternative);
    match (len, exhausted) {
        (1, true) => Verdict::Poison,
        (1, false) => Verdict::Retry,
        _ if r.split || exhausted => Verdict::Split,
        _ => Verdict::Retry,
    }
}

/// Whether the slot `index` may take a retry of a batch that failed on `failed_on`: any slot
/// outside it, or any slot at all when none outside it is `up`.
pub fn eligible(
    index: usize,
    failed_on: &[usize],
    up: impl Fn(usize) -> bool,
    slots: usize,
) -> bool {
    !failed_on.contains(&index) || !(0..slots).any(|j| !failed_on.contains(&j) && up(j))
}

/// The wait before restarting a worker after `failures` consecutive failed starts (≥ 1):
/// 1 s, doubling, at most 30 s.
pub fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1 << failures.saturating_sub(1).min(5)).min(Duration::from_secs(30))
}

/// Log a failed start only at 1, 2, 4, 8, … failures: a device that is gone for good is retried
/// every 30 s forever, and one line per retry would flood the log.
pub fn log_start_failure(failures: u32) -> bool {
    failures.is_power_of_two()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(failed_on: &[usize], split: bool) -> RetryState {
        RetryState { failed_on: failed_on.to_vec(), split, ..Default::default() }
    }

    #[test]
    fn a_batch_goes_to_another_worker_before_it_is_split() {
        assert_eq!(verdict(8, &r(&[0], false), true), Verdict::Retry);
        assert_eq!(verdict(8, &r(&[0, 1], false), true), Verdict::Split);
        // The only worker (or the only one up): retried there once, then split.
        assert_eq!(verdict(8, &r(&[0], false), false), Verdict::Retry);
        assert_eq!(verdict(8, &r(&[0, 0], false), false), Verdict::Split);
        // A half that fails again is split again.
        assert_eq!(verdict(4, &r(&[1], true), true), Verdict::Split);
    }

    #[test]
    fn a_record_is_poison_after_failing_alone_on_two_workers() {
        assert_eq!(verdict(1, &r(&[0], true), true), Verdict::Retry);
        assert_eq!(verdict(1, &r(&[0, 0], true), true), Verdict::Retry);
        assert_eq!(verdict(1, &r(&[0, 1], true), true), Verdict::Poison);
        assert_eq!(verdict(1, &r(&[0], false), false), Verdict::Retry);
        assert_eq!(verdict(1, &r(&[0, 0], false), false), Verdict::Poison);
    }

    #[test]
    fn retries_avoid_the_failed_workers_while_another_is_up() {
        let all_up = |_| true;
        assert!(!eligible(0, &[0], all_up, 2));
        assert!(eligible(1, &[0], all_up, 2));
        assert!(eligible(0, &[0], |j| j == 0, 2), "worker 1 is down");
        assert!(eligible(0, &[0], all_up, 1));
    }

    #[test]
    fn restart_backoff_doubles_up_to_30_s() {
        let s: Vec<u64> = (1..=8).map(|f| backoff(f).as_secs()).collect();
        assert_eq!(s, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert!([1, 2, 4, 8, 16, 32].iter().all(|&f| log_start_failure(f)));
        assert!(![3, 5, 6, 7, 9, 31].iter().any(|&f| log_start_failure(f)));
    }
}
