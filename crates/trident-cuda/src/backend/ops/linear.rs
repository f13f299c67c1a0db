//! A linear layer (`kernels/elementwise.cu`): the cuBLAS GEMM, then bias and optionally exact
//! GELU in place in one element-wise pass.

use cudarc::driver::{LaunchConfig, PushKernelArg};
use trident_model::Activation;

use crate::backend::{CudaAct, CudaBackend, CudaLinear, Precision};
use crate::error::{CResult, CudaError};
use crate::plan::elementwise_blocks;

impl CudaBackend {
    pub(in crate::backend) fn linear_impl(
        &self,
        x: &CudaAct,
        w: &CudaLinear,
        act: Activation,
    ) -> CResult<CudaAct> {
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
}
