//! The BGE-M3 heads (`kernels/heads.cu`): dense (normalised CLS rows) and sparse (per-token
//! weights) in one fused kernel, ColBERT as a cuBLAS projection plus bias + normalisation of
//! every non-CLS row; all outputs land in one buffer, copied back through the pinned download
//! buffer and split per document straight from it.

use cudarc::driver::PushKernelArg;
use trident_core::Modes;
use trident_model::HeadOutput;

use crate::backend::{CudaAct, CudaBackend, CudaBatch, CudaLinear};
use crate::error::{CResult, CudaError};

impl CudaBackend {
    pub(in crate::backend) fn heads_impl(
        &self,
        h: &CudaAct,
        batch: &CudaBatch,
        sparse: &CudaLinear,
        colbert: &CudaLinear,
        modes: Modes,
    ) -> CResult<HeadOutput> {
        let p = &batch.plan;
        let hid = h.cols;
        if h.rows != p.n_tokens {
            return Err(CudaError::Unsupported(format!(
                "heads: hidden state has {} rows for {} tokens",
                h.rows, p.n_tokens
            )));
        }
        let c = colbert.out_features;
        if modes.sparse && (sparse.out_features != 1 || sparse.in_features != hid) {
            return Err(CudaError::Unsupported(format!(
                "{}: expected [1 x {hid}], got [{} x {}]",
                sparse.name, sparse.out_features, sparse.in_features
            )));
        }
        if modes.colbert {
            if colbert.in_features != hid {
                return Err(CudaError::Unsupported(format!(
                    "{}: expected [C x {hid}], got [{c} x {}]",
                    colbert.name, colbert.in_features
                )));
            }
            self.check_row_features(c, &colbert.name)?;
        }
        let n_dense = if modes.dense { p.n_seqs * hid } else { 0 };
        let n_tw = if modes.sparse { p.n_tokens } else { 0 };
        let n_col = if modes.colbert { p.n_colbert_rows * c } else { 0 };
        let total = n_dense + n_tw + n_col;
        let mut out = HeadOutput { colbert_dim: c, ..Default::default() };
        if total == 0 || p.n_tokens == 0 {
            return Ok(out);
        }
        let res = self.pool.get(4 * total, "head outputs")?;
        let dense_p = res.ptr();
        let tw_p = dense_p + 4 * n_dense as u64;
        let col_p = tw_p + 4 * n_tw as u64;
        let base = batch.buf.ptr();
        let hp = h.buf.ptr();
        if modes.dense || modes.sparse {
            let h32 = self.stream_f32(h, "heads")?;
            let (ts, cu) = (base + 4 * p.off.tok_seq as u64, base + 4 * p.off.cu_seqlens as u64);
            let (ws, bs) = (sparse.w32_ptr, sparse.b_ptr);
            let (n, hh, wd, wsp) =
                (p.n_tokens as i32, hid as i32, i32::from(modes.dense), i32::from(modes.sparse));
            launch!(
                self,
                "heads_dense_sparse",
                &self.k.heads_dense_sparse,
                Self::rows_cfg(p.n_tokens),
                &h32,
                &ts,
                &cu,
                &ws,
                &bs,
                &dense_p,
                &tw_p,
                &n,
                &hh,
                &wd,
                &wsp
            )?;
        }
        let _proj;
        if modes.colbert && p.n_colbert_rows > 0 {
            let proj = self.pool.get(4 * p.n_tokens * c, "colbert projection")?;
            self.gemm_raw(hp, p.n_tokens, hid, colbert.w_ptr, c, proj.ptr(), true, &colbert.name)?;
            let (pp, bp, rows) = (proj.ptr(), colbert.b_ptr, base + 4 * p.off.colbert_rows as u64);
            let (nr, cc) = (p.n_colbert_rows as i32, c as i32);
            launch!(
                self,
                "colbert_norm",
                &self.k.colbert_norm,
                Self::rows_cfg(p.n_colbert_rows),
                &pp,
                &bp,
                &rows,
                &col_p,
                &nr,
                &cc
            )?;
            _proj = proj;
        }
        let cu = &batch.cu_seqlens;
        self.staged_download(dense_p, total, |all| {
            out.dense = all[..n_dense].to_vec();
            out.token_weights = all[n_dense..n_dense + n_tw].to_vec();
            if modes.colbert {
                // Straight from the pinned buffer into each document's own vector: at real
                // shape this is 4 KiB per token, and an intermediate copy cost more than the
                // whole forward pass.
                let col = &all[n_dense + n_tw..];
                // Row offset of sequence i's first ColBERT row is cu[i] - i (one CLS per sequence).
                let seq = |i: usize| {
                    let start = (cu[i] as usize - i) * c;
                    col[start..start + (cu[i + 1] - cu[i]) as usize * c - c].to_vec()
                };
                out.colbert = split_parallel(cu.len() - 1, col.len(), seq);
            }
        })?;
        Ok(out)
    }
}

/// `(0..n).map(f)` on several threads when `bytes` is large enough to pay for them: copying the
/// ColBERT rows out of the pinned buffer is memory-bound and serial it took ~30 % of a batch.
fn split_parallel<F: Fn(usize) -> Vec<f32> + Sync>(n: usize, floats: usize, f: F) -> Vec<Vec<f32>> {
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get()).min(8);
    if threads < 2 || n < 2 || floats < (1 << 20) {
        return (0..n).map(f).collect();
    }
    let per = n.div_ceil(threads);
    std::thread::scope(|s| {
        let f = &f;
        let parts: Vec<_> = (0..n)
            .step_by(per)
            .map(|lo| s.spawn(move || (lo..(lo + per).min(n)).map(f).collect::<Vec<_>>()))
            .collect();
        parts.into_iter().flat_map(|h| h.join().expect("copy thread panicked")).collect()
    })
}

#[cfg(test)]
mod split_tests {
    #[test]
    fn split_parallel_keeps_order() {
        let small = super::split_parallel(5, 10, |i| vec![i as f32]);
        let big = super::split_parallel(37, 1 << 21, |i| vec![i as f32; 3]);
        assert_eq!(small, (0..5).map(|i| vec![i as f32]).collect::<Vec<_>>());
        assert_eq!(big.len(), 37);
        assert!(big.iter().enumerate().all(|(i, v)| v == &vec![i as f32; 3]));
    }
}
