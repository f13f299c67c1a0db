//! The content cache: embeddings keyed by model + options + text (see `codec::cache_key`).
//! In memory for `trident embed`; Redis for a cluster (shared by every node, with a TTL). Best
//! effort: a failed lookup is a miss, a failed write is dropped; both are counted.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::ConnectionManager;
use trident_core::Embedding;

use crate::codec::{decode_value, encode_value};
use crate::{EngineError, Metrics};

#[derive(Clone)]
pub enum Cache {
    Memory(Arc<MemoryCache>),
    Redis(Arc<RedisCache>),
}

/// Entries by key, keys in insertion order (for eviction), and the bytes the entries hold.
type Entries = (HashMap<String, Arc<Embedding>>, VecDeque<String>, usize);

/// Bytes an in-process cache may hold: a real model's document with ColBERT rows is megabytes,
/// so a count of entries alone does not bound memory.
pub const MEMORY_CACHE_BYTES: usize = 256 << 20;

/// A bounded in-process cache (oldest entries evicted first, by count and by bytes).
pub struct MemoryCache {
    inner: Mutex<Entries>,
    capacity: usize,
    max_bytes: usize,
}

/// The heap bytes of a cached embedding (what the byte bound counts).
fn size_of(e: &Embedding) -> usize {
    64 + 4 * e.dense.as_ref().map_or(0, Vec::len)
        + 8 * e.sparse.as_ref().map_or(0, Vec::len)
        + 4 * e.colbert.as_ref().map_or(0, Vec::len)
}

pub struct RedisCache {
    conn: ConnectionManager,
    ttl_secs: u64,
    metrics: Metrics,
}

/// A Redis connection that reconnects by itself and fails fast while the server is down.
pub fn redis_connection(url: &str) -> Result<ConnectionManager, EngineError> {
    let err =
        |e: redis::RedisError| EngineError::Redis { url: url.to_string(), msg: e.to_string() };
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
    /// At most `capacity` entries and [`MEMORY_CACHE_BYTES`].
    pub fn memory(capacity: usize) -> Cache {
        Cache::Memory(Arc::new(MemoryCache {
            inner: Mutex::new((HashMap::new(), VecDeque::new(), 0)),
            capacity,
            max_bytes: MEMORY_CACHE_BYTES,
        }))
    }

    pub fn redis(url: &str, ttl_secs: u64, metrics: Metrics) -> Result<Cache, EngineError> {
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
                let size = size_of(e);
                if size > m.max_bytes {
                    return;
                }
                let mut g = m.inner.lock().unwrap();
                match g.0.insert(key.clone(), Arc::new(e.clone())) {
                    None => g.1.push_back(key),
                    Some(old) => g.2 -= size_of(&old),
                }
                g.2 += size;
                while g.1.len() > m.capacity || g.2 > m.max_bytes {
                    let Some(old) = g.1.pop_front() else { break };
                    if let Some(e) = g.0.remove(&old) {
                        g.2 -= size_of(&e);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(rows: usize) -> Embedding {
        Embedding {
            tokens: rows + 1,
            truncated: false,
            dense: Some(vec![0.5; 8]),
            sparse: None,
            colbert: Some(vec![0.25; rows * 8]),
            colbert_dim: 8,
        }
    }

    #[test]
    fn memory_cache_is_bounded_by_bytes_and_count() {
        let m = Arc::new(MemoryCache {
            inner: Mutex::new((HashMap::new(), VecDeque::new(), 0)),
            capacity: 100,
            max_bytes: 10_000,
        });
        let cache = Cache::Memory(m.clone());
        for i in 0..50 {
            cache.put(format!("k{i}"), &doc(40)); // ~1.4 KB each
            let g = m.inner.lock().unwrap();
            assert!(g.2 <= 10_000, "{} bytes held", g.2);
            assert_eq!(g.2, g.0.values().map(|e| size_of(e)).sum::<usize>());
            assert_eq!(g.0.len(), g.1.len());
        }
        assert!(m.inner.lock().unwrap().0.contains_key("k49"), "the newest is kept");
        cache.put("huge".into(), &doc(10_000));
        assert!(!m.inner.lock().unwrap().0.contains_key("huge"), "over the whole budget: not kept");
        cache.put("k49".into(), &doc(1));
        let g = m.inner.lock().unwrap();
        assert_eq!(g.2, g.0.values().map(|e| size_of(e)).sum::<usize>(), "replacing re-counts");
    }
}
