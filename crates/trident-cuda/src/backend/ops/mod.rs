//! The ops, one file per kernel family: `norm.rs` (embeddings + LayerNorm, GEMM + bias +
//! residual + LayerNorm), `linear.rs` (GEMM + bias + optional GELU), `attention.rs` (packed
//! varlen attention, tensor-core or generic) and `heads.rs` (the fused BGE-M3 heads and the copy
//! of their outputs to the host). This file holds what they share.

use cudarc::driver::LaunchConfig;

use super::CudaBackend;
use crate::error::{CResult, CudaError};
use crate::plan::{row_blocks, MAX_ROW_FEATURES};

mod attention;
mod heads;
mod linear;
mod norm;

impl CudaBackend {
    pub(super) fn check_row_features(&self, n: usize, what: &str) -> CResult<()> {
        if n == 0 || n > MAX_ROW_FEATURES {
            return Err(CudaError::Unsupported(format!(
                "{what}: {n} features (1..={MAX_ROW_FEATURES} supported)"
            )));
        }
        Ok(())
    }

    pub(super) fn rows_cfg(rows: usize) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (row_blocks(rows), 1, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        }
    }
}
