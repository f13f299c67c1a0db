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

use std::fmt::{self, Write as _};
use std::str::FromStr;

use serde::Serialize;
use serde_json::{json, Value};

use crate::encoding::{pack_bits, packed_len, unpack_bits, ColbertEncoding, Encoding};
use crate::{DocId, Embedding};

mod feeds;
mod msgpack;

pub use feeds::qdrant_point_id;
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

    /// trident's JSON object; fields added to the f32 form after its own, floats written as
    /// the shortest decimal that reads back to the same f32.
    fn json(&self) -> String {
        let e = self.e;
        let binary = self.enc.colbert == ColbertEncoding::Binary && e.colbert.is_some();
        if self.enc.is_f32() && self.note.is_none() {
            return e.to_json(self.id);
        }
        let mut out =
            if binary { e.clone_without_colbert().to_json(self.id) } else { e.to_json(self.id) };
        out.pop(); // the closing brace
        let mut field = |k: &str, v: String| {
            out.push_str(&format!(",\"{k}\":{v}"));
        };
        if binary {
            let w = packed_len(e.colbert_dim).max(1);
            let rows: Vec<String> = self.packed_rows().chunks(w).map(hex).collect();
            field("colbert", serde_json::to_string(&rows).expect("strings serialise"));
            field("colbert_dim", e.colbert_dim.to_string());
        }
        if !self.enc.is_f32() {
            field("encoding", self.encoding_json().to_string());
        }
        match self.note {
            Some(ColbertNote::InStore) => field("colbert_in_store", "true".into()),
            Some(ColbertNote::Topic(t)) => field("colbert_topic", json!(t).to_string()),
            Some(ColbertNote::Omitted(why)) => field("colbert_omitted", json!(why).to_string()),
            None => {}
        }
        out.push('}');
        out
    }

    fn encoding_json(&self) -> Value {
        json!({ "dense": self.enc.dense.name(), "colbert": self.enc.colbert.name() })
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

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    bytes.iter().for_each(|b| write!(s, "{b:02x}").expect("string write"));
    s
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok()).collect()
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

/// Read an embedding back from trident's JSON object (as `trident embed` writes it, any
/// encoding): the passages of `trident score`, stored results given to `/score`.
pub fn read_json(v: &Value) -> Result<Decoded, String> {
    let obj = v.as_object().ok_or("an embedding must be a JSON object")?;
    let enc: Encoding = match obj.get("encoding") {
        Some(e) => serde_json::from_value(e.clone()).map_err(|err| format!("encoding: {err}"))?,
        None => Encoding::default(),
    };
    let floats = |v: &Value, what: &str| -> Result<Vec<f32>, String> {
        v.as_array()
            .ok_or(format!("{what} must be an array of numbers"))?
            .iter()
            .map(|x| x.as_f64().map(|f| f as f32).ok_or(format!("{what}: {x} is not a number")))
            .collect()
    };
    let dense = obj.get("dense").map(|d| floats(d, "dense")).transpose()?;
    let sparse = match obj.get("sparse") {
        Some(Value::Object(m)) => Some(
            m.iter()
                .map(|(k, w)| {
                    let t = k
                        .parse::<u32>()
                        .map_err(|_| format!("sparse key {k:?} is not a token id"))?;
                    let w = w.as_f64().ok_or(format!("sparse weight of {k} is not a number"))?;
                    Ok((t, w as f32))
                })
                .collect::<Result<Vec<_>, String>>()?,
        ),
        Some(_) => return Err("sparse must be an object of token id → weight".into()),
        None => None,
    };
    let (colbert, colbert_dim) = match obj.get("colbert") {
        Some(Value::Array(rows)) => {
            let mut out = Vec::new();
            let mut dim = None;
            for (i, r) in rows.iter().enumerate() {
                let row = match (enc.colbert, r) {
                    (ColbertEncoding::Binary, Value::String(h)) => {
                        let bytes = unhex(h).ok_or(format!("colbert row {i} is not hex"))?;
                        let d = obj
                            .get("colbert_dim")
                            .and_then(Value::as_u64)
                            .map_or(bytes.len() * 8, |d| d as usize);
                        if packed_len(d) != bytes.len() {
                            return Err(format!(
                                "colbert row {i}: {} bytes for {d} bits",
                                bytes.len()
                            ));
                        }
                        let mut v = Vec::with_capacity(d);
                        unpack_bits(&bytes, d, &mut v);
                        v
                    }
                    _ => floats(r, "colbert row")?,
                };
                if *dim.get_or_insert(row.len()) != row.len() {
                    return Err(format!(
                        "colbert row {i} has {} values, row 0 has {dim:?}",
                        row.len()
                    ));
                }
                out.extend(row);
            }
            (Some(out), dim.unwrap_or(0))
        }
        Some(_) => return Err("colbert must be an array of rows".into()),
        None => (None, 0),
    };
    let id = obj
        .get("id")
        .map(|v| serde_json::from_value(v.clone()))
        .transpose()
        .map_err(|e| format!("id: {e}"))?;
    let e = Embedding {
        tokens: obj.get("tokens").and_then(Value::as_u64).unwrap_or(0) as usize,
        truncated: obj.get("truncated").and_then(Value::as_bool).unwrap_or(false),
        dense,
        sparse,
        colbert,
        colbert_dim,
    };
    Ok(Decoded { id, e, enc, version: None, note: None })
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
    fn json_default_is_unchanged_and_marks_encodings() {
        let e = sample(8);
        let id = DocId::from(1u64);
        let plain = Record { id: &id, e: &e, enc: Encoding::default(), note: None, version: None };
        assert_eq!(plain.write(Format::Json), e.to_json(&id).into_bytes());
        let mut b = e.clone();
        let enc = Encoding { dense: DenseEncoding::F32, colbert: ColbertEncoding::Binary };
        enc.apply(&mut b);
        let v: Value = serde_json::from_slice(
            &Record { id: &id, e: &b, enc, note: None, version: None }.write(Format::Json),
        )
        .unwrap();
        assert_eq!(v["encoding"], json!({"dense": "f32", "colbert": "binary"}));
        let mut bits = Vec::new();
        pack_bits(e.colbert_rows().next().unwrap(), &mut bits);
        assert_eq!(v["colbert"][0], hex(&bits));
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
