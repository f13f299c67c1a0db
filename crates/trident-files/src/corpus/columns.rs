//! The output's Arrow columns. A part has, in order:
//!
//! | column | type |
//! | --- | --- |
//! | the id column | as in the input (string or integer) |
//! | `text_hash` | fixed_size_binary(16): BLAKE3 of the text, what `--previous` compares |
//! | `tokens` | int32 (null when the row failed) |
//! | `truncated` | bool |
//! | `dense` | fixed_size_list<float32 \| float16 \| uint16 (bf16 bits)>[dim] |
//! | `sparse` | list<struct<token: uint32, weight: float32>> |
//! | `colbert` | list<fixed_size_list<float32 \| float16>[dim]>, or list<fixed_size_binary[dim/8]> when binary |
//! | `error` | string, null unless the row failed |
//! | kept columns | as in the input |
//!
//! Vectors hold the values the encoding keeps (`trident_core::encoding`), bit for bit.

use std::sync::Arc;

use arrow_array::builder::{FixedSizeBinaryBuilder, StringBuilder};
use arrow_array::types::{Int32Type, Int64Type, UInt32Type, UInt64Type};
use arrow_array::{
    Array, ArrayRef, BooleanArray, FixedSizeListArray, Float16Array, Float32Array, Int32Array,
    ListArray, StructArray, UInt16Array, UInt32Array,
};
use arrow_buffer::{NullBuffer, OffsetBuffer};
use arrow_schema::{DataType, Field, Fields, Schema};
use trident_core::encoding::{pack_bits, packed_len};
use trident_core::{ColbertEncoding, DenseEncoding, DocId, Embedding, Encoding, Modes};

/// What a part's result columns look like for one job.
#[derive(Clone, Debug)]
pub struct Layout {
    pub modes: Modes,
    pub enc: Encoding,
    pub dense_dim: usize,
    pub colbert_dim: usize,
}

pub const RESULT_COLUMNS: [&str; 7] =
    ["text_hash", "tokens", "truncated", "dense", "sparse", "colbert", "error"];

fn item(t: DataType) -> Arc<Field> {
    Arc::new(Field::new("item", t, false))
}

fn dense_item(enc: DenseEncoding) -> DataType {
    match enc {
        DenseEncoding::F32 => DataType::Float32,
        DenseEncoding::F16 => DataType::Float16,
        DenseEncoding::Bf16 => DataType::UInt16,
    }
}

fn sparse_fields() -> Fields {
    Fields::from(vec![
        Field::new("token", DataType::UInt32, false),
        Field::new("weight", DataType::Float32, false),
    ])
}

impl Layout {
    fn colbert_row_type(&self) -> DataType {
        match self.enc.colbert {
            ColbertEncoding::F32 => {
                DataType::FixedSizeList(item(DataType::Float32), self.colbert_dim as i32)
            }
            ColbertEncoding::F16 => {
                DataType::FixedSizeList(item(DataType::Float16), self.colbert_dim as i32)
            }
            ColbertEncoding::Binary => {
                DataType::FixedSizeBinary(packed_len(self.colbert_dim) as i32)
            }
        }
    }

    /// The result columns' fields (after the id column).
    pub fn fields(&self) -> Vec<Field> {
        let mut f = vec![
            Field::new("text_hash", DataType::FixedSizeBinary(16), false),
            Field::new("tokens", DataType::Int32, true),
            Field::new("truncated", DataType::Boolean, true),
        ];
        if self.modes.dense {
            let t =
                DataType::FixedSizeList(item(dense_item(self.enc.dense)), self.dense_dim as i32);
            f.push(Field::new("dense", t, true));
        }
        if self.modes.sparse {
            let s = DataType::Struct(sparse_fields());
            f.push(Field::new("sparse", DataType::List(item(s)), true));
        }
        if self.modes.colbert {
            f.push(Field::new("colbert", DataType::List(item(self.colbert_row_type())), true));
        }
        f.push(Field::new("error", DataType::Utf8, true));
        f
    }

    /// The whole schema of a part: id field, result fields, kept fields.
    pub fn schema(&self, id: &Field, keep: &[Field]) -> Schema {
        let mut fields = vec![id.clone()];
        fields.extend(self.fields());
        fields.extend(keep.iter().cloned());
        let meta = [
            ("trident.dense_encoding".to_string(), self.enc.dense.to_string()),
            ("trident.colbert_encoding".to_string(), self.enc.colbert.to_string()),
        ];
        Schema::new(fields)
            .with_metadata(meta.into_iter().collect::<std::collections::HashMap<_, _>>())
    }

