//! The streaming cluster against real servers (issue 3, tests 1–7): `tansu` as the Kafka broker,
//! `redis-server`, and `trident node` processes, with the tiny fixture model. Each test checks
//! its outputs against `trident embed` on the same texts. Tests run one at a time (2 cores).

mod cluster_support;
mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use cluster_support::*;

const PARTS: i32 = 4;
const MAX_RECORD: usize = 16 * 1024;

fn max_record_env() -> (&'static str, String) {
    ("TRIDENT_MAX_RECORD_BYTES", MAX_RECORD.to_string())
}

/// Every good id is in `outs` with `trident embed`'s output for its text.
fn check_outputs(env: &Env, c: &Corpus, outs: &[Out]) -> HashMap<String, usize> {
    let want = reference(env.dir.path(), &c.good);
    let counts = id_counts(outs);
    let mut seen = HashSet::new();
    for o in outs {
        let id = o.key_str();
        if seen.insert(id.clone()) {
            let w = want.get(&id).unwrap_or_else(|| panic!("unexpected output id {id}"));
            assert_same_output(&o.json(), w, &id);
        }
    }
    for (id, _) in &c.good {
        assert!(counts.contains_key(id), "good id {id} missing from the output topic");
    }
    counts
}

fn all_good(c: &Corpus) -> impl Fn(&[Out]) -> bool + '_ {
    move |outs: &[Out]| {
        let ids: HashSet<String> = outs.iter().map(|o| o.key_str()).collect();
        c.good.iter().all(|(id, _)| ids.contains(id))
    }
}

fn check_dead_letters(env: &Env, topics: &Topics, c: &Corpus, extra: usize) -> Vec<Out> {
    let dlq =
        env.read_topic(&topics.dlq, 1, Duration::from_secs(60), |o| o.len() >= c.bad.len() + extra);
    let by_key: HashMap<String, &Out> = dlq.iter().map(|o| (o.key_str(), o)).collect();
    for (key, value, reason) in &c.bad {
        let d = by_key
            .get(key)
            .unwrap_or_else(|| panic!("bad record {key} missing from the dead-letter topic"));
        assert_eq!(&d.value, value, "{key}: dead letter keeps the original value");
        let r = d.headers.get("trident.reason").expect("reason header");
        assert!(r.contains(reason), "{key}: reason {r:?} should mention {reason:?}");
        assert_eq!(d.headers.get("trident.source.topic"), Some(&topics.input));
        assert!(d
            .headers
            .get("trident.source.partition")
            .is_some_and(|p| p.parse::<i32>().is_ok()));
        assert!(d.headers.get("trident.source.offset").is_some_and(|p| p.parse::<i64>().is_ok()));
    }
    dlq
}

/// Test 1: 2,000 mixed documents (5 % duplicates) and 20 bad records of each kind on a
/// 4-partition topic: every good id in the output equal to `trident embed`, every bad record in
/// the dead-letter topic with its reason; afterwards all offsets are committed.
#[test]
fn t1_kafka_to_kafka_matches_embed() {
    let _g = serial();
    let Some(env) = Env::start(false) else { return };
    let topics = Topics::new(&env, "t1", PARTS);
    let c = corpus("t1", 2000, 20, PARTS, MAX_RECORD);
    let positions = env.produce(&topics.input, &c.records);
    let (k, v) = max_record_env();
    let maddr = format!("127.0.0.1:{}", free_port());
    let mut node = env.node("n1", "g1", &topics, &["--metrics-addr", &maddr], &[(k, &v)]);
    let outs = env.read_topic(&topics.output, 1, Duration::from_secs(180), all_good(&c));
    let counts = check_outputs(&env, &c, &outs);
    check_dead_letters(&env, &topics, &c, 0);
    // Every record acknowledged: the stored offsets reach the end of each partition.
    let mut ends = vec![0i64; PARTS as usize];
    for (p, o) in &positions {
        ends[*p as usize] = ends[*p as usize].max(o + 1);
    }
    wait_until(Duration::from_secs(20), "offsets committed to the end", || {
        env.committed("g1", &topics.input, PARTS) == ends
    });
    assert!(metric(&maddr, "trident_records_dead_lettered_total").unwrap() >= c.bad.len() as f64);
    assert!(metric(&maddr, "trident_batches_total").unwrap() > 0.0);
    let dups: usize = counts.values().map(|n| n - 1).sum();
    eprintln!("t1: {} good ids, {} bad, {dups} duplicate outputs", c.good.len(), c.bad.len());
    node.signal("TERM");
    let (status, _) = node.wait_exit(Duration::from_secs(30)).expect("node exits after SIGTERM");
    assert!(status.success(), "node log:\n{}", node.log_text());
}

