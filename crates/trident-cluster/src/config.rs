//! `trident node` settings, layered: command-line flag > `TRIDENT_*` environment variable >
//! TOML file (`--config`) > default. Every setting has a default that works on a laptop.
//!
//! ```toml
//! # trident-node.toml (every key optional; names as the flags, with `_` for `-`)
//! model = "/models/bge-m3"
//! brokers = "kafka-0:9092,kafka-1:9092"
//! group = "trident"
//! input_topic = "docs"
//! output_topic = "embeddings"
//! dlq_topic = "docs-dlq"
//! redis = "redis://redis:6379"
//! cache = true
//! store = true
//! # Extra librdkafka properties, for the consumer and the producer / only one of them:
//! [kafka]
//! "security.protocol" = "ssl"
//! [kafka_consumer]
//! "fetch.max.bytes" = 10485760
//! [kafka_producer]
//! "compression.type" = "lz4"
//! ```
//! Environment: `TRIDENT_BROKERS`, `TRIDENT_INPUT_TOPIC`, `TRIDENT_CACHE=true`, … (the key in
//! upper case with the `TRIDENT_` prefix).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::ClusterError;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct NodeConfig {
    /// Model directory.
    pub model: Option<PathBuf>,
    /// Kafka bootstrap servers, comma-separated.
    pub brokers: String,
    /// Consumer group: nodes of one group share the input partitions.
    pub group: String,
    pub input_topic: Option<String>,
    pub output_topic: Option<String>,
    /// Dead-letter topic for bad records and encoder failures (none: they are logged and skipped).
    pub dlq_topic: Option<String>,
    /// Redis URL for `cache` and `store`.
    pub redis: Option<String>,
    /// Content cache in Redis (best effort).
    pub cache: bool,
    /// Result store in Redis (a sink: a record's offset is stored only after its result is).
    pub store: bool,
    pub dense: bool,
    pub sparse: bool,
    pub colbert: bool,
    pub max_length: usize,
    pub batch_tokens: usize,
    pub max_wait_ms: u64,
    pub workers: usize,
    /// CPU threads per worker (0 = all cores).
    pub threads: usize,
    /// Precision of the linear layers: `f32`, `bf16` or `int8` (CPU only; unset: f32 on CPU, bf16 on CUDA).
    pub precision: Option<String>,
    /// Cap of the CPU kernels' instruction set: generic, avx2, avx512, amx (unset: the CPU's best).
    pub cpu_isa: Option<String>,
    /// CUDA bf16 attention kernel: `tensor-core` or `generic`.
    pub cuda_attention: String,
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// CUDA device ordinals, `workers` workers each (empty: `device` decides).
    pub devices: Vec<usize>,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    pub metrics_addr: Option<String>,
    pub cache_ttl_secs: u64,
    /// Prefix of every Redis key.
    pub key_prefix: String,
    /// Larger input values are dead-lettered.
    pub max_record_bytes: usize,
    /// Pause the input partitions above this many tokens in flight (0 = 8 × batch_tokens × workers).
    pub high_water_tokens: usize,
    /// Resume below this many (0 = half the high-water mark).
    pub low_water_tokens: usize,
    /// Pause above this many records in flight.
    pub max_records_in_flight: usize,
    /// Pause above this many input bytes in flight (resume below half): with the token marks,
    /// what bounds the node's memory whatever the records' sizes.
    pub max_bytes_in_flight: usize,
    /// A dead letter carries at most this many bytes of the original value (header
    /// `trident.truncated` says when it was cut).
    pub dlq_max_value_bytes: usize,
    /// How long a transient producer failure is retried before the record is dead-lettered
    /// (or, for a dead letter, dropped and counted).
    pub produce_retry_ms: u64,
    /// On SIGTERM/SIGINT, how long to finish in-flight work before committing and exiting.
    pub shutdown_deadline_ms: u64,
    /// On a partition revoke, how long to let its in-flight records finish before committing.
    pub revoke_drain_ms: u64,
    /// Output message format: json, msgpack (compact binary values), or a vector store's
    /// feed: milvus, qdrant, vespa.
    pub output_format: trident_core::Format,
    /// Number type of published and stored dense vectors: f32, f16, bf16.
    pub dense_encoding: trident_core::DenseEncoding,
    /// Number type of published and stored ColBERT rows: f32, f16, binary.
    pub colbert_encoding: trident_core::ColbertEncoding,
    /// Where ColBERT rows go: `auto` (in the output message when it fits the producer's limit,
    /// else in the result store when on, else left out and marked `colbert_omitted`), `topic`
    /// (always in the message; one over the limit is dead-lettered), `store` (result store
    /// only), `topic:NAME` (their own message on topic NAME), `none` (not computed).
    pub colbert_placement: String,
    /// With `output_format = "qdrant"`: the `collection_name` every point carries, as Qdrant's
    /// Kafka sink connector requires.
    pub qdrant_collection: String,
    pub kafka: BTreeMap<String, serde_json::Value>,
    pub kafka_consumer: BTreeMap<String, serde_json::Value>,
    pub kafka_producer: BTreeMap<String, serde_json::Value>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            model: None,
            brokers: "127.0.0.1:9092".into(),
            group: "trident".into(),
            input_topic: None,
            output_topic: None,
            dlq_topic: None,
            redis: None,
            cache: false,
            store: false,
            dense: false,
            sparse: false,
            colbert: false,
            max_length: 8192,
            batch_tokens: 16384,
            max_wait_ms: 20,
            workers: 1,
            threads: 0,
            precision: None,
            cpu_isa: None,
            cuda_attention: "tensor-core".into(),
            device: "cpu".into(),
            devices: Vec::new(),
            metrics_addr: None,
            cache_ttl_secs: 7 * 24 * 3600,
            key_prefix: "trident".into(),
            max_record_bytes: 1 << 20,
            high_water_tokens: 0,
            low_water_tokens: 0,
            max_records_in_flight: 20_000,
            max_bytes_in_flight: 64 << 20,
            dlq_max_value_bytes: 64 << 10,
            produce_retry_ms: 60_000,
            shutdown_deadline_ms: 10_000,
            revoke_drain_ms: 5_000,
            output_format: trident_core::Format::Json,
            dense_encoding: Default::default(),
            colbert_encoding: Default::default(),
            colbert_placement: "auto".into(),
            qdrant_collection: "trident".into(),
            kafka: BTreeMap::new(),
            kafka_consumer: BTreeMap::new(),
            kafka_producer: BTreeMap::new(),
        }
    }
}

