//! Outputs the output topic cannot take: too large for a message (dead-lettered, kept in the
//! result store, or with their ColBERT rows on a topic of their own), hostile records, and a
//! broker that refuses every output.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::cluster_support::*;
use crate::{ends, fits, json_rec, long_docs, lookup, node_config, wait_committed_to_end};
use crate::{LIMIT, PARTS};

/// Oversize outputs and hostile records: each ends in the dead-letter topic (small, with its
/// reason), everything else is published once, and every partition is committed to its end.
#[test]
fn s1_oversize_and_hostile_records_never_stall() {
    let _g = serial();
    let Some(env) = Env::start(false) else { return };
    let topics = Topics::new(&env, "s1", PARTS);
    let c = corpus("s1", 300, 0, PARTS, 1 << 20);
    let long = long_docs(&env, "s1", 8);
    let mut records = c.records.clone();
    for (i, (id, text)) in long.iter().enumerate() {
        records.insert(
            i * 30,
            json_rec(id, serde_json::json!({"id": id, "text": text}), i as i32 % PARTS),
        );
    }
    let big_id = "i".repeat(600_000);
    let mut bad_utf8 = vec![b'a'; 1_010_000];
    bad_utf8.push(0xff);
    let hostile: Vec<(&str, Rec, &str)> = vec![
        (
            "s1-h-bigid",
            json_rec("s1-h-bigid", serde_json::json!({"id": big_id, "text": "hi"}), 0),
            "over the limit of 512",
        ),
        (
            "s1-h-utf8",
            Rec { key: Some(b"s1-h-utf8".to_vec()), value: bad_utf8, partition: 1 },
            "invalid UTF-8",
        ),
        (
            "s1-h-huge",
            json_rec(
                "s1-h-huge",
                serde_json::json!({"id": "s1-h-huge", "text": "x".repeat(1_100_000)}),
                2,
            ),
            "exceeds the limit",
        ),
        (
            "s1-h-type",
            json_rec("s1-h-type", serde_json::json!({"id": "j".repeat(600_000), "text": 5}), 3),
            "\"text\" must be a string",
        ),
        (
            "s1-h-empty",
            json_rec("s1-h-empty", serde_json::json!({"id": "s1-h-empty", "text": " "}), 0),
            "empty text",
        ),
    ];
    for (i, (_, r, _)) in hostile.iter().enumerate() {
        records.insert(50 + i * 40, r.clone());
    }
    // A megabyte Kafka key on a plain-text value: the key would be the id.
    let key_big = "k".repeat(600_000);
    records.insert(
        120,
        Rec {
            key: Some(key_big.clone().into_bytes()),
            value: b"plain text".to_vec(),
            partition: 1,
        },
    );
    let mut positions = env.produce(&topics.input, &records);
    positions.push((2, env.produce_tombstone(&topics.input, "s1-tomb", 2)));
    // Ordinary documents whose output is over the limit too are dead-lettered like the long ones.
    let want = reference(env.dir.path(), &c.good);
    let (good, over): (Vec<_>, Vec<_>) =
        c.good.iter().cloned().partition(|(id, _)| fits(&want[id]));
    let mut long = long;
    long.extend(over);
    let maddr = format!("127.0.0.1:{}", free_port());
    let cfg = node_config(&env, "colbert_placement = \"topic\"");
    let cfg = cfg.to_str().unwrap();
    let t0 = Instant::now();
    let mut node =
        env.node("s1", "gs1", &topics, &["--config", cfg, "--metrics-addr", &maddr], &[]);
    env.read_topic(&topics.output, 1, Duration::from_secs(180), |o| {
        let ids: HashSet<String> = o.iter().map(|o| o.key_str()).collect();
        good.iter().all(|(id, _)| ids.contains(id))
    });
    wait_committed_to_end(&env, "gs1", &topics.input, &ends(&positions), Duration::from_secs(60));
    let took = t0.elapsed();
    let outs = env.read_now(&topics.output, 1);
    let counts = id_counts(&outs);
    for o in &outs {
        let id = o.key_str();
        let w = want
            .get(&id)
            .unwrap_or_else(|| panic!("unexpected output id {}", &id[..id.len().min(80)]));
        assert_same_output(&o.json(), w, &id);
        assert!(o.value.len() <= LIMIT, "{id}: output of {} bytes", o.value.len());
    }
    let dups: usize = counts.values().map(|n| n - 1).sum();
    assert_eq!(dups, 0, "no duplicates without a restart");
    let dlq = env.read_now(&topics.dlq, 1);
    let by_key: HashMap<String, &Out> = dlq.iter().map(|o| (o.key_str(), o)).collect();
    for d in &dlq {
        let size = d.value.len() + d.key.as_ref().map_or(0, Vec::len);
        assert!(size < LIMIT, "a dead letter of {size} bytes");
    }
    for (id, _) in &long {
        let d = by_key.get(id).unwrap_or_else(|| panic!("{id} not dead-lettered"));
        let r = &d.headers["trident.reason"];
        assert!(r.starts_with("output_too_large"), "{id}: {r}");
        assert!(r.contains(&LIMIT.to_string()), "{id}: the reason names the limit: {r}");
    }
    for (key, rec, reason) in &hostile {
        let d = by_key.get(*key).unwrap_or_else(|| panic!("{key} not dead-lettered"));
        let r = &d.headers["trident.reason"];
        assert!(r.contains(reason), "{key}: reason {r:?} should mention {reason:?}");
        assert_eq!(d.headers["trident.value.bytes"], rec.value.len().to_string());
        if rec.value.len() > LIMIT {
            assert_eq!(d.headers.get("trident.truncated").map(String::as_str), Some("value"));
        }
    }
    let cut_key =
        dlq.iter().find(|d| d.headers.get("trident.truncated").is_some_and(|t| t.contains("key")));
    let cut_key = cut_key.expect("the megabyte-key record is dead-lettered with its key cut");
    assert!(cut_key.headers["trident.reason"].contains("key is 600000 bytes"));
    assert_eq!(dlq.len(), long.len() + hostile.len() + 1, "one dead letter each, nothing else");
    assert_eq!(metric(&maddr, "trident_tombstones_total"), Some(1.0));
    assert_eq!(metric(&maddr, "trident_records_dropped_total").unwrap_or(0.0), 0.0);
    eprintln!(
        "s1: {} records + tombstone: {} published, {} dead letters, committed to the end in {:.1}s",
        records.len(),
        outs.len(),
        dlq.len(),
        took.as_secs_f64()
    );
    node.signal("TERM");
    let (status, took) = node.wait_exit(Duration::from_secs(20)).expect("exits after SIGTERM");
    assert!(status.success() && took < Duration::from_secs(12), "{status:?} after {took:?}");
}

