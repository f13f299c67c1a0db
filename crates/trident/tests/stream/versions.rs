//! The newest version of a document wins, in the output topic and in the result store.

use std::collections::HashMap;
use std::time::Duration;

use crate::cluster_support::*;
use crate::{ends, json_rec, lookup, wait_committed_to_end, PARTS};

/// The same id written twice on one partition (a long version, then a short one): the newest
/// version is the last output message of the id and the stored value, for every id.
#[test]
fn s3_newest_version_wins() {
    let _g = serial();
    let Some(env) = Env::start(true) else { return };
    let topics = Topics::new(&env, "s3", PARTS);
    let n = 20;
    let mut records = Vec::new();
    let mut newest = Vec::new();
    for i in 0..n {
        let id = format!("s3-{i}");
        let old: Vec<String> = (0..150 + 5 * i).map(|j| format!("old{}", j % 13)).collect();
        let new = format!("the newest version of document {i}");
        let p = (i % PARTS as usize) as i32;
        records.push(json_rec(&id, serde_json::json!({"id": id, "text": old.join(" ")}), p));
        records.push(json_rec(&id, serde_json::json!({"id": id, "text": new}), p));
        newest.push((id, new));
    }
    // Fillers between them, so the versions land in different batches.
    let c = corpus("s3f", 80, 0, PARTS, 1 << 20);
    let mut mixed = Vec::new();
    for (i, r) in records.into_iter().enumerate() {
        mixed.push(r);
        mixed.extend(c.records.get(i * 2..i * 2 + 2).into_iter().flatten().cloned());
    }
    let positions = env.produce(&topics.input, &mixed);
    let url = env.redis.as_ref().unwrap().url();
    let maddr = format!("127.0.0.1:{}", free_port());
    let flags = ["--redis", &url, "--store", "--batch-tokens", "512", "--metrics-addr", &maddr];
    let _node = env.node("s3", "gs3", &topics, &flags, &[]);
    wait_committed_to_end(&env, "gs3", &topics.input, &ends(&positions), Duration::from_secs(180));
    let outs = env.read_now(&topics.output, 1);
    let want = reference(env.dir.path(), &newest);
    let mut last: HashMap<String, serde_json::Value> = HashMap::new();
    for o in &outs {
        last.insert(o.key_str(), o.json());
    }
    let ids: Vec<&str> = newest.iter().map(|(id, _)| id.as_str()).collect();
    for (id, v) in ids.iter().zip(lookup(&url, &ids)) {
        assert_same_output(&last[*id], &want[*id], &format!("{id} in the topic"));
        assert_same_output(&v, &want[*id], &format!("{id} in the store"));
    }
    let superseded = metric(&maddr, "trident_records_superseded_total").unwrap_or(0.0);
    eprintln!("s3: newest wins for {n} of {n} ids; {superseded} older results superseded");
}

/// The result store's compare-and-set against a real redis-server: a late write of an earlier
/// offset of the same partition (a node that lost the partition) never replaces a later one,
/// whether the values are compact (MessagePack) or of trident 0.1's layout (TRD1).
#[test]
fn s7_the_store_never_replaces_a_later_offset() {
    use trident_core::{DocId, Embedding};
    use trident_core::{Format, Record};
    use trident_engine::codec::{encode_versioned, store_key};
    use trident_engine::store::{lookup, start_writer, StoreWrite};
    let _g = serial();
    let Some(env) = Env::start(true) else { return };
    let url = env.redis.as_ref().unwrap().url();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build();
    rt.unwrap().block_on(async {
        let metrics = trident_engine::Metrics::new();
        let tx = start_writer(&url, metrics.clone()).unwrap();
        let id = DocId::from("doc");
        let stored = |tokens: usize, version: (i32, i64), old_layout: bool| {
            let e = Embedding {
                tokens,
                truncated: false,
                dense: Some(vec![tokens as f32]),
                sparse: None,
                colbert: None,
                colbert_dim: 0,
            };
            let (done, rx) = tokio::sync::oneshot::channel();
            let value = if old_layout {
                encode_versioned(Some(&id), &e, Some(version))
            } else {
                let enc = Default::default();
                Record { id: &id, e: &e, enc, note: None, version: Some(version) }
                    .write(Format::Msgpack)
            };
            let done = Box::new(move || {
                let _ = done.send(());
            });
            tx.send(StoreWrite { key: store_key("t", &id), value, done }).unwrap();
            let (url, id) = (url.clone(), id.clone());
            async move {
                rx.await.unwrap();
                let json = lookup(&url, "t", &[id]).await.unwrap().remove(0).unwrap();
                serde_json::from_str::<serde_json::Value>(&json).unwrap()["tokens"]
                    .as_u64()
                    .unwrap()
            }
        };
        assert_eq!(stored(12, (3, 12), false).await, 12);
        assert_eq!(
            stored(10, (3, 10), false).await,
            12,
            "an earlier offset does not replace a later one"
        );
        assert_eq!(
            stored(12, (3, 12), false).await,
            12,
            "the same offset again (a redo) is written"
        );
        assert_eq!(
            stored(5, (4, 5), false).await,
            5,
            "another partition's result is newer by arrival"
        );
        assert_eq!(stored(13, (4, 13), false).await, 13);
        assert_eq!(stored(1 << 20, (4, 1 << 40), false).await, 1 << 20, "offsets beyond 32 bits");
        assert_eq!(stored(14, (4, 14), false).await, 1 << 20);
        assert_eq!(stored(20, (5, 20), true).await, 20, "a 0.1 value");
        assert_eq!(stored(19, (5, 19), false).await, 20, "is newer than a compact one of before");
        assert_eq!(stored(18, (5, 18), true).await, 20);
        assert_eq!(stored(21, (5, 21), false).await, 21);
        assert_eq!(metrics.store_stale_skipped.get(), 4);
    });
}
