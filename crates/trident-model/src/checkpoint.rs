//! A BGE-M3 checkpoint on the host: the encoder tensors from `model.safetensors` or
//! `pytorch_model.bin` (both memory-mapped, f32 used in place), and the two head files (`colbert_linear.pt`,
//! `sparse_linear.pt`). Every tensor's shape is checked against `config.json` when opening.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rayon::prelude::*;

use crate::backend::{Elem, HostTensor, Storage};
use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::special::SpecialIds;

/// Host tensors of the encoder and heads, by name; colbert/sparse head tensors are stored as
/// `colbert.weight`, `colbert.bias`, `sparse.weight`, `sparse.bias`.
pub struct Checkpoint {
    pub config: ModelConfig,
    /// Ids the sparse head skips (read from the tokenizer files next to the weights when present).
    pub special_ids: SpecialIds,
    tensors: HashMap<String, (HostTensor, PathBuf)>,
    /// The file each group of tensors comes from (encoder, ColBERT head, sparse head).
    files: [PathBuf; 3],
    source: String,
}

/// Where each expected tensor lives and its shape, all derived from the config.
fn expected_tensors(c: &ModelConfig) -> Vec<(String, Vec<usize>, Head)> {
    let (h, i) = (c.hidden_size, c.intermediate_size);
    let mut v = vec![
        ("embeddings.word_embeddings.weight".to_string(), vec![c.vocab_size, h], Head::Encoder),
        (
            "embeddings.position_embeddings.weight".into(),
            vec![c.max_position_embeddings, h],
            Head::Encoder,
        ),
        (
            "embeddings.token_type_embeddings.weight".into(),
            vec![c.type_vocab_size, h],
            Head::Encoder,
        ),
        ("embeddings.LayerNorm.weight".into(), vec![h], Head::Encoder),
        ("embeddings.LayerNorm.bias".into(), vec![h], Head::Encoder),
    ];
    for l in 0..c.num_hidden_layers {
        let p = format!("encoder.layer.{l}");
        for (name, shape) in [
            ("attention.self.query.weight", vec![h, h]),
            ("attention.self.query.bias", vec![h]),
            ("attention.self.key.weight", vec![h, h]),
            ("attention.self.key.bias", vec![h]),
            ("attention.self.value.weight", vec![h, h]),
            ("attention.self.value.bias", vec![h]),
            ("attention.output.dense.weight", vec![h, h]),
            ("attention.output.dense.bias", vec![h]),
            ("attention.output.LayerNorm.weight", vec![h]),
            ("attention.output.LayerNorm.bias", vec![h]),
            ("intermediate.dense.weight", vec![i, h]),
            ("intermediate.dense.bias", vec![i]),
            ("output.dense.weight", vec![h, i]),
            ("output.dense.bias", vec![h]),
            ("output.LayerNorm.weight", vec![h]),
            ("output.LayerNorm.bias", vec![h]),
        ] {
            v.push((format!("{p}.{name}"), shape, Head::Encoder));
        }
    }
    // ColBERT's output width is whatever the file holds (C = H for BGE-M3); only its input is fixed.
    v.push(("colbert.weight".into(), vec![usize::MAX, h], Head::Colbert));
    v.push(("colbert.bias".into(), vec![usize::MAX], Head::Colbert));
    v.push(("sparse.weight".into(), vec![1, h], Head::Sparse));
    v.push(("sparse.bias".into(), vec![1], Head::Sparse));
    v
}

#[derive(Clone, Copy, PartialEq)]
enum Head {
    Encoder = 0,
    Colbert = 1,
    Sparse = 2,
}