/// ColBERT on its own topic in the compact format (f16 rows), long documents included: no
/// message over the producer's limit, nothing dead-lettered for size; a ColBERT message too
/// large for the limit leaves the rows in the result store, and the output says where each
/// document's rows are.
#[test]
fn s8_colbert_topic_compact_values_fit() {
    use trident_core::output::read_msgpack;
    use trident_core::ColbertNote;
    let _g = serial();
    let Some(env) = Env::start(true) else { return };
    let topics = Topics::new(&env, "s8", PARTS);
    let cb_topic = "s8-colbert";
    env.create_topics(&[(cb_topic, 1)]);
    let c = corpus("s8", 60, 0, PARTS, 1 << 20);
    let mut long = long_docs(&env, "s8", 4);
    // Two documents whose ColBERT rows are over the limit even as f16 (~3,000 tokens).
    for i in 0..2 {
        let words = ["Straße", "数据", "kafka", "noir", "🙂", "vector"];
        let text: Vec<&str> = (0..2000).map(|j| words[(j * 5 + i) % words.len()]).collect();
        long.push((format!("s8-giant-{i}"), text.join(" ")));
    }
    let mut records = c.records.clone();
    for (i, (id, text)) in long.iter().enumerate() {
        records.push(json_rec(id, serde_json::json!({"id": id, "text": text}), i as i32 % PARTS));
    }
    let positions = env.produce(&topics.input, &records);
    let url = env.redis.as_ref().unwrap().url();
    let cfg = node_config(
        &env,
        &format!(
            "output_format = \"msgpack\"\ncolbert_encoding = \"f16\"\ncolbert_placement = \"topic:{cb_topic}\""
        ),
    );
    let _node = env.node(
        "s8",
        "gs8",
        &topics,
        &["--config", cfg.to_str().unwrap(), "--redis", &url, "--store"],
        &[],
    );
    let mut all = c.good.clone();
    all.extend(long.iter().cloned());
    let want = reference(env.dir.path(), &all);
    let outs = env.read_topic(&topics.output, 1, Duration::from_secs(120), |o| {
        let ids: HashSet<String> = o.iter().map(|o| o.key_str()).collect();
        all.iter().all(|(id, _)| ids.contains(id))
    });
    wait_committed_to_end(&env, "gs8", &topics.input, &ends(&positions), Duration::from_secs(60));
    let cbs: HashMap<String, Vec<u8>> =
        env.read_now(cb_topic, 1).into_iter().map(|o| (o.key_str(), o.value)).collect();
    let f16 = |v: &serde_json::Value| -> Vec<f32> {
        let rows = v.as_array().unwrap();
        rows.iter()
            .flat_map(|r| r.as_array().unwrap().iter())
            .map(|x| half::f16::from_f64(x.as_f64().unwrap()).to_f32())
            .collect()
    };
    let close = |a: &[f32], b: &[f32], what: &str| {
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 1e-3, "{what}: {x} vs {y}");
        }
    };
    let (mut in_topic, mut in_store) = (0, 0);
    for o in &outs {
        let id = o.key_str();
        assert!(
            o.value.len() + id.len() + 512 <= LIMIT,
            "{id}: a message of {} bytes",
            o.value.len()
        );
        let d = read_msgpack(&o.value).unwrap_or_else(|e| panic!("{id}: {e}"));
        let w = &want[&id];
        assert_eq!(d.e.tokens as u64, w["tokens"].as_u64().unwrap(), "{id}");
        assert!(d.e.colbert.is_none(), "{id}: ColBERT rows are not in the output message");
        let dense: Vec<f32> =
            w["dense"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
        close(d.e.dense.as_ref().unwrap(), &dense, &id);
        assert_eq!(d.e.sparse.as_ref().unwrap().len(), w["sparse"].as_object().unwrap().len());
        // f16 rows: 2 bytes a value; well under the limit they must be on the topic, over it
        // in the store.
        let cb_bytes = f16(&w["colbert"]).len() * 2;
        match (&d.note, cb_bytes + 2048 <= LIMIT, cb_bytes >= LIMIT) {
            (Some(ColbertNote::Topic(_)), _, false) | (Some(ColbertNote::InStore), false, _) => {}
            (note, ..) => panic!("{id}: {cb_bytes} bytes of rows placed as {note:?}"),
        }
        match d.note {
            Some(ColbertNote::Topic(t)) => {
                assert_eq!(t, cb_topic);
                let cb = read_msgpack(&cbs[&id]).unwrap();
                assert!(cbs[&id].len() + id.len() + 512 <= LIMIT);
                assert_eq!(cb.enc.colbert, trident_core::ColbertEncoding::F16);
                close(cb.e.colbert.as_ref().unwrap(), &f16(&w["colbert"]), &id);
                in_topic += 1;
            }
            Some(ColbertNote::InStore) => {
                let stored = &lookup(&url, &[id.as_str()])[0];
                assert_eq!(stored["encoding"]["colbert"], "f16", "{id}");
                let rows: Vec<f32> = stored["colbert"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32))
                    .collect();
                close(&rows, &f16(&w["colbert"]), &id);
                in_store += 1;
            }
            other => panic!("{id}: ColBERT placement {other:?}"),
        }
    }
    assert!(in_store >= 2, "the giant documents' rows are in the store");
    assert!(in_topic >= c.good.len(), "the short documents' rows are on {cb_topic}");
    assert_eq!(in_topic + in_store, all.len());
    assert!(env.read_now(&topics.dlq, 1).is_empty(), "nothing dead-lettered");
}

