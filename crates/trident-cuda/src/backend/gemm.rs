//! The cuBLAS GEMMs: `gemm_raw` (row-major `x · wᵀ` through `cublasGemmEx`, bf16 or fp32
//! inputs, fp32 compute; public for the GEMM benchmark) and `gemm_linear` (a linear layer's
//! GEMM into a fresh activation, shapes checked).

use std::ffi::c_void;

use cudarc::cublas::sys as blas_sys;

use super::{CudaAct, CudaBackend, CudaLinear, Precision};
use crate::error::{CResult, CudaError};

impl CudaBackend {
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

    pub(super) fn gemm_linear(&self, x: &CudaAct, w: &CudaLinear, what: &str) -> CResult<CudaAct> {
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
}
