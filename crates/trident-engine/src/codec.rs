//! The compact binary value stored in Redis (result store and content cache), and the keys.
//!
//! Keys (prefix configurable, default `trident`):
//! - result store: `{prefix}:doc:{id}` where `{id}` is the document id as a plain string
//!   (a JSON number is written in its decimal form);
//! - content cache: `{prefix}:cache:{hex}` where `{hex}` is the BLAKE3 hash of the model
//!   fingerprint, the requested modes, the max length and the text (see [`cache_key`]).
//!
//! Value layout (all integers and floats little-endian):
//! ```text
//! 0   4  magic "TRD1"
//! 4   1  flags: bit0 dense, bit1 sparse, bit2 colbert, bit3 truncated, bit4 source version
//! 5   4  u32 tokens
//!        version (if bit4): i32 source partition, i64 source offset — the result store's
//!        compare-and-set reads these two at byte 9 (see `store`)
//! ..  4  u32 id length L, then L bytes: the id as JSON (`"abc"` or `42`); L = 0 in cache entries
//!        dense   (if bit0): u32 dim, dim × f32
//!        sparse  (if bit1): u32 n, n × (u32 token id, f32 weight), in output order
//!        colbert (if bit2): u32 rows, u32 dim, rows × dim × f32
//! ```
//! Floats are stored bit for bit, so a decoded value prints exactly the JSON `trident embed` prints.

use trident_core::{DocId, Embedding, Modes};

const MAGIC: &[u8; 4] = b"TRD1";

/// Serialise an embedding (and, for the result store, its id).
pub fn encode_value(id: Option<&DocId>, e: &Embedding) -> Vec<u8> {
    encode_versioned(id, e, None)
}

/// Flag bit of a value that carries its source (partition, offset).
pub const VERSION_FLAG: u8 = 16;

/// [`encode_value`] with the source (partition, offset) the result came from, for the result
/// store's newest-wins write.
pub fn encode_versioned(id: Option<&DocId>, e: &Embedding, version: Option<(i32, i64)>) -> Vec<u8> {
    let dense_len = e.dense.as_ref().map_or(0, |d| 4 + 4 * d.len());
    let sparse_len = e.sparse.as_ref().map_or(0, |s| 4 + 8 * s.len());
    let colbert_len = e.colbert.as_ref().map_or(0, |c| 8 + 4 * c.len());
    let id_json = id.map(|id| serde_json::to_vec(id).expect("id serialises")).unwrap_or_default();
    let mut out = Vec::with_capacity(13 + id_json.len() + dense_len + sparse_len + colbert_len);
    out.extend_from_slice(MAGIC);
    let flags = (e.dense.is_some() as u8)
        | (e.sparse.is_some() as u8) << 1
        | (e.colbert.is_some() as u8) << 2
        | (e.truncated as u8) << 3
        | if version.is_some() { VERSION_FLAG } else { 0 };
    out.push(flags);
    out.extend_from_slice(&(e.tokens as u32).to_le_bytes());
    if let Some((partition, offset)) = version {
        out.extend_from_slice(&partition.to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
    }
    out.extend_from_slice(&(id_json.len() as u32).to_le_bytes());
    out.extend_from_slice(&id_json);
    if let Some(d) = &e.dense {
        out.extend_from_slice(&(d.len() as u32).to_le_bytes());
        d.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
    }
    if let Some(s) = &e.sparse {
        out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        for (t, w) in s {
            out.extend_from_slice(&t.to_le_bytes());
            out.extend_from_slice(&w.to_le_bytes());
        }
    }
    if let Some(c) = &e.colbert {
        let dim = e.colbert_dim.max(1);
        out.extend_from_slice(&((c.len() / dim) as u32).to_le_bytes());
        out.extend_from_slice(&(e.colbert_dim as u32).to_le_bytes());
        c.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
    }
    out
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let end = end.ok_or_else(|| format!("truncated at byte {} reading {what}", self.pos))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self, what: &str) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().unwrap()))
    }
    fn f32s(&mut self, n: usize, what: &str) -> Result<Vec<f32>, String> {
        let bytes = self.take(n.checked_mul(4).ok_or("length overflow")?, what)?;
        Ok(bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect())
    }
}

/// Parse a value written by [`encode_value`]: the id (if stored) and the embedding.
pub fn decode_value(buf: &[u8]) -> Result<(Option<DocId>, Embedding), String> {
    let mut r = Reader { buf, pos: 0 };
    if r.take(4, "magic")? != MAGIC {
        return Err("bad magic (expected \"TRD1\")".into());
    }
    let flags = r.take(1, "flags")?[0];
    let tokens = r.u32("tokens")? as usize;
    if flags & VERSION_FLAG != 0 {
        r.take(12, "source version")?;
    }
    let id_len = r.u32("id length")? as usize;
    let id = if id_len == 0 {
        None
    } else {
        let raw = r.take(id_len, "id")?;
        Some(serde_json::from_slice::<DocId>(raw).map_err(|e| format!("id is not JSON: {e}"))?)
    };
    let dense = if flags & 1 != 0 {
        let n = r.u32("dense dim")? as usize;
        Some(r.f32s(n, "dense")?)
    } else {
        None
    };
    let sparse = if flags & 2 != 0 {
        let n = r.u32("sparse count")? as usize;
        let mut v = Vec::with_capacity(n.min(1 << 20));
        for _ in 0..n {
            let t = r.u32("sparse token")?;
            let w = f32::from_le_bytes(r.take(4, "sparse weight")?.try_into().unwrap());
            v.push((t, w));
        }
        Some(v)
    } else {
        None
    };
    let (colbert, colbert_dim) = if flags & 4 != 0 {
        let rows = r.u32("colbert rows")? as usize;
        let dim = r.u32("colbert dim")? as usize;
        (Some(r.f32s(rows.checked_mul(dim).ok_or("length overflow")?, "colbert")?), dim)
    } else {
        (None, 0)
    };
    if r.pos != buf.len() {
        return Err(format!("{} trailing bytes", buf.len() - r.pos));
    }
    Ok((id, Embedding { tokens, truncated: flags & 8 != 0, dense, sparse, colbert, colbert_dim }))
}

