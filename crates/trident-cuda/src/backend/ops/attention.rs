//! Packed varlen attention (`kernels/attention.cu`, `kernels/attention_tc.cu`) over the
//! batch's query tiles: the mma.sync bf16 tensor-core kernel for head size 64 in bf16 mode
//! (unless the generic one was chosen), the fp32-arithmetic tiled kernel otherwise.

use cudarc::driver::{LaunchConfig, PushKernelArg};

use crate::backend::{AttentionKernel, CudaAct, CudaBackend, CudaBatch, Precision};
use crate::error::{CResult, CudaError};

impl CudaBackend {
    pub(in crate::backend) fn attention_impl(
        &self,
        qkv: &CudaAct,
        batch: &CudaBatch,
        heads: usize,
    ) -> CResult<CudaAct> {
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
}
