//! Vector-store feeds: a record as a Milvus row, a Qdrant point or a Vespa document put, in
//! the JSON each store's client, bulk loader or Kafka sink connector takes; and
//! [`qdrant_point_id`].

use serde::Serialize;
use serde_json::{json, Value};

use super::{ColbertNote, Record};
use crate::encoding::{packed_len, ColbertEncoding};
use crate::DocId;

impl Record<'_> {
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
    pub(super) fn milvus(&self) -> String {
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
    pub(super) fn vespa(&self) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoding::{DenseEncoding, Encoding};
    use crate::output::tests::sample;
    use crate::output::Format;

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
}