impl NodeConfig {
    /// Checks the settings together (each names the setting at fault).
    pub fn validate(&self) -> Result<(), ClusterError> {
        let need = |v: &Option<String>, name: &str| match v {
            Some(s) if !s.is_empty() => Ok(()),
            _ => Err(ClusterError::config(name, "is required (flag, TRIDENT_ env or config file)")),
        };
        need(&self.input_topic, "input_topic")?;
        need(&self.output_topic, "output_topic")?;
        if self.model.is_none() {
            return Err(ClusterError::config("model", "is required"));
        }
        if (self.cache || self.store) && self.redis.is_none() {
            return Err(ClusterError::config(
                "redis",
                "--cache and --store need --redis redis://HOST:PORT",
            ));
        }
        if self.max_length < 2 {
            return Err(ClusterError::config("max_length", "must be at least 2"));
        }
        if self.batch_tokens == 0 || self.workers == 0 {
            return Err(ClusterError::config("batch_tokens/workers", "must be positive"));
        }
        if self.max_bytes_in_flight == 0 {
            return Err(ClusterError::config("max_bytes_in_flight", "must be positive"));
        }
        match self.placement()? {
            ColbertPlacement::Store if !self.store => {
                return Err(ClusterError::config(
                    "colbert_placement",
                    "`store` needs the result store (--store with --redis)",
                ));
            }
            ColbertPlacement::OwnTopic(t) if Some(&t) == self.output_topic.as_ref() => {
                return Err(ClusterError::config(
                    "colbert_placement",
                    "topic:NAME must name a topic other than output_topic",
                ));
            }
            ColbertPlacement::None if self.modes().is_none() => {
                return Err(ClusterError::config(
                    "colbert_placement",
                    "`none` with only --colbert requested leaves nothing to compute",
                ));
            }
            _ => {}
        }
        let limit = self.message_max_bytes()?;
        if limit < 16 << 10 {
            return Err(ClusterError::config(
                "kafka_producer.message.max.bytes",
                format!("{limit} is too small for a dead letter (at least 16384)"),
            ));
        }
        Ok(())
    }

    pub fn placement(&self) -> Result<ColbertPlacement, ClusterError> {
        self.colbert_placement.parse().map_err(|e| ClusterError::config("colbert_placement", e))
    }

    /// The outputs to compute: the mode flags (none = all three), without ColBERT when its
    /// placement is `none`; `None` when that leaves nothing.
    pub fn modes(&self) -> Option<trident_core::Modes> {
        let mut m = trident_core::Modes::from_flags(self.dense, self.sparse, self.colbert);
        if self.colbert_placement == "none" {
            m.colbert = false;
        }
        m.any().then_some(m)
    }

    /// The producer's `message.max.bytes` (`[kafka_producer]`, then `[kafka]`, else
    /// librdkafka's default): no message over it is ever sent.
    pub fn message_max_bytes(&self) -> Result<usize, ClusterError> {
        let Some(v) = self
            .kafka_producer
            .get("message.max.bytes")
            .or_else(|| self.kafka.get("message.max.bytes"))
        else {
            return Ok(crate::deliver::DEFAULT_MESSAGE_MAX_BYTES);
        };
        kafka_value(v).parse().map_err(|_| {
            ClusterError::config("message.max.bytes", format!("expected a byte count, got {v}"))
        })
    }

    /// Bytes of the original value a dead letter keeps: the setting, and never so many that
    /// the dead letter (with its key and headers) would be over the message limit.
    pub fn dlq_value_bytes(&self) -> usize {
        let limit = self.message_max_bytes().unwrap_or(crate::deliver::DEFAULT_MESSAGE_MAX_BYTES);
        self.dlq_max_value_bytes.min(limit.saturating_sub(8 << 10))
    }

    pub fn high_water(&self) -> usize {
        if self.high_water_tokens > 0 {
            self.high_water_tokens
        } else {
            8 * self.batch_tokens * self.workers * self.devices.len().max(1)
        }
    }

    pub fn low_water(&self) -> usize {
        if self.low_water_tokens > 0 {
            self.low_water_tokens.min(self.high_water())
        } else {
            self.high_water() / 2
        }
    }
}

/// Where a node puts ColBERT rows (`colbert_placement`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ColbertPlacement {
    Auto,
    Topic,
    Store,
    OwnTopic(String),
    None,
}

impl std::str::FromStr for ColbertPlacement {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(ColbertPlacement::Auto),
            "topic" => Ok(ColbertPlacement::Topic),
            "store" => Ok(ColbertPlacement::Store),
            "none" => Ok(ColbertPlacement::None),
            _ => match s.strip_prefix("topic:") {
                Some(t) if !t.is_empty() => Ok(ColbertPlacement::OwnTopic(t.to_string())),
                _ => Err(format!("{s:?}: expected auto, topic, store, topic:NAME or none")),
            },
        }
    }
}

/// librdkafka property values as strings (TOML numbers and booleans allowed).
pub fn kafka_value(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
