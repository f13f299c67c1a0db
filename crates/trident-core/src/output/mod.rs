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

use crate::encoding::{
    pack_bits, packed_len, unpack_bits, ColbertEncoding, DenseEncoding, Encoding,
};
use crate::{DocId, Embedding};

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

    fn sparse_pairs(&self) -> Option<SparsePairs> {
        self.e.sparse.as_ref().map(|s| {
            let (indices, values) = s.iter().copied().unzip();
            SparsePairs { indices, values }
        })
    }

    /// ColBERT rows as floats; binary rows as ±1.
    fn colbert_floats(&self) -> Option<Vec<Vec<f32>>> {
        self.e.colbert.as_ref()?;
        let binary = self.enc.colbert == ColbertEncoding::Binary;
        Some(
            self.e
                .colbert_rows()
                .map(|r| {
                    if binary {
                        r.iter().map(|&x| if x > 0.0 { 1.0 } else { -1.0 }).collect()
                    } else {
                        r.to_vec()
                    }
                })
                .collect(),
        )
    }

    fn note_fields(&self) -> NoteFields<'_> {
        NoteFields {
            colbert_in_store: matches!(self.note, Some(ColbertNote::InStore)).then_some(true),
            colbert_topic: match self.note {
                Some(ColbertNote::Topic(t)) => Some(t),
                _ => None,
            },
            colbert_omitted: match self.note {
                Some(ColbertNote::Omitted(w)) => Some(w),
                _ => None,
            },
        }
    }

    /// A Milvus row: primary key `id` (text), `dense`, `sparse` (`{"token id": weight}`, the
    /// JSON form pymilvus and Milvus's bulk import take), `tokens`, `truncated`.
    fn milvus(&self) -> String {
        let row = MilvusRow {
            id: self.id.as_key(),
            tokens: self.e.tokens,
            truncated: self.e.truncated,
            dense: self.e.dense.as_deref(),
            sparse: self
                .e
                .sparse
                .as_ref()
                .map(|s| Entries(s.iter().map(|(t, w)| (t.to_string(), *w)).collect())),
        };
        serde_json::to_string(&row).expect("row serialises")
    }

    /// A Qdrant point: `id` (an unsigned integer, or a UUID v5 of the id text), named vectors
    /// `dense`, `sparse`, `colbert` (multivector), the id and counts in the payload; with
    /// `collection`, the `collection_name` Qdrant's Kafka sink connector requires (the REST
    /// API and the Python client reject it).
    pub fn qdrant(&self, collection: Option<&str>) -> String {
        let point = QdrantPoint {
            collection_name: collection,
            id: qdrant_point_id(self.id),
            vector: QdrantVectors {
                dense: self.e.dense.as_deref(),
                sparse: self.sparse_pairs(),
                colbert: self.colbert_floats(),
            },
            payload: QdrantPayload {
                id: self.id,
                tokens: self.e.tokens,
                truncated: self.e.truncated,
                note: self.note_fields(),
            },
        };
        serde_json::to_string(&point).expect("point serialises")
    }

    /// A Vespa document put for `deploy/vespa/schemas/trident.sd`.
    fn vespa(&self) -> String {
        let key = self.id.as_key();
        let colbert = self.e.colbert.as_ref().map(|_| {
            let blocks: Vec<(String, Block)> = if self.enc.colbert == ColbertEncoding::Binary {
                let w = packed_len(self.e.colbert_dim).max(1);
                self.packed_rows()
                    .chunks(w)
                    .enumerate()
                    .map(|(i, r)| {
                        (i.to_string(), Block::Int8(r.iter().map(|&b| b as i8).collect()))
                    })
                    .collect()
            } else {
                self.e
                    .colbert_rows()
                    .enumerate()
                    .map(|(i, r)| (i.to_string(), Block::Float(r)))
                    .collect()
            };
            Blocks { blocks: Entries(blocks) }
        });
        let put = VespaPut {
            put: format!("id:trident:trident::{key}"),
            fields: VespaFields {
                doc_id: &key,
                tokens: self.e.tokens,
                dense: self.e.dense.as_deref().map(|values| Values { values }),
                lexical: self.e.sparse.as_ref().map(|s| Cells {
                    cells: Entries(s.iter().map(|(t, w)| (t.to_string(), *w)).collect()),
                }),
                colbert,
            },
        };
        serde_json::to_string(&put).expect("put serialises")
    }
}

#[derive(Serialize)]
struct SparsePairs {
    indices: Vec<u32>,
    values: Vec<f32>,
}

#[derive(Serialize)]
struct NoteFields<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    colbert_in_store: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    colbert_topic: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    colbert_omitted: Option<&'a str>,
}

