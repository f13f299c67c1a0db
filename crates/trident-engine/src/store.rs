//! The Redis result store: each document's result under `{prefix}:doc:{id}` in the binary format
//! of `codec`. A sink: writes are retried until Redis takes them, and a record is acknowledged
//! (so its offset may be stored) only once its result is stored.
//!
//! Newest wins: a value carries the (partition, offset) of the record it came from, and the
//! write is a compare-and-set in one Lua script — a result of an earlier offset of the same
//! partition never replaces a later one (e.g. a late write of a node whose partition was revoked
//! after the new owner stored the newer version). One key per write, so it works on Redis Cluster.

use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio::sync::mpsc;
use trident_core::{DocId, Format, Record};

use crate::cache::redis_connection;
use crate::codec::{decode_stored, store_key};
use crate::{EngineError, Metrics};

/// A pending write: the key, the value, and what to call once it is stored.
pub struct StoreWrite {
    pub key: String,
    pub value: Vec<u8>,
    pub done: Box<dyn FnOnce() + Send>,
}

/// KEYS[1] the document key, ARGV[1] the new value. Returns 1 when written, 0 when the stored
/// value is of a later offset of the same partition. The version is read in place: in a
/// MessagePack value (`trident_core::output::write_msgpack`) the first entry is
/// `"src": [int32 partition, int64 offset]` (big-endian, fixed width, at bytes 7 and 12); in a
/// value of trident 0.1's binary layout (`codec`, magic TRD1) it is at byte 9 when flag bit4 is set.
const NEWEST_WINS: &str = r#"
local function version(v)
  if #v >= 20 and string.sub(v, 2, 7) == '\163src\146\210' and string.byte(v, 12) == 211 then
    local p = struct.unpack('>i4', v, 8)
    local o = struct.unpack('>i8', v, 13)
    return p, o
  end
  if #v >= 21 and string.sub(v, 1, 4) == 'TRD1' and bit.band(string.byte(v, 5), 16) ~= 0 then
    return struct.unpack('<i4i8', v, 10)
  end
  return nil
end
local new = ARGV[1]
local cur = redis.call('GET', KEYS[1])
if cur then
  local cp, co = version(cur)
  local np, no = version(new)
  if cp and np and cp == np and co > no then return 0 end
end
redis.call('SET', KEYS[1], new)
return 1
"#;

/// Start the writer task: it takes whatever writes are queued (up to 512), sends them as one
/// pipeline, and on failure waits (backing off to 2 s) and retries the same writes.
pub fn start_writer(
    url: &str,
    metrics: Metrics,
) -> Result<mpsc::UnboundedSender<StoreWrite>, EngineError> {
    let conn = redis_connection(url)?;
    let (tx, mut rx) = mpsc::unbounded_channel::<StoreWrite>();
    let url = url.to_string();
    tokio::spawn(async move {
        let mut buf = Vec::new();
        while rx.recv_many(&mut buf, 512).await > 0 {
            let mut pipe = redis::pipe();
            for w in &buf {
                pipe.cmd("EVAL").arg(NEWEST_WINS).arg(1).arg(&w.key).arg(&w.value);
            }
            let mut backoff = Duration::from_millis(100);
            loop {
                let mut c = conn.clone();
                match tokio::time::timeout(
                    Duration::from_secs(5),
                    pipe.query_async::<Vec<i64>>(&mut c),
                )
                .await
                {
                    Ok(Ok(written)) => {
                        let stale = written.iter().filter(|&&w| w == 0).count();
                        metrics.store_stale_skipped.inc_by(stale as u64);
                        break;
                    }
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

/// Read stored results by id: per id, the result as the JSON object `trident embed` writes (in
/// the encoding it was stored in), `None` where nothing is stored.
pub async fn lookup(
    url: &str,
    prefix: &str,
    ids: &[DocId],
) -> Result<Vec<Option<String>>, EngineError> {
    let client = redis::Client::open(url)
        .map_err(|e| EngineError::Redis { url: url.into(), msg: e.to_string() })?;
    let mut conn: ConnectionManager = client
        .get_connection_manager()
        .await
        .map_err(|e| EngineError::Redis { url: url.into(), msg: e.to_string() })?;
    lookup_on(&mut conn, url, prefix, ids).await
}

/// `lookup` over an open connection (the HTTP server keeps one): one MGET, values decoded.
pub async fn lookup_on(
    conn: &mut ConnectionManager,
    url: &str,
    prefix: &str,
    ids: &[DocId],
) -> Result<Vec<Option<String>>, EngineError> {
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
            .map_err(|e| EngineError::Redis { url: url.into(), msg: e.to_string() })?
    };
    values
        .into_iter()
        .zip(ids.iter().zip(&keys))
        .map(|(v, (id, key))| match v {
            None => Ok(None),
            Some(bytes) => {
                let d = decode_stored(&bytes)
                    .map_err(|msg| EngineError::Codec { key: key.clone(), msg })?;
                let id = d.id.as_ref().unwrap_or(id);
                let r = Record { id, e: &d.e, enc: d.enc, note: None, version: None };
                Ok(Some(String::from_utf8(r.write(Format::Json)).expect("JSON is UTF-8")))
            }
        })
        .collect()
}
