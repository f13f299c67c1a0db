//! The CPU backend: f32 by default, GEMMs on trident's own packed micro-kernels (`kernel.rs`:
//! AVX2 6 × 16, `kernel_avx512.rs`: AVX-512 12 × 32, chosen at run time by `isa.rs`) on a
//! dedicated rayon pool, f32 weights packed once at load into the kernels' panels
//! (`packed.rs`), element-wise work fused into one pass after each GEMM. At bf16 precision on a
//! CPU with AMX the linear layers and attention run on the tile unit (`kernel_amx.rs`), below
//! it on AMD's AVX512-BF16 on `VDPBF16PS` (`kernel_bf16.rs`, `attention_bf16.rs`); at int8
//! the linear layers run on AMX-INT8 (`kernel_amx_int8.rs`) and attention stays on AMX-BF16, or,
//! below AMX, on AVX512-VNNI (`kernel_vnni.rs`), AVX2 (`kernel_madd.rs`) or portable code, with
//! the same results (attention as at bf16).

#[cfg(target_arch = "x86_64")]
mod amx_unit;
mod attention;
#[cfg(target_arch = "x86_64")]
mod attention_bf16;
mod describe;
mod gemm;
mod isa;
mod kernel;
#[cfg(target_arch = "x86_64")]
mod kernel_amx;
#[cfg(target_arch = "x86_64")]
mod kernel_amx_int8;
#[cfg(target_arch = "x86_64")]
mod kernel_avx512;
#[cfg(target_arch = "x86_64")]
mod kernel_bf16;
mod kernel_int8;
#[cfg(target_arch = "x86_64")]
mod kernel_madd;
#[cfg(target_arch = "x86_64")]
mod kernel_vnni;
mod load;
mod ops;
mod packed;
#[cfg(target_arch = "x86_64")]
mod panel;
mod pool;
mod quant;
mod smooth;
#[cfg(target_arch = "x86_64")]
mod softmax_bf16;
mod tile;
#[cfg(target_arch = "x86_64")]
mod tile_check;

use std::sync::Arc;

use rayon::prelude::*;
use trident_core::Modes;

use crate::backend::{
    Activation, BResult, Backend, BackendError, HeadOutput, HostTensor, LinearParts, PackedBatch,
    Stored,
};
use pool::{BufferPool, Pooled};

use describe::Kernels;
pub use describe::{kernels_for, CpuPrecision};
/// The linear-layer GEMM, public for `examples/gemm_bench.rs`.
#[doc(hidden)]
pub use gemm::matmul_wt;
pub use isa::{force_isa, kernel_name, Isa};
pub use load::SharedWeights;
#[doc(hidden)]
pub use packed::{matmul_packed, Packed, PackedF32};
pub use smooth::{Recorder, Smoothing};

/// The AMX-BF16 GEMM and its weight packing, public for `examples/gemm_bench.rs`.
#[doc(hidden)]
#[cfg(target_arch = "x86_64")]
pub mod amx {
    pub use super::gemm::{matmul_amx, matmul_amx_int8};
    pub use super::kernel_amx::{available, bf16_bits, AmxWeight};
    pub use super::kernel_amx_int8::{available as int8_available, AmxI8Weight};
}

/// The int8 and AVX512-BF16 linear-layer kernels, public for `examples/gemm_bench.rs`.
#[doc(hidden)]
pub mod reduced {
    #[cfg(target_arch = "x86_64")]
    pub use super::kernel_bf16::{available as bf16_available, matmul as matmul_bf16, Bf16Panels};
    pub use super::kernel_int8::{matmul_int8, name as int8_name, Int8Weight};
    pub use super::quant::{HeldOut, QuantizedRows};
}

/// A `[rows × cols]` row-major activation (its buffer goes back to the backend's pool on drop).
pub struct CpuAct {
    buf: Pooled,
    pub rows: usize,
    pub cols: usize,
}

impl CpuAct {
    pub fn data(&self) -> &[f32] {
        &self.buf.data
    }
}