/// With `--store`, results too large for a message are stored whole and published without
/// their ColBERT rows (`colbert_in_store`).
#[test]
fn s2_store_keeps_what_the_topic_cannot() {
    let _g = serial();
    let Some(env) = Env::start(true) else { return };
    let topics = Topics::new(&env, "s2", PARTS);
    let c = corpus("s2", 60, 0, PARTS, 1 << 20);
    let long = long_docs(&env, "s2", 4);
    let mut records = c.records.clone();
    for (i, (id, text)) in long.iter().enumerate() {
        records.push(json_rec(id, serde_json::json!({"id": id, "text": text}), i as i32 % PARTS));
    }
    let positions = env.produce(&topics.input, &records);
    let url = env.redis.as_ref().unwrap().url();
    let cfg = node_config(&env, "");
    let _node = env.node(
        "s2",
        "gs2",
        &topics,
        &["--config", cfg.to_str().unwrap(), "--redis", &url, "--store"],
        &[],
    );
    let mut all = c.good.clone();
    all.extend(long.iter().cloned());
    let want = reference(env.dir.path(), &all);
    let outs = env.read_topic(&topics.output, 1, Duration::from_secs(120), |o| {
        let ids: HashSet<String> = o.iter().map(|o| o.key_str()).collect();
        all.iter().all(|(id, _)| ids.contains(id))
    });
    wait_committed_to_end(&env, "gs2", &topics.input, &ends(&positions), Duration::from_secs(60));
    for o in &outs {
        let id = o.key_str();
        let mut got = o.json();
        let mut w = want[&id].clone();
        if !fits(&w) {
            assert_eq!(got["colbert_in_store"], serde_json::Value::Bool(true), "{id}");
            assert!(got.get("colbert").is_none(), "{id}: no ColBERT rows in the message");
            got.as_object_mut().unwrap().remove("colbert_in_store");
            w.as_object_mut().unwrap().remove("colbert");
            assert!(o.value.len() <= LIMIT);
        }
        assert_same_output(&got, &w, &id);
    }
    let ids: Vec<&str> = all.iter().map(|(id, _)| id.as_str()).collect();
    for (id, v) in ids.iter().zip(lookup(&url, &ids)) {
        assert_same_output(&v, &want[*id], id);
    }
    assert!(env.read_now(&topics.dlq, 1).is_empty(), "nothing dead-lettered");
}

