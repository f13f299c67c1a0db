//! A stored result given for scoring: [`read_stored`] reads trident's JSON object back and
//! checks it against the model's dims.

use serde_json::Value;

use crate::encoding::Encoding;
use crate::types::Embedding;

/// A stored result given for scoring (trident's JSON object as `trident embed` writes it, in
/// any encoding), read back and checked against the model's dims: it must hold all three
/// outputs, a dense vector of `dense_dim` values and ColBERT rows of `colbert_dim`. The error
/// says what is wrong with it (the caller names the field).
pub fn read_stored(
    v: &Value,
    dense_dim: usize,
    colbert_dim: usize,
) -> Result<(Embedding, Encoding), String> {
    if let Some(err) = v.get("error") {
        let why = err.as_str().map_or_else(|| err.to_string(), str::to_string);
        return Err(format!("is an error record, not an embedding: {why}"));
    }
    // Checked before reading: a wrong dim would size the rows' buffers.
    if let Some(d) = v.get("colbert_dim") {
        if d.as_u64() != Some(colbert_dim as u64) {
            return Err(format!(
                "colbert_dim is {d}; the model's ColBERT rows have {colbert_dim} dimensions"
            ));
        }
    }
    let d = crate::output::read_json(v)?;
    let e = d.e;
    let dense =
        e.dense.as_ref().ok_or("has no \"dense\" vector (score needs all three outputs)")?;
    if dense.len() != dense_dim {
        return Err(format!(
            "dense has {} values; the model's dense vectors have {dense_dim}",
            dense.len()
        ));
    }
    if e.sparse.is_none() {
        return Err("has no \"sparse\" weights (score needs all three outputs)".into());
    }
    match e.colbert.as_ref() {
        None => {
            let where_ = if v.get("colbert_in_store").and_then(Value::as_bool) == Some(true) {
                " (they are in the result store)".to_string()
            } else if let Some(t) = v.get("colbert_topic").and_then(Value::as_str) {
                format!(" (they were written to topic {t:?})")
            } else if let Some(w) = v.get("colbert_omitted").and_then(Value::as_str) {
                format!(" (omitted: {w})")
            } else {
                " (score needs all three outputs)".to_string()
            };
            return Err(format!("has no \"colbert\" rows{where_}"));
        }
        Some(c) if c.is_empty() => return Err("\"colbert\" has no rows".into()),
        Some(_) => {}
    }
    if e.colbert_dim != colbert_dim {
        return Err(format!(
            "colbert rows have {} dimensions; the model's have {colbert_dim}",
            e.colbert_dim
        ));
    }
    Ok((e, d.enc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoding::ColbertEncoding;
    use crate::score::tests::pair;

    #[test]
    fn read_stored_checks_outputs_and_dims() {
        use crate::output::{Format, Record};
        use crate::DocId;
        let (_, p) = pair(16);
        let id = DocId::from(1u64);
        let bin = Encoding { colbert: ColbertEncoding::Binary, ..Encoding::default() };
        let mut pb = p.clone();
        bin.apply(&mut pb);
        let v: Value = serde_json::from_slice(
            &Record { id: &id, e: &pb, enc: bin, note: None, version: None }.write(Format::Json),
        )
        .unwrap();
        let (e, enc) = read_stored(&v, 16, 16).unwrap();
        assert_eq!((e.colbert, enc), (pb.colbert.clone(), bin));
        let err = |v: &Value| read_stored(v, 16, 16).unwrap_err();
        assert!(err(&serde_json::json!({"id": 1, "error": "too long"})).contains("too long"));
        assert!(read_stored(&v, 32, 16).unwrap_err().contains("dense has 16 values"));
        assert!(read_stored(&v, 16, 32).unwrap_err().contains("colbert_dim is 16"));
        let mut bad = v.clone();
        bad["colbert"][1] = "zz".repeat(2).into();
        assert!(err(&bad).contains("colbert row 1 is not hex"), "{}", err(&bad));
        let mut bad = v.clone();
        bad["colbert_dim"] = 1u64.wrapping_shl(62).into();
        assert!(err(&bad).contains("colbert_dim"));
        let mut slim = p.to_json_value(&id);
        slim.as_object_mut().unwrap().remove("colbert");
        slim["colbert_in_store"] = true.into();
        assert!(err(&slim).contains("result store"), "{}", err(&slim));
        let f32v = p.to_json_value(&id);
        assert!(read_stored(&f32v, 16, 8).unwrap_err().contains("16 dimensions"));
    }
}
