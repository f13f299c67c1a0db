//! `trident eval`'s inputs and saved outputs: BEIR JSON Lines, and embeddings as `trident embed`
//! writes them (JSON Lines or Parquet parts).

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;

use anyhow::{bail, Context};
use serde_json::Value;
use trident_core::{DocId, Embedding};

/// The id of a BEIR line (`_id`, or `id`), a string or a number.
pub(super) fn line_id(v: &Value) -> Option<String> {
    match v.get("_id").or_else(|| v.get("id"))? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Reads a BEIR JSON Lines file: (id, text) per line; `title + " " + text` when `titles`.
pub(super) fn read_beir(path: &Path, titles: bool) -> anyhow::Result<Vec<(String, String)>> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in BufReader::new(f).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{} line {}", path.display(), i + 1);
        let v: Value = serde_json::from_str(&line).with_context(at)?;
        let id = line_id(&v).with_context(|| format!("{}: no \"_id\" (string or number)", at()))?;
        let text = v
            .get("text")
            .and_then(Value::as_str)
            .with_context(|| format!("{}: no string \"text\"", at()))?;
        let title = v.get("title").and_then(Value::as_str).unwrap_or("").trim();
        let text =
            if titles && !title.is_empty() { format!("{title} {text}") } else { text.to_string() };
        out.push((id, text));
    }
    Ok(out)
}

/// Reads `trident embed` JSON Lines: (id, embedding) per line.
pub(super) fn read_embeddings(path: &Path) -> anyhow::Result<Vec<(String, Embedding)>> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in BufReader::with_capacity(1 << 20, f).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{} line {}", path.display(), i + 1);
        let v: Value = serde_json::from_str(&line).with_context(at)?;
        if let Some(err) = v.get("error") {
            bail!("{}: an error record, not an embedding: {err}", at());
        }
        let id = line_id(&v).with_context(|| format!("{}: no \"id\"", at()))?;
        let d =
            trident_core::output::read_json(&v).map_err(|e| anyhow::anyhow!("{}: {e}", at()))?;
        out.push((id, d.e));
    }
    Ok(out)
}

/// Reads embeddings as `trident embed` writes them: Parquet parts (a `.parquet` file, a
/// directory of them such as an `--output` directory, or a glob), else JSON Lines.
pub(super) fn read_any_embeddings(path: &Path) -> anyhow::Result<Vec<(String, Embedding)>> {
    let s = path.to_string_lossy();
    if trident_files::corpus::is_parquet_input(&s) || path.is_dir() {
        read_parquet_embeddings(&s)
    } else {
        read_embeddings(path)
    }
}

/// Parquet parts of `trident embed` (crates/trident-files/src/corpus/columns.rs): the id
/// column first, then `tokens`, `truncated`, `dense` (f32, f16, or bf16 bits as uint16),
/// `sparse` (list of {token, weight}), `colbert` (rows of f32/f16, or packed sign bits read as
/// ±1/√dim), `error`.
pub(super) fn read_parquet_embeddings(input: &str) -> anyhow::Result<Vec<(String, Embedding)>> {
    use parquet::file::reader::SerializedFileReader;
    use parquet::record::Field;
    fn float(f: &Field) -> Option<f32> {
        match f {
            Field::Float(x) => Some(*x),
            Field::Double(x) => Some(*x as f32),
            Field::Float16(x) => Some(f32::from(*x)),
            // bf16 stored as its bits.
            Field::UShort(b) => Some(f32::from_bits((*b as u32) << 16)),
            Field::Int(b) => Some(f32::from_bits((*b as u32) << 16)),
            _ => None,
        }
    }
    let floats = |f: &Field, what: &str| -> anyhow::Result<Vec<f32>> {
        let Field::ListInternal(l) = f else { bail!("{what} is not a list") };
        l.elements().iter().map(|x| float(x).with_context(|| format!("{what}: {x}"))).collect()
    };
    let (_, files) = trident_files::corpus::units::discover(input)?;
    let mut out = Vec::new();
    for file in files {
        let at = file.display().to_string();
        let reader =
            SerializedFileReader::new(File::open(&file).with_context(|| format!("opening {at}"))?)
                .with_context(|| format!("reading {at}"))?;
        for (n, row) in reader.into_iter().enumerate() {
            let row = row.with_context(|| format!("{at} row {n}"))?;
            let mut cols = row.get_column_iter();
            let id = match cols.next().map(|c| c.1) {
                Some(Field::Str(s)) => s.clone(),
                Some(Field::Long(i)) => i.to_string(),
                Some(Field::Int(i)) => i.to_string(),
                Some(Field::ULong(i)) => i.to_string(),
                Some(Field::UInt(i)) => i.to_string(),
                other => bail!("{at} row {n}: the first column is the id; got {other:?}"),
            };
            let ctx = || format!("{at} row {n} (id {id:?})");
            let mut e = Embedding::empty();
            for (name, f) in cols {
                if matches!(f, Field::Null) {
                    continue;
                }
                match name.as_str() {
                    "error" => bail!("{}: an error row, not an embedding: {f}", ctx()),
                    "tokens" => e.tokens = if let Field::Int(t) = f { *t as usize } else { 0 },
                    "truncated" => e.truncated = matches!(f, Field::Bool(true)),
                    "dense" => e.dense = Some(floats(f, "dense").with_context(ctx)?),
                    "sparse" => {
                        let Field::ListInternal(l) = f else { bail!("{}: sparse", ctx()) };
                        let mut v = Vec::with_capacity(l.elements().len());
                        for p in l.elements() {
                            let Field::Group(g) = p else { bail!("{}: sparse pair", ctx()) };
                            let (mut t, mut w) = (None, None);
                            for (k, x) in g.get_column_iter() {
                                match (k.as_str(), x) {
                                    ("token", Field::UInt(u)) => t = Some(*u),
                                    ("token", Field::Int(u)) => t = Some(*u as u32),
                                    ("weight", x) => w = float(x),
                                    _ => {}
                                }
                            }
                            v.push((
                                t.with_context(|| format!("{}: sparse token", ctx()))?,
                                w.with_context(|| format!("{}: sparse weight", ctx()))?,
                            ));
                        }
                        e.sparse = Some(v);
                    }
                    "colbert" => {
                        let Field::ListInternal(l) = f else { bail!("{}: colbert", ctx()) };
                        let mut v = Vec::new();
                        for r in l.elements() {
                            match r {
                                Field::Bytes(b) => {
                                    e.colbert_dim = b.len() * 8;
                                    trident_core::encoding::unpack_bits(
                                        b.data(),
                                        e.colbert_dim,
                                        &mut v,
                                    );
                                }
                                other => {
                                    let row = floats(other, "colbert row").with_context(ctx)?;
                                    e.colbert_dim = row.len();
                                    v.extend(row);
                                }
                            }
                        }
                        e.colbert = Some(v);
                    }
                    _ => {}
                }
            }
            out.push((id, e));
        }
    }
    Ok(out)
}

pub(super) fn save(
    dir: &Path,
    name: &str,
    ids: &[String],
    embs: &[Embedding],
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(name);
    let mut w = BufWriter::new(
        File::create(&path).with_context(|| format!("creating {}", path.display()))?,
    );
    for (id, e) in ids.iter().zip(embs) {
        writeln!(w, "{}", e.to_json(&DocId::Str(id.clone())))?;
    }
    w.flush().with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
