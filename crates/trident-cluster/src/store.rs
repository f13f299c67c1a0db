//! The Redis result store: each document's result under `{prefix}:doc:{id}` in the binary format
//! of `codec`. A sink: writes are retried until Redis takes them, and a record is acknowledged
//! (so its offset may be stored) only once its result is stored.

use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio::sync::mpsc;
use trident_core::{DocId, Embedding};

use crate::cache::redis_connection;
use crate::codec::{decode_value, store_key};
use crate::{ClusterError, Metrics};

/// A pending write: the key, the value, and what to call once it is stored.
pub struct StoreWrite {
    pub key: String,
    pub value: Vec<u8>,
    pub done: Box<dyn FnOnce() + Send>,
}

/// Start the writer task: it takes whatever writes are queued (up to 512), sends them as one
/// pipeline, and on failure waits (backing off to 2 s) and retries the same writes.
pub fn start_writer(
    url: &str,
    metrics: Metrics,
) -> Result<mpsc::UnboundedSender<StoreWrite>, ClusterError> {
    let conn = redis_connection(url)?;
    let (tx, mut rx) = mpsc::unbounded_channel::<StoreWrite>();
    let url = url.to_string();
    tokio::spawn(async move {
        let mut buf = Vec::new();
        while rx.recv_many(&mut buf, 512).await > 0 {
            let mut pipe = redis::pipe();
            for w in &buf {
                pipe.cmd("SET").arg(&w.key).arg(&w.value).ignore();
            }
            let mut backoff = Duration::from_millis(100);
            loop {
                let mut c = conn.clone();
                match tokio::time::timeout(Duration::from_secs(5), pipe.query_async::<()>(&mut c))
                    .await
                {
                    Ok(Ok(())) => break,
                    Ok(Err(e)) => {
                        tracing::warn!("result store {url}: {e}; retrying in {backoff:?}")
                    }
                    Err(_) => {
                        tracing::warn!("result store {url}: timed out; retrying in {backoff:?}")
                    }
                }
                metrics.store_errors.inc();
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            for w in buf.drain(..) {
                (w.done)();
            }
        }
    });
    Ok(tx)
}

/// Read stored results by id: `(id, embedding)` per id, `None` where nothing is stored.
pub async fn lookup(
    url: &str,
    prefix: &str,
    ids: &[DocId],
) -> Result<Vec<Option<(DocId, Embedding)>>, ClusterError> {
    let client = redis::Client::open(url)
        .map_err(|e| ClusterError::Redis { url: url.into(), msg: e.to_string() })?;
    let mut conn: ConnectionManager = client
        .get_connection_manager()
        .await
        .map_err(|e| ClusterError::Redis { url: url.into(), msg: e.to_string() })?;
    lookup_on(&mut conn, url, prefix, ids).await
}

/// `lookup` over an open connection (the HTTP server keeps one): one MGET, values decoded.
pub async fn lookup_on(
    conn: &mut ConnectionManager,
    url: &str,
    prefix: &str,
    ids: &[DocId],
) -> Result<Vec<Option<(DocId, Embedding)>>, ClusterError> {
    let keys: Vec<String> = ids.iter().map(|id| store_key(prefix, id)).collect();
    let mut cmd = redis::cmd("MGET");
    keys.iter().for_each(|k| {
        cmd.arg(k);
    });
    let values: Vec<Option<Vec<u8>>> = if keys.is_empty() {
        Vec::new()
    } else {
        cmd.query_async(conn)
            .await
            .map_err(|e| ClusterError::Redis { url: url.into(), msg: e.to_string() })?
    };
    values
        .into_iter()
        .zip(ids.iter().zip(&keys))
        .map(|(v, (id, key))| match v {
            None => Ok(None),
            Some(bytes) => {
                let (stored_id, e) = decode_value(&bytes)
                    .map_err(|msg| ClusterError::Codec { key: key.clone(), msg })?;
                Ok(Some((stored_id.unwrap_or_else(|| id.clone()), e)))
            }
        })
        .collect()
}
