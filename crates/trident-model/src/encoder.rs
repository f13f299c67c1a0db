//! The XLM-R encoder graph with the BGE-M3 heads, written once against `Backend`, and the host
//! post-processing of the head outputs into `Embedding`s.

use trident_core::{Embedding, Modes, TokenizedDoc};

use crate::backend::{Activation, Backend, LinearParts, PackedBatch};
use crate::checkpoint::Checkpoint;
use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::special::SpecialIds;

struct Layer<B: Backend> {
    qkv: B::Linear,
    attn_out: B::Linear,
    attn_norm: B::Norm,
    ffn_in: B::Linear,
    ffn_out: B::Linear,
    out_norm: B::Norm,
}

pub struct Encoder<B: Backend> {
    backend: B,
    config: ModelConfig,
    special: SpecialIds,
    embeddings: B::Embeddings,
    layers: Vec<Layer<B>>,
    sparse: B::Linear,
    colbert: B::Linear,
    colbert_dim: usize,
}

fn linear(ckpt: &Checkpoint, name: &str) -> Result<LinearParts, ModelError> {
    Ok(LinearParts {
        weight: ckpt.tensor(&format!("{name}.weight"))?.clone(),
        bias: ckpt.tensor(&format!("{name}.bias"))?.clone(),
    })
}

