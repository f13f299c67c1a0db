//! Newest version wins, per document id within one partition assignment.
//!
//! Length bucketing finishes records out of order, so two versions of one id (offsets 10 and 12)
//! may come back as 12 then 10. The rules, per (assignment epoch, id):
//! - a result is *superseded* (acknowledged, never published) when a later offset of the id has
//!   been decoded and is still coming, or has already been published or failed;
//! - otherwise it is published, but only after the id's previous publication has been delivered
//!   (output topic and store): one publication per id at a time, so a producer retry of the old
//!   one cannot land after the new one. While one is in progress the newest ready result waits
//!   ("parked"); a newer result replaces a parked one, which is then superseded.
//!
//! The source decodes a partition in offset order, so an id's undecoded records are all later
//! than its decoded ones; an id's state is dropped once nothing of it is pending, publishing or
//! parked.

use std::collections::{BTreeSet, HashMap};

#[derive(Default)]
struct KeyState {
    /// Offsets decoded and not yet finished.
    pending: BTreeSet<i64>,
    /// Highest offset published (or publishing) or failed.
    newest: Option<i64>,
    /// A publication of this id is in progress.
    busy: bool,
    /// The ready result waiting for `busy` to clear: (offset, ticket).
    parked: Option<(i64, u64)>,
}

impl KeyState {
    fn idle(&self) -> bool {
        self.pending.is_empty() && !self.busy && self.parked.is_none()
    }
}

/// What to do with a ready result.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Publish,
    /// Wait for the id's current publication; `published` hands the ticket back.
    Park,
    Superseded,
}

#[derive(Default)]
pub struct KeyOrder {
    epochs: HashMap<u64, HashMap<String, KeyState>>,
}

impl KeyOrder {
    /// A record of `key` at `offset` decoded (its result will come).
    pub fn decoded(&mut self, epoch: u64, key: &str, offset: i64) {
        let st = self.epochs.entry(epoch).or_default().entry(key.to_string()).or_default();
        st.pending.insert(offset);
    }

    /// The result of `key` at `offset` (ticket `ticket`) is ready. Returns the verdict and, when
    /// it replaced a parked result, that result's ticket (now superseded).
    pub fn ready(
        &mut self,
        epoch: u64,
        key: &str,
        offset: i64,
        ticket: u64,
    ) -> (Verdict, Option<u64>) {
        let keys = self.epochs.entry(epoch).or_default();
        let st = keys.entry(key.to_string()).or_default();
        st.pending.remove(&offset);
        let later_coming = st.pending.range(offset + 1..).next().is_some();
        if later_coming || st.newest.is_some_and(|n| n > offset) {
            Self::tidy(keys, key);
            return (Verdict::Superseded, None);
        }
        st.newest = Some(offset);
        if st.busy {
            let replaced = st.parked.replace((offset, ticket)).map(|(_, t)| t);
            (Verdict::Park, replaced)
        } else {
            st.busy = true;
            (Verdict::Publish, None)
        }
    }

    /// The record of `key` at `offset` ended without a result (dead-lettered): earlier results
    /// of the id are stale all the same.
    pub fn failed(&mut self, epoch: u64, key: &str, offset: i64) {
        let Some(keys) = self.epochs.get_mut(&epoch) else { return };
        let Some(st) = keys.get_mut(key) else { return };
        st.pending.remove(&offset);
        st.newest = Some(st.newest.map_or(offset, |n| n.max(offset)));
        Self::tidy(keys, key);
    }

    /// The id's publication was delivered. Returns the parked ticket to publish next, if any
    /// (the id stays busy with it).
    pub fn published(&mut self, epoch: u64, key: &str) -> Option<u64> {
        let keys = self.epochs.get_mut(&epoch)?;
        let st = keys.get_mut(key)?;
        st.busy = false;
        let next = st.parked.take().map(|(_, t)| t);
        if next.is_some() {
            st.busy = true;
        }
        Self::tidy(keys, key);
        next
    }

    /// The assignment ended: forget its ids; returns the parked tickets (to release).
    pub fn revoke(&mut self, epoch: u64) -> Vec<u64> {
        self.epochs
            .remove(&epoch)
            .map(|keys| keys.into_values().filter_map(|s| s.parked.map(|(_, t)| t)).collect())
            .unwrap_or_default()
    }

