//! Producing one message with a bounded outcome: permanent producer errors (too large, invalid
//! record, not authorized, unknown topic) end at once; transient ones (timeouts, brokers down,
//! leader changes) are retried with backoff until the retry budget is spent. Either way the
//! caller gets an answer within the budget, so no record holds its partition back longer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode as Code;

use trident_engine::Metrics;

/// librdkafka's default `message.max.bytes`.
pub const DEFAULT_MESSAGE_MAX_BYTES: usize = 1_000_000;

/// Whether the message itself is at fault (too large, invalid): another message may go through.
pub fn is_message_fault(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            Code::MessageSizeTooLarge
                | Code::InvalidMessageSize
                | Code::MessageBatchTooLarge
                | Code::InvalidMessage
                | Code::InvalidRecord
                | Code::BadMessage
        )
    )
}

/// Whether retrying could help.
pub fn is_permanent(e: &KafkaError) -> bool {
    is_message_fault(e)
        || matches!(
            e.rdkafka_error_code(),
            Some(
                Code::InvalidTopic
                    | Code::UnknownTopic
                    | Code::UnknownTopicOrPartition
                    | Code::UnknownPartition
                    | Code::TopicAuthorizationFailed
                    | Code::ClusterAuthorizationFailed
                    | Code::Authentication
                    | Code::SaslAuthenticationFailed
                    | Code::InvalidRequiredAcks
                    | Code::InvalidTimestamp
                    | Code::UnsupportedForMessageFormat
                    | Code::InvalidArgument
                    | Code::Fatal
            )
        )
}

/// A message to produce.
pub struct Message<'a> {
    pub topic: &'a str,
    pub key: Option<&'a [u8]>,
    pub value: &'a [u8],
    pub headers: &'a [(&'static str, String)],
}

/// Produce `msg`, retrying transient failures with backoff (100 ms doubling to 5 s) for at
/// most `budget`. The error says what failed last and whether it was permanent.
pub async fn deliver(
    producer: &FutureProducer,
    msg: &Message<'_>,
    budget: Duration,
    metrics: &Metrics,
) -> Result<(), String> {
    let started = Instant::now();
    let mut backoff = Duration::from_millis(100);
    let mut headers = OwnedHeaders::new();
    for (k, v) in msg.headers {
        headers = headers.insert(Header { key: k, value: Some(v.as_str()) });
    }
    loop {
        let left = budget.saturating_sub(started.elapsed());
        let mut rec = FutureRecord::<[u8], [u8]>::to(msg.topic).payload(msg.value);
        if let Some(k) = msg.key {
            rec = rec.key(k);
        }
        if !msg.headers.is_empty() {
            rec = rec.headers(headers.clone());
        }
        let err = match tokio::time::timeout(left, producer.send(rec, left)).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err((e, _))) => e,
            Err(_) => return Err(format!("not delivered within the retry budget of {budget:?}")),
        };
        if is_permanent(&err) {
            return Err(format!("{err} (permanent)"));
        }
        if started.elapsed() + backoff >= budget {
            return Err(format!("{err} (retried for {:?})", started.elapsed()));
        }
        metrics.produce_retries.inc();
        WARN.warn(&format!("producing to {}: {err}; retrying in {backoff:?}", msg.topic));
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Repeated warnings at most once per interval; the next one says how many were suppressed.
pub struct RateLimited {
    last: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
    every: Duration,
}

impl RateLimited {
    pub const fn new(every: Duration) -> Self {
        RateLimited { last: Mutex::new(None), suppressed: AtomicU64::new(0), every }
    }

    /// True when a message may be logged now, with how many were suppressed since the last.
    pub fn allow(&self) -> Option<u64> {
        let mut last = self.last.lock().unwrap();
        if last.is_some_and(|t| t.elapsed() < self.every) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *last = Some(Instant::now());
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }

    pub fn warn(&self, msg: &str) {
        match self.allow() {
            Some(0) => tracing::warn!("{msg}"),
            Some(n) => tracing::warn!("{msg} ({n} similar warnings suppressed)"),
            None => {}
        }
    }
}

static WARN: RateLimited = RateLimited::new(Duration::from_secs(5));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_and_authorization_errors_are_permanent_timeouts_are_not() {
        let p = |c| is_permanent(&KafkaError::MessageProduction(c));
        assert!(p(Code::MessageSizeTooLarge));
        assert!(p(Code::TopicAuthorizationFailed));
        assert!(p(Code::UnknownTopicOrPartition));
        assert!(!p(Code::MessageTimedOut));
        assert!(!p(Code::AllBrokersDown));
        assert!(!p(Code::NotLeaderForPartition));
        assert!(!p(Code::QueueFull));
    }

    #[test]
    fn warnings_are_rate_limited() {
        let r = RateLimited::new(Duration::from_secs(60));
        assert_eq!(r.allow(), Some(0));
        assert_eq!(r.allow(), None);
        assert_eq!(r.allow(), None);
        let r2 = RateLimited::new(Duration::ZERO);
        assert_eq!(r2.allow(), Some(0));
        assert_eq!(r2.allow(), Some(0));
    }
}
