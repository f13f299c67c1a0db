//! `CudaBackend`: the `trident_model::Backend` ops on one CUDA device — cuBLAS GEMMs (bf16 in,
//! fp32 accumulate; or pure fp32 for parity checks) and trident's NVRTC-compiled kernels, all
//! on one stream with pooled device buffers and pinned staging for copies.
//!
//! This module holds the backend's types; each concern has its own file:
//! `options.rs` (`CudaOptions`: precision and attention kernel), `device.rs` (driver probing, context,
//! stream and cuBLAS set-up), `kernels.rs` (the NVRTC kernel table), `gemm.rs` (cuBLAS GEMMs),
//! `staging.rs` (pinned host buffers for batch uploads and head downloads), `act.rs`
//! (activations and host ↔ device value copies), `ops/` (one file per op family) and
//! `trait_impl.rs` (the `trident_model::Backend` impl: weight loading and the op entry points).

/// Launches `f` on the backend's stream with the given kernel arguments (in signature order).
macro_rules! launch {
    ($be:expr, $what:expr, $f:expr, $cfg:expr, $($arg:expr),+ $(,)?) => {{
        let mut b = $be.stream.launch_builder($f);
        $( b.arg($arg); )+
        // SAFETY: each call site passes arguments matching the kernel's signature in kernels/*.cu,
        // pointing into live device buffers of the sizes the kernel indexes.
        unsafe { b.launch($cfg) }.map(|_| ()).map_err(CudaError::driver(format!("launching {}", $what)))
    }};
}

mod act;
mod device;
mod gemm;
mod kernels;
mod ops;
mod options;
mod staging;
mod trait_impl;

use std::sync::{Arc, Mutex};

use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DevicePtr};

use crate::error::CResult;
use crate::plan::BatchPlan;
use crate::pool::{DevBuf, Pool};
use kernels::Kernels;

pub use device::cuda_available;
pub use options::{AttentionKernel, CudaOptions, Precision};

#[derive(Default)]
/// Pinned host buffers (see `staging.rs`).
struct Staging {
    up: Option<cudarc::driver::PinnedHostSlice<u32>>,
    up_done: Option<cudarc::driver::CudaEvent>,
    down: Option<cudarc::driver::PinnedHostSlice<f32>>,
}

pub struct CudaBackend {
    ordinal: usize,
    name: String,
    cc: (i32, i32),
    sms: usize,
    precision: Precision,
    attention: AttentionKernel,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    k: Kernels,
    pool: Pool,
    staging: Mutex<Staging>,
}

/// An activation `[rows × cols]` in the backend's precision, in a pooled device buffer. The
/// residual stream (LayerNorm outputs) also keeps an fp32 copy in bf16 mode: `buf` feeds the
/// GEMMs, `wide` the residual additions and the dense/sparse heads.
pub struct CudaAct {
    buf: DevBuf,
    wide: Option<DevBuf>,
    pub rows: usize,
    pub cols: usize,
}

pub struct CudaBatch {
    buf: DevBuf,
    plan: BatchPlan,
    /// Host copy of the sequence offsets (splitting head outputs per document).
    cu_seqlens: Vec<u32>,
}

pub struct CudaLinear {
    name: String,
    /// Owners of the device memory `w_ptr` / `b_ptr` point into.
    _w: CudaSlice<u8>,
    w_ptr: u64,
    _b: CudaSlice<f32>,
    b_ptr: u64,
    /// fp32 weights (meaningful for the single-output sparse head, read by `heads_dense_sparse`).
    _w32: Option<CudaSlice<f32>>,
    w32_ptr: u64,
    pub out_features: usize,
    pub in_features: usize,
}

pub struct CudaNorm {
    gamma: CudaSlice<f32>,
    beta: CudaSlice<f32>,
    eps: f32,
    pub features: usize,
}

pub struct CudaEmbeddings {
    word: CudaSlice<u8>,
    position: CudaSlice<u8>,
    type0: CudaSlice<u8>,
    norm: CudaNorm,
    vocab: usize,
    max_positions: usize,
}

fn ptr<T>(s: &CudaSlice<T>, stream: &CudaStream) -> u64 {
    s.device_ptr(stream).0
}

impl CudaBackend {
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Changes the bf16 attention kernel (chosen at construction by `CudaOptions::attention`).
    pub fn set_attention_kernel(&mut self, k: AttentionKernel) {
        self.attention = k;
    }

    pub fn attention_kernel(&self) -> AttentionKernel {
        self.attention
    }

    /// Bytes of device memory idle in the buffer pool.
    pub fn pooled_bytes(&self) -> usize {
        self.pool.idle_bytes()
    }

    /// Allocates a scratch device buffer from the pool (for benchmarks of raw GEMMs).
    pub fn scratch(&self, bytes: usize) -> CResult<DevBuf> {
        self.pool.get(bytes, "scratch")
    }
}
