//! `trident produce`: load a corpus into a Kafka topic the way `trident node` reads it — key =
//! the id as text, value = `{"id": <id>, "text": "..."}` — from Parquet (a file, a directory or
//! a glob, read per row group with the same units and `--shard I/N` as `trident embed`) or JSON
//! Lines (a file or `-`, lines read as `trident embed` reads them).
//!
//! Rows that a node could not embed are skipped and reported, each with its place: a null id or
//! text, a blank text, an id over 512 bytes, an invalid JSON Lines line. A row the producer
//! refuses (a message over `message.max.bytes`, an invalid record) is reported with its id and
//! counted as failed; it never holds the others back. Exit code 0: every row produced; 1: some
//! rows skipped or failed; 2: the run failed (brokers unreachable within the retry budget, topic
//! missing or not authorized, unreadable input). A JSON summary ends the run on stderr.

use std::collections::VecDeque;
use std::io::{BufRead, IsTerminal};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode as Code;
use trident_cluster::deliver::{is_permanent, DEFAULT_MESSAGE_MAX_BYTES};
use trident_core::{DocId, Modes};
use trident_engine::record::{decode_record, is_blank, MAX_ID_BYTES};
use trident_files::corpus::columns::{id_at, id_type_ok, text_at};
use trident_files::corpus::units::{discover, units, Shard};
use trident_files::embed_file::read_capped_line;

#[derive(clap::Args)]
pub struct ProduceArgs {
    /// Kafka bootstrap servers, `HOST:PORT[,HOST:PORT..]`.
    #[arg(long, env = "TRIDENT_BROKERS")]
    pub brokers: String,
    /// The topic to produce to (a node's input topic).
    #[arg(long)]
    pub topic: String,
    /// Input: Parquet (a `.parquet` file, a directory of them, or a glob), or a JSON Lines file,
    /// or `-` for JSON Lines on stdin.
    #[arg(long, default_value = "-")]
    pub input: String,
    /// Parquet input: the id column (string or integer).
    #[arg(long, default_value = "id")]
    pub id_column: String,
    /// Parquet input: the text column.
    #[arg(long, default_value = "text")]
    pub text_column: String,
    /// This run's share, `I/N` (0 ≤ I < N): Parquet row groups as `trident embed --shard`
    /// splits them; for JSON Lines, lines whose number (from 1) minus one is I modulo N.
    #[arg(long, default_value = "0/1")]
    pub shard: Shard,
    /// Extra librdkafka producer property, `KEY=VALUE` (repeatable), e.g.
    /// `--kafka compression.type=zstd --kafka message.max.bytes=4000000`.
    #[arg(long = "kafka", value_name = "KEY=VALUE", value_parser = parse_property)]
    pub kafka: Vec<(String, String)>,
    /// Most messages sent and not yet acknowledged (bounds memory with the producer's queue).
    #[arg(long, default_value_t = 10_000)]
    pub max_in_flight: usize,
    /// How long (ms) a message may take to be delivered, retries included (librdkafka's
    /// `message.timeout.ms`); a message still undelivered then ends the run with exit code 2.
    #[arg(long, default_value_t = 60_000)]
    pub retry_ms: u64,
    /// JSON Lines input: longest line in bytes (longer lines are skipped).
    #[arg(long, default_value_t = 1 << 20)]
    pub max_record_bytes: usize,
}

fn parse_property(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("{s:?}: expected KEY=VALUE, e.g. compression.type=zstd")),
    }
}

/// The value a node reads: `{"id", "text"}`, with a JSON Lines record's own `modes` and
/// `max_length` when it has them.
#[derive(serde::Serialize)]
struct Value<'a> {
    id: &'a DocId,
    text: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    modes: Option<Vec<&'static str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_length: Option<usize>,
}

fn mode_names(m: Modes) -> Vec<&'static str> {
    let mut v = Vec::new();
    for (on, name) in [(m.dense, "dense"), (m.sparse, "sparse"), (m.colbert, "colbert")] {
        if on {
            v.push(name);
        }
    }
    v
}

#[derive(Default)]
struct Counts {
    produced: u64,
    skipped: u64,
    failed: u64,
}

/// The final account, printed as JSON on stderr.
#[derive(serde::Serialize)]
struct Summary {
    rows: u64,
    skipped: u64,
    failed: u64,
    seconds: f64,
    rows_per_second: f64,
}

/// Why the run stops: a message the brokers never took, or an error no row can get past.
struct Fatal(anyhow::Error);