/// One part of a linear layer's weight, `[out_i × in]`.
enum PartWeight {
    /// As loaded (a layer narrower than one `B` micro-panel: the sparse head).
    F32(HostTensor),
    /// f32, packed once into the micro-kernels' `B` panels.
    Packed(packed::PackedF32),
    /// bf16 below AMX, packed once into the same panels (the kernels widen it as they load it).
    PackedBf16(packed::Packed<half::bf16>),
    /// bf16 in AMX tile order.
    #[cfg(target_arch = "x86_64")]
    Amx(kernel_amx::AmxWeight),
    /// bf16 in panels for AVX512-BF16 dot products (below AMX, where `kernel_bf16` is preferred).
    #[cfg(target_arch = "x86_64")]
    Bf16Dot(kernel_bf16::Bf16Panels),
    /// int8, per-channel scales, in AMX tile order, and the features held out in f32.
    #[cfg(target_arch = "x86_64")]
    AmxI8(kernel_amx_int8::AmxI8Weight, quant::HeldOut),
    /// int8, per-channel scales, for AVX512-VNNI, AVX2 or the portable kernel (below AMX), and
    /// the features held out in f32.
    I8(kernel_int8::Int8Weight, quant::HeldOut),
}

impl PartWeight {
    fn rows(&self) -> usize {
        match self {
            PartWeight::F32(t) => t.shape()[0],
            PartWeight::Packed(w) => w.n,
            PartWeight::PackedBf16(w) => w.n,
            #[cfg(target_arch = "x86_64")]
            PartWeight::Amx(w) => w.n,
            #[cfg(target_arch = "x86_64")]
            PartWeight::Bf16Dot(w) => w.n,
            #[cfg(target_arch = "x86_64")]
            PartWeight::AmxI8(w, _) => w.n,
            PartWeight::I8(w, _) => w.n(),
        }
    }
}

/// A linear layer: the parts' weights (`[out_i × in]` each), their biases concatenated.
pub struct CpuLinear {
    name: String,
    weights: Vec<Arc<PartWeight>>,
    bias: Vec<f32>,
    in_dim: usize,
    out_dim: usize,
}

pub struct CpuNorm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
    eps: f32,
}

pub struct CpuEmbeddings {
    word: HostTensor,
    position: HostTensor,
    token_type: Vec<f32>,
    norm: CpuNorm,
}

pub struct CpuBackend {
    pool: Arc<rayon::ThreadPool>,
    threads: usize,
    precision: CpuPrecision,
    /// The kernels beside the f32 ones (decided when the backend is made: the weights are
    /// packed for them at load).
    kernels: Kernels,
    buffers: Arc<BufferPool>,
    /// Calibration: every linear layer's input is folded into per-feature maxima.
    recorder: Option<Arc<Recorder>>,
    /// int8: the calibrated smoothing applied to the weights as they are quantised.
    smoothing: Option<Arc<Smoothing>>,
    /// The packed weights of the workers of one model, made by the first to load each layer.
    shared: Option<SharedWeights>,
}

impl CpuBackend {
    /// A backend with f32 weights on its own pool of `threads` threads (0 = all cores).
    pub fn new(threads: usize) -> Self {
        Self::with_precision(threads, CpuPrecision::F32)
    }

