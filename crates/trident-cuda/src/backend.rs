//! `CudaBackend`: the `trident_model::Backend` ops on one CUDA device — cuBLAS GEMMs (bf16 in,
//! fp32 accumulate; or pure fp32 for parity checks) and trident's NVRTC-compiled kernels, all
//! on one stream with pooled device buffers and pinned staging for copies.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

use cudarc::cublas::{sys as blas_sys, CudaBlas};
use cudarc::driver::{
    result as drv, CudaContext, CudaEvent, CudaFunction, CudaSlice, CudaStream, DevicePtr,
    LaunchConfig, PinnedHostSlice, PushKernelArg,
};
use trident_core::Modes;
use trident_model::backend::BResult;
use trident_model::{Activation, Backend, HeadOutput, HostTensor, LinearParts, PackedBatch};

use crate::compile::{arch_for, compile_kernel_cached, Output, KERNEL_FILES};
use crate::error::{CResult, CudaError};
use crate::plan::{elementwise_blocks, row_blocks, BatchPlan, MAX_ROW_FEATURES};
use crate::pool::{DevBuf, Pool};

/// Storage and GEMM precision of weights and activations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// Everything fp32, GEMMs in plain fp32 (no TF32): for parity with the reference.
    F32,
    /// bf16 weights and activations, fp32 accumulation and fp32 kernel arithmetic.
    Bf16,
}

impl Precision {
    fn elem(self) -> usize {
        match self {
            Precision::F32 => 4,
            Precision::Bf16 => 2,
        }
    }
    fn suffix(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }
}

/// Which attention kernel bf16 mode uses for head size 64.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionKernel {
    /// mma.sync bf16 tensor-core kernel (default).
    TensorCore,
    /// The fp32-arithmetic tiled kernel (always used in fp32 mode or for other head sizes).
    Generic,
}

/// True when a CUDA driver, cuBLAS, NVRTC and at least one device are present.
pub fn cuda_available() -> bool {
    libraries_present().is_ok() && CudaContext::device_count().map(|n| n > 0).unwrap_or(false)
}

fn libraries_present() -> CResult<()> {
    // SAFETY: each probe only tries to dlopen the library.
    unsafe {
        if !cudarc::driver::sys::is_culib_present() {
            return Err(CudaError::NoDriver);
        }
        if !cudarc::cublas::sys::is_culib_present() {
            return Err(CudaError::MissingLibrary("libcublas"));
        }
        if !cudarc::cublaslt::sys::is_culib_present() {
            return Err(CudaError::MissingLibrary("libcublasLt"));
        }
        if !cudarc::nvrtc::sys::is_culib_present() {
            return Err(CudaError::MissingLibrary("libnvrtc"));
        }
    }
    Ok(())
}

struct Kernels {
    embed_ln: CudaFunction,
    bias_residual_ln: CudaFunction,
    bias_act: CudaFunction,
    /// Generic attention for head sizes 8, 16, 32, 64.
    attn_generic: [(usize, CudaFunction); 4],
    attn_tc: CudaFunction,
    heads_dense_sparse: CudaFunction,
    colbert_norm: CudaFunction,
}

#[derive(Default)]
struct Staging {
    up: Option<PinnedHostSlice<u32>>,
    up_done: Option<CudaEvent>,
    down: Option<PinnedHostSlice<f32>>,
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

fn ptr<T>(s: &CudaSlice<T>, stream: &CudaStream) -> u64 {
    s.device_ptr(stream).0
}

impl CudaBackend {
    /// Opens device `device` (a typed error, never a panic, when there is no driver or GPU),
    /// compiles the kernels for its architecture with NVRTC and creates the cuBLAS handle.
    pub fn new(device: usize, precision: Precision) -> Result<Self, CudaError> {
        libraries_present()?;
        let available =
            CudaContext::device_count().map_err(CudaError::driver("cuDeviceGetCount"))? as usize;
        if device >= available {
            return Err(CudaError::NoDevice { requested: device, available });
        }
        let ctx = CudaContext::new(device)
            .map_err(CudaError::driver(format!("creating a context on device {device}")))?;
        // One stream orders every use of every buffer, so cudarc's per-buffer events are not needed.
        // SAFETY: all work of this backend is issued on `stream` alone.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(CudaError::driver("creating a stream"))?;
        let name = ctx.name().map_err(CudaError::driver("reading the device name"))?;
        let cc = ctx
            .compute_capability()
            .map_err(CudaError::driver("reading the compute capability"))?;
        if cc.0 < 8 {
            return Err(CudaError::Unsupported(format!(
                "{name} is sm_{}{}; bf16 tensor cores need sm_80 or newer",
                cc.0, cc.1
            )));
        }
        let sms = ctx
            .attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            )
            .map_err(CudaError::driver("reading the SM count"))? as usize;
        let k = load_kernels(&ctx, cc, precision)?;
        let blas = CudaBlas::new(stream.clone()).map_err(CudaError::cublas("cublasCreate"))?;
        let math = match precision {
            // No TF32, no reduced-precision reductions: fp32 mode is the parity reference.
            Precision::F32 => blas_sys::cublasMath_t::CUBLAS_PEDANTIC_MATH,
            Precision::Bf16 => blas_sys::cublasMath_t::CUBLAS_DEFAULT_MATH,
        };
        // SAFETY: valid handle.
        unsafe { blas_sys::cublasSetMathMode(*blas.handle(), math) }
            .result()
            .map_err(CudaError::cublas("cublasSetMathMode"))?;
        let attention = match std::env::var("TRIDENT_CUDA_ATTENTION").as_deref() {
            Ok("generic") => AttentionKernel::Generic,
            _ => AttentionKernel::TensorCore,
        };
        Ok(CudaBackend {
            ordinal: device,
            name,
            cc,
            sms,
            precision,
            attention,
            pool: Pool::new(stream.clone()),
            ctx,
            stream,
            blas,
            k,
            staging: Mutex::default(),
        })
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Chooses the bf16 attention kernel (the `TRIDENT_CUDA_ATTENTION=generic` variable does too).
    pub fn set_attention_kernel(&mut self, k: AttentionKernel) {
        self.attention = k;
    }