/// A result-store value: MessagePack (`trident_core::output::write_msgpack`), or trident 0.1's
/// binary layout (magic TRD1) still found in stores written before the compact format.
pub fn decode_stored(buf: &[u8]) -> Result<trident_core::output::Decoded, String> {
    if buf.starts_with(MAGIC) {
        let (id, e) = decode_value(buf)?;
        Ok(trident_core::output::Decoded {
            id,
            e,
            enc: Default::default(),
            version: None,
            note: None,
        })
    } else {
        trident_core::output::read_msgpack(buf)
    }
}

/// Content-cache key: the model, the options and the text, hashed.
pub fn cache_key(
    prefix: &str,
    model_fingerprint: &str,
    modes: Modes,
    max_length: usize,
    text: &str,
) -> String {
    let mut h = blake3::Hasher::new();
    h.update(model_fingerprint.as_bytes());
    h.update(&[modes.dense as u8, modes.sparse as u8, modes.colbert as u8]);
    h.update(&(max_length as u64).to_le_bytes());
    h.update(text.as_bytes());
    format!("{prefix}:cache:{}", h.finalize().to_hex())
}

/// Result-store key of a document id.
pub fn store_key(prefix: &str, id: &DocId) -> String {
    format!("{prefix}:doc:{}", id.as_key())
}

/// A fingerprint of a model directory: BLAKE3 over config.json, tokenizer.json, the head files
/// and the weights file's length plus its first and last MiB (hashing gigabytes at every start
/// would be slow; a different checkpoint differs there).
pub fn model_fingerprint(dir: &std::path::Path) -> Result<String, std::io::Error> {
    use std::io::{Read, Seek, SeekFrom};
    let mut h = blake3::Hasher::new();
    for name in ["config.json", "tokenizer.json", "colbert_linear.pt", "sparse_linear.pt"] {
        let p = dir.join(name);
        if p.exists() {
            h.update(name.as_bytes());
            h.update(&std::fs::read(&p)?);
        }
    }
    for name in ["model.safetensors", "pytorch_model.bin"] {
        let p = dir.join(name);
        if !p.exists() {
            continue;
        }
        let mut f = std::fs::File::open(&p)?;
        let len = f.metadata()?.len();
        h.update(name.as_bytes());
        h.update(&len.to_le_bytes());
        let mut buf = vec![0u8; (1 << 20).min(len as usize)];
        f.read_exact(&mut buf)?;
        h.update(&buf);
        f.seek(SeekFrom::Start(len - buf.len() as u64))?;
        f.read_exact(&mut buf)?;
        h.update(&buf);
        break;
    }
    Ok(h.finalize().to_hex()[..32].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Embedding {
        Embedding {
            tokens: 5,
            truncated: true,
            dense: Some(vec![0.1, -0.2, f32::MIN_POSITIVE]),
            sparse: Some(vec![(605, 0.3), (7, 1e-7)]),
            colbert: Some(vec![1.0, 2.0, 3.0, 4.0]),
            colbert_dim: 2,
        }
    }

    #[test]
    fn roundtrip_is_bit_exact_and_json_equal() {
        let id = DocId::from(42u64);
        let e = sample();
        let (back_id, back) = decode_value(&encode_value(Some(&id), &e)).unwrap();
        assert_eq!(back_id, Some(id.clone()));
        assert_eq!(back, e);
        assert_eq!(back.to_json(&id), e.to_json(&id));
        let versioned = encode_versioned(Some(&id), &e, Some((3, 1 << 40)));
        assert_eq!(versioned[4] & VERSION_FLAG, VERSION_FLAG);
        assert_eq!(&versioned[9..13], &3i32.to_le_bytes());
        assert_eq!(&versioned[13..21], &(1i64 << 40).to_le_bytes());
        assert_eq!(decode_value(&versioned).unwrap(), (Some(id.clone()), e.clone()));
        let partial = Embedding { sparse: None, colbert: None, colbert_dim: 0, ..sample() };
        let (none_id, p) = decode_value(&encode_value(None, &partial)).unwrap();
        assert_eq!(none_id, None);
        assert_eq!(p, partial);
    }

    #[test]
    fn corrupt_values_are_errors() {
        let v = encode_value(Some(&DocId::from("x")), &sample());
        assert!(decode_value(&v[..v.len() - 1]).unwrap_err().contains("truncated"));
        assert!(decode_value(b"nope").unwrap_err().contains("magic"));
        let mut extra = v.clone();
        extra.push(0);
        assert!(decode_value(&extra).unwrap_err().contains("trailing"));
    }

    #[test]
    fn cache_keys_depend_on_every_input() {
        let k = |fp, m, l, t| cache_key("t", fp, m, l, t);
        let base = k("fp", Modes::ALL, 8192, "hello");
        assert!(base.starts_with("t:cache:"));
        assert_ne!(base, k("fp2", Modes::ALL, 8192, "hello"));
        assert_ne!(base, k("fp", Modes::from_flags(true, false, false), 8192, "hello"));
        assert_ne!(base, k("fp", Modes::ALL, 16, "hello"));
        assert_ne!(base, k("fp", Modes::ALL, 8192, "hello!"));
        assert_eq!(store_key("t", &DocId::from(7u64)), "t:doc:7");
    }
}