/// Test 2: the node is killed with SIGKILL midway and restarted: no good id is missing; the
/// duplicates are bounded by what was in flight (plus the auto-commit interval).
#[test]
fn t2_sigkill_midway_loses_nothing() {
    let _g = serial();
    let Some(env) = Env::start(false) else { return };
    let topics = Topics::new(&env, "t2", PARTS);
    let c = corpus("t2", 1000, 4, PARTS, MAX_RECORD);
    env.produce(&topics.input, &c.records);
    let (k, v) = max_record_env();
    // Small batches so the run lasts long enough to be killed midway.
    let slow = ["--batch-tokens", "256", "--max-wait-ms", "5"];
    let mut node = env.node("n2a", "g2", &topics, &slow, &[(k, &v)]);
    env.read_topic(&topics.output, 1, Duration::from_secs(120), |o| o.len() >= 250);
    node.kill9();
    let before = env.read_now(&topics.output, 1).len();
    let _node2 = env.node("n2b", "g2", &topics, &slow, &[(k, &v)]);
    let outs = env.read_topic(&topics.output, 1, Duration::from_secs(180), all_good(&c));
    let counts = check_outputs(&env, &c, &outs);
    check_dead_letters(&env, &topics, &c, 0);
    let dups: usize = counts.values().map(|n| n - 1).sum();
    eprintln!("t2: killed after {before} outputs; {dups} duplicates after restart");
    // In flight at the kill: at most the records-in-flight bound; uncommitted: 1 s auto-commit.
    assert!(dups <= before, "{dups} duplicates is more than was done before the kill ({before})");
}

/// Test 3: two nodes in one group both get partitions; one is killed; the other finishes.
#[test]
fn t3_two_nodes_one_killed() {
    let _g = serial();
    let Some(env) = Env::start(false) else { return };
    let topics = Topics::new(&env, "t3", PARTS);
    let (k, v) = max_record_env();
    let slow = ["--batch-tokens", "256", "--max-wait-ms", "5"];
    let mut a = env.node("n3a", "g3", &topics, &slow, &[(k, &v)]);
    let b = env.node("n3b", "g3", &topics, &slow, &[(k, &v)]);
    let assigned =
        |p: &Proc| p.log_text().lines().any(|l| l.contains("assigned") && !l.contains("[]"));
    wait_until(Duration::from_secs(60), "both nodes assigned partitions", || {
        assigned(&a) && assigned(&b)
    });
    let c = corpus("t3", 1200, 2, PARTS, MAX_RECORD);
    env.produce(&topics.input, &c.records);
    env.read_topic(&topics.output, 1, Duration::from_secs(120), |o| o.len() >= 250);
    a.kill9();
    let outs = env.read_topic(&topics.output, 1, Duration::from_secs(240), all_good(&c));
    check_outputs(&env, &c, &outs);
    check_dead_letters(&env, &topics, &c, 0);
    assert!(
        b.log_text().contains("revoked") || b.log_text().matches("assigned").count() >= 2,
        "node b took over partitions"
    );
}

/// Test 4a: with `--cache` only, stopping Redis midway does not stop the output.
#[test]
fn t4a_cache_redis_down_keeps_flowing() {
    let _g = serial();
    let Some(mut env) = Env::start(true) else { return };
    let topics = Topics::new(&env, "t4a", PARTS);
    let c = corpus("t4a", 800, 2, PARTS, MAX_RECORD);
    let (k, v) = max_record_env();
    let url = env.redis.as_ref().unwrap().url();
    let maddr = format!("127.0.0.1:{}", free_port());
    let flags = ["--redis", &url, "--cache", "--metrics-addr", &maddr, "--batch-tokens", "256"];
    let _node = env.node("n4a", "g4a", &topics, &flags, &[(k, &v)]);
    let (first, second) = c.records.split_at(c.records.len() / 2);
    env.produce(&topics.input, first);
    env.read_topic(&topics.output, 1, Duration::from_secs(120), |o| o.len() >= 150);
    env.redis.as_mut().unwrap().stop();
    let at_stop = env.read_now(&topics.output, 1).len();
    env.produce(&topics.input, second);
    env.read_topic(&topics.output, 1, Duration::from_secs(120), |o| o.len() >= at_stop + 150);
    assert!(
        metric(&maddr, "trident_cache_errors_total").unwrap_or(0.0) > 0.0,
        "cache failures are counted"
    );
    env.redis.as_mut().unwrap().restart();
    let outs = env.read_topic(&topics.output, 1, Duration::from_secs(180), all_good(&c));
    check_outputs(&env, &c, &outs);
    // The same texts again under new ids: answered from the Redis cache (entries written before
    // the stop survived it), with the same output.
    let again: Vec<(String, String)> =
        c.good[..100].iter().map(|(id, t)| (format!("{id}-again"), t.clone())).collect();
    let recs: Vec<Rec> = again
        .iter()
        .map(|(id, t)| Rec {
            key: Some(id.clone().into_bytes()),
            value: serde_json::json!({"id": id, "text": t}).to_string().into_bytes(),
            partition: 0,
        })
        .collect();
    let hits_before = metric(&maddr, "trident_cache_hits_total").unwrap_or(0.0);
    env.produce(&topics.input, &recs);
    let c2 = Corpus { good: again, bad: Vec::new(), records: recs };
    let outs = env.read_topic(&topics.output, 1, Duration::from_secs(120), all_good(&c2));
    let want = reference(env.dir.path(), &c2.good);
    for o in outs.iter().filter(|o| o.key_str().ends_with("-again")) {
        assert_same_output(&o.json(), &want[&o.key_str()], &o.key_str());
    }
    let hits = metric(&maddr, "trident_cache_hits_total").unwrap_or(0.0) - hits_before;
    assert!(hits >= 50.0, "only {hits} of 100 repeated texts came from the cache");
}

