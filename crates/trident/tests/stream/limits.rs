//! Memory and duplicates bounded by the in-flight limits.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::cluster_support::*;
use crate::{json_rec, long_docs, PARTS};

/// Produce on a thread of its own (the harness's `Env` is not `Send`); gives the records back.
fn produce_to(addr: &str, topic: &str, records: Vec<Rec>) -> Vec<Rec> {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let p: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("message.max.bytes", "4000000")
        .create()
        .unwrap();
    for r in &records {
        let mut rec = BaseRecord::<[u8], [u8]>::to(topic).payload(&r.value).partition(r.partition);
        if let Some(k) = &r.key {
            rec = rec.key(k);
        }
        let mut rec = Some(rec);
        while let Some(x) = rec.take() {
            if let Err((_, back)) = p.send(x) {
                p.poll(Duration::from_millis(10));
                rec = Some(back);
            }
        }
        p.poll(Duration::ZERO);
    }
    p.flush(Duration::from_secs(60)).expect("flush");
    records
}

/// Records far larger than usual, far faster than the node embeds: the bytes in flight stay at
/// the limit, and memory within the warmed-up node plus twice the limit (each value and its
/// decoded text), the client's prefetch (an eighth plus a quarter of the limit) and two more
/// limits for the allocator (glibc's per-thread arenas keep freed 200 KB buffers: measured +18 MiB
/// with one arena, +23..26 MiB with the default, for an 8 MiB limit). Everything comes out.
#[test]
fn s5_big_records_memory_is_bounded_by_the_bytes_limit() {
    // The scale of the report (3,000 records, the default 64 MiB limit) takes minutes:
    // `TRIDENT_S5_RECORDS=3000 TRIDENT_S5_BYTES_LIMIT=67108864` runs it (`TRIDENT_S5_RECORD_KB`
    // sets the record size).
    let knob =
        |name, default| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let n: usize = knob("TRIDENT_S5_RECORDS", 300);
    let repeats = knob("TRIDENT_S5_RECORD_KB", 202) * 1000 / 27; // 27 bytes a repeat
    let bytes_limit: usize = knob("TRIDENT_S5_BYTES_LIMIT", 8 << 20);
    let _g = serial();
    let Some(env) = Env::start(false) else { return };
    let topics = Topics::new(&env, "s5", PARTS);
    let records: Vec<Rec> = (0..n)
        .map(|i| {
            let text = format!("document {i} ") + &"lorem ipsum dolor sit amet ".repeat(repeats);
            json_rec(
                &format!("s5-{i}"),
                serde_json::json!({"id": format!("s5-{i}"), "text": text}),
                (i % PARTS as usize) as i32,
            )
        })
        .collect();
    assert!(records[0].value.len() > 200_000);
    let maddr = format!("127.0.0.1:{}", free_port());
    let flags =
        ["--metrics-addr", &maddr, "--dense", "--max-length", "128", "--batch-tokens", "2048"];
    let limit = bytes_limit.to_string();
    let node = env.node("s5", "gs5", &topics, &flags, &[("TRIDENT_MAX_BYTES_IN_FLIGHT", &limit)]);
    // Baseline: the node warmed up on one small record (model, threads, client connected).
    env.produce(&topics.input, &[json_rec("s5-warm", serde_json::json!({"text": "warm up"}), 0)]);
    let out = |name| metric(&maddr, name).unwrap_or(0.0);
    wait_until(Duration::from_secs(60), "warm-up record out", || {
        out("trident_records_out_total") >= 1.0
    });
    let base = node.rss_kib().unwrap();
    let feeder = {
        let (addr, topic) = (env.broker.addr.clone(), topics.input.clone());
        std::thread::spawn(move || produce_to(&addr, &topic, records))
    };
    let (mut peak, mut peak_bytes) = (base, 0.0f64);
    let t0 = Instant::now();
    loop {
        peak = peak.max(node.rss_kib().unwrap_or(0));
        peak_bytes = peak_bytes.max(out("trident_bytes_in_flight"));
        if out("trident_records_out_total") >= n as f64 + 1.0 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(240), "node did not finish");
        std::thread::sleep(Duration::from_millis(50));
    }
    let records = feeder.join().unwrap();
    let grew = (peak - base) * 1024;
    eprintln!(
        "s5: {n} x {} KB: RSS {} MiB at start, peak {} MiB (+{} MiB; limit {} MiB); peak bytes in flight {:.1} MiB",
        records[0].value.len() / 1000,
        base / 1024,
        peak / 1024,
        grew >> 20,
        bytes_limit >> 20,
        peak_bytes / (1 << 20) as f64
    );
    assert!(peak_bytes <= (bytes_limit + (256 << 10)) as f64, "bytes in flight {peak_bytes}");
    let bound = 2 * bytes_limit + bytes_limit * 3 / 8 + 2 * bytes_limit;
    assert!(grew as usize <= bound, "RSS grew by {} MiB (bound {} MiB)", grew >> 20, bound >> 20);
}

/// A second node joins while the first has long documents in flight: the first publishes
/// nothing of the partitions it lost after the revoke drain, so duplicates stay within the
/// in-flight bound, and every document comes out.
#[test]
fn s6_rebalance_duplicates_are_bounded_by_the_in_flight_limit() {
    const IN_FLIGHT: usize = 40;
    let _g = serial();
    let Some(env) = Env::start(false) else { return };
    let topics = Topics::new(&env, "s6", PARTS);
    let c = corpus("s6", 400, 0, PARTS, 1 << 20);
    let mut records = c.records.clone();
    let long = long_docs(&env, "s6", 12);
    for (i, (id, text)) in long.iter().enumerate() {
        let value = serde_json::json!({"id": id, "text": text});
        records.insert(i * 30, json_rec(id, value, i as i32 % PARTS));
    }
    env.produce(&topics.input, &records);
    let slow = ["--batch-tokens", "512", "--max-wait-ms", "5"];
    let cap = IN_FLIGHT.to_string();
    let envs =
        [("TRIDENT_MAX_RECORDS_IN_FLIGHT", cap.as_str()), ("TRIDENT_REVOKE_DRAIN_MS", "1000")];
    let a = env.node("s6a", "gs6", &topics, &slow, &envs);
    env.read_topic(&topics.output, 1, Duration::from_secs(120), |o| o.len() >= 60);
    let b = env.node("s6b", "gs6", &topics, &slow, &envs);
    let mut all = c.good.clone();
    all.extend(long.iter().cloned());
    let outs = env.read_topic(&topics.output, 1, Duration::from_secs(240), |o| {
        let ids: HashSet<String> = o.iter().map(|o| o.key_str()).collect();
        all.iter().all(|(id, _)| ids.contains(id))
    });
    let want = reference(env.dir.path(), &all);
    for o in &outs {
        assert_same_output(&o.json(), &want[&o.key_str()], &o.key_str());
    }
    let dups: usize = id_counts(&outs).values().map(|n| n - 1).sum();
    let rebalanced = a.log_text().contains("revoked") || b.log_text().contains("revoked");
    eprintln!(
        "s6: rebalance while long documents were in flight: {dups} duplicates of {}",
        all.len()
    );
    assert!(rebalanced, "the second node's join revoked partitions");
    assert!(dups <= IN_FLIGHT, "{dups} duplicates, more than the {IN_FLIGHT} records in flight");
}