/// Sends with a bounded number of unacknowledged messages, oldest awaited first.
struct Sender {
    producer: FutureProducer,
    rt: tokio::runtime::Runtime,
    topic: std::sync::Arc<str>,
    brokers: String,
    retry: Duration,
    max_message: usize,
    max_in_flight: usize,
    pending: VecDeque<DeliveryFuture>,
    counts: Counts,
    bar: Option<indicatif::ProgressBar>,
    buf: Vec<u8>,
}

impl Sender {
    fn say(&self, msg: &str) {
        match &self.bar {
            Some(b) => b.suspend(|| eprintln!("trident produce: {msg}")),
            None => eprintln!("trident produce: {msg}"),
        }
    }

    fn handled(&self) -> u64 {
        self.counts.produced + self.counts.skipped + self.counts.failed
    }

    fn tick(&self) {
        if let Some(b) = &self.bar {
            let n = self.handled();
            if n.is_multiple_of(256) {
                b.set_position(n);
            }
        }
    }

    /// A row that is not sent: `place` names it, `reason` says why.
    fn skip(&mut self, place: &str, reason: &str) {
        self.say(&format!("{place}: {reason}; skipped"));
        self.counts.skipped += 1;
        self.tick();
    }

    /// Check a row and send it (or skip it, saying why).
    fn row(
        &mut self,
        place: &dyn Fn() -> String,
        id: &DocId,
        text: &str,
        modes: Option<Modes>,
        max_length: Option<usize>,
    ) -> Result<(), Fatal> {
        let key = id.as_key();
        if key.len() > MAX_ID_BYTES {
            let reason = format!("id is {} bytes, over the limit of {MAX_ID_BYTES}", key.len());
            self.skip(&place(), &reason);
            return Ok(());
        }
        if is_blank(text) {
            self.skip(&format!("{} (id {key})", place()), "blank text (a node dead-letters it)");
            return Ok(());
        }
        let value = Value { id, text, modes: modes.map(mode_names), max_length };
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        serde_json::to_writer(&mut buf, &value).expect("serializable");
        let r = self.send(key.as_bytes(), &buf);
        self.buf = buf;
        r
    }

    fn send(&mut self, key: &[u8], value: &[u8]) -> Result<(), Fatal> {
        while self.pending.len() >= self.max_in_flight {
            self.complete_one()?;
        }
        let topic = self.topic.clone();
        let mut rec = FutureRecord::<[u8], [u8]>::to(&topic).key(key).payload(value);
        loop {
            match self.producer.send_result(rec) {
                Ok(f) => {
                    self.pending.push_back(f);
                    return Ok(());
                }
                Err((e, back)) if e.rdkafka_error_code() == Some(Code::QueueFull) => {
                    // The producer's queue (messages or bytes) is full: wait for the oldest.
                    if self.pending.is_empty() {
                        std::thread::sleep(Duration::from_millis(10));
                    } else {
                        self.complete_one()?;
                    }
                    rec = back;
                }
                Err((e, _)) => return self.refused(key, key.len() + value.len(), e),
            }
        }
    }

    /// Wait for the oldest message's outcome.
    fn complete_one(&mut self) -> Result<(), Fatal> {
        let Some(f) = self.pending.pop_front() else { return Ok(()) };
        match self.rt.block_on(f) {
            Ok(Ok(_)) => {
                self.counts.produced += 1;
                self.tick();
                Ok(())
            }
            Ok(Err((e, msg))) => {
                use rdkafka::message::Message;
                let key = msg.key().unwrap_or_default().to_vec();
                let size = key.len() + msg.payload().map_or(0, <[u8]>::len);
                self.refused(&key, size, e)
            }
            Err(_) => Err(Fatal(anyhow::anyhow!("the producer stopped"))),
        }
    }

    /// A message the producer or the broker refused: a row's failure when the row itself is
    /// the cause (too large, invalid), else the end of the run.
    fn refused(&mut self, key: &[u8], size: usize, e: KafkaError) -> Result<(), Fatal> {
        let id = String::from_utf8_lossy(key);
        let row_fault = trident_cluster::deliver::is_message_fault(&e);
        if row_fault {
            let limit = match e.rdkafka_error_code() {
                Some(Code::MessageSizeTooLarge | Code::MessageBatchTooLarge) => format!(
                    " (the producer's message.max.bytes is {}; the broker's may be lower)",
                    self.max_message
                ),
                _ => String::new(),
            };
            self.say(&format!("id {id}: message of {size} bytes refused: {e}{limit}; failed"));
            self.counts.failed += 1;
            self.tick();
            return Ok(());
        }
        self.counts.failed += 1;
        let what = format!("producing id {id} to topic {}", self.topic);
        if is_permanent(&e) {
            return Err(Fatal(anyhow::anyhow!("{what}: {e}")));
        }
        Err(Fatal(anyhow::anyhow!(
            "{what}: {e}: not delivered within the retry budget of {:?} (--retry-ms); are the \
             brokers {} reachable?",
            self.retry,
            self.brokers
        )))
    }

