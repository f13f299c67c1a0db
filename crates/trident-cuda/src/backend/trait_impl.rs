//! `impl trident_model::Backend for CudaBackend`: the description, weight loading (shapes
//! checked, uploaded in the backend's precision; biases, norms and the one-output sparse head
//! in fp32), the batch upload, and the op entry points, each binding the context to the
//! calling thread before running the op in `ops/`.

use trident_core::Modes;
use trident_model::backend::BResult;
use trident_model::{Activation, Backend, HeadOutput, HostTensor, LinearParts, PackedBatch};

use super::{
    ptr, AttentionKernel, CudaAct, CudaBackend, CudaBatch, CudaEmbeddings, CudaLinear, CudaNorm,
    Precision,
};
use crate::error::CudaError;
use crate::plan::BatchPlan;

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
            w.extend_from_slice(&part.weight.values());
            b.extend_from_slice(&part.bias.values());
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
            gamma: self.upload_f32(&gamma.values(), &format!("{name}.weight"))?,
            beta: self.upload_f32(&beta.values(), &format!("{name}.bias"))?,
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
            word: self.upload_values(&word.values(), "word_embeddings")?,
            position: self.upload_values(&position.values(), "position_embeddings")?,
            type0: self.upload_values(&token_type.values()[..h], "token_type_embeddings[0]")?,
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
