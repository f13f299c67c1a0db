//! The operations the XLM-R encoder graph needs from a compute device. The graph
//! (`encoder.rs`) is written once against this trait; `cpu` and `trident-cuda` implement it.
//!
//! Layout conventions shared by every backend:
//! - A batch is *packed*: the tokens of all sequences back to back, no padding
//!   (`PackedBatch::cu_seqlens` gives each sequence's start, FlashAttention-style).
//! - Activations are row-major `[tokens × features]`.
//! - Linear weights arrive as PyTorch stores them, `[out × in]`, and compute `y = x·Wᵀ + b`.

use std::sync::Arc;

use trident_core::Modes;

/// Typed error of a backend operation, naming the operation that failed.
#[derive(Debug, thiserror::Error)]
#[error("{backend} backend: {op} failed: {msg}")]
pub struct BackendError {
    pub backend: &'static str,
    pub op: String,
    pub msg: String,
}

impl BackendError {
    pub fn new(backend: &'static str, op: impl Into<String>, msg: impl std::fmt::Display) -> Self {
        BackendError { backend, op: op.into(), msg: msg.to_string() }
    }
}

pub type BResult<T> = Result<T, BackendError>;

/// Where a host tensor's values live: memory-mapped from a checkpoint file (zero copy) or
/// owned (converted layouts, random weights; always f32).
pub enum Storage {
    Owned(Vec<f32>),
    Mapped(memmap2::Mmap),
}

/// How a tensor's values are stored; every read widens them to f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Elem {
    F32,
    F16,
    Bf16,
}

impl Elem {
    pub fn size(self) -> usize {
        match self {
            Elem::F32 => 4,
            Elem::F16 | Elem::Bf16 => 2,
        }
    }
}

