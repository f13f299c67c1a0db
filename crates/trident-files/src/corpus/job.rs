//! The re-embedding job: input units (row groups) read in batches, fed to the shared pipeline,
//! results written in input order to one Parquet part per unit, the manifest updated after each
//! part is complete.
//!
//! reader (this task) ──Docs──▶ coordinator ▶ batcher ▶ workers ──Done──▶ writer task ──▶ parts
//!        └──────────── Chunk (ids, hashes, kept columns, reused rows) ─────▲
//!
//! Memory is bounded by the in-flight limits (records, tokens) plus one part's open row group,
//! whatever the corpus size. With `--previous`, a row whose id and text hash equal the previous
//! output's row at the same position of the same unit is copied from there, not recomputed.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{Field, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use ractor::{Actor, ActorRef};
use tokio::sync::mpsc;
use trident_core::Embedding;

use super::columns::{id_at, text_at, text_hash, Layout};
use super::input::*;
use super::manifest::{self, Manifest, Settings};
use super::spec::{CorpusJob, Summary};
use super::units::{discover, units, Unit};
use super::writer::*;
use crate::cpu_clock;
use trident_engine::coordinator::{
    Coordinator, CoordinatorArgs, CoordinatorMsg, DocRecord, SinkMsg,
};
use trident_engine::flight::InFlight;
use trident_engine::{EngineError, Pipeline};