    /// As [`CpuBackend::new`], storing the linear layers' weights at `precision`.
    pub fn with_precision(threads: usize, precision: CpuPrecision) -> Self {
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            threads
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("trident-cpu-{i}"))
            .build()
            .expect("rayon thread pool");
        CpuBackend {
            pool: Arc::new(pool),
            threads,
            precision,
            kernels: Kernels::for_precision(precision),
            buffers: Arc::default(),
            recorder: None,
            smoothing: None,
            shared: None,
        }
    }

    /// Records every linear layer's input into `recorder` (the int8 calibration pass).
    pub fn recording(mut self, recorder: Arc<Recorder>) -> Self {
        self.recorder = Some(recorder);
        self
    }

    /// Smooths the int8 precision's linear layers with `smoothing` as they load.
    pub fn with_smoothing(mut self, smoothing: Arc<Smoothing>) -> Self {
        self.smoothing = Some(smoothing);
        self
    }

    /// Takes packed linear-layer weights from `shared` (and puts the ones it packs there), so
    /// the workers of one model keep one copy. Every backend given the same `shared` must load
    /// the same checkpoint at the same precision and smoothing.
    pub fn sharing(mut self, shared: SharedWeights) -> Self {
        self.shared = Some(shared);
        self
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    fn err(op: &str, msg: impl std::fmt::Display) -> BackendError {
        BackendError::new("cpu", op, msg)
    }

    /// `x·Wᵀ` for every part into its column slice of a fresh `[rows × out]` buffer (no bias).
    fn matmul(&self, x: &CpuAct, w: &CpuLinear) -> BResult<Pooled> {
        if x.cols != w.in_dim {
            return Err(Self::err(
                &w.name,
                format!("input has {} columns, layer expects {}", x.cols, w.in_dim),
            ));
        }
        let (m, n) = (x.rows, w.out_dim);
        if let Some(r) = &self.recorder {
            r.record(&w.name, &x.data()[..m * w.in_dim], w.in_dim);
        }
        // Every part writes all rows of its columns, and the parts cover all n columns.
        let mut y = Pooled::overwritten(&self.buffers, m * n);
        let mut col = 0;
        for part in w.weights.iter().map(|p| &**p) {
            let out_i = part.rows();
            let dst = y.data[col..].as_mut_ptr();
            // SAFETY: x is [m × in], the part is [out_i × in], y has room for columns col..col+out_i.
            unsafe {
                match part {
                    PartWeight::F32(t) => {
                        let (k, x) = (w.in_dim, x.data());
                        match t.stored() {
                            Stored::F32(v) => gemm::matmul_wt(m, out_i, k, x, v, dst, n),
                            Stored::Bf16(v) => gemm::matmul_wt(m, out_i, k, x, v, dst, n),
                            Stored::F16(v) => {
                                let widen = half::f16::to_f32;
                                gemm::matmul_wt_widening(m, out_i, k, x, v, widen, dst, n)
                            }
                        }
                    }
                    PartWeight::Packed(p) => packed::matmul_packed(m, x.data(), p, dst, n),
                    PartWeight::PackedBf16(p) => packed::matmul_packed(m, x.data(), p, dst, n),
                    // (Packed only when kernel_amx::available().)
                    #[cfg(target_arch = "x86_64")]
                    PartWeight::Amx(p) => gemm::matmul_amx(m, x.data(), p, dst, n),
                    // (Packed only when kernel_bf16::preferred().)
                    #[cfg(target_arch = "x86_64")]
                    PartWeight::Bf16Dot(p) => kernel_bf16::matmul(m, x.data(), p, dst, n),
                    #[cfg(target_arch = "x86_64")]
                    PartWeight::AmxI8(p, held) => {
                        gemm::matmul_amx_int8(m, x.data(), p, held, dst, n)
                    }
                    PartWeight::I8(p, held) => {
                        kernel_int8::matmul_int8(m, x.data(), p, held, dst, n)
                    }
                }
            };
            col += out_i;
            // The calibration pass reads the checkpoint in place, once (see `load`).
            if let (Some(_), PartWeight::F32(t)) = (&self.recorder, part) {
                t.release_pages();
            }
        }
        Ok(y)
    }
}

impl Default for CpuBackend {
    fn default() -> Self {
        Self::new(0)
    }
}

fn check_len(op: &str, t: &HostTensor, want: usize) -> BResult<()> {
    if t.len() != want {
        return Err(CpuBackend::err(
            op,
            format!("tensor has shape {:?}, expected {want} values", t.shape()),
        ));
    }
    Ok(())
}

impl Backend for CpuBackend {
    type Act = CpuAct;
    type Batch = PackedBatch;
    type Linear = CpuLinear;
    type Norm = CpuNorm;
    type Embeddings = CpuEmbeddings;

    fn describe(&self) -> String {
        format!("cpu ({} threads, {})", self.threads, self.kernels.describe(self.precision))
    }

    fn load_linear(&self, name: &str, parts: &[LinearParts]) -> BResult<CpuLinear> {
        self.load(name, parts, self.precision)
    }

    /// The heads stay f32 in every precision, for a twelfth of one layer's work: their error
    /// would go straight into the outputs (at int8 an int8 ColBERT head took the worst ColBERT
    /// row cosine from 0.99865 to 0.99861 and hybrid Spearman from 0.99781 to 0.99767 on
    /// scripts/fidelity-cpu.sh), the sparse head is a dot product (`heads` wants it f32) and
    /// the MCLS head must copy the states exactly.
    fn load_head(&self, name: &str, parts: &[LinearParts]) -> BResult<CpuLinear> {
        self.load(name, parts, CpuPrecision::F32)
    }

