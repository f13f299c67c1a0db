//! The node's Kafka consumer context: on a revoke, in-flight records of the revoked partitions
//! get `revoke_drain_ms` to finish and their offsets are committed; on an assign, the table
//! learns the partitions (the consume loop then resumes them).

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::ClientContext;

use super::table::Shared;

/// The consumer's context: rebalance handling.
pub(super) struct NodeContext {
    pub(super) shared: Arc<Shared>,
}

impl ClientContext for NodeContext {}

impl ConsumerContext for NodeContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else { return };
        let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
        tracing::info!("partitions {parts:?} revoked; draining in-flight records");
        let closing = self.shared.closing.load(std::sync::atomic::Ordering::SeqCst);
        let drain = if closing { Duration::ZERO } else { self.shared.revoke_drain };
        let deadline = std::time::Instant::now() + drain;
        while self.shared.part_in_flight(&parts) > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let left = self.shared.part_in_flight(&parts);
        if left > 0 {
            tracing::warn!(
                "{left} records of revoked partitions unfinished; their new owner redoes them"
            );
        }
        if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::debug!("commit on revoke: {e}");
        }
        self.shared.revoke(&parts);
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let mut t = self.shared.table.lock().unwrap();
            let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            tracing::info!("partitions {parts:?} assigned");
            for p in parts {
                t.assign(p);
            }
            self.shared.assigned.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

pub(super) type NodeConsumer = StreamConsumer<NodeContext>;