impl Checkpoint {
    /// Opens a Hugging Face model directory as BAAI/bge-m3 ships it.
    pub fn open(dir: &Path) -> Result<Checkpoint, ModelError> {
        if !dir.is_dir() {
            return Err(ModelError::MissingFile {
                what: "model directory",
                path: dir.to_path_buf(),
            });
        }
        let config = ModelConfig::from_file(&dir.join("config.json"))?;
        let colbert_path = dir.join("colbert_linear.pt");
        let sparse_path = dir.join("sparse_linear.pt");
        for (what, p) in [("colbert_linear.pt", &colbert_path), ("sparse_linear.pt", &sparse_path)]
        {
            if !p.is_file() {
                return Err(ModelError::MissingFile { what, path: p.clone() });
            }
        }
        let st = dir.join("model.safetensors");
        let bin = dir.join("pytorch_model.bin");
        let mut tensors = HashMap::new();
        let encoder_file = if st.is_file() {
            read_safetensors(&st, &mut tensors)?;
            st
        } else if bin.is_file() {
            read_pickle(&bin, "", &mut tensors)?;
            bin
        } else {
            return Err(ModelError::MissingFile {
                what: "model.safetensors or pytorch_model.bin",
                path: st,
            });
        };
        read_pickle(&colbert_path, "colbert.", &mut tensors)?;
        read_pickle(&sparse_path, "sparse.", &mut tensors)?;
        let special_ids = SpecialIds::from_dir(dir, &config);
        let files = [encoder_file, colbert_path, sparse_path];
        let ckpt =
            Checkpoint { config, special_ids, tensors, files, source: dir.display().to_string() };
        ckpt.check_shapes()?;
        Ok(ckpt)
    }

    fn check_shapes(&self) -> Result<(), ModelError> {
        let mut colbert_out = None;
        for (name, expected, head) in expected_tensors(&self.config) {
            let file_name = |name: &str| match head {
                Head::Encoder => name.to_string(),
                _ => name.split_once('.').map_or(name, |(_, n)| n).to_string(),
            };
            let Some((t, path)) = self.tensors.get(&name) else {
                return Err(ModelError::MissingTensor {
                    path: self.files[head as usize].clone(),
                    tensor: file_name(&name),
                });
            };
            let mut expected = expected;
            if head == Head::Colbert {
                let c = *colbert_out.get_or_insert(t.shape().first().copied().unwrap_or(0));
                expected[0] = c;
            }
            if t.shape() != expected.as_slice() {
                return Err(ModelError::Shape {
                    path: path.clone(),
                    tensor: file_name(&name),
                    expected,
                    actual: t.shape().to_vec(),
                });
            }
        }
        Ok(())
    }

    /// A tensor by its checkpoint name (head tensors: `colbert.weight`, `sparse.bias`, …).
    pub fn tensor(&self, name: &str) -> Result<&HostTensor, ModelError> {
        self.tensors.get(name).map(|(t, _)| t).ok_or_else(|| ModelError::MissingTensor {
            path: PathBuf::from(&self.source),
            tensor: name.to_string(),
        })
    }

    /// Where the weights came from (a directory, or "random(seed)").
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Output width of the ColBERT head.
    pub fn colbert_dim(&self) -> usize {
        self.tensors
            .get("colbert.weight")
            .map(|(t, _)| t.shape()[0])
            .unwrap_or(self.config.hidden_size)
    }

    /// Random weights of the real BGE-M3 shape (XLM-R large), built in memory: for benchmarks
    /// without a checkpoint on disk.
    pub fn random_xlmr_large(seed: u64) -> Checkpoint {
        Self::random(ModelConfig::xlmr_large(), seed)
    }

    /// Random weights for any valid config: linear weights ~N(0, 0.02²), LayerNorm γ≈1, small
    /// biases, a sparse-head bias that leaves most tokens with a positive weight.
    pub fn random(config: ModelConfig, seed: u64) -> Checkpoint {
        let specs = expected_tensors(&config);
        let h = config.hidden_size;
        let made: Vec<(String, HostTensor)> = specs
            .into_par_iter()
            .enumerate()
            .map(|(i, (name, mut shape, head))| {
                if head == Head::Colbert {
                    shape[0] = h;
                }
                let n: usize = shape.iter().product();
                let s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(i as u64);
                let data = if name.ends_with("LayerNorm.weight") {
                    random_normal(n, s, 1.0, 0.02)
                } else if name == "sparse.bias" {
                    vec![0.05]
                } else if name.ends_with("bias") {
                    random_normal(n, s, 0.0, 0.01)
                } else {
                    random_normal(n, s, 0.0, 0.02)
                };
                (name, HostTensor::from_vec(data, shape))
            })
            .collect();
        let tensors = made.into_iter().map(|(n, t)| (n, (t, PathBuf::from("<random>")))).collect();
        let special_ids = SpecialIds::from_config(&config);
        let files = std::array::from_fn(|_| PathBuf::from("<random>"));
        Checkpoint { config, special_ids, tensors, files, source: format!("random(seed={seed})") }
    }
}