    /// Ids with state (leak checks in the tests).
    #[cfg(test)]
    pub fn tracked(&self) -> usize {
        self.epochs.values().map(|k| k.len()).sum()
    }

    fn tidy(keys: &mut HashMap<String, KeyState>, key: &str) {
        if keys.get(key).is_some_and(KeyState::idle) {
            keys.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn an_older_result_after_a_newer_one_is_superseded() {
        let mut o = KeyOrder::default();
        o.decoded(1, "a", 10);
        o.decoded(1, "a", 12);
        assert_eq!(o.ready(1, "a", 12, 112), (Verdict::Publish, None));
        assert_eq!(o.ready(1, "a", 10, 110), (Verdict::Superseded, None));
        assert_eq!(o.published(1, "a"), None);
        assert_eq!(o.tracked(), 0);
    }

    #[test]
    fn an_older_result_while_a_newer_one_is_coming_is_superseded() {
        let mut o = KeyOrder::default();
        o.decoded(1, "a", 10);
        o.decoded(1, "a", 12);
        assert_eq!(o.ready(1, "a", 10, 110).0, Verdict::Superseded);
        assert_eq!(o.ready(1, "a", 12, 112).0, Verdict::Publish);
    }

    #[test]
    fn a_newer_result_waits_for_the_publication_in_progress() {
        let mut o = KeyOrder::default();
        o.decoded(1, "a", 10);
        assert_eq!(o.ready(1, "a", 10, 110).0, Verdict::Publish);
        o.decoded(1, "a", 12);
        o.decoded(1, "a", 14);
        assert_eq!(o.ready(1, "a", 12, 112), (Verdict::Superseded, None), "14 still coming");
        assert_eq!(o.ready(1, "a", 14, 114), (Verdict::Park, None));
        o.decoded(1, "a", 15);
        assert_eq!(o.ready(1, "a", 15, 115), (Verdict::Park, Some(114)));
        assert_eq!(o.published(1, "a"), Some(115));
        assert_eq!(o.published(1, "a"), None);
        assert_eq!(o.tracked(), 0);
    }

    #[test]
    fn a_failed_newer_version_supersedes_older_results_and_revoke_releases() {
        let mut o = KeyOrder::default();
        o.decoded(1, "a", 10);
        o.decoded(1, "a", 11);
        o.failed(1, "a", 11);
        assert_eq!(o.ready(1, "a", 10, 110).0, Verdict::Superseded);
        o.decoded(2, "b", 1);
        o.decoded(2, "b", 2);
        assert_eq!(o.ready(2, "b", 1, 101).0, Verdict::Superseded);
        assert_eq!(o.ready(2, "b", 2, 102).0, Verdict::Publish);
        o.decoded(2, "b", 3);
        assert_eq!(o.ready(2, "b", 3, 103).0, Verdict::Park);
        assert_eq!(o.revoke(2), vec![103]);
        assert_eq!(o.tracked(), 0);
    }

    proptest! {
        /// Whatever order results come in, the published offsets of an id increase, the last
        /// published is the newest offset, and no state is left behind.
        #[test]
        fn publications_increase_and_end_with_the_newest(
            order in Just((0..12i64).collect::<Vec<_>>()).prop_shuffle(),
            deliver_every in 1usize..4,
        ) {
            let mut o = KeyOrder::default();
            for off in 0..12 { o.decoded(7, "k", off); }
            let mut published = Vec::new();
            let mut in_progress: Option<i64> = None;
            for (i, off) in order.into_iter().enumerate() {
                match o.ready(7, "k", off, off as u64).0 {
                    Verdict::Publish => { prop_assert!(in_progress.is_none()); in_progress = Some(off); }
                    Verdict::Park | Verdict::Superseded => {}
                }
                if i % deliver_every == 0 {
                    if let Some(p) = in_progress.take() {
                        published.push(p);
                        in_progress = o.published(7, "k").map(|t| t as i64);
                    }
                }
            }
            while let Some(p) = in_progress.take() {
                published.push(p);
                in_progress = o.published(7, "k").map(|t| t as i64);
            }
            prop_assert!(published.windows(2).all(|w| w[0] < w[1]), "{:?}", published);
            prop_assert_eq!(published.last().copied(), Some(11));
            prop_assert_eq!(o.tracked(), 0);
        }
    }
}
