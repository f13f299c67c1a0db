//! The bound on work in flight (records taken from a source and not yet acknowledged by its
//! sinks, their tokens and their raw bytes): sources wait, or pause their partitions, above the
//! high-water marks. Tokens are estimated from a record's size when it is taken (nothing is
//! tokenized yet) and corrected once the coordinator knows the real count, so one huge record
//! counts in full from the moment it enters.

use std::sync::Mutex;
use tokio::sync::Notify;

#[derive(Clone, Copy, Debug)]
pub struct FlightLimits {
    /// Above this many tokens in flight a source stops taking records.
    pub high_tokens: usize,
    /// A paused source resumes once tokens in flight fall below this.
    pub low_tokens: usize,
    /// Hard bound on records in flight (bounds memory for records not yet tokenized).
    pub max_records: usize,
    /// Above this many input bytes in flight a source stops taking records; it resumes below half.
    pub max_bytes: usize,
}

/// Counts in flight.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub records: usize,
    pub tokens: usize,
    pub bytes: usize,
}

#[derive(Default)]
pub struct InFlight {
    counts: Mutex<Counts>,
    changed: Notify,
}

/// A record's tokens before tokenizing: about one per three bytes (less for Latin text, about
/// right for CJK), plus the two specials, capped at the max length it will be truncated to.
pub fn estimate_tokens(bytes: usize, max_length: usize) -> usize {
    (bytes / 3 + 2).min(max_length)
}

impl InFlight {
    /// A record entered with `bytes` of input and an estimate of its tokens.
    pub fn take(&self, records: usize, tokens: usize, bytes: usize) {
        let mut c = self.counts.lock().unwrap();
        c.records += records;
        c.tokens += tokens;
        c.bytes += bytes;
    }

    pub fn add_records(&self, n: usize) {
        self.take(n, 0, 0);
    }

    /// Replace a token estimate by the real count (0 when the record will not be encoded).
    pub fn correct_tokens(&self, estimate: usize, actual: usize) {
        {
            let mut c = self.counts.lock().unwrap();
            c.tokens = c.tokens.saturating_sub(estimate) + actual;
        }
        if actual < estimate {
            self.changed.notify_waiters();
        }
    }

    /// A record left the pipeline (acknowledged), with the tokens and bytes it had added.
    pub fn release(&self, records: usize, tokens: usize, bytes: usize) {
        {
            let mut c = self.counts.lock().unwrap();
            c.records = c.records.saturating_sub(records);
            c.tokens = c.tokens.saturating_sub(tokens);
            c.bytes = c.bytes.saturating_sub(bytes);
        }
        self.changed.notify_waiters();
    }

    pub fn counts(&self) -> Counts {
        *self.counts.lock().unwrap()
    }

    pub fn above_high(&self, l: &FlightLimits) -> bool {
        let c = self.counts();
        c.records >= l.max_records || c.tokens >= l.high_tokens || c.bytes >= l.max_bytes
    }

    pub fn below_low(&self, l: &FlightLimits) -> bool {
        let c = self.counts();
        c.records < l.max_records / 2 + 1
            && c.tokens < l.low_tokens
            && c.bytes < l.max_bytes / 2 + 1
    }

    /// Wait until something was released (or `timeout` passed).
    pub async fn changed(&self, timeout: std::time::Duration) {
        let _ = tokio::time::timeout(timeout, self.changed.notified()).await;
    }

    /// Wait until below the low-water marks.
    pub async fn wait_below_low(&self, l: &FlightLimits) {
        while !self.below_low(l) {
            self.changed(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Wait until nothing is in flight, or the deadline passes; true when drained.
    pub async fn drain(&self, deadline: tokio::time::Instant) -> bool {
        loop {
            if self.counts().records == 0 {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            self.changed(std::time::Duration::from_millis(20)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_count_bytes_and_corrected_tokens() {
        let l =
            FlightLimits { high_tokens: 1000, low_tokens: 500, max_records: 10, max_bytes: 1000 };
        let f = InFlight::default();
        f.take(1, estimate_tokens(900, 8192), 900);
        assert!(!f.above_high(&l), "900 bytes, 302 estimated tokens: under the marks");
        f.take(1, 0, 200);
        assert!(f.above_high(&l), "1100 bytes are over the 1000-byte mark");
        f.release(1, 0, 200);
        f.correct_tokens(302, 40);
        assert_eq!(f.counts(), Counts { records: 1, tokens: 40, bytes: 900 });
        assert!(!f.below_low(&l), "900 bytes are above half the byte mark");
        f.release(1, 40, 900);
        assert!(f.below_low(&l));
        assert_eq!(estimate_tokens(1 << 20, 8192), 8192, "capped at the max length");
    }
}