    pub fn attention_kernel(&self) -> AttentionKernel {
        self.attention
    }

    pub fn device_name(&self) -> &str {
        &self.name
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Makes this backend's context current on the calling thread: workers may call from a
    /// thread other than the one that created the backend, and raw cuBLAS/driver calls use the
    /// current context.
    fn bind(&self) -> CResult<()> {
        self.ctx
            .bind_to_thread()
            .map_err(CudaError::driver(format!("binding the context of cuda:{}", self.ordinal)))
    }

    /// Waits for all queued work; surfaces asynchronous kernel faults as a typed error.
    pub fn synchronize(&self, op: &str) -> CResult<()> {
        self.stream.synchronize().map_err(CudaError::driver(op.to_string()))
    }

    /// Bytes of device memory idle in the buffer pool.
    pub fn pooled_bytes(&self) -> usize {
        self.pool.idle_bytes()
    }

    fn alloc_act(&self, rows: usize, cols: usize, what: &str) -> CResult<CudaAct> {
        let buf = self.pool.get(rows * cols * self.precision.elem(), what)?;
        Ok(CudaAct { buf, wide: None, rows, cols })
    }

    /// An activation of the residual stream: with its fp32 copy in bf16 mode.
    fn alloc_stream(&self, rows: usize, cols: usize, what: &str) -> CResult<CudaAct> {
        let mut act = self.alloc_act(rows, cols, what)?;
        if self.precision == Precision::Bf16 {
            act.wide = Some(self.pool.get(rows * cols * 4, what)?);
        }
        Ok(act)
    }

    /// Device pointer to the fp32 values of a residual-stream activation.
    fn stream_f32(&self, a: &CudaAct, what: &str) -> CResult<u64> {
        match (&a.wide, self.precision) {
            (Some(w), _) => Ok(w.ptr()),
            (None, Precision::F32) => Ok(a.buf.ptr()),
            (None, Precision::Bf16) => Err(CudaError::Unsupported(format!(
                "{what}: the activation is not a LayerNorm output (no fp32 copy)"
            ))),
        }
    }

    /// Host f32 values → device buffer in the backend's precision.
    fn upload_values(&self, data: &[f32], what: &str) -> CResult<CudaSlice<u8>> {
        let bytes: Vec<u8> = match self.precision {
            Precision::F32 => data.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Precision::Bf16 => {
                data.iter().flat_map(|&x| half::bf16::from_f32(x).to_bits().to_le_bytes()).collect()
            }
        };
        self.stream.clone_htod(&bytes).map_err(CudaError::driver(format!("uploading {what}")))
    }

    fn upload_f32(&self, data: &[f32], what: &str) -> CResult<CudaSlice<f32>> {
        self.stream.clone_htod(data).map_err(CudaError::driver(format!("uploading {what}")))
    }

    /// Row-major `y[rows × n] = x[rows × k] · wᵀ` with `w` `[n × k]` (cuBLAS is column-major, so
    /// this is `yᵀ = w · xᵀ`: op(A) = wᵀ-as-stored, op(B) = x). `out_f32` writes fp32 output
    /// from bf16 inputs.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_raw(
        &self,
        x: u64,
        rows: usize,
        k: usize,
        w: u64,
        n: usize,
        y: u64,
        out_f32: bool,
        op: &str,
    ) -> CResult<()> {
        if rows == 0 || n == 0 {
            return Ok(());
        }
        self.bind()?;
        let dims = [rows, k, n];
        if dims.iter().any(|&d| d > i32::MAX as usize) {
            return Err(CudaError::Unsupported(format!(
                "{op}: GEMM dimensions {dims:?} exceed cuBLAS int range"
            )));
        }
        use blas_sys::cudaDataType_t::{CUDA_R_16BF, CUDA_R_32F};
        let (ab, c) = match self.precision {
            Precision::F32 => (CUDA_R_32F, CUDA_R_32F),
            Precision::Bf16 => (CUDA_R_16BF, if out_f32 { CUDA_R_32F } else { CUDA_R_16BF }),
        };
        let (alpha, beta) = (1.0f32, 0.0f32);
        // SAFETY: pointers are live device buffers of at least the sizes implied by the dims
        // (checked by the callers); alpha/beta are host scalars (default pointer mode).
        unsafe {
            cudarc::cublas::result::gemm_ex(
                *self.blas.handle(),
                blas_sys::cublasOperation_t::CUBLAS_OP_T,
                blas_sys::cublasOperation_t::CUBLAS_OP_N,
                n as i32,
                rows as i32,
                k as i32,
                &alpha as *const f32 as *const c_void,
                w as *const c_void,
                ab,
                k as i32,
                x as *const c_void,
                ab,
                k as i32,
                &beta as *const f32 as *const c_void,
                y as *mut c_void,
                c,
                n as i32,
                blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(CudaError::cublas(format!("cublasGemmEx ({op}: {rows}x{k} · {n}x{k}ᵀ)")))
    }

    fn gemm_linear(&self, x: &CudaAct, w: &CudaLinear, what: &str) -> CResult<CudaAct> {
        if x.cols != w.in_features {
            return Err(CudaError::Unsupported(format!(
                "{}: input has {} features, the weight expects {}",
                w.name, x.cols, w.in_features
            )));
        }
        let y = self.alloc_act(x.rows, w.out_features, what)?;
        self.gemm_raw(
            x.buf.ptr(),
            x.rows,
            x.cols,
            w.w_ptr,
            w.out_features,
            y.buf.ptr(),
            false,
            &w.name,
        )?;
        Ok(y)
    }

    /// Allocates a scratch device buffer from the pool (for benchmarks of raw GEMMs).
    pub fn scratch(&self, bytes: usize) -> CResult<DevBuf> {
        self.pool.get(bytes, "scratch")
    }

    fn check_row_features(&self, n: usize, what: &str) -> CResult<()> {
        if n == 0 || n > MAX_ROW_FEATURES {
            return Err(CudaError::Unsupported(format!(
                "{what}: {n} features (1..={MAX_ROW_FEATURES} supported)"
            )));
        }
        Ok(())
    }

    fn rows_cfg(rows: usize) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (row_blocks(rows), 1, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    fn staged_upload(&self, words: &[u32], dst: u64) -> CResult<()> {
        let mut st = self.staging.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = st.up_done.take() {
            e.synchronize().map_err(CudaError::driver("waiting for the previous batch upload"))?;
        }
        if st.up.as_ref().is_none_or(|p| p.len() < words.len()) {
            let cap = words.len().next_power_of_two().max(4096);
            // SAFETY: written below before any read.
            st.up = Some(
                unsafe { self.ctx.alloc_pinned_with_flags::<u32>(cap, 0) }
                    .map_err(CudaError::driver("allocating pinned upload buffer"))?,
            );
        }
        let pinned = st.up.as_mut().expect("allocated above");
        let host =
            pinned.as_mut_slice().map_err(CudaError::driver("mapping pinned upload buffer"))?;
        host[..words.len()].copy_from_slice(words);
        // SAFETY: dst has room for `words` (allocated by the caller); the pinned buffer is not
        // touched again until `up_done` has completed.
        unsafe { drv::memcpy_htod_async(dst, &host[..words.len()], self.stream.cu_stream()) }
            .map_err(CudaError::driver("copying batch tables to the device"))?;
        st.up_done = Some(
            self.stream.record_event(None).map_err(CudaError::driver("recording upload event"))?,
        );
        Ok(())
    }

    /// Copies `n` f32 from the device into the pinned buffer and hands it to `take` (which copies
    /// out what it needs: one host copy per output).
    fn staged_download<R>(&self, src: u64, n: usize, take: impl FnOnce(&[f32]) -> R) -> CResult<R> {
        if n == 0 {
            return Ok(take(&[]));
        }
        let mut st = self.staging.lock().unwrap_or_else(|e| e.into_inner());
        if st.down.as_ref().is_none_or(|p| p.len() < n) {
            let cap = n.next_power_of_two().max(4096);
            // SAFETY: written by the copy below before it is read.
            st.down = Some(
                unsafe { self.ctx.alloc_pinned_with_flags::<f32>(cap, 0) }
                    .map_err(CudaError::driver("allocating pinned download buffer"))?,
            );
        }
        let pinned = st.down.as_mut().expect("allocated above");
        let host =
            pinned.as_mut_slice().map_err(CudaError::driver("mapping pinned download buffer"))?;
        // SAFETY: src holds n f32 values; we synchronise before reading `host`.
        unsafe { drv::memcpy_dtoh_async(&mut host[..n], src, self.stream.cu_stream()) }
            .map_err(CudaError::driver("copying head outputs to the host"))?;
        self.synchronize("running the batch (kernels and copy back)")?;
        Ok(take(&host[..n]))
    }

    fn embed_impl(&self, batch: &CudaBatch, emb: &CudaEmbeddings) -> CResult<CudaAct> {
        let p = &batch.plan;
        if p.n_tokens > 0
            && (p.max_id as usize >= emb.vocab || p.max_pos as usize >= emb.max_positions)
        {
            return Err(CudaError::Unsupported(format!(
                "batch token id {} / position {} out of range (vocab {}, positions {})",
                p.max_id, p.max_pos, emb.vocab, emb.max_positions
            )));
        }
        let h = emb.norm.features;
        let out = self.alloc_stream(p.n_tokens, h, "embeddings")?;
        if p.n_tokens == 0 {
            return Ok(out);
        }
        let base = batch.buf.ptr();
        let ids = base + 4 * p.off.ids as u64;
        let pos = base + 4 * p.off.positions as u64;
        let (word, position, type0) = (
            ptr(&emb.word, &self.stream),
            ptr(&emb.position, &self.stream),
            ptr(&emb.type0, &self.stream),
        );
        let (gamma, beta) = (ptr(&emb.norm.gamma, &self.stream), ptr(&emb.norm.beta, &self.stream));
        let (o, n, hh) = (out.buf.ptr(), p.n_tokens as i32, h as i32);
        let o32 = out.wide.as_ref().map_or(0u64, DevBuf::ptr);
        launch!(
            self,
            "embed_ln",
            &self.k.embed_ln,
            Self::rows_cfg(p.n_tokens),
            &ids,
            &pos,
            &word,
            &position,
            &type0,
            &gamma,
            &beta,
            &emb.norm.eps,
            &o,
            &o32,
            &n,
            &hh
        )?;
        Ok(out)
    }

    fn linear_impl(&self, x: &CudaAct, w: &CudaLinear, act: Activation) -> CResult<CudaAct> {
        let y = self.gemm_linear(x, w, "linear output")?;
        if y.rows == 0 || y.cols == 0 {
            return Ok(y);
        }
        if self.precision == Precision::Bf16 && !y.cols.is_multiple_of(2) {
            return Err(CudaError::Unsupported(format!(
                "{}: odd output width {} in bf16 mode",
                w.name, y.cols
            )));
        }
        let (yp, bp, rows, cols, gelu) = (
            y.buf.ptr(),
            w.b_ptr,
            y.rows as i32,
            y.cols as i32,
            i32::from(act == Activation::Gelu),
        );
        let cfg = LaunchConfig {
            grid_dim: (elementwise_blocks(y.rows, 1, self.sms), 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        launch!(self, "bias_act", &self.k.bias_act, cfg, &yp, &bp, &rows, &cols, &gelu)?;
        Ok(y)
    }

    fn linear_residual_norm_impl(
        &self,
        x: &CudaAct,
        w: &CudaLinear,
        residual: &CudaAct,
        norm: &CudaNorm,
    ) -> CResult<CudaAct> {
        if x.cols != w.in_features {
            return Err(CudaError::Unsupported(format!(
                "{}: input has {} features, the weight expects {}",
                w.name, x.cols, w.in_features
            )));
        }
        let (rows, cols) = (x.rows, w.out_features);
        if residual.rows != rows || residual.cols != cols || norm.features != cols {
            return Err(CudaError::Unsupported(format!(
                "{}: output {rows}x{cols}, residual {}x{}, norm {} features",
                w.name, residual.rows, residual.cols, norm.features
            )));
        }
        let res = self.stream_f32(residual, &w.name)?;
        // The GEMM writes fp32 (in both modes); LayerNorm then writes the new stream: in place
        // in fp32 mode, a bf16 copy plus the fp32 values in place in bf16 mode.
        let y32 = self.pool.get(rows * cols * 4, "residual block output")?;
        let out = match self.precision {
            Precision::F32 => CudaAct { buf: y32, wide: None, rows, cols },
            Precision::Bf16 => {
                let buf = self.pool.get(rows * cols * 2, "residual stream (bf16)")?;
                CudaAct { buf, wide: Some(y32), rows, cols }
            }
        };
        if rows == 0 {
            return Ok(out);
        }
        let yp = self.stream_f32(&out, &w.name)?;
        self.gemm_raw(x.buf.ptr(), rows, x.cols, w.w_ptr, cols, yp, true, &w.name)?;
        let o16 = if out.wide.is_some() { out.buf.ptr() } else { yp };
        let o32 = if out.wide.is_some() { yp } else { 0u64 };
        let (gamma, beta) = (ptr(&norm.gamma, &self.stream), ptr(&norm.beta, &self.stream));
        let (n, h) = (rows as i32, cols as i32);
        launch!(
            self,
            "bias_residual_ln",
            &self.k.bias_residual_ln,
            Self::rows_cfg(rows),
            &yp,
            &w.b_ptr,
            &res,
            &gamma,
            &beta,
            &norm.eps,
            &o16,
            &o32,
            &n,
            &h
        )?;
        Ok(out)
    }

    fn attention_impl(&self, qkv: &CudaAct, batch: &CudaBatch, heads: usize) -> CResult<CudaAct> {
        let p = &batch.plan;
        if !qkv.cols.is_multiple_of(3) || qkv.rows != p.n_tokens {
            return Err(CudaError::Unsupported(format!(
                "attention: qkv is {}x{} for {} tokens",
                qkv.rows, qkv.cols, p.n_tokens
            )));
        }
        let h = qkv.cols / 3;
        if heads == 0 || !h.is_multiple_of(heads) {
            return Err(CudaError::Unsupported(format!(
                "attention: hidden {h} not divisible into {heads} heads"
            )));
        }
        let d = h / heads;
        let out = self.alloc_act(p.n_tokens, h, "attention output")?;
        if p.n_tiles == 0 {
            return Ok(out);
        }
        let base = batch.buf.ptr();
        let (q, o, hh) = (qkv.buf.ptr(), out.buf.ptr(), h as i32);
        let cu = base + 4 * p.off.cu_seqlens as u64;
        let tiles = base + 4 * p.off.tiles as u64;
        let scale = 1.0f32 / (d as f32).sqrt();
        if self.precision == Precision::Bf16
            && d == 64
            && self.attention == AttentionKernel::TensorCore
        {
            let scale_log2 = scale * std::f32::consts::LOG2_E;
            let cfg = LaunchConfig {
                grid_dim: (p.n_tiles as u32, heads as u32, 1),
                block_dim: (128, 1, 1),
                shared_mem_bytes: 0,
            };
            launch!(
                self,
                "attention_tc_bf16_d64",
                &self.k.attn_tc,
                cfg,
                &q,
                &o,
                &cu,
                &tiles,
                &hh,
                &scale_log2
            )?;
        } else {
            let f =
                self.k.attn_generic.iter().find(|(dd, _)| *dd == d).map(|(_, f)| f).ok_or_else(
                    || {
                        CudaError::Unsupported(format!(
                            "attention head size {d} (supported: 8, 16, 32, 64)"
                        ))
                    },
                )?;
            let cfg = LaunchConfig {
                grid_dim: (p.n_tiles as u32, heads as u32, 1),
                block_dim: (64, 1, 1),
                shared_mem_bytes: 0,
            };
            launch!(self, "attention (generic)", f, cfg, &q, &o, &cu, &tiles, &hh, &scale)?;
        }
        Ok(out)
    }

    fn heads_impl(
        &self,
        h: &CudaAct,
        batch: &CudaBatch,
        sparse: &CudaLinear,
        colbert: &CudaLinear,
        modes: Modes,
    ) -> CResult<HeadOutput> {
        let p = &batch.plan;
        let hid = h.cols;
        if h.rows != p.n_tokens {
            return Err(CudaError::Unsupported(format!(
                "heads: hidden state has {} rows for {} tokens",
                h.rows, p.n_tokens
            )));
        }
        let c = colbert.out_features;
        if modes.sparse && (sparse.out_features != 1 || sparse.in_features != hid) {
            return Err(CudaError::Unsupported(format!(
                "{}: expected [1 x {hid}], got [{} x {}]",
                sparse.name, sparse.out_features, sparse.in_features
            )));
        }
        if modes.colbert {
            if colbert.in_features != hid {
                return Err(CudaError::Unsupported(format!(
                    "{}: expected [C x {hid}], got [{c} x {}]",
                    colbert.name, colbert.in_features
                )));
            }
            self.check_row_features(c, &colbert.name)?;
        }
        let n_dense = if modes.dense { p.n_seqs * hid } else { 0 };
        let n_tw = if modes.sparse { p.n_tokens } else { 0 };
        let n_col = if modes.colbert { p.n_colbert_rows * c } else { 0 };
        let total = n_dense + n_tw + n_col;
        let mut out = HeadOutput { colbert_dim: c, ..Default::default() };
        if total == 0 || p.n_tokens == 0 {
            return Ok(out);
        }
        let res = self.pool.get(4 * total, "head outputs")?;
        let dense_p = res.ptr();
        let tw_p = dense_p + 4 * n_dense as u64;
        let col_p = tw_p + 4 * n_tw as u64;
        let base = batch.buf.ptr();
        let hp = h.buf.ptr();
        if modes.dense || modes.sparse {
            let h32 = self.stream_f32(h, "heads")?;
            let (ts, cu) = (base + 4 * p.off.tok_seq as u64, base + 4 * p.off.cu_seqlens as u64);
            let (ws, bs) = (sparse.w32_ptr, sparse.b_ptr);
            let (n, hh, wd, wsp) =
                (p.n_tokens as i32, hid as i32, i32::from(modes.dense), i32::from(modes.sparse));
            launch!(
                self,
                "heads_dense_sparse",
                &self.k.heads_dense_sparse,
                Self::rows_cfg(p.n_tokens),
                &h32,
                &ts,
                &cu,
                &ws,
                &bs,
                &dense_p,
                &tw_p,
                &n,
                &hh,
                &wd,
                &wsp
            )?;
        }
        let _proj;
        if modes.colbert && p.n_colbert_rows > 0 {
            let proj = self.pool.get(4 * p.n_tokens * c, "colbert projection")?;
            self.gemm_raw(hp, p.n_tokens, hid, colbert.w_ptr, c, proj.ptr(), true, &colbert.name)?;
            let (pp, bp, rows) = (proj.ptr(), colbert.b_ptr, base + 4 * p.off.colbert_rows as u64);
            let (nr, cc) = (p.n_colbert_rows as i32, c as i32);
            launch!(
                self,
                "colbert_norm",
                &self.k.colbert_norm,
                Self::rows_cfg(p.n_colbert_rows),
                &pp,
                &bp,
                &rows,
                &col_p,
                &nr,
                &cc
            )?;
            _proj = proj;
        }
        let cu = &batch.cu_seqlens;
        self.staged_download(dense_p, total, |all| {
            out.dense = all[..n_dense].to_vec();
            out.token_weights = all[n_dense..n_dense + n_tw].to_vec();
            if modes.colbert {
                // Straight from the pinned buffer into each document's own vector: at real
                // shape this is 4 KiB per token, and an intermediate copy cost more than the
                // whole forward pass.
                let col = &all[n_dense + n_tw..];
                // Row offset of sequence i's first ColBERT row is cu[i] - i (one CLS per sequence).
                let seq = |i: usize| {
                    let start = (cu[i] as usize - i) * c;
                    col[start..start + (cu[i + 1] - cu[i]) as usize * c - c].to_vec()
                };
                out.colbert = split_parallel(cu.len() - 1, col.len(), seq);
            }
        })?;
        Ok(out)
    }
}

/// `(0..n).map(f)` on several threads when `bytes` is large enough to pay for them: copying the
/// ColBERT rows out of the pinned buffer is memory-bound and serial it took ~30 % of a batch.
fn split_parallel<F: Fn(usize) -> Vec<f32> + Sync>(n: usize, floats: usize, f: F) -> Vec<Vec<f32>> {
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get()).min(8);
    if threads < 2 || n < 2 || floats < (1 << 20) {
        return (0..n).map(f).collect();
    }
    let per = n.div_ceil(threads);
    std::thread::scope(|s| {
        let f = &f;
        let parts: Vec<_> = (0..n)
            .step_by(per)
            .map(|lo| s.spawn(move || (lo..(lo + per).min(n)).map(f).collect::<Vec<_>>()))
            .collect();
        parts.into_iter().flat_map(|h| h.join().expect("copy thread panicked")).collect()
    })
}

fn load_kernels(ctx: &Arc<CudaContext>, cc: (i32, i32), precision: Precision) -> CResult<Kernels> {
    // NVRTC runs on the host, one thread per kernel file.
    let cubin_arch = arch_for(cc.0, cc.1, Output::Cubin);
    let cubins: Vec<CResult<Arc<Vec<u8>>>> = std::thread::scope(|s| {
        let handles: Vec<_> = KERNEL_FILES
            .iter()
            .map(|(file, _)| {
                let arch = cubin_arch.as_str();
                s.spawn(move || compile_kernel_cached(file, arch, Output::Cubin))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(CudaError::Unsupported("NVRTC thread panicked".into())))
            })
            .collect()
    });
    let mut compiled = HashMap::new();
    for ((file, _), r) in KERNEL_FILES.iter().zip(cubins) {
        compiled.insert(*file, r?);
    }
    let module = |file: &str| -> CResult<Arc<cudarc::driver::CudaModule>> {
        // CUBIN first (minor-version compatible); PTX for the driver's JIT if that will not load.
        let cubin = compiled[file].as_ref().clone();
        match ctx.load_module(cudarc::nvrtc::Ptx::from_binary(cubin)) {
            Ok(m) => Ok(m),
            Err(cubin_err) => {
                let ptx =
                    compile_kernel_cached(file, &arch_for(cc.0, cc.1, Output::Ptx), Output::Ptx)?;
                let ptx = String::from_utf8_lossy(&ptx).into_owned();
                ctx.load_module(cudarc::nvrtc::Ptx::from_src(ptx)).map_err(|e| CudaError::Driver {
                    op: format!("loading module {file} (CUBIN failed too: {cubin_err})"),
                    source: e,
                })
            }
        }
    };
    let func = |m: &Arc<cudarc::driver::CudaModule>, name: String| -> CResult<CudaFunction> {
        m.load_function(&name).map_err(CudaError::driver(format!("loading kernel {name}")))
    };
    let s = precision.suffix();
    let ln = module("layernorm.cu")?;
    let ew = module("elementwise.cu")?;
    let at = module("attention.cu")?;
    let tc = module("attention_tc.cu")?;
    let hd = module("heads.cu")?;
    Ok(Kernels {
        embed_ln: func(&ln, format!("embed_ln_{s}"))?,
        bias_residual_ln: func(&ln, format!("bias_residual_ln_{s}"))?,
        bias_act: func(&ew, format!("bias_act_{s}"))?,
        attn_generic: [
            (8, func(&at, format!("attention_{s}_d8"))?),
            (16, func(&at, format!("attention_{s}_d16"))?),
            (32, func(&at, format!("attention_{s}_d32"))?),
            (64, func(&at, format!("attention_{s}_d64"))?),
        ],
        attn_tc: func(&tc, "attention_tc_bf16_d64".into())?,
        heads_dense_sparse: func(&hd, "heads_dense_sparse".into())?,
        colbert_norm: func(&hd, "colbert_norm".into())?,
    })
}

impl Backend for CudaBackend {
    type Act = CudaAct;
    type Batch = CudaBatch;
    type Linear = CudaLinear;
    type Norm = CudaNorm;
    type Embeddings = CudaEmbeddings;

    fn describe(&self) -> String {
        let attn = match (self.precision, self.attention) {
            (Precision::Bf16, AttentionKernel::TensorCore) => ", tensor-core attention",
            _ => "",
        };
        format!(
            "cuda:{} {} (sm_{}{}, {} SMs) {}{attn}",
            self.ordinal,
            self.name,
            self.cc.0,
            self.cc.1,
            self.sms,
            self.precision.suffix()
        )
    }

    fn load_linear(&self, name: &str, parts: &[LinearParts]) -> BResult<CudaLinear> {
        let Some(first) = parts.first() else {
            return Err(CudaError::Unsupported(format!("{name}: no weight parts")).into());
        };
        let in_f = first.weight.shape().last().copied().unwrap_or(0);
        let mut w = Vec::new();
        let mut b = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            let ws = part.weight.shape();
            let out_i = ws.first().copied().unwrap_or(0);
            if ws.len() != 2 || ws[1] != in_f || part.bias.len() != out_i {
                return Err(CudaError::Unsupported(format!(
                    "{name} part {i}: weight {:?} / bias {:?}, expected [out x {in_f}] / [out]",
                    ws,
                    part.bias.shape()
                ))
                .into());
            }
            w.extend_from_slice(part.weight.data());
            b.extend_from_slice(part.bias.data());
        }
        let out_f = b.len();
        let wd = self.upload_values(&w, &format!("{name}.weight"))?;
        let bd = self.upload_f32(&b, &format!("{name}.bias"))?;
        // A single-output head keeps fp32 weights (in fp32 mode they are the weights themselves).
        let w32 = match (out_f, self.precision) {
            (1, Precision::Bf16) => Some(self.upload_f32(&w, &format!("{name}.weight (fp32)"))?),
            _ => None,
        };
        let w_ptr = ptr(&wd, &self.stream);
        Ok(CudaLinear {
            name: name.to_string(),
            w_ptr,
            b_ptr: ptr(&bd, &self.stream),
            w32_ptr: w32.as_ref().map_or(w_ptr, |w| ptr(w, &self.stream)),
            _w32: w32,
            _w: wd,
            _b: bd,
            out_features: out_f,
            in_features: in_f,
        })
    }

    fn load_norm(
        &self,
        name: &str,
        gamma: &HostTensor,
        beta: &HostTensor,
        eps: f32,
    ) -> BResult<CudaNorm> {
        let n = gamma.len();
        if beta.len() != n {
            return Err(CudaError::Unsupported(format!(
                "{name}: gamma has {n} values, beta {}",
                beta.len()
            ))
            .into());
        }
        self.check_row_features(n, name)?;
        Ok(CudaNorm {
            gamma: self.upload_f32(gamma.data(), &format!("{name}.weight"))?,
            beta: self.upload_f32(beta.data(), &format!("{name}.bias"))?,
            eps,
            features: n,
        })
    }

    fn load_embeddings(
        &self,
        word: &HostTensor,
        position: &HostTensor,
        token_type: &HostTensor,
        norm: CudaNorm,
    ) -> BResult<CudaEmbeddings> {
        let h = norm.features;
        for (what, t) in [
            ("word_embeddings", word),
            ("position_embeddings", position),
            ("token_type_embeddings", token_type),
        ] {
            if t.shape().len() != 2 || t.shape()[1] != h || t.shape()[0] == 0 {
                return Err(CudaError::Unsupported(format!(
                    "{what}: shape {:?}, expected [rows x {h}]",
                    t.shape()
                ))
                .into());
            }
        }
        Ok(CudaEmbeddings {
            word: self.upload_values(word.data(), "word_embeddings")?,
            position: self.upload_values(position.data(), "position_embeddings")?,
            type0: self.upload_values(&token_type.data()[..h], "token_type_embeddings[0]")?,
            vocab: word.shape()[0],
            max_positions: position.shape()[0],
            norm,
        })
    }

    fn upload_batch(&self, batch: &PackedBatch) -> BResult<CudaBatch> {
        self.bind()?;
        let mut plan = BatchPlan::new(batch).map_err(CudaError::Unsupported)?;
        let buf = self.pool.get(4 * plan.words.len().max(1), "batch tables")?;
        if !plan.words.is_empty() {
            self.staged_upload(&plan.words, buf.ptr())?;
        }
        plan.words = Vec::new();
        Ok(CudaBatch { buf, plan, cu_seqlens: batch.cu_seqlens.clone() })
    }

    fn embed(&self, batch: &CudaBatch, emb: &CudaEmbeddings) -> BResult<CudaAct> {
        self.bind()?;
        Ok(self.embed_impl(batch, emb)?)
    }

    fn linear(&self, x: &CudaAct, w: &CudaLinear, act: Activation) -> BResult<CudaAct> {
        self.bind()?;
        Ok(self.linear_impl(x, w, act)?)
    }

    fn linear_residual_norm(
        &self,
        x: &CudaAct,
        w: &CudaLinear,
        residual: &CudaAct,
        norm: &CudaNorm,
    ) -> BResult<CudaAct> {
        self.bind()?;
        Ok(self.linear_residual_norm_impl(x, w, residual, norm)?)
    }

    fn attention(&self, qkv: &CudaAct, batch: &CudaBatch, heads: usize) -> BResult<CudaAct> {
        self.bind()?;
        Ok(self.attention_impl(qkv, batch, heads)?)
    }

    fn heads(
        &self,
        h: &CudaAct,
        batch: &CudaBatch,
        sparse: &CudaLinear,
        colbert: &CudaLinear,
        modes: Modes,
    ) -> BResult<HeadOutput> {
        self.bind()?;
        Ok(self.heads_impl(h, batch, sparse, colbert, modes)?)
    }
}

impl CudaAct {
    /// Copies the activation to the host as f32 (tests and debugging).
    pub fn to_host(&self, be: &CudaBackend) -> Result<Vec<f32>, CudaError> {
        be.bind()?;
        let n = self.rows * self.cols;
        let mut raw = vec![0u8; n * be.precision.elem()];
        if n > 0 {
            // SAFETY: the buffer holds n elements; synchronised right after.
            unsafe { drv::memcpy_dtoh_async(&mut raw[..], self.buf.ptr(), be.stream.cu_stream()) }
                .map_err(CudaError::driver("copying an activation to the host"))?;
            be.synchronize("copying an activation to the host")?;
        }
        Ok(match be.precision {
            Precision::F32 => {
                raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
            }
            Precision::Bf16 => raw
                .chunks_exact(2)
                .map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
                .collect(),
        })
    }

    /// Uploads host f32 values as an activation `[rows × cols]` (tests of single ops).
    pub fn from_host(
        be: &CudaBackend,
        data: &[f32],
        rows: usize,
        cols: usize,
    ) -> Result<CudaAct, CudaError> {
        assert_eq!(data.len(), rows * cols, "activation data/shape mismatch");
        let mut act = be.alloc_stream(rows, cols, "uploaded activation")?;
        if let Some(w) = act.wide.take() {
            // The exact values as the fp32 copy, so uploaded rows can stand for the stream.
            let tmp = be.upload_f32(data, "activation (fp32)")?;
            if !data.is_empty() {
                // SAFETY: both buffers hold 4·len bytes; stream-ordered.
                unsafe {
                    drv::memcpy_dtod_async(
                        w.ptr(),
                        ptr(&tmp, &be.stream),
                        4 * data.len(),
                        be.stream.cu_stream(),
                    )
                }
                .map_err(CudaError::driver("copying an activation"))?;
                be.synchronize("copying an activation")?;
            }
            act.wide = Some(w);
        }
        let tmp = be.upload_values(data, "activation")?;
        if !data.is_empty() {
            let bytes = data.len() * be.precision.elem();
            // SAFETY: both buffers hold `bytes` bytes; stream-ordered.
            unsafe {
                drv::memcpy_dtod_async(
                    act.buf.ptr(),
                    ptr(&tmp, &be.stream),
                    bytes,
                    be.stream.cu_stream(),
                )
            }
            .map_err(CudaError::driver("copying an activation"))?;
            be.synchronize("copying an activation")?;
        }
        Ok(act)
    }
}

#[cfg(test)]
mod split_tests {
    #[test]
    fn split_parallel_keeps_order() {
        let small = super::split_parallel(5, 10, |i| vec![i as f32]);
        let big = super::split_parallel(37, 1 << 21, |i| vec![i as f32; 3]);
        assert_eq!(small, (0..5).map(|i| vec![i as f32]).collect::<Vec<_>>());
        assert_eq!(big.len(), 37);
        assert!(big.iter().enumerate().all(|(i, v)| v == &vec![i as f32; 3]));
    }
}