    /// The result columns of `rows` (already rounded by the encoding), one value per row.
    pub fn columns(
        &self,
        hashes: &[[u8; 16]],
        rows: &[Result<Embedding, String>],
    ) -> Vec<ArrayRef> {
        let n = rows.len();
        let valid = NullBuffer::from(rows.iter().map(|r| r.is_ok()).collect::<Vec<_>>());
        let mut hash = FixedSizeBinaryBuilder::with_capacity(n, 16);
        hashes.iter().for_each(|h| hash.append_value(h).expect("16 bytes"));
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(hash.finish()),
            Arc::new(Int32Array::from_iter(rows.iter().map(|r| ok(r).map(|e| e.tokens as i32)))),
            Arc::new(BooleanArray::from_iter(rows.iter().map(|r| ok(r).map(|e| e.truncated)))),
        ];
        if self.modes.dense {
            let dim = self.dense_dim;
            let mut flat = Vec::with_capacity(n * dim);
            for r in rows {
                match ok(r).and_then(|e| e.dense.as_deref()).filter(|d| d.len() == dim) {
                    Some(d) => flat.extend_from_slice(d),
                    None => flat.resize(flat.len() + dim, 0.0),
                }
            }
            let valid = NullBuffer::from(
                rows.iter().map(|r| ok(r).is_some_and(|e| e.dense.is_some())).collect::<Vec<_>>(),
            );
            let values = dense_values(self.enc.dense, flat);
            let field = item(dense_item(self.enc.dense));
            cols.push(Arc::new(FixedSizeListArray::new(field, dim as i32, values, Some(valid))));
        }
        if self.modes.sparse {
            let mut offsets = vec![0i32];
            let (mut tokens, mut weights) = (Vec::new(), Vec::new());
            for r in rows {
                if let Some(s) = ok(r).and_then(|e| e.sparse.as_ref()) {
                    tokens.extend(s.iter().map(|p| p.0));
                    weights.extend(s.iter().map(|p| p.1));
                }
                offsets.push(tokens.len() as i32);
            }
            let values = StructArray::new(
                sparse_fields(),
                vec![Arc::new(UInt32Array::from(tokens)), Arc::new(Float32Array::from(weights))],
                None,
            );
            cols.push(Arc::new(ListArray::new(
                item(DataType::Struct(sparse_fields())),
                OffsetBuffer::new(offsets.into()),
                Arc::new(values),
                Some(valid.clone()),
            )));
        }
        if self.modes.colbert {
            cols.push(self.colbert_column(rows, &valid));
        }
        let mut err = StringBuilder::new();
        rows.iter().for_each(|r| err.append_option(r.as_ref().err()));
        cols.push(Arc::new(err.finish()));
        cols
    }

    fn colbert_column(&self, rows: &[Result<Embedding, String>], valid: &NullBuffer) -> ArrayRef {
        let dim = self.colbert_dim.max(1);
        let mut offsets = vec![0i32];
        let mut total = 0usize;
        fn rows_of(r: &Result<Embedding, String>, dim: usize) -> Option<&[f32]> {
            r.as_ref().ok().and_then(|e| e.colbert.as_deref()).filter(|c| c.len() % dim == 0)
        }
        let cb = |r| rows_of(r, dim);
        for r in rows {
            total += cb(r).map_or(0, |c| c.len() / dim);
            offsets.push(total as i32);
        }
        let values: ArrayRef = match self.enc.colbert {
            ColbertEncoding::Binary => {
                let w = packed_len(dim);
                let mut b = FixedSizeBinaryBuilder::with_capacity(total, w as i32);
                let mut buf = Vec::with_capacity(w);
                for c in rows.iter().filter_map(cb) {
                    for row in c.chunks(dim) {
                        buf.clear();
                        pack_bits(row, &mut buf);
                        b.append_value(&buf).expect("row width");
                    }
                }
                Arc::new(b.finish())
            }
            enc => {
                let mut flat = Vec::with_capacity(total * dim);
                rows.iter().filter_map(cb).for_each(|c| flat.extend_from_slice(c));
                let (t, values) = match enc {
                    ColbertEncoding::F16 => {
                        (DataType::Float16, dense_values(DenseEncoding::F16, flat))
                    }
                    _ => (DataType::Float32, dense_values(DenseEncoding::F32, flat)),
                };
                Arc::new(FixedSizeListArray::new(item(t), dim as i32, values, None))
            }
        };
        Arc::new(ListArray::new(
            item(self.colbert_row_type()),
            OffsetBuffer::new(offsets.into()),
            values,
            Some(valid.clone()),
        ))
    }
}

