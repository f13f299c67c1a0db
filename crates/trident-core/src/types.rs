//! Domain types: what goes into the encoder and what comes out of it.

use serde::{Deserialize, Serialize};

/// Which of BGE-M3's three outputs to compute. Work for an output that is not asked for is skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Modes {
    pub dense: bool,
    pub sparse: bool,
    pub colbert: bool,
}

impl Modes {
    pub const ALL: Modes = Modes { dense: true, sparse: true, colbert: true };
    pub const NONE: Modes = Modes { dense: false, sparse: false, colbert: false };

    /// Flags as a CLI gives them: none set means all three.
    pub fn from_flags(dense: bool, sparse: bool, colbert: bool) -> Modes {
        if !dense && !sparse && !colbert {
            Modes::ALL
        } else {
            Modes { dense, sparse, colbert }
        }
    }

    pub fn any(self) -> bool {
        self.dense || self.sparse || self.colbert
    }

    /// The union of two requests (a batch computes what any of its members asked for).
    pub fn union(self, other: Modes) -> Modes {
        Modes {
            dense: self.dense || other.dense,
            sparse: self.sparse || other.sparse,
            colbert: self.colbert || other.colbert,
        }
    }
}

impl Default for Modes {
    fn default() -> Self {
        Modes::ALL
    }
}

/// A document id as users give it: a JSON string or number, echoed back unchanged.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DocId {
    Str(String),
    Num(serde_json::Number),
}

impl DocId {
    /// The id as a plain string (Kafka keys, Redis keys).
    pub fn as_key(&self) -> String {
        match self {
            DocId::Str(s) => s.clone(),
            DocId::Num(n) => n.to_string(),
        }
    }
}

impl From<&str> for DocId {
    fn from(s: &str) -> Self {
        DocId::Str(s.to_string())
    }
}

impl From<u64> for DocId {
    fn from(n: u64) -> Self {
        DocId::Num(n.into())
    }
}

/// A document after tokenization: ids as fed to the model (`<s> … </s>`, truncated).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenizedDoc {
    pub ids: Vec<u32>,
    pub truncated: bool,
}

/// The BGE-M3 outputs of one document; a field is `None` when its mode was not requested.
#[derive(Clone, Debug, PartialEq)]
pub struct Embedding {
    /// Number of ids fed to the model (after truncation, specials included).
    pub tokens: usize,
    pub truncated: bool,
    /// L2-normalised CLS state, length = hidden size.
    pub dense: Option<Vec<f32>>,
    /// Lexical weights as (token id, weight), in order of first positive occurrence.
    pub sparse: Option<Vec<(u32, f32)>>,
    /// L2-normalised ColBERT rows for tokens 1..n-1, row-major, `colbert_dim` columns.
    pub colbert: Option<Vec<f32>>,
    pub colbert_dim: usize,
}

impl Embedding {
    /// No outputs yet (a placeholder, or a record to fill).
    pub fn empty() -> Embedding {
        Embedding {
            tokens: 0,
            truncated: false,
            dense: None,
            sparse: None,
            colbert: None,
            colbert_dim: 0,
        }
    }

    /// ColBERT rows as slices.
    pub fn colbert_rows(&self) -> impl Iterator<Item = &[f32]> {
        let dim = self.colbert_dim.max(1);
        self.colbert.as_deref().unwrap_or(&[]).chunks(dim)
    }

    /// The output JSON object of `trident embed` (the contract shared by every sink):
    /// `{"id", "tokens", "truncated", "dense"?, "sparse"?, "colbert"?}`. Floats are written as
    /// the shortest decimal that parses back to the same f32.
    pub fn to_json(&self, id: &DocId) -> String {
        serde_json::to_string(&EmbeddingJson { id, e: self }).expect("embedding serialises")
    }

    pub fn to_json_value(&self, id: &DocId) -> serde_json::Value {
        serde_json::from_str(&self.to_json(id)).expect("own JSON parses")
    }
}

/// Borrowed serialisation view of an embedding with its id.
pub struct EmbeddingJson<'a> {
    pub id: &'a DocId,
    pub e: &'a Embedding,
}

impl Serialize for EmbeddingJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        struct Sparse<'a>(&'a [(u32, f32)]);
        impl Serialize for Sparse<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut m = s.serialize_map(Some(self.0.len()))?;
                for (t, w) in self.0 {
                    m.serialize_entry(&t.to_string(), w)?;
                }
                m.end()
            }
        }
        struct Rows<'a>(&'a Embedding);
        impl Serialize for Rows<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_seq(self.0.colbert_rows())
            }
        }
        let e = self.e;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("id", self.id)?;
        m.serialize_entry("tokens", &e.tokens)?;
        m.serialize_entry("truncated", &e.truncated)?;
        if let Some(d) = &e.dense {
            m.serialize_entry("dense", d)?;
        }
        if let Some(sp) = &e.sparse {
            m.serialize_entry("sparse", &Sparse(sp))?;
        }
        if e.colbert.is_some() {
            m.serialize_entry("colbert", &Rows(e))?;
        }
        m.end()
    }
}

/// The error record written in place of a bad input: `{"id": ..., "error": "<reason>"}`.
pub fn error_json(id: &DocId, reason: &str) -> String {
    serde_json::json!({ "id": id, "error": reason }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_from_flags_defaults_to_all() {
        assert_eq!(Modes::from_flags(false, false, false), Modes::ALL);
        assert_eq!(
            Modes::from_flags(true, false, false),
            Modes { dense: true, sparse: false, colbert: false }
        );
    }

    #[test]
    fn json_has_only_requested_fields() {
        let e = Embedding {
            tokens: 3,
            truncated: false,
            dense: Some(vec![0.5, -0.25]),
            sparse: Some(vec![(605, 0.125)]),
            colbert: None,
            colbert_dim: 2,
        };
        let v = e.to_json_value(&DocId::from(7u64));
        assert_eq!(v["id"], 7);
        assert_eq!(v["dense"][1], -0.25);
        assert_eq!(v["sparse"]["605"], 0.125);
        assert!(v.get("colbert").is_none());
    }
}