/// A tensor's values as stored.
pub enum Stored<'a> {
    F32(&'a [f32]),
    F16(&'a [half::f16]),
    Bf16(&'a [half::bf16]),
}

/// A row-major tensor on the host, read as f32. Cheap to clone (shared storage).
///
/// A 16-bit checkpoint stays mapped as 16-bit: the CPU backend widens each weight while packing
/// it and each embedding row as it gathers it, so no f32 copy of the model is held next to the
/// packed one. [`HostTensor::data`] widens a 16-bit tensor once and keeps the copy (for the
/// small tensors: norms, biases); [`HostTensor::values`] and [`HostTensor::read_into`] do not.
#[derive(Clone)]
pub struct HostTensor {
    storage: Arc<Storage>,
    /// Offset in bytes into the storage.
    offset: usize,
    shape: Vec<usize>,
    elem: Elem,
    /// A 16-bit tensor's f32 values, once `data()` asked for them.
    widened: Arc<std::sync::OnceLock<Vec<f32>>>,
}

impl HostTensor {
    pub fn from_vec(data: Vec<f32>, shape: Vec<usize>) -> Self {
        assert_eq!(data.len(), shape.iter().product::<usize>(), "shape/data length mismatch");
        let storage = Arc::new(Storage::Owned(data));
        HostTensor { storage, offset: 0, shape, elem: Elem::F32, widened: Default::default() }
    }

    /// An f32 view into a mapped file; see [`HostTensor::from_mmap_as`].
    pub fn from_mmap(map: Arc<Storage>, byte_offset: usize, shape: Vec<usize>) -> Option<Self> {
        Self::from_mmap_as(map, byte_offset, shape, Elem::F32)
    }

    /// A view into a mapped file of little-endian `elem` values. `None` unless `byte_offset` is
    /// aligned to the element and the values lie inside the map.
    pub fn from_mmap_as(
        map: Arc<Storage>,
        byte_offset: usize,
        shape: Vec<usize>,
        elem: Elem,
    ) -> Option<Self> {
        let n: usize = shape.iter().product();
        let Storage::Mapped(m) = &*map else { return None };
        let base = m.as_ptr() as usize + byte_offset;
        let end = n.checked_mul(elem.size()).and_then(|b| b.checked_add(byte_offset));
        if !base.is_multiple_of(elem.size())
            || end.is_none_or(|e| e > m.len())
            || cfg!(target_endian = "big")
        {
            return None;
        }
        let widened = Default::default();
        Some(HostTensor { storage: map, offset: byte_offset, shape, elem, widened })
    }

    /// Whether the data is read in place from a mapped file (not a copy).
    pub fn is_mapped(&self) -> bool {
        matches!(&*self.storage, Storage::Mapped(_))
    }

    /// Whether the tensor holds an f32 copy of its values in memory (owned, or a 16-bit tensor
    /// that `data()` widened) rather than only the mapped file's pages.
    pub fn holds_f32_copy(&self) -> bool {
        !self.is_mapped() || self.widened.get().is_some()
    }

    /// How the values are stored.
    pub fn elem(&self) -> Elem {
        self.elem
    }

    /// Where the values are stored: equal for two clones of one tensor (a backend that shares
    /// packed copies between workers keys them on it).
    pub fn source_id(&self) -> (usize, usize) {
        (Arc::as_ptr(&self.storage) as usize, self.offset)
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values as f32. A 16-bit tensor is widened on the first call and the copy kept.
    pub fn data(&self) -> &[f32] {
        match self.elem {
            Elem::F32 => self.f32_slice(),
            _ => self.widened.get_or_init(|| self.values().into_owned()),
        }
    }

    /// The values as f32: borrowed when stored as f32, else a widened copy that is not kept.
    pub fn values(&self) -> std::borrow::Cow<'_, [f32]> {
        match self.elem {
            Elem::F32 => self.f32_slice().into(),
            _ => match self.widened.get() {
                Some(v) => v[..].into(),
                None => {
                    let mut v = vec![0.0; self.len()];
                    self.read_into(0, &mut v);
                    v.into()
                }
            },
        }
    }

    /// Writes values `start..start + dst.len()` (in row-major order) into `dst` as f32.
    pub fn read_into(&self, start: usize, dst: &mut [f32]) {
        use half::slice::HalfFloatSliceExt;
        let range = start..start + dst.len();
        assert!(range.end <= self.len(), "read of {range:?} from {} values", self.len());
        match self.stored() {
            Stored::F32(v) => dst.copy_from_slice(&v[range]),
            Stored::F16(v) => v[range].convert_to_f32_slice(dst),
            Stored::Bf16(v) => v[range].convert_to_f32_slice(dst),
        }
    }

    /// The values as stored (for a kernel that widens them itself).
    pub fn stored(&self) -> Stored<'_> {
        match self.elem {
            Elem::F32 => Stored::F32(self.f32_slice()),
            Elem::F16 => Stored::F16(self.half_slice()),
            Elem::Bf16 => Stored::Bf16(self.half_slice()),
        }
    }

    fn f32_slice(&self) -> &[f32] {
        let n = self.len();
        match &*self.storage {
            Storage::Owned(v) => &v[self.offset / 4..self.offset / 4 + n],
            Storage::Mapped(m) => {
                // SAFETY: alignment, bounds and endianness were checked in `from_mmap_as`; the
                // map is read-only and lives as long as `self.storage`.
                let p = m.as_ptr().wrapping_add(self.offset) as *const f32;
                unsafe { std::slice::from_raw_parts(p, n) }
            }
        }
    }

    /// The stored 16-bit values (`T` is `elem`'s type; only mapped tensors are 16-bit).
    fn half_slice<T>(&self) -> &[T] {
        let Storage::Mapped(m) = &*self.storage else { unreachable!("owned tensors are f32") };
        debug_assert_eq!(std::mem::size_of::<T>(), self.elem.size());
        // SAFETY: as in `f32_slice`; `T` is a 2-byte plain-old-data float matching `elem`.
        let p = m.as_ptr().wrapping_add(self.offset) as *const T;
        unsafe { std::slice::from_raw_parts(p, self.len()) }
    }
}

impl HostTensor {
    /// Drops this tensor's pages from the process's resident set when it is memory-mapped (a
    /// backend that converted it keeps no reference into it). The file stays mapped: a later
    /// read faults the pages back in from the page cache.
    pub fn release_pages(&self) {
        let Storage::Mapped(m) = &*self.storage else { return };
        let page = 4096;
        let (start, end) = (self.offset, self.offset + self.elem.size() * self.len());
        let (start, end) = (start.div_ceil(page) * page, end / page * page);
        if end > start {
            // SAFETY: the mapping is read-only and file-backed, so MADV_DONTNEED discards no
            // data; `start..end` lies inside it. Failure only means the pages stay resident.
            let _ = unsafe {
                m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
            };
        }
    }
}

impl std::fmt::Debug for HostTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HostTensor{:?}", self.shape)
    }
}

/// One `[out × in]` weight with its `[out]` bias.
#[derive(Clone, Debug)]
pub struct LinearParts {
    pub weight: HostTensor,
    pub bias: HostTensor,
}