impl<B: Backend> Encoder<B> {
    /// Uploads the checkpoint's weights to the backend.
    pub fn new(ckpt: &Checkpoint, backend: B) -> Result<Self, ModelError> {
        let c = &ckpt.config;
        let eps = c.layer_norm_eps as f32;
        let norm = |name: &str| -> Result<B::Norm, ModelError> {
            let g = ckpt.tensor(&format!("{name}.weight"))?;
            let b = ckpt.tensor(&format!("{name}.bias"))?;
            Ok(backend.load_norm(name, g, b, eps)?)
        };
        let emb_norm = norm("embeddings.LayerNorm")?;
        let embeddings = backend.load_embeddings(
            ckpt.tensor("embeddings.word_embeddings.weight")?,
            ckpt.tensor("embeddings.position_embeddings.weight")?,
            ckpt.tensor("embeddings.token_type_embeddings.weight")?,
            emb_norm,
        )?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for l in 0..c.num_hidden_layers {
            let p = format!("encoder.layer.{l}");
            let qkv_parts = [
                linear(ckpt, &format!("{p}.attention.self.query"))?,
                linear(ckpt, &format!("{p}.attention.self.key"))?,
                linear(ckpt, &format!("{p}.attention.self.value"))?,
            ];
            layers.push(Layer {
                qkv: backend.load_linear(&format!("{p}.attention.self.qkv"), &qkv_parts)?,
                attn_out: backend.load_linear(
                    &format!("{p}.attention.output.dense"),
                    &[linear(ckpt, &format!("{p}.attention.output.dense"))?],
                )?,
                attn_norm: norm(&format!("{p}.attention.output.LayerNorm"))?,
                ffn_in: backend.load_linear(
                    &format!("{p}.intermediate.dense"),
                    &[linear(ckpt, &format!("{p}.intermediate.dense"))?],
                )?,
                ffn_out: backend.load_linear(
                    &format!("{p}.output.dense"),
                    &[linear(ckpt, &format!("{p}.output.dense"))?],
                )?,
                out_norm: norm(&format!("{p}.output.LayerNorm"))?,
            });
        }
        let sparse = backend.load_linear("sparse_linear", &[linear(ckpt, "sparse")?])?;
        let colbert = backend.load_linear("colbert_linear", &[linear(ckpt, "colbert")?])?;
        Ok(Encoder {
            backend,
            config: c.clone(),
            special: ckpt.special_ids,
            embeddings,
            layers,
            sparse,
            colbert,
            colbert_dim: ckpt.colbert_dim(),
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The ids excluded from lexical weights (defaults to the checkpoint directory's tokenizer).
    pub fn special_ids(&self) -> SpecialIds {
        self.special
    }

    /// Overrides the ids excluded from lexical weights, e.g. with `Tokenizer::special_ids()`.
    pub fn set_special_ids(&mut self, ids: SpecialIds) {
        self.special = ids;
    }

    pub fn colbert_dim(&self) -> usize {
        self.colbert_dim
    }

    fn validate(&self, docs: &[TokenizedDoc]) -> Result<(), ModelError> {
        let max_len = self.config.max_sequence_length();
        for (i, d) in docs.iter().enumerate() {
            if d.ids.is_empty() {
                return Err(ModelError::Input(format!(
                    "document {i} has no token ids (expected at least <s>)"
                )));
            }
            if d.ids.len() > max_len {
                return Err(ModelError::Input(format!(
                    "document {i} has {} tokens; the model's positions allow at most {max_len} (max_position_embeddings {} − 2): truncate with a smaller max length",
                    d.ids.len(),
                    self.config.max_position_embeddings
                )));
            }
            if let Some(&bad) = d.ids.iter().find(|&&t| t as usize >= self.config.vocab_size) {
                return Err(ModelError::Input(format!(
                    "document {i} has token id {bad}, outside the vocabulary of {} (tokenizer and model disagree)",
                    self.config.vocab_size
                )));
            }
        }
        Ok(())
    }

    /// One forward pass over a packed batch; only requested modes are computed. Results are in
    /// input order.
    pub fn encode(
        &self,
        docs: &[TokenizedDoc],
        modes: Modes,
    ) -> Result<Vec<Embedding>, ModelError> {
        self.validate(docs)?;
        let mut out: Vec<Embedding> = docs
            .iter()
            .map(|d| Embedding {
                tokens: d.ids.len(),
                truncated: d.truncated,
                dense: None,
                sparse: None,
                colbert: None,
                colbert_dim: self.colbert_dim,
            })
            .collect();
        if docs.is_empty() || !modes.any() {
            return Ok(out);
        }
        let seqs: Vec<&[u32]> = docs.iter().map(|d| d.ids.as_slice()).collect();
        let packed = PackedBatch::new(&seqs, self.config.pad_token_id);
        let b = &self.backend;
        let batch = b.upload_batch(&packed)?;
        let mut x = b.embed(&batch, &self.embeddings)?;
        let heads = self.config.num_attention_heads;
        for l in &self.layers {
            let qkv = b.linear(&x, &l.qkv, Activation::None)?;
            let ctx = b.attention(&qkv, &batch, heads)?;
            drop(qkv);
            let a = b.linear_residual_norm(&ctx, &l.attn_out, &x, &l.attn_norm)?;
            drop(ctx);
            let f = b.linear(&a, &l.ffn_in, Activation::Gelu)?;
            x = b.linear_residual_norm(&f, &l.ffn_out, &a, &l.out_norm)?;
        }
        let h = b.heads(&x, &batch, &self.sparse, &self.colbert, modes)?;
        self.post_process(&packed, h, modes, &mut out)?;
        Ok(out)
    }

    fn post_process(
        &self,
        packed: &PackedBatch,
        mut h: crate::backend::HeadOutput,
        modes: Modes,
        out: &mut [Embedding],
    ) -> Result<(), ModelError> {
        let hidden = self.config.hidden_size;
        let n = packed.n_seqs();
        let bad = |what: &str, got: usize, want: usize| {
            ModelError::Backend(crate::BackendError::new(
                "encoder",
                "heads",
                format!("{what} has {got} values, expected {want}"),
            ))
        };
        if modes.dense && h.dense.len() != n * hidden {
            return Err(bad("dense output", h.dense.len(), n * hidden));
        }
        if modes.sparse && h.token_weights.len() != packed.n_tokens() {
            return Err(bad("sparse token weights", h.token_weights.len(), packed.n_tokens()));
        }
        let cdim = h.colbert_dim;
        if modes.colbert {
            if h.colbert.len() != n {
                return Err(bad("colbert output (sequences)", h.colbert.len(), n));
            }
            for (i, c) in h.colbert.iter().enumerate() {
                let want = (packed.seq_range(i).len() - 1) * cdim;
                if c.len() != want {
                    return Err(bad(&format!("colbert output of sequence {i}"), c.len(), want));
                }
            }
        }
        let excluded = self.special.excluded();
        for (i, e) in out.iter_mut().enumerate() {
            let r = packed.seq_range(i);
            if modes.dense {
                e.dense = Some(h.dense[i * hidden..(i + 1) * hidden].to_vec());
            }
            if modes.sparse {
                e.sparse = Some(lexical_weights(
                    &packed.ids[r.clone()],
                    &h.token_weights[r.clone()],
                    &excluded,
                ));
            }
            if modes.colbert {
                e.colbert = Some(std::mem::take(&mut h.colbert[i]));
                e.colbert_dim = cdim;
            }
        }
        Ok(())
    }
}

/// Max of the per-token weights per token id, skipping specials and non-positive weights, in
/// order of first positive occurrence (SPEC §5.2).
pub fn lexical_weights(ids: &[u32], weights: &[f32], excluded: &[u32]) -> Vec<(u32, f32)> {
    let mut out: Vec<(u32, f32)> = Vec::new();
    let mut index = std::collections::HashMap::new();
    for (&id, &w) in ids.iter().zip(weights) {
        if excluded.contains(&id) || w <= 0.0 {
            continue;
        }
        match index.get(&id) {
            Some(&k) => {
                let slot: &mut (u32, f32) = &mut out[k];
                if w > slot.1 {
                    slot.1 = w;
                }
            }
            None => {
                index.insert(id, out.len());
                out.push((id, w));
            }
        }
    }
    out
}

/// Object-safe view used by workers (cluster/server), so they need not be generic.
pub trait Embedder: Send {
    fn encode(&self, docs: &[TokenizedDoc], modes: Modes) -> Result<Vec<Embedding>, ModelError>;
    fn describe(&self) -> String;
    fn hidden_size(&self) -> usize;
}

impl<B: Backend> Embedder for Encoder<B> {
    fn encode(&self, docs: &[TokenizedDoc], modes: Modes) -> Result<Vec<Embedding>, ModelError> {
        Encoder::encode(self, docs, modes)
    }

    fn describe(&self) -> String {
        format!(
            "{} · {} layers × {} hidden, {} heads",
            self.backend.describe(),
            self.config.num_hidden_layers,
            self.config.hidden_size,
            self.config.num_attention_heads
        )
    }

    fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_weights_take_max_and_skip_specials() {
        let ids = [0, 7, 9, 7, 3, 9, 2];
        let w = [5.0, 0.5, 0.0, 0.8, 1.0, 0.25, 2.0];
        assert_eq!(lexical_weights(&ids, &w, &[0, 2, 1, 3]), vec![(7, 0.8), (9, 0.25)]);
    }
}