#[derive(Serialize)]
struct MilvusRow<'a> {
    id: String,
    tokens: usize,
    truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    dense: Option<&'a [f32]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sparse: Option<Entries<f32>>,
}

#[derive(Serialize)]
struct QdrantPoint<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    collection_name: Option<&'a str>,
    id: Value,
    vector: QdrantVectors<'a>,
    payload: QdrantPayload<'a>,
}

#[derive(Serialize)]
struct QdrantVectors<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    dense: Option<&'a [f32]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sparse: Option<SparsePairs>,
    #[serde(skip_serializing_if = "Option::is_none")]
    colbert: Option<Vec<Vec<f32>>>,
}

#[derive(Serialize)]
struct QdrantPayload<'a> {
    id: &'a DocId,
    tokens: usize,
    truncated: bool,
    #[serde(flatten)]
    note: NoteFields<'a>,
}

#[derive(Serialize)]
struct VespaPut<'a> {
    put: String,
    fields: VespaFields<'a>,
}

#[derive(Serialize)]
struct VespaFields<'a> {
    doc_id: &'a str,
    tokens: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    dense: Option<Values<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lexical: Option<Cells>,
    #[serde(skip_serializing_if = "Option::is_none")]
    colbert: Option<Blocks<'a>>,
}

#[derive(Serialize)]
struct Values<'a> {
    values: &'a [f32],
}

#[derive(Serialize)]
struct Cells {
    cells: Entries<f32>,
}