    fn load_norm(
        &self,
        name: &str,
        gamma: &HostTensor,
        beta: &HostTensor,
        eps: f32,
    ) -> BResult<CpuNorm> {
        check_len(name, beta, gamma.len())?;
        Ok(CpuNorm { gamma: gamma.values().into_owned(), beta: beta.values().into_owned(), eps })
    }

    fn load_embeddings(
        &self,
        word: &HostTensor,
        position: &HostTensor,
        token_type: &HostTensor,
        norm: CpuNorm,
    ) -> BResult<CpuEmbeddings> {
        let h = norm.gamma.len();
        for (what, t) in [
            ("word embeddings", word),
            ("position embeddings", position),
            ("token type embeddings", token_type),
        ] {
            if t.shape().len() != 2 || t.shape()[1] != h || t.shape()[0] == 0 {
                return Err(Self::err(what, format!("shape {:?}, expected [n, {h}]", t.shape())));
            }
        }
        Ok(CpuEmbeddings {
            word: word.clone(),
            position: position.clone(),
            token_type: token_type.values()[..h].to_vec(),
            norm,
        })
    }

    fn upload_batch(&self, batch: &PackedBatch) -> BResult<PackedBatch> {
        Ok(batch.clone())
    }

    fn embed(&self, batch: &PackedBatch, emb: &CpuEmbeddings) -> BResult<CpuAct> {
        let h = emb.token_type.len();
        let (vocab, max_pos) = (emb.word.shape()[0], emb.position.shape()[0]);
        if let Some((&t, &p)) = batch
            .ids
            .iter()
            .zip(&batch.positions)
            .find(|(&t, &p)| t as usize >= vocab || p as usize >= max_pos)
        {
            return Err(Self::err(
                "embed",
                format!("token id {t} / position {p} outside tables of {vocab} / {max_pos} rows"),
            ));
        }
        let mut buf = Pooled::overwritten(&self.buffers, batch.n_tokens() * h);
        // Rows are read one at a time, so a 16-bit table is widened only where it is used.
        self.pool.install(|| {
            let rows = buf.data.par_chunks_mut(h).enumerate();
            rows.for_each_init(
                || vec![0.0; h],
                |ps, (i, row)| {
                    let (t, p) = (batch.ids[i] as usize, batch.positions[i] as usize);
                    emb.word.read_into(t * h, row);
                    emb.position.read_into(p * h, ps);
                    for c in 0..h {
                        row[c] = row[c] + ps[c] + emb.token_type[c];
                    }
                    ops::layer_norm(row, &emb.norm.gamma, &emb.norm.beta, emb.norm.eps);
                },
            )
        });
        Ok(CpuAct { buf, rows: batch.n_tokens(), cols: h })
    }

    fn linear(&self, x: &CpuAct, w: &CpuLinear, act: Activation) -> BResult<CpuAct> {
        let mut y = self.pool.install(|| self.matmul(x, w))?;
        let n = w.out_dim;
        self.pool.install(|| {
            y.data.par_chunks_mut(n).for_each(|row| match act {
                Activation::None => ops::add_bias(row, &w.bias),
                Activation::Gelu if self.precision.reduced() => ops::bias_gelu_f32(row, &w.bias),
                Activation::Gelu => ops::bias_gelu(row, &w.bias),
            })
        });
        Ok(CpuAct { buf: y, rows: x.rows, cols: n })
    }

    fn linear_residual_norm(
        &self,
        x: &CpuAct,
        w: &CpuLinear,
        residual: &CpuAct,
        norm: &CpuNorm,
    ) -> BResult<CpuAct> {
        let n = w.out_dim;
        if residual.rows != x.rows || residual.cols != n || norm.gamma.len() != n {
            return Err(Self::err(
                &w.name,
                format!(
                    "residual [{}×{}] does not match output [{}×{n}]",
                    residual.rows, residual.cols, x.rows
                ),
            ));
        }
        let mut y = self.pool.install(|| self.matmul(x, w))?;
        self.pool.install(|| {
            y.data.par_chunks_mut(n).zip(residual.data().par_chunks(n)).for_each(|(row, res)| {
                ops::bias_residual_layer_norm(row, &w.bias, res, &norm.gamma, &norm.beta, norm.eps)
            })
        });
        Ok(CpuAct { buf: y, rows: x.rows, cols: n })
    }

