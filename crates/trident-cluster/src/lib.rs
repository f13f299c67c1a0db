//! trident-cluster: the Kafka endpoint of the engine — `trident node`. It consumes input
//! partitions (`node`), feeds the engine's coordinator, and its sink publishes results (or their
//! dead letters) to Kafka and the Redis store, then acknowledges: a record's offset is committed
//! only once its result is delivered (`offsets`), and results of one id leave in the order the
//! versions arrived (`key_order`). Settings are layered in `config`.

pub mod config;
pub mod dead_letter;
pub mod deliver;
pub mod error;
pub mod key_order;
pub mod node;
pub mod offsets;

pub use config::NodeConfig;
pub use error::{ClusterError, EngineError};
