//! The job's writer task: results come back from the pipeline in any order and are written in
//! input order, one Parquet part per unit (hidden under a temporary name until complete), the
//! manifest updated after each part.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::mpsc;
use trident_core::{Embedding, Encoding};

use super::columns::Layout;
use super::manifest::{Manifest, UnitDone};
use trident_engine::coordinator::SinkMsg;
use trident_engine::flight::InFlight;
use trident_engine::EngineError;

use super::input::*;
use super::spec::{Summary, ROW_GROUP_BYTES};

/// A slice of one unit's rows on its way to the writer.
pub(super) struct Chunk {
    pub(super) unit: usize,
    pub(super) first_ticket: u64,
    pub(super) ids: ArrayRef,
    pub(super) keep: Vec<ArrayRef>,
    pub(super) hashes: Vec<[u8; 16]>,
    /// Per row: the result once known. Reused rows are `Some(Ok)` placeholders taken from `prev`.
    pub(super) results: Vec<Option<Result<Embedding, String>>>,
    pub(super) reused: Vec<bool>,
    pub(super) prev: Option<RecordBatch>,
    pub(super) remaining: usize,
    pub(super) last_of_unit: bool,
}

pub(super) enum WriterMsg {
    /// A unit starts: its part's final name and schema.
    Unit {
        index: usize,
        key: String,
        part: PathBuf,
        schema: SchemaRef,
    },
    Chunk(Box<Chunk>),
    Sink(SinkMsg),
    End(tokio::sync::oneshot::Sender<Result<Summary, EngineError>>),
}

/// Forwards the coordinator's results to the writer task.
pub(super) struct Forward;

impl Actor for Forward {
    type Msg = SinkMsg;
    type State = mpsc::UnboundedSender<WriterMsg>;
    type Arguments = mpsc::UnboundedSender<WriterMsg>;

    async fn pre_start(
        &self,
        _me: ActorRef<SinkMsg>,
        tx: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(tx)
    }

    async fn handle(
        &self,
        _me: ActorRef<SinkMsg>,
        msg: SinkMsg,
        tx: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let _ = tx.send(WriterMsg::Sink(msg));
        Ok(())
    }
}

pub(super) struct OpenPart {
    pub(super) key: String,
    pub(super) tmp: PathBuf,
    pub(super) part: PathBuf,
    pub(super) writer: ArrowWriter<File>,
    pub(super) schema: SchemaRef,
    pub(super) done: UnitDone,
}

pub(super) struct Writer {
    pub(super) layout: Layout,
    pub(super) enc: Encoding,
    pub(super) out: PathBuf,
    pub(super) manifest: Manifest,
    pub(super) chunks: VecDeque<Chunk>,
    pub(super) open: HashMap<usize, OpenPart>,
    pub(super) flight: Arc<InFlight>,
    pub(super) summary: Summary,
    pub(super) total_rows: u64,
    pub(super) progress: Option<Arc<dyn Fn(u64, u64) + Send + Sync>>,
}

impl Writer {
    pub(super) fn result(
        &mut self,
        ticket: u64,
        outcome: Result<Embedding, String>,
        tokens: usize,
    ) {
        self.flight.release(1, tokens, 0);
        let i = self.chunks.partition_point(|c| c.first_ticket <= ticket);
        let Some(c) = i.checked_sub(1).and_then(|i| self.chunks.get_mut(i)) else { return };
        let row = (ticket - c.first_ticket) as usize;
        if row >= c.results.len() || c.results[row].is_some() {
            return;
        }
        let outcome = outcome.map(|mut e| {
            self.summary.tokens += e.tokens as u64;
            self.enc.apply(&mut e);
            e
        });
        c.results[row] = Some(outcome);
        c.remaining -= 1;
    }

    /// Write every complete chunk at the front, and close the parts they complete.
    pub(super) fn drain(&mut self) -> Result<(), EngineError> {
        while self.chunks.front().is_some_and(|c| c.remaining == 0) {
            let c = self.chunks.pop_front().expect("front");
            self.write_chunk(c)?;
        }
        Ok(())
    }

