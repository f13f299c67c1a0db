//! Output formats: how one result is written, whatever the sink (file, stdout, Kafka, Redis).
//!
//! - `json`: trident's JSON object (`Embedding::to_json`), plus `"encoding"` when not f32;
//!   binary ColBERT rows are hex strings of the packed sign bits.
//! - `msgpack`: the compact value — a MessagePack map whose vectors are raw little-endian
//!   arrays with their numpy dtype and shape beside them (see [`write_msgpack`]). MessagePack
//!   because it is a standard, self-describing format read with one well-known package
//!   (`msgpack` in Python, `np.frombuffer` for the arrays), binary-safe (no base64), with a
//!   library in every language, and Redis's own Lua can read it; Arrow IPC or safetensors
//!   would need heavier readers for a one-document value.
//! - `milvus`, `qdrant`, `vespa`: JSON rows / points / put operations that each store's
//!   client, bulk loader or Kafka sink connector takes as they are (schemas in `deploy/`).
//!
//! A writer takes an embedding whose values were already rounded by [`Encoding::apply`].
//!
//! The writers and readers live in `json`, `msgpack` and `feeds` (Milvus, Qdrant, Vespa);
//! this module holds the types they share and re-exports their public functions.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::encoding::{pack_bits, Encoding};
use crate::{DocId, Embedding};

mod feeds;
mod json;
mod msgpack;

pub use feeds::qdrant_point_id;
pub use json::read_json;
pub use msgpack::{read_msgpack, write_msgpack};

/// The format of an output record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    #[default]
    Json,
    Msgpack,
    Milvus,
    Qdrant,
    Vespa,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Msgpack => "msgpack",
            Format::Milvus => "milvus",
            Format::Qdrant => "qdrant",
            Format::Vespa => "vespa",
        }
    }

    /// Binary records are concatenated in a file; the others are JSON Lines.
    pub fn is_binary(self) -> bool {
        self == Format::Msgpack
    }

    /// Whether the format carries ColBERT rows at all (Milvus rows hold dense and sparse).
    pub fn carries_colbert(self) -> bool {
        self != Format::Milvus
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "json" | "jsonl" => Ok(Format::Json),
            "msgpack" | "messagepack" => Ok(Format::Msgpack),
            "milvus" => Ok(Format::Milvus),
            "qdrant" => Ok(Format::Qdrant),
            "vespa" => Ok(Format::Vespa),
            _ => Err(format!(
                "unknown output format {s:?}; expected json, msgpack, milvus, qdrant or vespa"
            )),
        }
    }
}

/// Where the ColBERT rows went when they are not in the record itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ColbertNote {
    /// In the Redis result store, under the document's key.
    InStore,
    /// In their own message on this topic.
    Topic(String),
    /// Nowhere, for this reason (e.g. over the message limit with no store).
    Omitted(String),
}

/// One record to write.
pub struct Record<'a> {
    pub id: &'a DocId,
    /// Values already rounded by `enc.apply`.
    pub e: &'a Embedding,
    pub enc: Encoding,
    pub note: Option<&'a ColbertNote>,
    /// Source (partition, offset), written first in msgpack result-store values.
    pub version: Option<(i32, i64)>,
}

impl Record<'_> {
    /// The record in `format` (JSON formats without a trailing newline).
    pub fn write(&self, format: Format) -> Vec<u8> {
        match format {
            Format::Json => self.json().into_bytes(),
            Format::Msgpack => write_msgpack(self),
            Format::Milvus => self.milvus().into_bytes(),
            Format::Qdrant => self.qdrant(None).into_bytes(),
            Format::Vespa => self.vespa().into_bytes(),
        }
    }

    fn packed_rows(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.e.colbert.as_ref().map_or(0, |c| c.len() / 8 + 1));
        self.e.colbert_rows().for_each(|r| pack_bits(r, &mut out));
        out
    }
}