/// Approximately normal values (Irwin–Hall sum of four uniforms) from a SplitMix64 stream,
/// filled in parallel chunks: fast enough to build 568M parameters in about a second.
fn random_normal(n: usize, seed: u64, mean: f32, std: f32) -> Vec<f32> {
    const CHUNK: usize = 1 << 16;
    let mut v = vec![0f32; n];
    // Sum of 4 U(0,1) has variance 1/3: scale by √3 for unit variance.
    let scale = std * 3f32.sqrt();
    v.par_chunks_mut(CHUNK).enumerate().for_each(|(c, out)| {
        let mut state = seed ^ (c as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
        let mut next = || {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        for x in out {
            let r = next();
            let u = |k: u32| ((r >> (16 * k)) & 0xFFFF) as f32 / 65536.0;
            *x = mean + scale * (u(0) + u(1) + u(2) + u(3) - 2.0);
        }
    });
    v
}

fn read_safetensors(
    path: &Path,
    out: &mut HashMap<String, (HostTensor, PathBuf)>,
) -> Result<(), ModelError> {
    let file = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
    // SAFETY: the file is opened read-only; like every mmap-based loader we assume nobody
    // truncates it while the model is in use.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
    let storage = Arc::new(Storage::Mapped(map));
    let Storage::Mapped(bytes) = &*storage else { unreachable!() };
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| ModelError::CorruptFile { path: path.to_path_buf(), msg: e.to_string() })?;
    let base = bytes.as_ptr() as usize;
    for (name, view) in st.tensors() {
        let shape = view.shape().to_vec();
        let data = view.data();
        let elem = match view.dtype() {
            safetensors::Dtype::F32 => Elem::F32,
            safetensors::Dtype::F16 => Elem::F16,
            safetensors::Dtype::BF16 => Elem::Bf16,
            other => {
                // Integer buffers (e.g. `embeddings.position_ids`) are not weights; skip them.
                if !name.ends_with("position_ids") {
                    return Err(ModelError::Dtype {
                        path: path.to_path_buf(),
                        tensor: name.to_string(),
                        dtype: format!("{other:?}"),
                    });
                }
                continue;
            }
        };
        let off = data.as_ptr() as usize - base;
        // 16-bit weights stay 16-bit in the map (widened as they are packed or gathered).
        let t = match HostTensor::from_mmap_as(storage.clone(), off, shape.clone(), elem) {
            Some(t) => t,
            // Unaligned data: fall back to a copy.
            None => HostTensor::from_vec(widen(data, elem), shape),
        };
        out.insert(strip_prefix(&name).to_string(), (t, path.to_path_buf()));
    }
    Ok(())
}

/// Little-endian `elem` values as f32.
fn widen(bytes: &[u8], elem: Elem) -> Vec<f32> {
    match elem {
        Elem::F32 => {
            bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
        }
        Elem::F16 => {
            bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
        }
        Elem::Bf16 => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
    }
}

/// Some exports prefix encoder names with `roberta.` or `model.`; BGE-M3 has none.
fn strip_prefix(name: &str) -> &str {
    name.strip_prefix("roberta.").or_else(|| name.strip_prefix("model.")).unwrap_or(name)
}

/// Reads a PyTorch zip pickle (`torch.save` of a state dict; tensor metadata by candle's pickle
/// reader) and prefixes its names. torch stores each tensor's bytes uncompressed and 64-byte
/// aligned, so f32, f16 and bf16 tensors are used in place from a mapping of the file, like
/// safetensors — a copy would leave a CPU worker holding the weights twice (the copy and its
/// packed form) and cost the read. Other dtypes and layouts are converted to owned f32.
fn read_pickle(
    path: &Path,
    prefix: &str,
    out: &mut HashMap<String, (HostTensor, PathBuf)>,
) -> Result<(), ModelError> {
    use candle_core::pickle::PthTensors;
    let corrupt = |msg: String| ModelError::CorruptFile { path: path.to_path_buf(), msg };
    let pth = PthTensors::new(path, None).map_err(|e| corrupt(e.to_string()))?;
    if pth.tensor_infos().is_empty() {
        return Err(corrupt(
            "no tensors found (expected a torch.save'd state dict with */data.pkl)".into(),
        ));
    }
    let file = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
    // SAFETY: read-only, and (as for safetensors) nobody truncates the file while in use.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
    let storage = Arc::new(Storage::Mapped(map));
    let Storage::Mapped(bytes) = &*storage else { unreachable!() };
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(&bytes[..]))
        .map_err(|e| corrupt(e.to_string()))?;
    let mut names: Vec<&String> = pth.tensor_infos().keys().collect();
    names.sort();
    for name in names {
        if name.ends_with("position_ids") {
            continue;
        }
        let info = &pth.tensor_infos()[name];
        let t = match mapped(&mut zip, info, &storage) {
            Some(t) => t,
            None => {
                let t = pth.get(name).map_err(|e| corrupt(e.to_string()))?.ok_or_else(|| {
                    ModelError::MissingTensor { path: path.to_path_buf(), tensor: name.clone() }
                })?;
                let shape = t.dims().to_vec();
                let data = t
                    .to_dtype(candle_core::DType::F32)
                    .and_then(|t| t.flatten_all())
                    .and_then(|t| t.to_vec1::<f32>())
                    .map_err(|e| corrupt(e.to_string()))?;
                HostTensor::from_vec(data, shape)
            }
        };
        out.insert(format!("{prefix}{}", strip_prefix(name)), (t, path.to_path_buf()));
    }
    Ok(())
}

