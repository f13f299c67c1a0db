// Embedding gather + LayerNorm, and bias + residual + LayerNorm. One warp per token row.
//
// These kernels produce the residual stream. In bf16 mode it is kept in fp32 (`out32`) and only
// its bf16 copy (`out`) feeds the GEMMs: rounding the stream itself to bf16 every half-layer
// compounds over 24 layers (see docs/gpu-notes.md, bf16 error budget).

// LayerNorm of the row held in `v` (columns lane + 32*i), written to `out_row` and, when not
// null, as fp32 to `out32_row`. Two passes over registers (mean, then centred variance) for fp32
// parity with the reference.
template <typename T>
__device__ __forceinline__ void ln_store(const float (&v)[ROW_VPT], int H, const float* gamma,
                                         const float* beta, float eps, T* out_row,
                                         float* out32_row, int lane) {
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < ROW_VPT; i++) {
        int c = lane + 32 * i;
        if (c < H) s += v[i];
    }
    float mean = warp_sum(s) / (float)H;
    float q = 0.f;
#pragma unroll
    for (int i = 0; i < ROW_VPT; i++) {
        int c = lane + 32 * i;
        if (c < H) {
            float d = v[i] - mean;
            q += d * d;
        }
    }
    float rstd = 1.0f / sqrtf(warp_sum(q) / (float)H + eps);
#pragma unroll
    for (int i = 0; i < ROW_VPT; i++) {
        int c = lane + 32 * i;
        if (c < H) {
            const float r = (v[i] - mean) * rstd * gamma[c] + beta[c];
            store(out_row + c, r);
            if (out32_row) out32_row[c] = r;
        }
    }
}

// out[t] = LN(word[ids[t]] + type0 + pos_emb[positions[t]]) (and out32[t] when not null)
template <typename T>
__device__ __forceinline__ void embed_ln(const u32* ids, const u32* positions, const T* word,
                                         const T* pos_emb, const T* type0, const float* gamma,
                                         const float* beta, float eps, T* out, float* out32,
                                         int n, int H) {
    int row = (int)((blockIdx.x * blockDim.x + threadIdx.x) >> 5);
    int lane = threadIdx.x & 31;
    if (row >= n) return;
    const T* w = word + (long long)ids[row] * H;
    const T* p = pos_emb + (long long)positions[row] * H;
    float v[ROW_VPT];
#pragma unroll
    for (int i = 0; i < ROW_VPT; i++) {
        int c = lane + 32 * i;
        v[i] = c < H ? (tof(w[c]) + tof(type0[c])) + tof(p[c]) : 0.f;
    }
    const long long o = (long long)row * H;
    ln_store(v, H, gamma, beta, eps, out + o, out32 ? out32 + o : nullptr, lane);
}

// out[t] = LN(y[t] + bias + residual[t]) (and out32[t] when not null). y is the fp32 GEMM output
// and residual the fp32 stream; out or out32 may be y itself (each lane reads its columns into
// registers before it writes them).
template <typename T>
__device__ __forceinline__ void bias_residual_ln(const float* y, const float* bias,
                                                 const float* residual, const float* gamma,
                                                 const float* beta, float eps, T* out,
                                                 float* out32, int n, int H) {
    int row = (int)((blockIdx.x * blockDim.x + threadIdx.x) >> 5);
    int lane = threadIdx.x & 31;
    if (row >= n) return;
    const long long o = (long long)row * H;
    float v[ROW_VPT];
#pragma unroll
    for (int i = 0; i < ROW_VPT; i++) {
        int c = lane + 32 * i;
        v[i] = c < H ? (y[o + c] + bias[c]) + residual[o + c] : 0.f;
    }
    ln_store(v, H, gamma, beta, eps, out + o, out32 ? out32 + o : nullptr, lane);
}

#define LN_KERNELS(SUF, T)                                                                     \
    extern "C" __global__ void embed_ln_##SUF(const u32* ids, const u32* positions,            \
                                              const T* word, const T* pos_emb, const T* type0, \
                                              const float* gamma, const float* beta,           \
                                              float eps, T* out, float* out32, int n, int H) { \
        embed_ln<T>(ids, positions, word, pos_emb, type0, gamma, beta, eps, out, out32, n, H); \
    }                                                                                          \
    extern "C" __global__ void bias_residual_ln_##SUF(                                         \
        const float* y, const float* bias, const float* residual, const float* gamma,          \
        const float* beta, float eps, T* out, float* out32, int n, int H) {                    \
        bias_residual_ln<T>(y, bias, residual, gamma, beta, eps, out, out32, n, H);            \
    }

LN_KERNELS(f32, float)
LN_KERNELS(bf16, bf16)