/// A packed batch of token sequences (no padding), as the host prepares it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PackedBatch {
    /// Token ids of all sequences back to back.
    pub ids: Vec<u32>,
    /// XLM-R position ids (see `PackedBatch::new`).
    pub positions: Vec<u32>,
    /// `n_seqs + 1` offsets: sequence `i` is tokens `cu_seqlens[i]..cu_seqlens[i+1]`.
    pub cu_seqlens: Vec<u32>,
    pub max_seqlen: usize,
}

impl PackedBatch {
    /// Packs sequences. Position ids follow XLM-R: `p_i = (#non-pad tokens in 0..=i) + pad_id`
    /// for non-pad tokens and `pad_id` for pad tokens (so real tokens get 2, 3, …).
    pub fn new<S: AsRef<[u32]>>(seqs: &[S], pad_id: u32) -> Self {
        let total: usize = seqs.iter().map(|s| s.as_ref().len()).sum();
        let mut b = PackedBatch {
            ids: Vec::with_capacity(total),
            positions: Vec::with_capacity(total),
            cu_seqlens: Vec::with_capacity(seqs.len() + 1),
            max_seqlen: 0,
        };
        b.cu_seqlens.push(0);
        for s in seqs {
            let s = s.as_ref();
            let mut count = 0u32;
            for &t in s {
                b.ids.push(t);
                if t == pad_id {
                    b.positions.push(pad_id);
                } else {
                    count += 1;
                    b.positions.push(count + pad_id);
                }
            }
            b.max_seqlen = b.max_seqlen.max(s.len());
            b.cu_seqlens.push(b.ids.len() as u32);
        }
        b
    }

    pub fn n_seqs(&self) -> usize {
        self.cu_seqlens.len().saturating_sub(1)
    }

    pub fn n_tokens(&self) -> usize {
        self.ids.len()
    }

    pub fn seq_range(&self, i: usize) -> std::ops::Range<usize> {
        self.cu_seqlens[i] as usize..self.cu_seqlens[i + 1] as usize
    }
}

/// Activation applied after a linear layer's bias.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    None,
    /// Exact GELU, `0.5·x·(1 + erf(x/√2))` (never the tanh approximation).
    Gelu,
}

/// What the fused BGE-M3 heads return to the host for one batch (only requested parts are
/// filled; the others are empty).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HeadOutput {
    /// `n_seqs × hidden`: the L2-normalised CLS (first token) state of each sequence.
    pub dense: Vec<f32>,
    /// `n_tokens`: `ReLU(h·w_sparse + b_sparse)` per token (pooling per id is done on the host).
    pub token_weights: Vec<f32>,
    /// Per sequence, `(len_i − 1) × colbert_dim`: L2-normalised `h·W_colbertᵀ + b` rows for
    /// tokens 1..len_i-1. One vector per sequence so the encoder hands each to its document
    /// without another copy (at real shape this output is 4 KiB per token).
    pub colbert: Vec<Vec<f32>>,
    pub colbert_dim: usize,
}

