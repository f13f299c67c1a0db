//! The content cache: embeddings keyed by model + options + text (see `codec::cache_key`).
//! In memory for `trident embed`; Redis for a cluster (shared by every node, with a TTL). Best
//! effort: a failed lookup is a miss, a failed write is dropped; both are counted.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::ConnectionManager;
use trident_core::Embedding;

use crate::codec::{decode_value, encode_value};
use crate::{ClusterError, Metrics};

#[derive(Clone)]
pub enum Cache {
    Memory(Arc<MemoryCache>),
    Redis(Arc<RedisCache>),
}

/// Entries by key, and keys in insertion order (for eviction).
type Entries = (HashMap<String, Arc<Embedding>>, VecDeque<String>);

/// A bounded in-process cache (oldest entries evicted first).
pub struct MemoryCache {
    inner: Mutex<Entries>,
    capacity: usize,
}

pub struct RedisCache {
    conn: ConnectionManager,
    ttl_secs: u64,
    metrics: Metrics,
}

/// A Redis connection that reconnects by itself and fails fast while the server is down.
pub fn redis_connection(url: &str) -> Result<ConnectionManager, ClusterError> {
    let err =
        |e: redis::RedisError| ClusterError::Redis { url: url.to_string(), msg: e.to_string() };
    let client = redis::Client::open(url).map_err(err)?;
    let cfg = redis::aio::ConnectionManagerConfig::new()
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_millis(500))
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(2)));
    ConnectionManager::new_lazy_with_config(client, cfg).map_err(err)
}

impl Cache {
    pub fn memory(capacity: usize) -> Cache {
        Cache::Memory(Arc::new(MemoryCache {
            inner: Mutex::new((HashMap::new(), VecDeque::new())),
            capacity,
        }))
    }

    pub fn redis(url: &str, ttl_secs: u64, metrics: Metrics) -> Result<Cache, ClusterError> {
        Ok(Cache::Redis(Arc::new(RedisCache { conn: redis_connection(url)?, ttl_secs, metrics })))
    }

    /// Look up many keys; a missing, undecodable or unreachable entry is `None`.
    pub async fn get_many(&self, keys: &[String]) -> Vec<Option<Embedding>> {
        if keys.is_empty() {
            return Vec::new();
        }
        match self {
            Cache::Memory(m) => {
                let g = m.inner.lock().unwrap();
                keys.iter().map(|k| g.0.get(k).map(|e| (**e).clone())).collect()
            }
            Cache::Redis(r) => {
                let mut conn = r.conn.clone();
                let mut cmd = redis::cmd("MGET");
                keys.iter().for_each(|k| {
                    cmd.arg(k);
                });
                let got = tokio::time::timeout(
                    Duration::from_secs(2),
                    cmd.query_async::<Vec<Option<Vec<u8>>>>(&mut conn),
                )
                .await;
                match got {
                    Ok(Ok(values)) => values
                        .into_iter()
                        .map(|v| v.and_then(|b| decode_value(&b).ok()).map(|(_, e)| e))
                        .collect(),
                    Ok(Err(e)) => {
                        r.metrics.cache_errors.inc();
                        tracing::debug!("cache lookup failed (treated as misses): {e}");
                        vec![None; keys.len()]
                    }
                    Err(_) => {
                        r.metrics.cache_errors.inc();
                        vec![None; keys.len()]
                    }
                }
            }
        }
    }

    /// Remember an embedding (in the background for Redis).
    pub fn put(&self, key: String, e: &Embedding) {
        match self {
            Cache::Memory(m) => {
                let mut g = m.inner.lock().unwrap();
                if g.0.insert(key.clone(), Arc::new(e.clone())).is_none() {
                    g.1.push_back(key);
                }
                while g.1.len() > m.capacity {
                    if let Some(old) = g.1.pop_front() {
                        g.0.remove(&old);
                    }
                }
            }
            Cache::Redis(r) => {
                let value = encode_value(None, e);
                let r = r.clone();
                tokio::spawn(async move {
                    let mut conn = r.conn.clone();
                    let mut cmd = redis::cmd("SET");
                    cmd.arg(&key).arg(value).arg("EX").arg(r.ttl_secs.max(1));
                    match tokio::time::timeout(
                        Duration::from_secs(2),
                        cmd.query_async::<()>(&mut conn),
                    )
                    .await
                    {
                        Ok(Ok(())) => {}
                        _ => r.metrics.cache_errors.inc(),
                    }
                });
            }
        }
    }
}