/// A view of an f32, f16 or bf16 row-major tensor stored uncompressed in the mapped archive;
/// `None` when it is anything else (or does not fit its entry), which the caller then copies.
fn mapped(
    zip: &mut zip::ZipArchive<std::io::Cursor<&[u8]>>,
    info: &candle_core::pickle::TensorInfo,
    storage: &Arc<Storage>,
) -> Option<HostTensor> {
    use candle_core::DType;
    let layout = &info.layout;
    let elem = match info.dtype {
        DType::F32 => Elem::F32,
        DType::F16 => Elem::F16,
        DType::BF16 => Elem::Bf16,
        _ => return None,
    };
    if !layout.is_contiguous() {
        return None;
    }
    let entry = zip.by_name(&info.path).ok()?;
    if entry.compression() != zip::CompressionMethod::Stored {
        return None;
    }
    // candle gives torch's storage offset in bytes.
    let (start, n) = (layout.start_offset(), layout.shape().elem_count());
    if start + elem.size() * n > entry.size() as usize {
        return None;
    }
    let data = entry.data_start()? as usize + start;
    HostTensor::from_mmap_as(storage.clone(), data, layout.dims().to_vec(), elem)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `tests/data/views.pt`: torch.save of views into one f32 storage `0..20` (at offset 0, at
    /// offset 7 elements, and a transposed one) and an f16 tensor. Row-major views are mapped at
    /// their offsets (the f16 one as f16); the transposed one is a converted copy.
    #[test]
    fn pickle_views_are_mapped_at_their_offsets() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/views.pt");
        let mut out = HashMap::new();
        read_pickle(&path, "p.", &mut out).unwrap();
        let t = |n: &str| &out[&format!("p.{n}")].0;
        let iota = |r: std::ops::Range<usize>| r.map(|x| x as f32).collect::<Vec<_>>();
        assert!(t("a").is_mapped() && t("b").is_mapped());
        assert_eq!((t("a").shape(), t("a").data()), (&[2, 3][..], &iota(0..6)[..]));
        assert_eq!((t("b").shape(), t("b").data()), (&[3, 4][..], &iota(7..19)[..]));
        let transposed: Vec<f32> = (0..12).map(|i| ((i % 3) * 4 + i / 3) as f32).collect();
        assert!(!t("t").is_mapped());
        assert_eq!((t("t").shape(), t("t").data()), (&[4, 3][..], &transposed[..]));
        assert!(t("h").is_mapped() && t("h").elem() == Elem::F16);
        assert_eq!(&*t("h").values(), &[0.0, 0.5, 1.0, 1.5]);
    }
}
