//! Response sizes, bounded from token counts before anything is encoded, so a request whose
//! answer would pass `--max-response-bytes` is refused (422) before it costs encoder time and
//! memory. A 510 KB request for ColBERT vectors can otherwise ask for a ~50 MB answer.

use trident_core::Modes;

use crate::error::ApiError;
use crate::ModelInfo;

/// JSON bytes of one f32 with its comma: the most any value of magnitude ≥ 1e-4 takes
/// (`-0.000123456789,`). Unit-vector components typically take 12–13, which leaves ample room
/// for the rare smaller ones; measured, the bound is ~1.3× the real size.
const FLOAT: usize = 16;

/// A linear bound on a response's JSON bytes: `fixed + Σ (per_input + per_token × tokens)`.
#[derive(Clone, Copy, Debug)]
pub struct ResponseSize {
    pub fixed: usize,
    pub per_input: usize,
    pub per_token: usize,
    pub limit: usize,
}

impl ResponseSize {
    /// No bound (responses whose size does not grow with tokens).
    pub const UNLIMITED: ResponseSize =
        ResponseSize { fixed: 0, per_input: 0, per_token: 0, limit: usize::MAX };

    /// `/embed`: the objects `trident embed` writes, with the requested outputs.
    pub fn embed(info: &ModelInfo, modes: Modes, limit: usize) -> ResponseSize {
        // {"id":N,"tokens":N,"truncated":false} and separators.
        let (mut per_input, mut per_token) = (64, 0);
        if modes.dense {
            per_input += 12 + info.dense_dim * FLOAT;
        }
        if modes.sparse {
            // At most one `"id":weight,` per token.
            per_input += 12;
            per_token += digits(info.vocab_size) + 3 + FLOAT;
        }
        if modes.colbert {
            // One `[f,…],` row per token after `<s>`.
            per_input += 12;
            per_token += info.colbert_dim * FLOAT + 2;
        }
        ResponseSize { fixed: 2, per_input, per_token, limit }
    }

    /// `/v1/embeddings`: dense vectors as floats or base64 of little-endian f32.
    pub fn openai(info: &ModelInfo, base64: bool, model: &str, limit: usize) -> ResponseSize {
        let vector =
            if base64 { (info.dense_dim * 4).div_ceil(3) * 4 + 2 } else { info.dense_dim * FLOAT };
        ResponseSize { fixed: 128 + model.len(), per_input: 64 + vector, per_token: 0, limit }
    }

    /// The bound for inputs of these token counts.
    pub fn bytes(&self, tokens: impl IntoIterator<Item = usize>) -> usize {
        tokens.into_iter().fold(self.fixed, |acc, t| {
            acc.saturating_add(self.per_input).saturating_add(self.per_token.saturating_mul(t))
        })
    }

    /// 422 naming `--max-response-bytes` when the bound passes the limit.
    pub fn check(&self, field: &str, tokens: &[usize]) -> Result<(), ApiError> {
        let bytes = self.bytes(tokens.iter().copied());
        check_bytes(field, bytes, tokens.len(), tokens.iter().sum(), self.limit)
    }
}

/// 422 naming `--max-response-bytes` when `bytes` (for `inputs` of `tokens`) pass `limit`.
pub fn check_bytes(
    field: &str,
    bytes: usize,
    inputs: usize,
    tokens: usize,
    limit: usize,
) -> Result<(), ApiError> {
    if bytes <= limit {
        return Ok(());
    }
    Err(ApiError::field(
        field,
        format!(
            "the response would take up to {bytes} bytes ({inputs} inputs, {tokens} tokens), over \
             the limit of {limit} bytes (--max-response-bytes); send fewer or shorter inputs, or \
             ask for fewer outputs (ColBERT vectors are the largest)"
        ),
    ))
}

fn digits(n: usize) -> usize {
    n.max(1).ilog10() as usize + 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use trident_core::{DocId, Embedding};

    fn info(dim: usize) -> ModelInfo {
        ModelInfo {
            model: "m".into(),
            model_dir: "m".into(),
            dense_dim: dim,
            colbert_dim: dim,
            vocab_size: 250_002,
            max_length: 8192,
            backend: String::new(),
            devices: vec![],
        }
    }

    /// Unit rows of pseudo-random floats, as the model's L2-normalised outputs are.
    fn unit(n: usize, seed: &mut u64) -> Vec<f32> {
        let v: Vec<f32> = (0..n)
            .map(|_| {
                *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (*seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.into_iter().map(|x| x / norm).collect()
    }

    #[test]
    fn the_embed_bound_holds_and_is_within_a_third_of_the_real_size() {
        let (dim, tokens, mut seed) = (1024, 40, 7u64);
        let colbert: Vec<f32> = (1..tokens).flat_map(|_| unit(dim, &mut seed)).collect();
        let e = Embedding {
            tokens,
            truncated: false,
            dense: Some(unit(dim, &mut seed)),
            sparse: Some((0..tokens as u32 - 2).map(|i| (249_000 + i, 0.123_456_78)).collect()),
            colbert: Some(colbert),
            colbert_dim: dim,
        };
        let real = format!("[{}]", e.to_json(&DocId::from(0))).len();
        let bound = ResponseSize::embed(&info(dim), Modes::ALL, usize::MAX).bytes([tokens]);
        assert!(real <= bound && bound * 3 <= real * 4, "real {real} bytes, bound {bound}");
    }

    #[test]
    fn over_the_limit_is_a_422_naming_the_setting() {
        let s = ResponseSize::embed(&info(1024), Modes::ALL, 64 << 20);
        assert!(s.check("inputs", &[512; 6]).is_ok());
        let e = s.check("inputs", &[8192; 4]).unwrap_err();
        assert_eq!(e.kind.status().as_u16(), 422);
        assert!(e.message.contains("--max-response-bytes"), "{}", e.message);
        let dense = ResponseSize::embed(&info(1024), Modes { colbert: false, ..Modes::ALL }, 1);
        assert!(dense.bytes([8192]) < 300_000);
    }
}