fn dense_values(enc: DenseEncoding, flat: Vec<f32>) -> ArrayRef {
    match enc {
        DenseEncoding::F32 => Arc::new(Float32Array::from(flat)),
        DenseEncoding::F16 => Arc::new(Float16Array::from(
            flat.iter().map(|&x| half::f16::from_f32(x)).collect::<Vec<_>>(),
        )),
        DenseEncoding::Bf16 => Arc::new(UInt16Array::from(
            flat.iter().map(|&x| half::bf16::from_f32(x).to_bits()).collect::<Vec<_>>(),
        )),
    }
}

fn ok(r: &Result<Embedding, String>) -> Option<&Embedding> {
    r.as_ref().ok()
}

/// Whether an id column of this type can be read.
pub fn id_type_ok(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt32
            | DataType::UInt64
    )
}

/// The id of row `i` (`None` when null).
pub fn id_at(a: &dyn Array, i: usize) -> Option<DocId> {
    use arrow_array::cast::AsArray;
    if a.is_null(i) {
        return None;
    }
    Some(match a.data_type() {
        DataType::Utf8 => DocId::from(a.as_string::<i32>().value(i)),
        DataType::LargeUtf8 => DocId::from(a.as_string::<i64>().value(i)),
        DataType::Utf8View => DocId::from(a.as_string_view().value(i)),
        DataType::Int32 => DocId::Num(a.as_primitive::<Int32Type>().value(i).into()),
        DataType::Int64 => DocId::Num(a.as_primitive::<Int64Type>().value(i).into()),
        DataType::UInt32 => DocId::Num(a.as_primitive::<UInt32Type>().value(i).into()),
        DataType::UInt64 => DocId::Num(a.as_primitive::<UInt64Type>().value(i).into()),
        _ => return None,
    })
}

/// The text of row `i` (`None` when null or not a string column).
pub fn text_at(a: &dyn Array, i: usize) -> Option<&str> {
    use arrow_array::cast::AsArray;
    if a.is_null(i) {
        return None;
    }
    match a.data_type() {
        DataType::Utf8 => Some(a.as_string::<i32>().value(i)),
        DataType::LargeUtf8 => Some(a.as_string::<i64>().value(i)),
        DataType::Utf8View => Some(a.as_string_view().value(i)),
        _ => None,
    }
}

/// The content hash of a text, as stored in `text_hash`.
pub fn text_hash(text: &str) -> [u8; 16] {
    let h = blake3::hash(text.as_bytes());
    h.as_bytes()[..16].try_into().expect("16 bytes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::RecordBatch;

    #[test]
    fn columns_match_their_schema_for_every_encoding() {
        let e = Embedding {
            tokens: 4,
            truncated: false,
            dense: Some(vec![0.5, -0.25, 0.125, 1.0]),
            sparse: Some(vec![(7, 0.5), (9, 0.25)]),
            colbert: Some(vec![0.1, -0.2, 0.3, -0.4, 0.5, 0.6, -0.7, 0.8, 0.9, -1.0, 0.0, 0.2]),
            colbert_dim: 4,
        };
        for colbert in [ColbertEncoding::F32, ColbertEncoding::F16, ColbertEncoding::Binary] {
            for dense in [DenseEncoding::F32, DenseEncoding::F16, DenseEncoding::Bf16] {
                let layout = Layout {
                    modes: Modes::ALL,
                    enc: Encoding { dense, colbert },
                    dense_dim: 4,
                    colbert_dim: 4,
                };
                let rows = vec![Ok(e.clone()), Err("bad".to_string()), Ok(e.clone())];
                let cols = layout.columns(&[[0; 16], [1; 16], [2; 16]], &rows);
                let id = Field::new("id", DataType::Utf8, false);
                let schema = Arc::new(layout.schema(&id, &[]));
                let mut all: Vec<ArrayRef> =
                    vec![Arc::new(arrow_array::StringArray::from(vec!["a", "b", "c"]))];
                all.extend(cols);
                let batch = RecordBatch::try_new(schema, all).unwrap();
                assert_eq!(batch.num_rows(), 3);
                let cb = batch.column_by_name("colbert").unwrap();
                assert!(cb.is_null(1) && !cb.is_null(2));
                let cb = cb.as_any().downcast_ref::<ListArray>().unwrap();
                assert_eq!(cb.value(2).len(), 3, "three rows of ColBERT");
                let err = batch.column_by_name("error").unwrap();
                assert!(err.is_null(0) && !err.is_null(1));
            }
        }
    }
}
