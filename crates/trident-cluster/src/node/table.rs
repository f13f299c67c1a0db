//! The node's in-flight table: every record taken from a partition until every sink has it,
//! the per-partition offset trackers, and the per-id publication order. Shared (under one lock)
//! by the source loop, the sink actor and the rebalance callback.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use trident_core::{DocId, Embedding};

use crate::key_order::KeyOrder;
use crate::offsets::PartitionTracker;
use trident_engine::flight::InFlight;
use trident_engine::Metrics;

pub(crate) struct Meta {
    pub partition: i32,
    pub offset: i64,
    /// The partition assignment this record belongs to (a revoke ends it).
    pub epoch: u64,
    pub key: Option<Vec<u8>>,
    /// The original value, shared with the coordinator: kept for a possible dead letter.
    pub value: Arc<[u8]>,
    /// Sinks that still have to confirm.
    pub pending: u8,
    /// Counted in flight: tokens (estimate, then real) and bytes.
    pub tokens: usize,
    pub bytes: usize,
    /// The document id as a key, once decoded.
    pub id_key: Option<String>,
    /// Its result is being published (output and store): the id's next result waits for it.
    pub publishing: bool,
}

pub(crate) struct PartState {
    pub epoch: u64,
    pub tracker: PartitionTracker,
}

#[derive(Default)]
pub(crate) struct Table {
    next_ticket: u64,
    next_epoch: u64,
    pub metas: HashMap<u64, Meta>,
    pub parts: HashMap<i32, PartState>,
    pub order: KeyOrder,
    /// Results waiting for their id's previous publication.
    pub parked: HashMap<u64, (DocId, Embedding)>,
}

impl Table {
    /// Start tracking partition `p` (a new assignment epoch) unless it is tracked.
    pub fn assign(&mut self, p: i32) {
        if !self.parts.contains_key(&p) {
            self.next_epoch += 1;
            let epoch = self.next_epoch;
            self.parts.insert(p, PartState { epoch, tracker: PartitionTracker::default() });
        }
    }

    /// Enter a record; returns its ticket.
    pub fn take(
        &mut self,
        partition: i32,
        offset: i64,
        key: Option<Vec<u8>>,
        value: Arc<[u8]>,
        tokens: usize,
        bytes: usize,
    ) -> u64 {
        self.next_ticket += 1;
        let ticket = self.next_ticket;
        self.assign(partition);
        let part = self.parts.get_mut(&partition).expect("assigned");
        part.tracker.begin(offset);
        let epoch = part.epoch;
        let meta = Meta {
            partition,
            offset,
            epoch,
            key,
            value,
            pending: 1,
            tokens,
            bytes,
            id_key: None,
            publishing: false,
        };
        self.metas.insert(ticket, meta);
        ticket
    }

    /// Whether the record's partition assignment is still ours.
    pub fn owned(&self, m: &Meta) -> bool {
        self.parts.get(&m.partition).is_some_and(|p| p.epoch == m.epoch)
    }
}

pub(crate) struct Shared {
    pub table: Mutex<Table>,
    pub flight: Arc<InFlight>,
    pub metrics: Metrics,
    pub topic: String,
    pub revoke_drain: Duration,
    /// Set at shutdown, after the drain: the final revoke commits without waiting again.
    pub closing: std::sync::atomic::AtomicBool,
    /// Set when partitions are assigned; the consume loop then settles their pause state.
    pub assigned: std::sync::atomic::AtomicBool,
}

impl Shared {
    pub fn part_in_flight(&self, partitions: &[i32]) -> usize {
        let t = self.table.lock().unwrap();
        partitions.iter().filter_map(|p| t.parts.get(p)).map(|s| s.tracker.in_flight()).sum()
    }

    /// Forget revoked partitions: their trackers, their ids' order and their parked results
    /// (released here: the new owner redoes those records).
    pub fn revoke(&self, partitions: &[i32]) {
        let mut t = self.table.lock().unwrap();
        for p in partitions {
            let Some(part) = t.parts.remove(p) else { continue };
            for ticket in t.order.revoke(part.epoch) {
                t.parked.remove(&ticket);
                if let Some(m) = t.metas.remove(&ticket) {
                    self.flight.release(1, m.tokens, m.bytes);
                    self.metrics.records_revoked.inc();
                }
            }
        }
    }
}
