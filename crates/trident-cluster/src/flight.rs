//! The bound on work in flight (records taken from a source and not yet acknowledged by its
//! sinks, and their tokens): sources wait, or pause their partitions, above the high-water marks.

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
}

#[derive(Default)]
pub struct InFlight {
    counts: Mutex<(usize, usize)>,
    changed: Notify,
}

impl InFlight {
    pub fn add_records(&self, n: usize) {
        self.counts.lock().unwrap().0 += n;
    }

    pub fn add_tokens(&self, n: usize) {
        self.counts.lock().unwrap().1 += n;
    }

    /// A record left the pipeline (acknowledged), with the tokens it had added.
    pub fn release(&self, records: usize, tokens: usize) {
        {
            let mut c = self.counts.lock().unwrap();
            c.0 = c.0.saturating_sub(records);
            c.1 = c.1.saturating_sub(tokens);
        }
        self.changed.notify_waiters();
    }

    /// (records, tokens) in flight.
    pub fn get(&self) -> (usize, usize) {
        *self.counts.lock().unwrap()
    }

    pub fn above_high(&self, l: &FlightLimits) -> bool {
        let (r, t) = self.get();
        r >= l.max_records || t >= l.high_tokens
    }

    pub fn below_low(&self, l: &FlightLimits) -> bool {
        let (r, t) = self.get();
        r < l.max_records / 2 + 1 && t < l.low_tokens
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
            if self.get().0 == 0 {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            self.changed(std::time::Duration::from_millis(20)).await;
        }
    }
}