    fn attention(&self, qkv: &CpuAct, batch: &PackedBatch, heads: usize) -> BResult<CpuAct> {
        if !qkv.cols.is_multiple_of(3)
            || !(qkv.cols / 3).is_multiple_of(heads)
            || qkv.rows != batch.n_tokens()
            || batch.cu_seqlens.first().is_some_and(|&s| s != 0)
            || batch.cu_seqlens.last().map_or(0, |&e| e as usize) != qkv.rows
            || batch.cu_seqlens.windows(2).any(|w| w[0] > w[1])
        {
            return Err(Self::err(
                "attention",
                format!(
                    "qkv [{}×{}] does not split into 3 × {heads} heads over {} tokens",
                    qkv.rows,
                    qkv.cols,
                    batch.n_tokens()
                ),
            ));
        }
        let hidden = qkv.cols / 3;
        // Every token lies in one sequence, whose heads write all its columns.
        let mut buf = Pooled::overwritten(&self.buffers, qkv.rows * hidden);
        let cu = &batch.cu_seqlens;
        self.pool.install(|| {
            #[cfg(target_arch = "x86_64")]
            if self.kernels.amx {
                // SAFETY: `amx` is only set where kernel_amx::available() held.
                return unsafe {
                    attention::attention_amx(qkv.data(), &mut buf.data, hidden, heads, cu)
                };
            }
            #[cfg(target_arch = "x86_64")]
            if self.kernels.bf16_attention {
                // SAFETY: only set where kernel_bf16::available() held.
                return unsafe {
                    attention_bf16::attention(qkv.data(), &mut buf.data, hidden, heads, cu)
                };
            }
            attention::attention(qkv.data(), &mut buf.data, hidden, heads, cu)
        });
        Ok(CpuAct { buf, rows: qkv.rows, cols: hidden })
    }

    fn heads(
        &self,
        h: &CpuAct,
        batch: &PackedBatch,
        sparse: &CpuLinear,
        colbert: &CpuLinear,
        modes: Modes,
    ) -> BResult<HeadOutput> {
        let hidden = h.cols;
        let mut out = HeadOutput { colbert_dim: colbert.out_dim, ..Default::default() };
        if modes.dense {
            out.dense = Vec::with_capacity(batch.n_seqs() * hidden);
            for s in 0..batch.n_seqs() {
                let r = batch.cu_seqlens[s] as usize;
                out.dense.extend_from_slice(&h.data()[r * hidden..(r + 1) * hidden]);
            }
            out.dense.chunks_exact_mut(hidden).for_each(ops::l2_normalize);
        }
        if modes.sparse {
            if sparse.out_dim != 1 || sparse.in_dim != hidden {
                return Err(Self::err(
                    "sparse head",
                    format!(
                        "expected a [1 × {hidden}] weight, got [{} × {}]",
                        sparse.out_dim, sparse.in_dim
                    ),
                ));
            }
            let PartWeight::F32(w) = &*sparse.weights[0] else {
                return Err(Self::err("sparse head", "weight is not f32"));
            };
            let (w, b) = (w.data(), sparse.bias[0]);
            out.token_weights = self.pool.install(|| {
                h.data().par_chunks(hidden).map(|row| (ops::dot(row, w) + b).max(0.0)).collect()
            });
        }
        if modes.colbert {
            // One GEMM over all rows (the few CLS rows included), then drop each sequence's CLS.
            let c = colbert.out_dim;
            let all = self.pool.install(|| self.matmul(h, colbert))?;
            out.colbert = self.pool.install(|| {
                (0..batch.n_seqs())
                    .into_par_iter()
                    .map(|s| {
                        let r = batch.seq_range(s);
                        let mut rows = all.data[(r.start + 1) * c..r.end * c].to_vec();
                        rows.chunks_exact_mut(c).for_each(|row| {
                            ops::add_bias(row, &colbert.bias);
                            ops::l2_normalize(row);
                        });
                        rows
                    })
                    .collect()
            });
        }
        Ok(out)
    }
}
