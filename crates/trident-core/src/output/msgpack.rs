//! The compact value: [`write_msgpack`] writes a record as a MessagePack map whose vectors are
//! raw little-endian arrays, [`read_msgpack`] reads one back.

use super::{ColbertNote, Decoded, Record};
use crate::encoding::{packed_len, unpack_bits, ColbertEncoding, DenseEncoding, Encoding};
use crate::{DocId, Embedding};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::tests::sample;
    use crate::output::Format;

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
}
