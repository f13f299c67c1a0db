// Fused BGE-M3 heads over the last hidden state h `[tokens x H]`.

// Dense + sparse in one pass, one warp per token: the first token of each sequence writes its
// L2-normalised row to dense[seq] (F.normalize: x / max(|x|, 1e-12)); every token writes
// ReLU(h . w_sparse + b_sparse). Either part is skipped when not asked for. h is the fp32 final
// state and w_sparse fp32 in both modes: a single dot product per token has no GEMM to feed, and
// the lexical weights are the output most sensitive to rounding.
extern "C" __global__ void heads_dense_sparse(const float* h, const u32* tok_seq,
                                              const u32* cu_seqlens, const float* w_sparse,
                                              const float* b_sparse, float* dense,
                                              float* token_weights, int n, int H, int want_dense,
                                              int want_sparse) {
    int row = (int)((blockIdx.x * blockDim.x + threadIdx.x) >> 5);
    int lane = threadIdx.x & 31;
    if (row >= n) return;
    const float* hr = h + (long long)row * H;
    float v[ROW_VPT];
#pragma unroll
    for (int i = 0; i < ROW_VPT; i++) {
        int c = lane + 32 * i;
        v[i] = c < H ? hr[c] : 0.f;
    }
    if (want_sparse) {
        float d = 0.f;
#pragma unroll
        for (int i = 0; i < ROW_VPT; i++) {
            int c = lane + 32 * i;
            if (c < H) d += v[i] * w_sparse[c];
        }
        d = warp_sum(d) + b_sparse[0];
        if (lane == 0) token_weights[row] = fmaxf(d, 0.f);
    }
    if (want_dense) {
        u32 s = tok_seq[row];
        if (cu_seqlens[s] == (u32)row) {
            float q = 0.f;
#pragma unroll
            for (int i = 0; i < ROW_VPT; i++) q += v[i] * v[i];
            float inv = 1.0f / fmaxf(sqrtf(warp_sum(q)), 1e-12f);
            float* out = dense + (long long)s * H;
#pragma unroll
            for (int i = 0; i < ROW_VPT; i++) {
                int c = lane + 32 * i;
                if (c < H) out[c] = v[i] * inv;
            }
        }
    }
}

// ColBERT: `proj` is the fp32 GEMM h . W_colbert^T `[tokens x C]` (no bias). Output row r is
// token src_rows[r] (tokens 1..len-1 of each sequence, in batch order): bias added, then
// L2-normalised like F.normalize. One warp per output row.
extern "C" __global__ void colbert_norm(const float* proj, const float* bias, const u32* src_rows,
                                        float* out, int n_rows, int C) {
    int row = (int)((blockIdx.x * blockDim.x + threadIdx.x) >> 5);
    int lane = threadIdx.x & 31;
    if (row >= n_rows) return;
    const float* pr = proj + (long long)src_rows[row] * C;
    float v[ROW_VPT];
    float q = 0.f;
#pragma unroll
    for (int i = 0; i < ROW_VPT; i++) {
        int c = lane + 32 * i;
        v[i] = c < C ? pr[c] + bias[c] : 0.f;
        q += v[i] * v[i];
    }
    float inv = 1.0f / fmaxf(sqrtf(warp_sum(q)), 1e-12f);
    float* o = out + (long long)row * C;
#pragma unroll
    for (int i = 0; i < ROW_VPT; i++) {
        int c = lane + 32 * i;
        if (c < C) o[c] = v[i] * inv;
    }
}