impl Embedding {
    /// A copy without the ColBERT rows (the slim form of an output).
    pub fn clone_without_colbert(&self) -> Embedding {
        Embedding {
            tokens: self.tokens,
            truncated: self.truncated,
            dense: self.dense.clone(),
            sparse: self.sparse.clone(),
            colbert: None,
            colbert_dim: self.colbert_dim,
        }
    }
}

/// A record read back: what [`write_msgpack`] or the JSON writer wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct Decoded {
    pub id: Option<DocId>,
    pub e: Embedding,
    pub enc: Encoding,
    pub version: Option<(i32, i64)>,
    pub note: Option<ColbertNote>,
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;
    use crate::encoding::{ColbertEncoding, DenseEncoding};

    pub(super) fn sample(dim: usize) -> Embedding {
        let row = |k: usize| {
            (0..dim).map(|i| ((i * 7 + k * 3) % 11) as f32 / 7.0 - 0.6).collect::<Vec<_>>()
        };
        Embedding {
            tokens: 5,
            truncated: true,
            dense: Some(row(1)),
            sparse: Some(vec![(605, 0.3), (7, 1e-7), (249_999, 2.5)]),
            colbert: Some([row(2), row(3), row(4)].concat()),
            colbert_dim: dim,
        }
    }

    fn all_encodings() -> Vec<Encoding> {
        let mut v = Vec::new();
        for d in [DenseEncoding::F32, DenseEncoding::F16, DenseEncoding::Bf16] {
            for c in [ColbertEncoding::F32, ColbertEncoding::F16, ColbertEncoding::Binary] {
                v.push(Encoding { dense: d, colbert: c });
            }
        }
        v
    }

    #[test]
    fn msgpack_and_json_roundtrip_every_encoding() {
        for dim in [16, 12] {
            for enc in all_encodings() {
                let mut e = sample(dim);
                enc.apply(&mut e);
                let id = DocId::from("doc-1");
                let note = ColbertNote::Topic("cb".into());
                let r =
                    Record { id: &id, e: &e, enc, note: Some(&note), version: Some((3, 1 << 40)) };
                let back = read_msgpack(&r.write(Format::Msgpack)).unwrap();
                assert_eq!(back.e, e, "{enc:?}");
                assert_eq!(
                    (back.id, back.enc, back.version),
                    (Some(id.clone()), enc, Some((3, 1 << 40)))
                );
                assert_eq!(back.note, Some(note.clone()));
                let v: Value = serde_json::from_slice(&r.write(Format::Json)).unwrap();
                assert_eq!(v["colbert_topic"], "cb");
                let back = read_json(&v).unwrap();
                assert_eq!(back.e.dense, e.dense, "{enc:?}");
                assert_eq!(back.e.colbert, e.colbert, "{enc:?}");
                assert_eq!(back.enc, enc);
                let mut sparse = back.e.sparse.unwrap();
                sparse.sort_by_key(|p| p.0);
                let mut want = e.sparse.clone().unwrap();
                want.sort_by_key(|p| p.0);
                assert_eq!(sparse, want);
            }
        }
    }

    #[test]
    fn corrupt_values_are_errors_not_panics() {
        let e = sample(8);
        let id = DocId::from("x");
        let v = Record { id: &id, e: &e, enc: Encoding::default(), note: None, version: None }
            .write(Format::Msgpack);
        for cut in [1, v.len() / 2, v.len() - 1] {
            assert!(read_msgpack(&v[..cut]).is_err());
        }
        let mut extra = v.clone();
        extra.push(0xc0);
        assert!(read_msgpack(&extra).unwrap_err().contains("trailing"));
        assert!(read_msgpack(b"\x81\xa6tokens\xa1x").unwrap_err().contains("tokens"));
        // A claimed ColBERT width far over its rows' bytes is refused before any allocation.
        let v =
            json!({"encoding": {"colbert": "binary"}, "colbert_dim": u64::MAX, "colbert": ["ff"]});
        assert!(read_json(&v).unwrap_err().contains("bits"));
    }
}