/// A broker that refuses every output and every dead letter (its schema registry rejects
/// them, INVALID_RECORD, a permanent error): each record is dropped and counted, at once, and the
/// offsets still reach the end of every partition.
#[test]
fn s4_refused_records_are_dropped_and_counted() {
    let _g = serial();
    let refuse = r#"{"type": "object", "properties": {"value": {"type": "object", "required": ["never-present"]}}}"#;
    let schemas = [("s4-out", refuse), ("s4-dlq", refuse)];
    let Some(env) = Env::start_with_schemas(false, &schemas) else { return };
    let topics = Topics::new(&env, "s4", PARTS);
    let c = corpus("s4", 40, 0, PARTS, 1 << 20);
    let positions = env.produce(&topics.input, &c.records);
    let maddr = format!("127.0.0.1:{}", free_port());
    let cfg = node_config(&env, "");
    let t0 = Instant::now();
    let _node = env.node(
        "s4",
        "gs4",
        &topics,
        &["--config", cfg.to_str().unwrap(), "--metrics-addr", &maddr],
        &[],
    );
    wait_committed_to_end(&env, "gs4", &topics.input, &ends(&positions), Duration::from_secs(60));
    let took = t0.elapsed();
    let dropped = metric(&maddr, "trident_records_dropped_total").unwrap_or(0.0);
    assert_eq!(dropped, c.records.len() as f64, "every record dropped and counted");
    assert!(env.read_now(&topics.output, 1).is_empty() && env.read_now(&topics.dlq, 1).is_empty());
    eprintln!(
        "s4: {} refused records dropped and counted, committed to the end in {:.1}s",
        c.records.len(),
        took.as_secs_f64()
    );
}
