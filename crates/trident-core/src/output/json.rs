//! trident's JSON object: the writer behind `Format::Json` (the f32 form as
//! `Embedding::to_json` writes it, plus `"encoding"` and ColBERT notes; binary ColBERT rows
//! as hex) and [`read_json`], which reads any encoding of it back.

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::{ColbertNote, Decoded, Record};
use crate::encoding::{packed_len, unpack_bits, ColbertEncoding, Encoding};
use crate::Embedding;

impl Record<'_> {
    /// trident's JSON object; fields added to the f32 form after its own, floats written as
    /// the shortest decimal that reads back to the same f32.
    pub(super) fn json(&self) -> String {
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
    use crate::encoding::{pack_bits, DenseEncoding};
    use crate::output::tests::sample;
    use crate::output::Format;
    use crate::DocId;

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
}
