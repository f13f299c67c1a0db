//! The Redis result store as seen by `/lookup`: results that nodes stored by document id, in
//! the key layout and binary format of `trident_engine::codec`.

use std::future::Future;
use std::pin::Pin;

use redis::aio::ConnectionManager;
use trident_core::DocId;
use trident_engine::cache::redis_connection;

pub type LookupFuture = Pin<Box<dyn Future<Output = Result<Vec<Option<String>>, String>> + Send>>;

/// Reads stored results. Each answer is the JSON object `trident embed` writes for that
/// document (`{"id", "tokens", "truncated", ...}`), or `None` when the id is not stored.
pub trait ResultStore: Send + Sync + 'static {
    fn get_many(&self, ids: Vec<DocId>) -> LookupFuture;
}

/// The result store in Redis, over one reconnecting connection shared by all requests.
pub struct RedisStore {
    conn: ConnectionManager,
    prefix: String,
    url: String,
}

impl RedisStore {
    /// Connects lazily: a Redis that is down makes lookups fail (503), not the server.
    pub fn new(url: &str, prefix: &str) -> Result<RedisStore, trident_engine::EngineError> {
        Ok(RedisStore {
            conn: redis_connection(url)?,
            prefix: prefix.to_string(),
            url: url.to_string(),
        })
    }
}

impl ResultStore for RedisStore {
    fn get_many(&self, ids: Vec<DocId>) -> LookupFuture {
        let mut conn = self.conn.clone();
        let (url, prefix) = (self.url.clone(), self.prefix.clone());
        Box::pin(async move {
            let found = trident_engine::store::lookup_on(&mut conn, &url, &prefix, &ids)
                .await
                .map_err(|e| e.to_string())?;
            Ok(found)
        })
    }
}
