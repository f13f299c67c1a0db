//! `PartitionTracker` as the node uses it: records are taken while earlier ones are being
//! acknowledged, offsets may have gaps (compacted topics, transaction markers), and an offset
//! is only ever committed once every record before it is acknowledged.

use std::collections::BTreeSet;

use proptest::prelude::*;
use trident_cluster::offsets::PartitionTracker;

#[test]
fn gaps_in_the_offsets_do_not_hold_the_commit_back() {
    let mut t = PartitionTracker::default();
    for o in [10, 12, 15] {
        t.begin(o);
    }
    assert_eq!(t.stored(), Some(10));
    assert_eq!(t.ack(12), None, "10 is still in flight");
    assert_eq!(t.ack(10), Some(15), "11, 13 and 14 were never consumed: up to the next pending");
    assert_eq!(t.ack(15), Some(16), "one past the last offset taken");
    assert_eq!(t.in_flight(), 0);
}

#[test]
fn records_taken_while_others_are_acknowledged() {
    let mut t = PartitionTracker::default();
    t.begin(0);
    assert_eq!(t.ack(0), Some(1));
    t.begin(1);
    t.begin(2);
    assert_eq!(t.ack(2), None);
    t.begin(3);
    assert_eq!(t.ack(1), Some(3), "3 is taken and pending");
    assert_eq!(t.ack(7), None, "an offset never taken is ignored");
    assert_eq!(t.ack(3), Some(4));
    assert_eq!(t.stored(), Some(4));
}

#[test]
fn a_tracker_that_took_nothing_commits_nothing() {
    let mut t = PartitionTracker::default();
    assert_eq!(t.stored(), None);
    assert_eq!(t.ack(5), None);
    assert_eq!(t.in_flight(), 0);
}

proptest! {
    /// Offsets with gaps, taken in order and interleaved with acknowledgements in any order:
    /// the committed offset only grows, never passes an offset taken and not acknowledged,
    /// and ends one past the last offset taken.
    #[test]
    fn the_commit_only_grows_and_never_passes_a_pending_record(
        gaps in proptest::collection::vec(1i64..4, 1..60),
        picks in proptest::collection::vec(any::<prop::sample::Index>(), 0..200),
        take_first in proptest::collection::vec(any::<bool>(), 0..200),
    ) {
        let offsets: Vec<i64> = gaps.iter().scan(100i64, |o, g| { *o += g; Some(*o) }).collect();
        let mut t = PartitionTracker::default();
        let mut next = 0;
        let mut pending: BTreeSet<i64> = BTreeSet::new();
        let mut last: Option<i64> = None;
        let mut step = 0;
        while next < offsets.len() || !pending.is_empty() {
            let take = next < offsets.len()
                && (pending.is_empty() || take_first.get(step).copied().unwrap_or(true));
            if take {
                t.begin(offsets[next]);
                pending.insert(offsets[next]);
                next += 1;
            } else {
                let i = picks.get(step).map_or(0, |p| p.index(pending.len()));
                let o = *pending.iter().nth(i).unwrap();
                pending.remove(&o);
                if let Some(s) = t.ack(o) {
                    prop_assert!(last.is_none_or(|l| s > l), "{s} after {last:?}");
                    prop_assert!(pending.iter().all(|&p| p >= s), "{s} passes {pending:?}");
                    last = Some(s);
                }
            }
            prop_assert_eq!(t.in_flight(), pending.len());
            step += 1;
        }
        prop_assert_eq!(t.stored(), Some(offsets.last().unwrap() + 1));
    }
}
