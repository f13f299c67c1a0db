//! The job's input side: which columns a unit's files give, opening a unit's rows in batches,
//! and the rows of an earlier output (`--previous`) that can be reused as they are.

use std::collections::VecDeque;
use std::fs::File;
use std::path::{Path, PathBuf};

use arrow_array::{Array, RecordBatch};
use arrow_schema::{Field, Schema};
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::arrow::ProjectionMask;
use trident_core::DocId;

use super::columns::{id_at, id_type_ok};
use super::units::Unit;
use trident_engine::EngineError;

use super::spec::{CorpusJob, BATCH_ROWS};

pub(super) fn io_err(p: &Path) -> impl Fn(std::io::Error) -> EngineError + '_ {
    move |e| EngineError::Io { path: p.display().to_string(), source: e }
}

pub(super) fn pq_err(
    what: impl std::fmt::Display,
) -> impl Fn(parquet::errors::ParquetError) -> EngineError {
    move |e| EngineError::Input(format!("{what}: {e}"))
}

/// Names of the columns a job reads, and their fields in one input file.
pub(super) struct InputColumns {
    pub(super) id: Field,
    pub(super) keep: Vec<Field>,
    /// Root indices of id, text and kept columns in the file's schema.
    pub(super) roots: Vec<usize>,
}

pub(super) fn input_columns(
    job: &CorpusJob,
    schema: &Schema,
    file: &Path,
) -> Result<InputColumns, EngineError> {
    let find = |name: &str| {
        schema.index_of(name).map_err(|_| {
            let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            EngineError::Input(format!(
                "{}: no column {name:?} (columns: {})",
                file.display(),
                names.join(", ")
            ))
        })
    };
    let id = find(&job.id_column)?;
    let text = find(&job.text_column)?;
    let id_field = schema.field(id).clone();
    if !id_type_ok(id_field.data_type()) {
        return Err(EngineError::Input(format!(
            "{}: id column {:?} is {}, expected a string or an integer",
            file.display(),
            job.id_column,
            id_field.data_type()
        )));
    }
    if !matches!(
        schema.field(text).data_type(),
        arrow_schema::DataType::Utf8
            | arrow_schema::DataType::LargeUtf8
            | arrow_schema::DataType::Utf8View
    ) {
        return Err(EngineError::Input(format!(
            "{}: text column {:?} is {}, expected a string",
            file.display(),
            job.text_column,
            schema.field(text).data_type()
        )));
    }
    let mut roots = vec![id, text];
    let mut keep = Vec::new();
    for k in &job.keep_columns {
        let i = find(k)?;
        if k == &job.id_column || super::columns::RESULT_COLUMNS.contains(&k.as_str()) {
            return Err(EngineError::Input(format!(
                "--keep-columns {k}: that name is an output column already"
            )));
        }
        roots.push(i);
        keep.push(schema.field(i).clone());
    }
    roots.sort_unstable();
    roots.dedup();
    Ok(InputColumns { id: id_field, keep, roots })
}

pub(super) fn open_unit(
    unit: &Unit,
    roots: Option<&[usize]>,
) -> Result<ParquetRecordBatchReader, EngineError> {
    let f = File::open(&unit.file).map_err(io_err(&unit.file))?;
    let what = unit.file.display().to_string();
    let b = ParquetRecordBatchReaderBuilder::try_new(f).map_err(pq_err(&what))?;
    let b = match roots {
        Some(r) => {
            let mask = ProjectionMask::roots(b.parquet_schema(), r.iter().copied());
            b.with_projection(mask)
        }
        None => b,
    };
    b.with_row_groups(vec![unit.row_group])
        .with_batch_size(BATCH_ROWS)
        .build()
        .map_err(pq_err(&what))
}

/// Rows of an earlier part, handed out in the same slices as the input's batches.
pub(super) struct PrevRows {
    pub(super) reader: ParquetRecordBatchReader,
    pub(super) buf: VecDeque<RecordBatch>,
    pub(super) path: PathBuf,
}

impl PrevRows {
    pub(super) fn open(path: PathBuf) -> Result<PrevRows, EngineError> {
        let f = File::open(&path).map_err(io_err(&path))?;
        let what = path.display().to_string();
        let reader = ParquetRecordBatchReaderBuilder::try_new(f)
            .and_then(|b| b.with_batch_size(BATCH_ROWS).build())
            .map_err(pq_err(&what))?;
        Ok(PrevRows { reader, buf: VecDeque::new(), path })
    }

    /// The next `n` rows (fewer at the end of the part).
    pub(super) fn take(&mut self, n: usize) -> Result<Option<RecordBatch>, EngineError> {
        let mut have: usize = self.buf.iter().map(|b| b.num_rows()).sum();
        while have < n {
            match self.reader.next() {
                Some(b) => {
                    let b =
                        b.map_err(|e| EngineError::Input(format!("{}: {e}", self.path.display())))?;
                    have += b.num_rows();
                    self.buf.push_back(b);
                }
                None => break,
            }
        }
        let Some(schema) = self.buf.front().map(|b| b.schema()) else { return Ok(None) };
        let mut parts = Vec::new();
        let mut need = n;
        while need > 0 {
            let Some(b) = self.buf.pop_front() else { break };
            if b.num_rows() <= need {
                need -= b.num_rows();
                parts.push(b);
            } else {
                parts.push(b.slice(0, need));
                self.buf.push_front(b.slice(need, b.num_rows() - need));
                need = 0;
            }
        }
        arrow_select::concat::concat_batches(&schema, &parts)
            .map(Some)
            .map_err(|e| EngineError::Input(format!("{}: {e}", self.path.display())))
    }
}

/// Whether row `i` of the earlier part is this row's result: same id, same text, no error.
pub(super) fn same_row(
    prev: &RecordBatch,
    i: usize,
    id: &DocId,
    hash: &[u8; 16],
    job: &CorpusJob,
) -> bool {
    use arrow_array::cast::AsArray;
    let Some(pid) = prev.column_by_name(&job.id_column) else { return false };
    let Some(ph) = prev.column_by_name("text_hash") else { return false };
    let Some(err) = prev.column_by_name("error") else { return false };
    if !err.is_null(i) || ph.is_null(i) {
        return false;
    }
    let Some(ph) = ph.as_fixed_size_binary_opt() else { return false };
    id_at(pid.as_ref(), i).is_some_and(|p| p.as_key() == id.as_key()) && ph.value(i) == hash
}
