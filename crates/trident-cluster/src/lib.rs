//! trident-cluster: the streaming pipeline that every endpoint of trident shares.
//!
//! ```text
//! source ─▶ Coordinator ─▶ Batcher ─▶ Worker × N ─▶ sink ─▶ acks ─▶ offset tracker
//!           decode, validate,   length buckets,   one Embedder each,
//!           cache, tokenize     budget, max wait  on a blocking thread
//! ```
//!
//! Roles are ractor actors on tokio (`coordinator`, `batcher`, `worker`, the sinks of `embed_file`
//! and `node`). `trident embed` (file/stdin → file/stdout, in-memory cache, `embed_file`) and
//! `trident node` (Kafka → Kafka + Redis, `node`) run the same actors with different endpoints;
//! the HTTP server uses [`Pipeline::embed`] on the same batcher and workers, with priority.

pub mod batcher;
pub mod cache;
pub mod codec;
pub mod config;
pub mod coordinator;
pub mod corpus;
pub mod cpu_clock;
pub mod dead_letter;
pub mod deliver;
pub mod embed_file;
pub mod error;
pub mod fault;
pub mod flight;
pub mod key_order;
pub mod metrics;
pub mod model;
pub mod node;
pub mod offsets;
pub mod pipeline;
pub mod record;
pub mod store;
pub mod tokenize;
pub mod worker;

pub use cache::Cache;
pub use config::NodeConfig;
pub use error::ClusterError;
pub use metrics::Metrics;
pub use pipeline::{EmbedderFactory, Pipeline, PipelineConfig, WorkerSpec};
pub use trident_core::batch::{BatchPolicy, Priority};