/// Run the job on `pipeline`.
pub async fn run(pipeline: &Pipeline, job: CorpusJob) -> Result<Summary, EngineError> {
    let t0 = Instant::now();
    let (root, files) = discover(&job.input)?;
    let all = units(&root, &files)?;
    let mine = job.shard.select(all);
    let settings = Settings {
        model: job.model_fingerprint.clone(),
        modes: job.modes,
        max_length: job.max_length,
        encoding: job.encoding,
        id_column: job.id_column.clone(),
        text_column: job.text_column.clone(),
        keep_columns: job.keep_columns.clone(),
    };
    std::fs::create_dir_all(&job.output).map_err(io_err(&job.output))?;
    // Every shard writing into one output must run the same job: same settings, same count.
    if manifest::dir(&job.output).is_dir() {
        for m in Manifest::load_all(&job.output)? {
            if let Some(d) = settings.difference(&m.settings) {
                return Err(EngineError::Input(format!(
                    "{} holds a job made with other settings ({d}): choose another --output",
                    job.output.display()
                )));
            }
            if m.shard.count != job.shard.count {
                return Err(EngineError::Input(format!(
                    "{} holds shard {}/{} of a job split {} ways, not {}: choose another --output",
                    job.output.display(),
                    m.shard.index,
                    m.shard.count,
                    m.shard.count,
                    job.shard.count
                )));
            }
        }
    }
    let mpath = manifest::path(&job.output, job.shard);
    let manifest = if mpath.exists() {
        if !job.resume {
            return Err(EngineError::Input(format!(
                "{} already holds a job's output ({}): add --resume to finish it, or choose \
                 another --output",
                job.output.display(),
                mpath.display()
            )));
        }
        let m = Manifest::load(&mpath)?;
        if let Some(d) = settings.difference(&m.settings) {
            return Err(EngineError::Input(format!(
                "--resume refused: {} was made with other settings ({d})",
                job.output.display()
            )));
        }
        // The input must still hold the units the manifest says are done, with their rows.
        for (key, done) in &m.units {
            match mine.iter().find(|u| &u.key() == key) {
                Some(u) if u.rows as u64 == done.rows => {}
                Some(u) => {
                    return Err(EngineError::Input(format!(
                        "--resume refused: input unit {key} has {} rows, {} when it was written",
                        u.rows, done.rows
                    )))
                }
                None => {
                    return Err(EngineError::Input(format!(
                        "--resume refused: input unit {key} (written as {}) is no longer in \
                         this shard of the input",
                        done.part
                    )))
                }
            }
        }
        m
    } else {
        Manifest::new(settings.clone(), job.shard)
    };
    // Earlier outputs whose rows may be reused, by unit key.
    let mut previous: HashMap<String, PathBuf> = HashMap::new();
    if let Some(prev) = &job.previous {
        for m in Manifest::load_all(prev)? {
            let mut theirs = m.settings.clone();
            theirs.id_column = settings.id_column.clone();
            theirs.keep_columns = settings.keep_columns.clone();
            if let Some(d) = settings.difference(&theirs) {
                return Err(EngineError::Input(format!(
                    "--previous {}: made with other settings ({d}); its rows cannot be reused",
                    prev.display()
                )));
            }
            for (k, u) in m.units {
                previous.insert(k, prev.join(u.part));
            }
        }
    }
    let todo: Vec<Unit> =
        mine.iter().filter(|u| !manifest.units.contains_key(&u.key())).cloned().collect();
    let skipped = (mine.len() - todo.len()) as u64;
    let total_rows: u64 = mine.iter().map(|u| u.rows as u64).sum();
    let done_rows: u64 = manifest.units.values().map(|u| u.rows).sum();

    let flight = Arc::new(InFlight::default());
    let (tx, mut rx) = mpsc::unbounded_channel::<WriterMsg>();
    let layout = Layout {
        modes: job.modes,
        enc: job.encoding,
        dense_dim: job.dense_dim,
        colbert_dim: job.colbert_dim,
    };
    let mut writer = Writer {
        layout: layout.clone(),
        enc: job.encoding,
        out: job.output.clone(),
        manifest,
        chunks: VecDeque::new(),
        open: HashMap::new(),
        flight: flight.clone(),
        summary: Summary { rows: 0, units_skipped: skipped, ..Summary::default() },
        total_rows: total_rows.saturating_sub(done_rows),
        progress: job.progress.clone(),
    };
    let writer_failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let failed_flag = writer_failed.clone();
    let writer_task = tokio::spawn(async move {
        let mut failure: Option<EngineError> = None;
        while let Some(msg) = rx.recv().await {
            match msg {
                WriterMsg::End(reply) => {
                    let r = match failure.take() {
                        Some(e) => Err(e),
                        None if !writer.chunks.is_empty() || !writer.open.is_empty() => {
                            Err(EngineError::Actor("the job ended with rows unwritten".into()))
                        }
                        None => Ok(writer.summary.clone()),
                    };
                    let _ = reply.send(r);
                    return;
                }
                m if failure.is_none() => {
                    let mut spent = 0.0;
                    let r = cpu_clock::charge(&mut spent, || writer.handle(m));
                    writer.summary.format_seconds += spent;
                    if let Err(e) = r {
                        failure = Some(e);
                        failed_flag.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                // After a failure results are dropped, but what they held in flight is let go
                // so the reader and the wait for the last rows end.
                WriterMsg::Sink(SinkMsg::Done { tokens, .. }) => {
                    writer.flight.release(1, tokens, 0)
                }
                WriterMsg::Sink(SinkMsg::Bad { .. }) => writer.flight.release(1, 0, 0),
                _ => {}
            }
        }
    });
    let actor_err = |e: ractor::SpawnErr| EngineError::Actor(e.to_string());
    let (sink, sink_join) = Actor::spawn(None, Forward, tx.clone()).await.map_err(actor_err)?;
    let coord_args = CoordinatorArgs {
        pipeline: pipeline.clone(),
        sink: sink.clone(),
        modes: job.modes,
        max_length: job.max_length,
        max_record_bytes: usize::MAX,
        reject_blank: false,
        flight: flight.clone(),
    };
    let (coord, coord_join) =
        Actor::spawn(None, Coordinator, coord_args).await.map_err(actor_err)?;

    let mut read_seconds = 0.0;
    let read = feed(&job, &layout, &todo, &previous, &tx, &coord, &flight, &writer_failed)
        .await
        .map(|spent| read_seconds = spent);
    let _ = coord.send_message(CoordinatorMsg::Flush);
    if read.is_ok() {
        // Wait until every submitted row is written (or the writer failed).
        while flight.counts().records > 0 && !writer_task.is_finished() {
            flight.changed(std::time::Duration::from_millis(200)).await;
        }
    }
    let (reply, done) = tokio::sync::oneshot::channel();
    let _ = tx.send(WriterMsg::End(reply));
    let written =
        done.await.unwrap_or_else(|_| Err(EngineError::Actor("the writer stopped".into())));
    coord.stop(None);
    sink.stop(None);
    let _ = coord_join.await;
    let _ = sink_join.await;
    let _ = writer_task.await;
    // The writer's own error names the file at fault; the reader's only says it stopped.
    let mut s = match (read, written) {
        (_, Err(e)) if writer_failed.load(std::sync::atomic::Ordering::Relaxed) => return Err(e),
        (Err(e), _) => return Err(e),
        (Ok(()), w) => w?,
    };
    s.format_seconds += read_seconds;
    s.seconds = t0.elapsed().as_secs_f64();
    s.tokens_per_second = s.tokens as f64 / s.seconds.max(1e-9);
    Ok(s)
}

/// Read every unit to do, announce it to the writer, and submit its rows. Returns the CPU
/// seconds spent reading and decoding Parquet (see `Summary::format_seconds`).
#[allow(clippy::too_many_arguments)]
async fn feed(
    job: &CorpusJob,
    layout: &Layout,
    todo: &[Unit],
    previous: &HashMap<String, PathBuf>,
    tx: &mpsc::UnboundedSender<WriterMsg>,
    coord: &ActorRef<CoordinatorMsg>,
    flight: &Arc<InFlight>,
    writer_failed: &std::sync::atomic::AtomicBool,
) -> Result<f64, EngineError> {
    let stopped = || {
        writer_failed
            .load(std::sync::atomic::Ordering::Relaxed)
            .then(|| EngineError::Actor("the output writer failed".into()))
    };
    let mut ticket: u64 = 1;
    // CPU time of the synchronous reading sections (none of them awaits, so each runs on one
    // thread from start to end).
    let mut spent = 0.0;
    for unit in todo {
        let t0 = cpu_clock::thread_seconds();
        let part = job.output.join(unit.part_name());
        // A part left by a killed run is redone whole.
        let _ = std::fs::remove_file(tmp_part(&part));
        let f = File::open(&unit.file).map_err(io_err(&unit.file))?;
        let b = ParquetRecordBatchReaderBuilder::try_new(f).map_err(pq_err(unit.file.display()))?;
        let cols = input_columns(job, b.schema(), &unit.file)?;
        drop(b);
        let schema = Arc::new(layout.schema(&cols.id, &cols.keep));
        let msg = WriterMsg::Unit { index: unit.index, key: unit.key(), part, schema };
        tx.send(msg).map_err(|_| EngineError::Actor("the writer stopped".into()))?;
        let mut prev = match previous.get(&unit.key()) {
            Some(p) if p.exists() => Some(PrevRows::open(p.clone())?),
            _ => None,
        };
        let reader = open_unit(unit, Some(&cols.roots))?;
        let mut batches = reader.peekable();
        let mut any = false;
        spent += cpu_clock::thread_seconds() - t0;
        loop {
            let t0 = cpu_clock::thread_seconds();
            let batch = match batches.next() {
                Some(b) => b.map_err(|e| EngineError::Input(format!("{}: {e}", unit.key())))?,
                None if any => break,
                // An empty unit still gets its (empty) part.
                None => RecordBatch::new_empty(Arc::new(Schema::new(vec![
                    cols.id.clone(),
                    Field::new(&job.text_column, arrow_schema::DataType::Utf8, true),
                ]))),
            };
            any = true;
            let last = batches.peek().is_none();
            let ids = batch.column_by_name(&job.id_column).expect("projected").clone();
            let texts = batch.column_by_name(&job.text_column).expect("projected").clone();
            let keep: Vec<ArrayRef> = cols
                .keep
                .iter()
                .map(|f| {
                    batch.column_by_name(f.name()).cloned().unwrap_or_else(|| {
                        arrow_array::new_null_array(f.data_type(), batch.num_rows())
                    })
                })
                .collect();
            let n = batch.num_rows();
            let prev_rows = match prev.as_mut() {
                Some(p) => p.take(n)?,
                None => None,
            };
            let mut docs = Vec::new();
            let mut hashes = Vec::with_capacity(n);
            let mut results = Vec::with_capacity(n);
            let mut reused = Vec::with_capacity(n);
            for i in 0..n {
                let id = id_at(ids.as_ref(), i);
                let text = text_at(texts.as_ref(), i);
                let hash = text_hash(text.unwrap_or(""));
                hashes.push(hash);
                let again = match (&prev_rows, &id) {
                    (Some(p), Some(id)) if i < p.num_rows() && text.is_some() => {
                        same_row(p, i, id, &hash, job)
                    }
                    _ => false,
                };
                reused.push(again);
                match (id, text) {
                    _ if again => results.push(Some(Ok(Embedding::empty()))),
                    (None, _) => {
                        results.push(Some(Err(format!("null id in column {:?}", job.id_column))))
                    }
                    (Some(_), None) => results
                        .push(Some(Err(format!("null text in column {:?}", job.text_column)))),
                    (Some(id), Some(text)) => {
                        results.push(None);
                        docs.push(DocRecord {
                            ticket: ticket + i as u64,
                            id,
                            text: text.to_string(),
                            est_tokens: 0,
                        });
                    }
                }
            }
            let chunk = Chunk {
                unit: unit.index,
                first_ticket: ticket,
                ids,
                keep,
                hashes,
                results,
                reused,
                prev: prev_rows,
                remaining: docs.len(),
                last_of_unit: last,
            };
            ticket += n.max(1) as u64;
            spent += cpu_clock::thread_seconds() - t0;
            tx.send(WriterMsg::Chunk(Box::new(chunk)))
                .map_err(|_| EngineError::Actor("the writer stopped".into()))?;
            if docs.is_empty() {
                // Nothing to wait for: let the writer see the chunk as complete.
                tx.send(WriterMsg::Sink(SinkMsg::Delivered { ticket: 0, ok: true }))
                    .map_err(|_| EngineError::Actor("the writer stopped".into()))?;
                continue;
            }
            while flight.above_high(&job.limits) {
                if let Some(e) = stopped() {
                    return Err(e);
                }
                tokio::select! {
                    _ = flight.wait_below_low(&job.limits) => {}
                    _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
                }
            }
            if let Some(e) = stopped() {
                return Err(e);
            }
            flight.add_records(docs.len());
            let _ = coord.send_message(CoordinatorMsg::Docs(docs));
        }
    }
    Ok(spent)
}