/// Test 4b: with `--store`, nothing is committed while Redis is down, and every id is in Redis
/// at the end (checked with `trident lookup` against the output topic).
#[test]
fn t4b_store_blocks_commits_while_redis_down() {
    let _g = serial();
    let Some(mut env) = Env::start(true) else { return };
    let topics = Topics::new(&env, "t4b", PARTS);
    let c = corpus("t4b", 800, 0, PARTS, MAX_RECORD); // no bad records: their dead letters may move offsets legitimately
    let (k, v) = max_record_env();
    let url = env.redis.as_ref().unwrap().url();
    let flags = ["--redis", &url, "--store", "--batch-tokens", "256"];
    let _node = env.node("n4b", "g4b", &topics, &flags, &[(k, &v)]);
    let (first, second) = c.records.split_at(c.records.len() / 2);
    env.produce(&topics.input, first);
    env.read_topic(&topics.output, 1, Duration::from_secs(120), |o| o.len() >= 200);
    env.redis.as_mut().unwrap().stop();
    std::thread::sleep(Duration::from_secs(2)); // commits of work stored before the stop land
    let frozen = env.committed("g4b", &topics.input, PARTS);
    env.produce(&topics.input, second);
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        env.committed("g4b", &topics.input, PARTS),
        frozen,
        "offsets advanced while Redis was down"
    );
    env.redis.as_mut().unwrap().restart();
    let outs = env.read_topic(&topics.output, 1, Duration::from_secs(180), all_good(&c));
    check_outputs(&env, &c, &outs);
    let total = c.records.len() as i64;
    wait_until(Duration::from_secs(30), "offsets committed after Redis returned", || {
        env.committed("g4b", &topics.input, PARTS).iter().sum::<i64>() == total
    });
    // Every good id is stored; `trident lookup` prints what the output topic carries.
    let first_out: HashMap<String, serde_json::Value> =
        outs.iter().map(|o| (o.key_str(), o.json())).collect();
    for chunk in c.good.chunks(400) {
        let ids: Vec<&str> = chunk.iter().map(|(id, _)| id.as_str()).collect();
        let out = std::process::Command::new(TRIDENT)
            .args(["lookup", "--redis", &url])
            .args(&ids)
            .output()
            .unwrap();
        assert!(out.status.success(), "lookup: {}", String::from_utf8_lossy(&out.stdout));
        let lines: Vec<&str> = std::str::from_utf8(&out.stdout).unwrap().lines().collect();
        assert_eq!(lines.len(), ids.len());
        for (id, line) in ids.iter().zip(lines) {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(&v, &first_out[*id], "{id}: stored result equals the published one");
        }
    }
}

/// Test 5: worker failures (fault injection) restart the worker without losing records, and a
/// poison record is isolated into the dead-letter topic.
#[test]
fn t5_worker_failures_and_poison_record() {
    let _g = serial();
    let Some(env) = Env::start(false) else { return };
    let topics = Topics::new(&env, "t5", PARTS);
    let mut c = corpus("t5", 400, 1, PARTS, MAX_RECORD);
    let poison = serde_json::json!({"id": "t5-poison", "text": "a POISON-PILL record"}).to_string();
    c.records.insert(
        300,
        Rec { key: Some(b"t5-poison".to_vec()), value: poison.into_bytes(), partition: 2 },
    );
    env.produce(&topics.input, &c.records);
    let (k, v) = max_record_env();
    let maddr = format!("127.0.0.1:{}", free_port());
    let envs = [(k, v.as_str()), ("TRIDENT_FAULT_INJECT", "fail-batches=3,poison=POISON-PILL")];
    let _node = env.node("n5", "g5", &topics, &["--metrics-addr", &maddr], &envs);
    let outs = env.read_topic(&topics.output, 1, Duration::from_secs(180), all_good(&c));
    check_outputs(&env, &c, &outs);
    let dlq = check_dead_letters(&env, &topics, &c, 1);
    let p = dlq.iter().find(|o| o.key_str() == "t5-poison").expect("poison record dead-lettered");
    assert!(p.headers["trident.reason"].contains("encoder failed"), "{:?}", p.headers);
    assert!(!outs.iter().any(|o| o.key_str() == "t5-poison"));
    let restarts = metric(&maddr, "trident_worker_restarts_total").unwrap();
    assert!(
        restarts >= 4.0,
        "3 injected failures + the poison batches restart the worker ({restarts})"
    );
}

