//! trident-cuda: the CUDA backend of trident's XLM-R encoder graph (`trident_model::Backend`).
//!
//! GEMMs run on cuBLAS (bf16 inputs with fp32 accumulation, or pure fp32 for parity checks);
//! embedding + LayerNorm, bias + residual + LayerNorm, bias + exact GELU, packed varlen
//! attention (tensor cores in bf16) and the fused BGE-M3 heads are trident's own kernels in
//! `kernels/*.cu`, compiled at start-up by NVRTC for the device's architecture. CUDA is loaded
//! dynamically, so this crate builds and its tests pass on machines without CUDA.

pub mod backend;
pub mod compile;
pub mod error;
pub mod plan;
pub mod pool;

pub use backend::{cuda_available, AttentionKernel, CudaAct, CudaBackend, CudaOptions, Precision};
pub use error::CudaError;
