//! The LayerNorm ops (`kernels/layernorm.cu`): the embedding sum with its LayerNorm, and a
//! layer's output GEMM followed by bias + residual + LayerNorm. Both write the residual stream:
//! the activation in the backend's precision plus, in bf16 mode, its fp32 copy.

use cudarc::driver::PushKernelArg;

use crate::backend::{
    ptr, CudaAct, CudaBackend, CudaBatch, CudaEmbeddings, CudaLinear, CudaNorm, Precision,
};
use crate::error::{CResult, CudaError};
use crate::pool::DevBuf;

impl CudaBackend {
    pub(in crate::backend) fn embed_impl(
        &self,
        batch: &CudaBatch,
        emb: &CudaEmbeddings,
    ) -> CResult<CudaAct> {
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

    pub(in crate::backend) fn linear_residual_norm_impl(
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
}
