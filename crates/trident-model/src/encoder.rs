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
    /// MCLS: a CLS token inserted every this many tokens (see [`Encoder::set_mcls_every`]).
    mcls_every: Option<usize>,
    /// MCLS: the `[I; 0]` / `[0; 1]` head that returns final states with their norm.
    mcls_head: Option<B::Linear>,
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
        let sparse = backend.load_head("sparse_linear", &[linear(ckpt, "sparse")?])?;
        let colbert = backend.load_head("colbert_linear", &[linear(ckpt, "colbert")?])?;
        Ok(Encoder {
            backend,
            config: c.clone(),
            special: ckpt.special_ids,
            embeddings,
            layers,
            sparse,
            colbert,
            colbert_dim: ckpt.colbert_dim(),
            mcls_every: None,
            mcls_head: None,
        })
    }

    /// MCLS (the BGE-M3 paper's "multiple CLS"), for models without long-document training:
    /// a CLS token is inserted after every `every` tokens of a document (`<s> t1..tN <s>
    /// tN+1..t2N <s> … </s>`, none right before `</s>`), and the dense vector is the
    /// L2-normalised mean of the final states of all CLS positions (the first included).
    /// Sparse weights and ColBERT rows come from the same forward pass with the inserted
    /// positions left out (the CLS id is excluded from lexical weights anyway), so a document
    /// keeps its number of ColBERT rows; their values see the extra tokens through attention.
    /// The inserted tokens take positions: a document of L tokens needs L + ⌈(L−2)/every⌉ − 1
    /// of the model's positions. `None` turns it off (the default).
    pub fn set_mcls_every(&mut self, every: Option<usize>) -> Result<(), ModelError> {
        if every == Some(0) {
            return Err(ModelError::Input("MCLS: the interval must be at least 1 token".into()));
        }
        self.mcls_every = every;
        if every.is_some() && self.mcls_head.is_none() {
            // Rows (h, 1)/‖(h, 1)‖ through the ColBERT head's path: h = row[..n]/row[n].
            let n = self.config.hidden_size;
            let mut w = vec![0f32; (n + 1) * n];
            (0..n).for_each(|i| w[i * n + i] = 1.0);
            let mut b = vec![0f32; n + 1];
            b[n] = 1.0;
            let parts = LinearParts {
                weight: crate::backend::HostTensor::from_vec(w, vec![n + 1, n]),
                bias: crate::backend::HostTensor::from_vec(b, vec![n + 1]),
            };
            self.mcls_head = Some(self.backend.load_head("mcls_states", &[parts])?);
        }
        Ok(())
    }

    pub fn mcls_every(&self) -> Option<usize> {
        self.mcls_every
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
        if let Some(every) = self.mcls_every {
            self.encode_mcls(docs, modes, every, &mut out)?;
            return Ok(out);
        }
        let seqs: Vec<&[u32]> = docs.iter().map(|d| d.ids.as_slice()).collect();
        let packed = PackedBatch::new(&seqs, self.config.pad_token_id);
        let b = &self.backend;
        let batch = b.upload_batch(&packed)?;
        let x = self.forward(&batch)?;
        let h = b.heads(&x, &batch, &self.sparse, &self.colbert, modes)?;
        self.post_process(&packed, h, modes, &mut out)?;
        Ok(out)
    }

    /// The final hidden states of a packed batch.
    fn forward(&self, batch: &B::Batch) -> Result<B::Act, ModelError> {
        let b = &self.backend;
        let mut x = b.embed(batch, &self.embeddings)?;
        let heads = self.config.num_attention_heads;
        for l in &self.layers {
            let qkv = b.linear(&x, &l.qkv, Activation::None)?;
            let ctx = b.attention(&qkv, batch, heads)?;
            drop(qkv);
            let a = b.linear_residual_norm(&ctx, &l.attn_out, &x, &l.attn_norm)?;
            drop(ctx);
            let f = b.linear(&a, &l.ffn_in, Activation::Gelu)?;
            x = b.linear_residual_norm(&f, &l.ffn_out, &a, &l.out_norm)?;
        }
        Ok(x)
    }

    /// [`Encoder::set_mcls_every`]'s forward pass. The batch is led by a 3-token dummy
    /// sequence so that every CLS position has a row before it: a second view of the same
    /// states, cut into segments that start one row before each CLS, makes each CLS the first
    /// ColBERT row of its segment, read through the `[I; 0]`, bias `[0; 1]` head with its norm.
    fn encode_mcls(
        &self,
        docs: &[TokenizedDoc],
        modes: Modes,
        every: usize,
        out: &mut [Embedding],
    ) -> Result<(), ModelError> {
        let cls = self.special.cls;
        let max_len = self.config.max_sequence_length();
        let dummy = vec![cls, self.special.eos, self.special.eos];
        let mut seqs: Vec<Vec<u32>> = vec![dummy];
        // Per document: offsets of its CLS tokens in its expanded sequence.
        let mut cls_at: Vec<Vec<usize>> = Vec::with_capacity(docs.len());
        for (i, d) in docs.iter().enumerate() {
            let (ids, at) = mcls_insert(&d.ids, cls, every);
            if ids.len() > max_len {
                return Err(ModelError::Input(format!(
                    "document {i} has {} tokens, {} with the CLS tokens MCLS inserts every \
                     {every}; the model's positions allow at most {max_len}: truncate with a \
                     smaller max length",
                    d.ids.len(),
                    ids.len()
                )));
            }
            seqs.push(ids);
            cls_at.push(at);
        }
        let packed = PackedBatch::new(&seqs, self.config.pad_token_id);
        let b = &self.backend;
        let batch = b.upload_batch(&packed)?;
        let x = self.forward(&batch)?;
        let rest = Modes { dense: false, ..modes };
        let mut h = if rest.any() {
            Some(b.heads(&x, &batch, &self.sparse, &self.colbert, rest)?)
        } else {
            None
        };
        if modes.dense {
            let head = self.mcls_head.as_ref().ok_or_else(|| {
                ModelError::Input("MCLS: set_mcls_every did not build its head".into())
            })?;
            let hidden = self.config.hidden_size;
            // Segment boundaries one row before each CLS (global rows, all ≥ 3).
            let mut cuts = vec![0usize];
            for (i, at) in cls_at.iter().enumerate() {
                let start = packed.cu_seqlens[i + 1] as usize;
                cuts.extend(at.iter().map(|&p| start + p - 1));
            }
            cuts.push(packed.n_tokens());
            let view: Vec<&[u32]> = cuts.windows(2).map(|w| &packed.ids[w[0]..w[1]]).collect();
            let view = PackedBatch::new(&view, self.config.pad_token_id);
            let view_batch = b.upload_batch(&view)?;
            let states = b.heads(
                &x,
                &view_batch,
                &self.sparse,
                head,
                Modes { dense: false, sparse: false, colbert: true },
            )?;
            let mut seg = 1; // segment 0 is the dummy's first two rows
            for (e, at) in out.iter_mut().zip(&cls_at) {
                let mut mean = vec![0f64; hidden];
                for _ in at {
                    let row = states.colbert.get(seg).and_then(|r| r.get(..hidden + 1));
                    let row = row.ok_or_else(|| {
                        ModelError::Input(format!("MCLS: no state row for segment {seg}"))
                    })?;
                    let scale = row[hidden] as f64;
                    mean.iter_mut().zip(&row[..hidden]).for_each(|(m, &v)| *m += v as f64 / scale);
                    seg += 1;
                }
                let norm = mean.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
                e.dense = Some(mean.iter().map(|v| (v / norm) as f32).collect());
            }
        }
        if let Some(h) = h.as_mut() {
            let excluded = self.special.excluded();
            let cdim = h.colbert_dim;
            for (i, (e, at)) in out.iter_mut().zip(&cls_at).enumerate() {
                let r = packed.seq_range(i + 1);
                if modes.sparse {
                    e.sparse = Some(lexical_weights(
                        &packed.ids[r.clone()],
                        &h.token_weights[r.clone()],
                        &excluded,
                    ));
                }
                if modes.colbert {
                    let rows = std::mem::take(&mut h.colbert[i + 1]);
                    // Row j is position j + 1; drop the inserted CLS positions (at[1..]).
                    let mut keep = Vec::with_capacity(rows.len());
                    let mut skip = at[1..].iter().peekable();
                    for (j, row) in rows.chunks_exact(cdim.max(1)).enumerate() {
                        if skip.peek() == Some(&&(j + 1)) {
                            skip.next();
                            continue;
                        }
                        keep.extend_from_slice(row);
                    }
                    e.colbert = Some(keep);
                    e.colbert_dim = cdim;
                }
            }
        }
        Ok(())
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

/// MCLS: `ids` (`<s> t1..tm </s>`) with a `cls` inserted after every `every` tokens of
/// t1..tm (never right before the last id), and the offsets of all CLS tokens (0 first).
pub fn mcls_insert(ids: &[u32], cls: u32, every: usize) -> (Vec<u32>, Vec<usize>) {
    let every = every.max(1);
    let mut out = Vec::with_capacity(ids.len() + ids.len() / every + 1);
    let mut at = vec![0];
    out.push(ids[0]);
    let body = &ids[1..ids.len().saturating_sub(1).max(1)];
    for (k, &t) in body.iter().enumerate() {
        if k > 0 && k % every == 0 {
            at.push(out.len());
            out.push(cls);
        }
        out.push(t);
    }
    if ids.len() > 1 {
        out.push(ids[ids.len() - 1]);
    }
    (out, at)
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
    /// Turns MCLS on (`Some(every)`) or off; see [`Encoder::set_mcls_every`].
    fn set_mcls_every(&mut self, every: Option<usize>) -> Result<(), ModelError> {
        match every {
            None => Ok(()),
            Some(_) => Err(ModelError::Input(format!("{}: no MCLS support", self.describe()))),
        }
    }
    fn describe(&self) -> String;
    fn hidden_size(&self) -> usize;
}

impl<B: Backend> Embedder for Encoder<B> {
    fn encode(&self, docs: &[TokenizedDoc], modes: Modes) -> Result<Vec<Embedding>, ModelError> {
        Encoder::encode(self, docs, modes)
    }

    fn set_mcls_every(&mut self, every: Option<usize>) -> Result<(), ModelError> {
        Encoder::set_mcls_every(self, every)
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

    #[test]
    fn mcls_inserts_a_cls_every_n_tokens() {
        let (ids, at) = mcls_insert(&[0, 10, 11, 12, 13, 14, 2], 0, 2);
        assert_eq!(ids, [0, 10, 11, 0, 12, 13, 0, 14, 2]);
        assert_eq!(at, [0, 3, 6]);
        // Not right before </s>; short documents are unchanged.
        assert_eq!(mcls_insert(&[0, 10, 11, 2], 0, 2), (vec![0, 10, 11, 2], vec![0]));
        assert_eq!(mcls_insert(&[0, 2], 0, 1), (vec![0, 2], vec![0]));
        assert_eq!(mcls_insert(&[0], 0, 1), (vec![0], vec![0]));
    }
}