    /// Wait for every message still in flight.
    fn finish(&mut self) -> Result<(), Fatal> {
        while !self.pending.is_empty() {
            self.complete_one()?;
        }
        Ok(())
    }
}

pub fn run(args: ProduceArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.max_in_flight > 0, "--max-in-flight must be positive");
    anyhow::ensure!(args.retry_ms > 0, "--retry-ms must be positive");
    let parquet = trident_files::corpus::is_parquet_input(&args.input);
    // Parquet: the units (row groups) of this shard, found before any connection.
    let units = if parquet {
        let (root, files) = discover(&args.input)?;
        Some(args.shard.select(units(&root, &files)?))
    } else {
        None
    };
    let user_set = |k: &str| args.kafka.iter().any(|(key, _)| key == k);
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &args.brokers);
    cc.set("linger.ms", "20");
    // Bytes in the producer's queue: QueueFull past this makes the reader wait.
    cc.set("queue.buffering.max.kbytes", "262144");
    if !user_set("message.timeout.ms") && !user_set("delivery.timeout.ms") {
        cc.set("message.timeout.ms", args.retry_ms.to_string());
    }
    for (k, v) in &args.kafka {
        cc.set(k, v);
    }
    let max_message = match args.kafka.iter().rev().find(|(k, _)| k == "message.max.bytes") {
        Some((_, v)) => v.trim().parse().with_context(|| format!("message.max.bytes={v}"))?,
        None => DEFAULT_MESSAGE_MAX_BYTES,
    };
    let producer: FutureProducer = cc.create().context("creating the Kafka producer")?;
    // Reach the brokers and find the topic before reading anything, retrying for the budget.
    let budget = Duration::from_millis(args.retry_ms);
    let started = Instant::now();
    let mut backoff = Duration::from_millis(200);
    let md = loop {
        let left = budget.saturating_sub(started.elapsed()).max(Duration::from_millis(100));
        match producer.client().fetch_metadata(Some(&args.topic), left) {
            Ok(md) => break md,
            Err(e) if started.elapsed() + backoff < budget => {
                tracing::debug!("fetching metadata: {e}; retrying in {backoff:?}");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "brokers {} unreachable within the retry budget of {budget:?} (--retry-ms)",
                        args.brokers
                    )
                })
            }
        }
    };
    if let Some(err) = md.topics().iter().find(|t| t.name() == args.topic).and_then(|t| t.error()) {
        let code: Code = err.into();
        anyhow::ensure!(
            !matches!(code, Code::UnknownTopicOrPartition | Code::UnknownTopic),
            "topic {} does not exist on {} (create it with the node's partitions first)",
            args.topic,
            args.brokers
        );
        anyhow::ensure!(
            code != Code::TopicAuthorizationFailed,
            "topic {}: not authorized to produce",
            args.topic
        );
    }

    let total: Option<u64> = units.as_ref().map(|u| u.iter().map(|u| u.rows as u64).sum());
    let bar = std::io::stderr().is_terminal().then(|| match total {
        Some(n) => {
            let b = indicatif::ProgressBar::new(n);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} rows  {per_sec}  eta {eta}  {elapsed}",
                )
                .expect("valid template"),
            );
            b
        }
        None => {
            let b = indicatif::ProgressBar::new_spinner();
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} {pos} rows  {per_sec}  {elapsed}",
                )
                .expect("valid template"),
            );
            b
        }
    });
    let mut s = Sender {
        producer,
        rt: tokio::runtime::Builder::new_current_thread().enable_all().build()?,
        topic: args.topic.as_str().into(),
        brokers: args.brokers.clone(),
        retry: Duration::from_millis(args.retry_ms),
        max_message,
        max_in_flight: args.max_in_flight,
        pending: VecDeque::new(),
        counts: Counts::default(),
        bar,
        buf: Vec::new(),
    };
    let t0 = Instant::now();
    let read = match &units {
        Some(units) => read_parquet(&args, units, &mut s),
        None => read_jsonl(&args, &mut s),
    };
    let result = match read {
        Ok(()) => s.finish().map_err(|f| f.0),
        Err(e) => Err(e),
    };
    if let Some(b) = &s.bar {
        b.finish_and_clear();
    }
    if result.is_err() {
        // Undelivered messages are dropped with the producer; they count as failed.
        s.counts.failed += s.pending.len() as u64;
        s.pending.clear();
        s.producer.purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
    }
    let seconds = t0.elapsed().as_secs_f64();
    let c = &s.counts;
    let summary = Summary {
        rows: c.produced,
        skipped: c.skipped,
        failed: c.failed,
        seconds,
        rows_per_second: c.produced as f64 / seconds.max(1e-9),
    };
    eprintln!("{}", serde_json::to_string(&summary)?);
    result?;
    if c.skipped + c.failed > 0 {
        eprintln!(
            "trident produce: {} rows produced, {} skipped, {} failed (see the messages above)",
            c.produced, c.skipped, c.failed
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

impl From<Fatal> for anyhow::Error {
    fn from(f: Fatal) -> Self {
        f.0
    }
}

/// Every row of this shard's row groups: id and text columns only.
fn read_parquet(
    args: &ProduceArgs,
    units: &[trident_files::corpus::units::Unit],
    s: &mut Sender,
) -> anyhow::Result<()> {
    for unit in units {
        let what = unit.file.display().to_string();
        let f = std::fs::File::open(&unit.file).with_context(|| format!("opening {what}"))?;
        let b = ParquetRecordBatchReaderBuilder::try_new(f).with_context(|| what.clone())?;
        let schema = b.schema().clone();
        let find = |name: &str| {
            schema.index_of(name).map_err(|_| {
                let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                anyhow::anyhow!("{what}: no column {name:?} (columns: {})", names.join(", "))
            })
        };
        let (id_i, text_i) = (find(&args.id_column)?, find(&args.text_column)?);
        let id_type = schema.field(id_i).data_type();
        anyhow::ensure!(
            id_type_ok(id_type),
            "{what}: id column {:?} is {id_type}, expected a string or an integer",
            args.id_column
        );
        let text_type = schema.field(text_i).data_type();
        anyhow::ensure!(
            matches!(text_type, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View),
            "{what}: text column {:?} is {text_type}, expected a string",
            args.text_column
        );
        let mask = ProjectionMask::roots(b.parquet_schema(), [id_i, text_i]);
        let reader = b
            .with_projection(mask)
            .with_row_groups(vec![unit.row_group])
            .with_batch_size(8192)
            .build()
            .with_context(|| what.clone())?;
        let mut row = 0usize;
        for batch in reader {
            let batch = batch.with_context(|| unit.key())?;
            let ids = batch.column_by_name(&args.id_column).expect("projected");
            let texts = batch.column_by_name(&args.text_column).expect("projected");
            for i in 0..batch.num_rows() {
                let place = || format!("{} row {}", unit.key(), row + i);
                match (id_at(ids.as_ref(), i), text_at(texts.as_ref(), i)) {
                    (None, _) => {
                        s.skip(&place(), &format!("null id in column {:?}", args.id_column))
                    }
                    (Some(id), None) => s.skip(
                        &format!("{} (id {})", place(), id.as_key()),
                        &format!("null text in column {:?}", args.text_column),
                    ),
                    (Some(id), Some(text)) => s.row(&place, &id, text, None, None)?,
                }
            }
            row += batch.num_rows();
        }
    }
    Ok(())
}

/// Every line of a JSON Lines file or stdin, decoded as `trident embed` decodes it.
fn read_jsonl(args: &ProduceArgs, s: &mut Sender) -> anyhow::Result<()> {
    let (name, mut input): (String, Box<dyn BufRead>) = if args.input == "-" {
        ("stdin".into(), Box::new(std::io::BufReader::with_capacity(1 << 20, std::io::stdin())))
    } else {
        let f = std::fs::File::open(&args.input)
            .with_context(|| format!("opening input {}", args.input))?;
        (args.input.clone(), Box::new(std::io::BufReader::with_capacity(1 << 20, f)))
    };
    let max = args.max_record_bytes;
    let mut line_no: u64 = 0;
    while let Some((mut bytes, len)) =
        read_capped_line(&mut *input, max).with_context(|| format!("reading {name}"))?
    {
        line_no += 1;
        if (line_no - 1) % args.shard.count as u64 != args.shard.index as u64 {
            continue;
        }
        if len > bytes.len() {
            // Over the limit: let the decoder see the true length.
            bytes.resize(max + 1, 0);
        }
        let place = || format!("{name} line {line_no}");
        match decode_record(&bytes, DocId::from(line_no), max) {
            Ok(d) => s.row(&place, &d.id, &d.text, d.modes, d.max_length)?,
            Err(bad) => s.skip(&place(), &bad.reason),
        }
    }
    anyhow::ensure!(
        line_no > 0,
        "{name}: the input is empty (expected JSON Lines: one document per line)"
    );
    Ok(())
}