/// Test 6: input far faster than the node embeds: the partitions are paused and resumed (seen
/// in the metrics) and resident memory stays under 400 MiB.
#[test]
fn t6_backpressure_bounds_memory() {
    const RSS_BOUND_KIB: u64 = 400 * 1024;
    let _g = serial();
    let Some(env) = Env::start(false) else { return };
    let topics = Topics::new(&env, "t6", PARTS);
    let c = corpus("t6", 3000, 0, PARTS, MAX_RECORD);
    env.produce(&topics.input, &c.records);
    let maddr = format!("127.0.0.1:{}", free_port());
    let flags = ["--metrics-addr", &maddr, "--batch-tokens", "512", "--dense"];
    let envs = [
        ("TRIDENT_HIGH_WATER_TOKENS", "4000"),
        ("TRIDENT_LOW_WATER_TOKENS", "1000"),
        ("TRIDENT_MAX_RECORDS_IN_FLIGHT", "500"),
    ];
    let node = env.node("n6", "g6", &topics, &flags, &envs);
    let mut peak = 0;
    let t0 = Instant::now();
    let mut done = false;
    while !done {
        peak = peak.max(node.rss_kib().unwrap_or(0));
        assert!(t0.elapsed() < Duration::from_secs(240), "node did not finish");
        let out = metric(&maddr, "trident_records_out_total").unwrap_or(0.0);
        done = out >= c.good.len() as f64;
        std::thread::sleep(Duration::from_millis(100));
    }
    let pauses = metric(&maddr, "trident_partition_pauses_total").unwrap();
    let resumes = metric(&maddr, "trident_partition_resumes_total").unwrap();
    eprintln!("t6: peak RSS {} MiB, {pauses} pauses, {resumes} resumes", peak / 1024);
    assert!(pauses >= 1.0 && resumes >= 1.0, "pauses {pauses}, resumes {resumes}");
    assert!(peak < RSS_BOUND_KIB, "peak RSS {peak} KiB over the bound");
    let outs = env.read_topic(&topics.output, 1, Duration::from_secs(60), all_good(&c));
    assert!(outs.len() >= c.good.len());
}

/// Test 7: SIGTERM: the node exits 0 within its deadline, having committed all finished work
/// (a restarted node redoes nothing and finishes the rest).
#[test]
fn t7_sigterm_commits_and_exits_zero() {
    let _g = serial();
    let Some(env) = Env::start(false) else { return };
    let topics = Topics::new(&env, "t7", PARTS);
    let c = corpus("t7", 1000, 2, PARTS, MAX_RECORD);
    env.produce(&topics.input, &c.records);
    let (k, v) = max_record_env();
    let slow = ["--batch-tokens", "256", "--max-wait-ms", "5", "--shutdown-deadline-ms", "5000"];
    let mut node = env.node("n7a", "g7", &topics, &slow, &[(k, &v)]);
    env.read_topic(&topics.output, 1, Duration::from_secs(120), |o| o.len() >= 250);
    node.signal("TERM");
    let (status, took) =
        node.wait_exit(Duration::from_secs(15)).expect("node exits within its deadline");
    assert!(status.success(), "exit status {status:?}; log:\n{}", node.log_text());
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let done_before = env.read_now(&topics.output, 1);
    let committed: i64 = env.committed("g7", &topics.input, PARTS).iter().map(|&o| o.max(0)).sum();
    let good_done = id_counts(&done_before).len() as i64;
    assert!(committed >= good_done, "committed {committed} < {good_done} finished records");
    let _node2 = env.node("n7b", "g7", &topics, &slow, &[(k, &v)]);
    let outs = env.read_topic(&topics.output, 1, Duration::from_secs(180), all_good(&c));
    let counts = check_outputs(&env, &c, &outs);
    let dups: usize = counts.values().map(|n| n - 1).sum();
    assert_eq!(dups, 0, "a graceful stop commits everything it published");
}
