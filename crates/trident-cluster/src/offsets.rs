//! Per-partition offset tracking. Length bucketing finishes records out of order, so the offset
//! a partition may store is the lowest offset still in flight (or one past the highest seen when
//! nothing is in flight): everything before it has been acknowledged by every enabled sink.

use std::collections::BTreeSet;

#[derive(Debug, Default)]
pub struct PartitionTracker {
    pending: BTreeSet<i64>,
    /// One past the highest offset taken.
    next: Option<i64>,
    /// The last offset handed out to store (the next offset to consume after a restart).
    stored: Option<i64>,
}

impl PartitionTracker {
    /// A record at `offset` was taken from the partition.
    pub fn begin(&mut self, offset: i64) {
        self.pending.insert(offset);
        // Where consumption started counts as stored: there is nothing to commit before it.
        self.stored.get_or_insert(offset);
        self.next = Some(self.next.map_or(offset + 1, |n| n.max(offset + 1)));
    }

    /// A record was acknowledged by every sink. Returns the new offset to store when the
    /// contiguous prefix grew.
    pub fn ack(&mut self, offset: i64) -> Option<i64> {
        if !self.pending.remove(&offset) {
            return None;
        }
        let watermark = self.pending.first().copied().or(self.next)?;
        if self.stored.is_none_or(|s| watermark > s) {
            self.stored = Some(watermark);
            Some(watermark)
        } else {
            None
        }
    }

    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    pub fn stored(&self) -> Option<i64> {
        self.stored
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn stores_only_contiguous_prefix() {
        let mut t = PartitionTracker::default();
        for o in 10..15 {
            t.begin(o);
        }
        assert_eq!(t.ack(12), None);
        assert_eq!(t.ack(10), Some(11));
        assert_eq!(t.ack(11), Some(13));
        assert_eq!(t.ack(14), None);
        assert_eq!(t.ack(13), Some(15));
        assert_eq!(t.ack(13), None, "double ack is ignored");
        assert_eq!(t.in_flight(), 0);
    }

    proptest! {
        /// Whatever the ack order, the stored offset never passes a record not yet acknowledged,
        /// and ends one past the last offset.
        #[test]
        fn never_passes_unacked(order in Just((0..60i64).collect::<Vec<_>>()).prop_shuffle()) {
            let mut t = PartitionTracker::default();
            for o in 0..60 { t.begin(o); }
            let mut acked = std::collections::HashSet::new();
            for o in order {
                acked.insert(o);
                if let Some(s) = t.ack(o) {
                    prop_assert!((0..s).all(|x| acked.contains(&x)));
                }
            }
            prop_assert_eq!(t.stored(), Some(60));
        }
    }
}