/// A compute device able to run the XLM-R encoder graph. Ops take `&self`; a backend that needs
/// mutable state (streams, buffer pools) keeps it inside. One backend instance is used by one
/// worker thread at a time.
pub trait Backend: Send + 'static {
    /// A `[rows × cols]` activation living on the device.
    type Act: Send;
    /// A packed batch's index data (ids, positions, cu_seqlens) on the device.
    type Batch: Send;
    type Linear: Send + Sync;
    type Norm: Send + Sync;
    type Embeddings: Send + Sync;

    /// Short human-readable description, e.g. "cpu (2 threads, f32)" or "cuda:0 H100 bf16".
    fn describe(&self) -> String;

    /// Load a linear layer. Several parts are concatenated along the output dimension
    /// (fused QKV: `[Wq; Wk; Wv]`), so the output has `Σ out_i` columns in part order.
    fn load_linear(&self, name: &str, parts: &[LinearParts]) -> BResult<Self::Linear>;
    /// Load an output head (sparse, ColBERT, MCLS states) as a linear layer. Its error goes
    /// straight into the outputs and it is a small share of the work, so a backend with a
    /// reduced precision may keep it at full precision; by default it loads as any layer.
    fn load_head(&self, name: &str, parts: &[LinearParts]) -> BResult<Self::Linear> {
        self.load_linear(name, parts)
    }
    fn load_norm(
        &self,
        name: &str,
        gamma: &HostTensor,
        beta: &HostTensor,
        eps: f32,
    ) -> BResult<Self::Norm>;
    /// Word `[vocab × H]`, position `[max_pos × H]` and token-type row 0 of `[types × H]`, then LayerNorm.
    fn load_embeddings(
        &self,
        word: &HostTensor,
        position: &HostTensor,
        token_type: &HostTensor,
        norm: Self::Norm,
    ) -> BResult<Self::Embeddings>;

    fn upload_batch(&self, batch: &PackedBatch) -> BResult<Self::Batch>;

    /// `LN(word[id] + position[pos] + token_type[0])` for every token → `[tokens × H]`.
    fn embed(&self, batch: &Self::Batch, emb: &Self::Embeddings) -> BResult<Self::Act>;
    /// `act(x·Wᵀ + b)`.
    fn linear(&self, x: &Self::Act, w: &Self::Linear, act: Activation) -> BResult<Self::Act>;
    /// `LN(x·Wᵀ + b + residual)` (post-LN residual block).
    fn linear_residual_norm(
        &self,
        x: &Self::Act,
        w: &Self::Linear,
        residual: &Self::Act,
        norm: &Self::Norm,
    ) -> BResult<Self::Act>;
    /// Multi-head self-attention within each packed sequence. `qkv` is `[tokens × 3H]` laid out
    /// `[q | k | v]`, each split into `heads` heads of `H / heads`; result `[tokens × H]`,
    /// `softmax(q·kᵀ/√d)·v` with heads concatenated.
    fn attention(&self, qkv: &Self::Act, batch: &Self::Batch, heads: usize) -> BResult<Self::Act>;
    /// The fused BGE-M3 heads over the last hidden state `h` `[tokens × H]`: only the modes asked
    /// for are computed. `sparse` is `[1 × H]` (+ bias), `colbert` `[C × H]` (+ bias).
    fn heads(
        &self,
        h: &Self::Act,
        batch: &Self::Batch,
        sparse: &Self::Linear,
        colbert: &Self::Linear,
        modes: Modes,
    ) -> BResult<HeadOutput>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_follow_xlmr() {
        let b = PackedBatch::new(&[vec![0u32, 5, 1, 7, 2], vec![0, 2]], 1);
        assert_eq!(b.positions, vec![2, 3, 1, 4, 5, 2, 3]);
        assert_eq!(b.cu_seqlens, vec![0, 5, 7]);
        assert_eq!(b.max_seqlen, 5);
        assert_eq!(b.seq_range(1), 5..7);
    }

    /// A mapped 16-bit tensor reads as its exact f32 values through every accessor, only
    /// `data()` keeps a widened copy, and views must be aligned and inside the map.
    #[test]
    fn sixteen_bit_views_widen_on_read() {
        let vals = [0.5f32, -1.25, 3.0, 65504.0, -0.0, 1.0e-3, 7.0];
        for (elem, bytes) in [
            (Elem::F16, vals.map(|v| half::f16::from_f32(v).to_le_bytes())),
            (Elem::Bf16, vals.map(|v| half::bf16::from_f32(v).to_le_bytes())),
        ] {
            let mut m = memmap2::MmapMut::map_anon(64).unwrap();
            m[2..16].copy_from_slice(bytes.as_flattened());
            let map = Arc::new(Storage::Mapped(m.make_read_only().unwrap()));
            let widen = |b: &[u8; 2]| match elem {
                Elem::F16 => half::f16::from_le_bytes(*b).to_f32(),
                _ => half::bf16::from_le_bytes(*b).to_f32(),
            };
            let want: Vec<f32> = bytes.iter().map(widen).collect();
            let t = HostTensor::from_mmap_as(map.clone(), 2, vec![7], elem).unwrap();
            let mut part = [0.0; 3];
            t.read_into(2, &mut part);
            assert_eq!(part, want[2..5], "{elem:?}");
            assert_eq!(&*t.values(), &want[..]);
            assert!(t.widened.get().is_none(), "values() keeps no copy");
            assert_eq!((t.data(), t.clone().data()), (&want[..], &want[..]));
            assert_eq!(t.source_id(), t.clone().source_id());
            assert!(HostTensor::from_mmap_as(map.clone(), 1, vec![7], elem).is_none());
            assert!(HostTensor::from_mmap_as(map.clone(), 2, vec![32], elem).is_none());
            assert!(HostTensor::from_mmap_as(map, 2, vec![usize::MAX], elem).is_none());
        }
    }
}