#[derive(Serialize)]
struct Blocks<'a> {
    blocks: Entries<Block<'a>>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Block<'a> {
    Int8(Vec<i8>),
    Float(&'a [f32]),
}

/// Key/value pairs written as a JSON object, in order.
struct Entries<V>(Vec<(String, V)>);

impl<V: Serialize> Serialize for Entries<V> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
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

/// Qdrant point ids are unsigned integers or UUIDs: an id whose text is a canonical unsigned
/// integer stays one (so `7` and `"7"` are one point, as they are one document everywhere in
/// trident); any other id becomes the UUID v5 of its text in the URL namespace.
pub fn qdrant_point_id(id: &DocId) -> Value {
    let key = id.as_key();
    match key.parse::<u64>() {
        Ok(n) if n.to_string() == key => json!(n),
        _ => Value::String(
            uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, key.as_bytes()).to_string(),
        ),
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

/// The compact value. A MessagePack map, keys in this order:
/// ```text
/// src        [partition (int32), offset (int64)]   result-store values only; always first,
///                                                 fixed-width, so the store's Lua reads it in place
/// id         string | integer
/// tokens     uint;  truncated  bool
/// encoding   {"dense": "f32|f16|bf16", "colbert": "f32|f16|binary"}
/// dense      {"dtype": "float32|float16|bfloat16", "shape": [dim], "data": bin}
/// sparse     {"indices": {"dtype": "uint32", ...}, "values": {"dtype": "float32", ...}}
/// colbert    {"dtype": "float32|float16|uint8", "shape": [rows, dim | dim/8 bytes], "dim": dim,
///             "data": bin}   (uint8 = packed sign bits, most significant bit first)
/// colbert_in_store true | colbert_topic "name" | colbert_omitted "reason"
/// ```
/// Arrays are little-endian; `np.frombuffer(t["data"], t["dtype"]).reshape(t["shape"])` reads
/// every one but bfloat16 (`ml_dtypes.bfloat16`, or the u16 bits shifted into f32).
pub fn write_msgpack(r: &Record) -> Vec<u8> {
    use rmp::encode as w;
    let e = r.e;
    let n_cols = e.colbert.as_ref().map_or(0, |c| c.len());
    let mut out = Vec::with_capacity(
        96 + e.dense.as_ref().map_or(0, |d| d.len() * 4)
            + e.sparse.as_ref().map_or(0, |s| s.len() * 8)
            + n_cols * 4,
    );
    let fields = 4
        + r.version.is_some() as u32
        + e.dense.is_some() as u32
        + e.sparse.is_some() as u32
        + e.colbert.is_some() as u32
        + r.note.is_some() as u32;
    // Infallible: writing into a Vec.
    w::write_map_len(&mut out, fields).unwrap();
    if let Some((p, o)) = r.version {
        w::write_str(&mut out, "src").unwrap();
        w::write_array_len(&mut out, 2).unwrap();
        w::write_i32(&mut out, p).unwrap();
        w::write_i64(&mut out, o).unwrap();
    }
    w::write_str(&mut out, "id").unwrap();
    match r.id {
        DocId::Str(s) => w::write_str(&mut out, s).unwrap(),
        DocId::Num(n) => {
            if let Some(u) = n.as_u64() {
                w::write_uint(&mut out, u).unwrap();
            } else if let Some(i) = n.as_i64() {
                w::write_sint(&mut out, i).unwrap();
            } else {
                w::write_f64(&mut out, n.as_f64().unwrap_or(f64::NAN)).unwrap();
            }
        }
    };
    w::write_str(&mut out, "tokens").unwrap();
    w::write_uint(&mut out, e.tokens as u64).unwrap();
    w::write_str(&mut out, "truncated").unwrap();
    w::write_bool(&mut out, e.truncated).unwrap();
    w::write_str(&mut out, "encoding").unwrap();
    w::write_map_len(&mut out, 2).unwrap();
    w::write_str(&mut out, "dense").unwrap();
    w::write_str(&mut out, r.enc.dense.name()).unwrap();
    w::write_str(&mut out, "colbert").unwrap();
    w::write_str(&mut out, r.enc.colbert.name()).unwrap();
    fn array(out: &mut Vec<u8>, dtype: &str, shape: &[usize], extra: Option<usize>, data: &[u8]) {
        w::write_map_len(out, 3 + extra.is_some() as u32).unwrap();
        w::write_str(out, "dtype").unwrap();
        w::write_str(out, dtype).unwrap();
        w::write_str(out, "shape").unwrap();
        w::write_array_len(out, shape.len() as u32).unwrap();
        shape.iter().for_each(|&s| w::write_uint(out, s as u64).map(|_| ()).unwrap());
        if let Some(dim) = extra {
            w::write_str(out, "dim").unwrap();
            w::write_uint(out, dim as u64).unwrap();
        }
        w::write_str(out, "data").unwrap();
        w::write_bin(out, data).unwrap();
    }
    if let Some(d) = &e.dense {
        w::write_str(&mut out, "dense").unwrap();
        let data = dense_bytes(d, r.enc.dense);
        array(&mut out, r.enc.dense.dtype(), &[d.len()], None, &data);
    }
    if let Some(s) = &e.sparse {
        w::write_str(&mut out, "sparse").unwrap();
        w::write_map_len(&mut out, 2).unwrap();
        let ids: Vec<u8> = s.iter().flat_map(|(t, _)| t.to_le_bytes()).collect();
        let ws: Vec<u8> = s.iter().flat_map(|(_, x)| x.to_le_bytes()).collect();
        w::write_str(&mut out, "indices").unwrap();
        array(&mut out, "uint32", &[s.len()], None, &ids);
        w::write_str(&mut out, "values").unwrap();
        array(&mut out, "float32", &[s.len()], None, &ws);
    }
    if let Some(c) = &e.colbert {
        w::write_str(&mut out, "colbert").unwrap();
        let dim = e.colbert_dim;
        let rows = c.len().checked_div(dim).unwrap_or(0);
        match r.enc.colbert {
            ColbertEncoding::F32 => {
                let data: Vec<u8> = c.iter().flat_map(|x| x.to_le_bytes()).collect();
                array(&mut out, "float32", &[rows, dim], None, &data);
            }
            ColbertEncoding::F16 => {
                let data = dense_bytes(c, DenseEncoding::F16);
                array(&mut out, "float16", &[rows, dim], None, &data);
            }
            ColbertEncoding::Binary => {
                let data = r.packed_rows();
                array(&mut out, "uint8", &[rows, packed_len(dim)], Some(dim), &data);
            }
        }
    }
    match r.note {
        Some(ColbertNote::InStore) => {
            w::write_str(&mut out, "colbert_in_store").unwrap();
            w::write_bool(&mut out, true).unwrap();
        }
        Some(ColbertNote::Topic(t)) => {
            w::write_str(&mut out, "colbert_topic").unwrap();
            w::write_str(&mut out, t).unwrap();
        }
        Some(ColbertNote::Omitted(why)) => {
            w::write_str(&mut out, "colbert_omitted").unwrap();
            w::write_str(&mut out, why).unwrap();
        }
        None => {}
    }
    out
}

fn dense_bytes(v: &[f32], enc: DenseEncoding) -> Vec<u8> {
    match enc {
        DenseEncoding::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        DenseEncoding::F16 => {
            v.iter().flat_map(|&x| half::f16::from_f32(x).to_bits().to_le_bytes()).collect()
        }
        DenseEncoding::Bf16 => {
            v.iter().flat_map(|&x| half::bf16::from_f32(x).to_bits().to_le_bytes()).collect()
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

/// A typed array read back: dtype, shape, little-endian data, and `dim` of binary rows.
type Array = (String, Vec<usize>, Vec<u8>, Option<usize>);

/// Read a compact value (the inverse of [`write_msgpack`]); vectors come back as f32 (binary
/// ColBERT rows as ±1/√dim, see `encoding`).
pub fn read_msgpack(buf: &[u8]) -> Result<Decoded, String> {
    use rmpv::Value as M;
    let mut rd = buf;
    let v = rmpv::decode::read_value(&mut rd).map_err(|e| format!("not MessagePack: {e}"))?;
    if !rd.is_empty() {
        return Err(format!("{} trailing bytes after the MessagePack value", rd.len()));
    }
    let M::Map(entries) = v else { return Err("the value is not a MessagePack map".into()) };
    let get = |k: &str| entries.iter().find(|(key, _)| key.as_str() == Some(k)).map(|(_, v)| v);
    let field = |m: &M, k: &str| -> Option<M> {
        m.as_map()?.iter().find(|(key, _)| key.as_str() == Some(k)).map(|(_, v)| v.clone())
    };
    let enc_v = get("encoding");
    let enc_name =
        |k: &str| enc_v.and_then(|m| field(m, k)).and_then(|v| v.as_str().map(String::from));
    let enc = Encoding {
        dense: enc_name("dense").map_or(Ok(DenseEncoding::F32), |s| s.parse())?,
        colbert: enc_name("colbert").map_or(Ok(ColbertEncoding::F32), |s| s.parse())?,
    };
    let id = match get("id") {
        None | Some(M::Nil) => None,
        Some(M::String(s)) => Some(DocId::Str(s.as_str().ok_or("id is not UTF-8")?.to_string())),
        Some(M::Integer(i)) => Some(match i.as_u64() {
            Some(u) => DocId::from(u),
            None => DocId::Num(i.as_i64().ok_or("id out of range")?.into()),
        }),
        Some(other) => return Err(format!("id is {other}, expected a string or an integer")),
    };
    let uint = |k: &str| get(k).and_then(|v| v.as_u64());
    // An array: (dtype, shape, data, dim).
    let arr = |m: &M, what: &str| -> Result<Array, String> {
        let dtype = field(m, "dtype").and_then(|v| v.as_str().map(String::from));
        let shape = field(m, "shape").and_then(|v| {
            v.as_array()?.iter().map(|x| x.as_u64().map(|u| u as usize)).collect::<Option<Vec<_>>>()
        });
        let data = field(m, "data").and_then(|v| v.as_slice().map(<[u8]>::to_vec));
        let dim = field(m, "dim").and_then(|v| v.as_u64()).map(|u| u as usize);
        match (dtype, shape, data) {
            (Some(t), Some(s), Some(d)) => {
                let width = match t.as_str() {
                    "float32" | "uint32" => 4,
                    "float16" | "bfloat16" => 2,
                    "uint8" => 1,
                    _ => return Err(format!("{what}: unknown dtype {t:?}")),
                };
                let n =
                    s.iter().try_fold(1usize, |a, &b| a.checked_mul(b)).ok_or("shape overflow")?;
                if n.checked_mul(width) != Some(d.len()) {
                    return Err(format!("{what}: {} data bytes for shape {s:?} of {t}", d.len()));
                }
                Ok((t, s, d, dim))
            }
            _ => Err(format!("{what}: expected a map with dtype, shape and data")),
        }
    };
    let floats = |t: &str, d: &[u8]| -> Vec<f32> {
        match t {
            "float16" => {
                d.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
            }
            "bfloat16" => d
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            _ => d.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
        }
    };
    let dense = match get("dense") {
        Some(m) => {
            let (t, _, d, _) = arr(m, "dense")?;
            Some(floats(&t, &d))
        }
        None => None,
    };
    let sparse = match get("sparse") {
        Some(m) => {
            let (_, _, ids, _) =
                arr(&field(m, "indices").ok_or("sparse: no indices")?, "sparse indices")?;
            let (t, _, ws, _) =
                arr(&field(m, "values").ok_or("sparse: no values")?, "sparse values")?;
            let ws = floats(&t, &ws);
            if ids.len() / 4 != ws.len() {
                return Err("sparse: indices and values differ in length".into());
            }
            Some(
                ids.chunks_exact(4)
                    .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
                    .zip(ws)
                    .collect(),
            )
        }
        None => None,
    };
    let (colbert, colbert_dim) = match get("colbert") {
        Some(m) => {
            let (t, shape, d, dim) = arr(m, "colbert")?;
            let [rows, cols] = shape[..] else {
                return Err("colbert: shape is not [rows, cols]".into());
            };
            if t == "uint8" {
                let dim = dim.ok_or("colbert: binary rows without their dim")?;
                if packed_len(dim) != cols {
                    return Err(format!("colbert: {cols} bytes a row cannot hold {dim} bits"));
                }
                let mut out = Vec::with_capacity(rows * dim);
                d.chunks_exact(cols.max(1)).for_each(|r| unpack_bits(r, dim, &mut out));
                (Some(out), dim)
            } else {
                (Some(floats(&t, &d)), cols)
            }
        }
        None => (None, 0),
    };
    let version = match get("src").and_then(|v| v.as_array()) {
        Some(a) if a.len() == 2 => a[0].as_i64().zip(a[1].as_i64()).map(|(p, o)| (p as i32, o)),
        _ => None,
    };
    let note = if get("colbert_in_store").and_then(|v| v.as_bool()) == Some(true) {
        Some(ColbertNote::InStore)
    } else if let Some(t) = get("colbert_topic").and_then(|v| v.as_str()) {
        Some(ColbertNote::Topic(t.to_string()))
    } else {
        get("colbert_omitted").and_then(|v| v.as_str()).map(|s| ColbertNote::Omitted(s.to_string()))
    };
    let e = Embedding {
        tokens: uint("tokens").ok_or("no tokens count")? as usize,
        truncated: get("truncated").and_then(|v| v.as_bool()).unwrap_or(false),
        dense,
        sparse,
        colbert,
        colbert_dim,
    };
    Ok(Decoded { id, e, enc, version, note })
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
    use super::*;

    fn sample(dim: usize) -> Embedding {
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
    fn store_version_is_fixed_width_and_first() {
        let e = sample(8);
        let id = DocId::from(42u64);
        for (p, o) in [(0, 0), (-1, 5), (7, i64::MAX)] {
            let v = Record {
                id: &id,
                e: &e,
                enc: Encoding::default(),
                note: None,
                version: Some((p, o)),
            }
            .write(Format::Msgpack);
            // fixmap, "src", array of 2, int32 marker, 4 bytes, int64 marker, 8 bytes (big-endian)
            assert_eq!(v[0] & 0xf0, 0x80);
            assert_eq!(&v[1..6], b"\xa3src\x92");
            assert_eq!(v[6], 0xd2);
            assert_eq!(&v[7..11], &p.to_be_bytes());
            assert_eq!(v[11], 0xd3);
            assert_eq!(&v[12..20], &o.to_be_bytes());
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
    fn feeds_have_each_stores_shape() {
        let mut e = sample(16);
        let enc = Encoding { dense: DenseEncoding::F16, colbert: ColbertEncoding::Binary };
        enc.apply(&mut e);
        let id = DocId::from("a/b c");
        let r = Record { id: &id, e: &e, enc, note: None, version: None };
        let m: Value = serde_json::from_slice(&r.write(Format::Milvus)).unwrap();
        assert_eq!(m["id"], "a/b c");
        assert_eq!(m["sparse"], json!({"605": 0.3, "7": 1e-7, "249999": 2.5}));
        assert!(m.get("colbert").is_none());
        let q: Value = serde_json::from_slice(&r.write(Format::Qdrant)).unwrap();
        assert_eq!(q["id"].as_str().unwrap().len(), 36);
        assert_eq!(q["payload"]["id"], "a/b c");
        assert_eq!(q["vector"]["colbert"].as_array().unwrap().len(), 3);
        assert!(q["vector"]["colbert"][0].as_array().unwrap().iter().all(|x| x
            .as_f64()
            .unwrap()
            .abs()
            == 1.0));
        let v: Value = serde_json::from_slice(&r.write(Format::Vespa)).unwrap();
        assert_eq!(v["put"], "id:trident:trident::a/b c");
        assert_eq!(v["fields"]["lexical"]["cells"]["605"], json!(0.3));
        assert!(String::from_utf8(r.write(Format::Vespa)).unwrap().contains("\"605\":0.3,"));
        let block = v["fields"]["colbert"]["blocks"]["2"].as_array().unwrap();
        assert_eq!(block.len(), 2);
        assert!(block.iter().all(|b| (-128..=127).contains(&b.as_i64().unwrap())));
        assert!(q.get("collection_name").is_none());
        let k: Value = serde_json::from_str(&r.qdrant(Some("docs"))).unwrap();
        assert_eq!(k["collection_name"], "docs");
        assert_eq!(qdrant_point_id(&DocId::from(7u64)), json!(7));
        assert_eq!(qdrant_point_id(&DocId::from("7")), json!(7));
        assert!(qdrant_point_id(&DocId::from("007")).is_string());
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