    pub(super) fn write_chunk(&mut self, c: Chunk) -> Result<(), EngineError> {
        let part = self.open.get_mut(&c.unit).expect("unit announced before its chunks");
        let n = c.hashes.len();
        let results: Vec<Result<Embedding, String>> =
            c.results.into_iter().map(|r| r.expect("complete")).collect();
        let failed = results.iter().filter(|r| r.is_err()).count() as u64;
        let reused = c.reused.iter().filter(|&&r| r).count() as u64;
        let fresh: Vec<Result<Embedding, String>> =
            results.into_iter().zip(&c.reused).filter(|(_, &r)| !r).map(|(r, _)| r).collect();
        // The hash column has every row; with reused rows the other result columns are
        // interleaved from the earlier part's and the fresh ones.
        let mut cols = self.layout.columns(&c.hashes, &fresh);
        if reused > 0 {
            let prev = c.prev.as_ref().expect("reused rows have a previous slice");
            let mut k = 0;
            let idx: Vec<(usize, usize)> = c
                .reused
                .iter()
                .enumerate()
                .map(|(i, &r)| {
                    if r {
                        (0, i)
                    } else {
                        k += 1;
                        (1, k - 1)
                    }
                })
                .collect();
            for (j, f) in self.layout.fields().iter().enumerate().skip(1) {
                let p = prev.column_by_name(f.name()).ok_or_else(|| {
                    EngineError::Input(format!("the previous output has no column {}", f.name()))
                })?;
                cols[j] =
                    arrow_select::interleave::interleave(&[p.as_ref(), cols[j].as_ref()], &idx)
                        .map_err(|e| {
                            EngineError::Input(format!("reusing column {}: {e}", f.name()))
                        })?;
            }
        }
        let mut all = vec![c.ids];
        all.extend(cols);
        all.extend(c.keep);
        let schema = part.schema.clone();
        let batch = RecordBatch::try_new(schema, all)
            .map_err(|e| EngineError::Input(format!("building the output rows: {e}")))?;
        part.writer
            .write(&batch)
            .map_err(|e| EngineError::Input(format!("{}: {e}", part.tmp.display())))?;
        if part.writer.in_progress_size() > ROW_GROUP_BYTES {
            part.writer.flush().map_err(|e| EngineError::Input(format!("{e}")))?;
        }
        part.done.rows += n as u64;
        part.done.failed += failed;
        part.done.reused += reused;
        self.summary.rows += n as u64;
        self.summary.failed += failed;
        self.summary.reused += reused;
        self.summary.embedded += n as u64 - reused - failed;
        if c.last_of_unit {
            self.close(c.unit)?;
        }
        Ok(())
    }

    pub(super) fn close(&mut self, unit: usize) -> Result<(), EngineError> {
        let p = self.open.remove(&unit).expect("open");
        let file = p
            .writer
            .into_inner()
            .map_err(|e| EngineError::Input(format!("{}: {e}", p.tmp.display())))?;
        file.sync_all().map_err(io_err(&p.tmp))?;
        drop(file);
        std::fs::rename(&p.tmp, &p.part).map_err(io_err(&p.part))?;
        self.manifest.units.insert(p.key, p.done);
        self.manifest.save(&self.out)?;
        self.summary.units += 1;
        if let Some(f) = &self.progress {
            f(self.summary.rows, self.total_rows);
        }
        Ok(())
    }

    pub(super) fn handle(&mut self, msg: WriterMsg) -> Result<(), EngineError> {
        match msg {
            WriterMsg::Unit { index, key, part, schema } => {
                let tmp = tmp_part(&part);
                let f = File::create(&tmp).map_err(io_err(&tmp))?;
                let props = part_properties(&schema)?;
                let writer = ArrowWriter::try_new(f, schema.clone(), Some(props))
                    .map_err(|e| EngineError::Input(format!("{}: {e}", tmp.display())))?;
                let part_name = part.file_name().unwrap().to_string_lossy().into_owned();
                let done = UnitDone { part: part_name, rows: 0, failed: 0, reused: 0 };
                self.open.insert(index, OpenPart { key, tmp, part, writer, schema, done });
            }
            WriterMsg::Chunk(c) => self.chunks.push_back(*c),
            WriterMsg::Sink(SinkMsg::Done { ticket, outcome, tokens, .. }) => {
                self.result(ticket, outcome.map_err(|e| e.to_string()), tokens)
            }
            WriterMsg::Sink(SinkMsg::Bad { ticket, reason, .. }) => {
                self.result(ticket, Err(reason), 0)
            }
            WriterMsg::Sink(_) => {}
            WriterMsg::End(_) => unreachable!("handled by the loop"),
        }
        self.drain()
    }
}

/// How a part is written. Embedding values are near-random floats: a dictionary never pays
/// for them, snappy saves nothing, and per-page min/max say nothing a reader filters on, yet
/// together these cost ~3× the write itself. So the vector columns (`dense`, `colbert`, and
/// the sparse weights) are written plain and uncompressed, without statistics; the other
/// columns keep snappy and dictionaries, and the id column keeps its min/max per row group.
pub(super) fn part_properties(schema: &Schema) -> Result<WriterProperties, EngineError> {
    let desc = parquet::arrow::ArrowSchemaConverter::new()
        .convert(schema)
        .map_err(|e| EngineError::Input(format!("output schema: {e}")))?;
    let mut b = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(64 * 1024))
        .set_statistics_enabled(EnabledStatistics::None);
    for col in desc.columns() {
        let path = col.path().clone();
        match path.parts().first().map(String::as_str) {
            Some("dense" | "colbert") => {
                b = b
                    .set_column_dictionary_enabled(path.clone(), false)
                    .set_column_compression(path, Compression::UNCOMPRESSED)
            }
            Some("sparse") if path.parts().last().is_some_and(|p| p == "weight") => {
                b = b
                    .set_column_dictionary_enabled(path.clone(), false)
                    .set_column_compression(path, Compression::UNCOMPRESSED)
            }
            _ => {}
        }
    }
    if let Some(id) = schema.fields().first() {
        b = b.set_column_statistics_enabled(
            ColumnPath::from(id.name().as_str()),
            EnabledStatistics::Chunk,
        );
    }
    Ok(b.build())
}

/// Where a part is written before it is complete: hidden (a leading `.`), so that readers of
/// the output directory (pyarrow, Spark) skip it.
pub(super) fn tmp_part(part: &Path) -> PathBuf {
    let name = part.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    part.with_file_name(format!(".{name}.tmp"))
}
