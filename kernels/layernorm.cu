// Embedding gather + LayerNorm, and bias + residual + LayerNorm. One warp per token row.

// LayerNorm of the row held in `v` (columns lane + 32*i), written to `out_row`.
// Two passes over registers (mean, then centred variance) for fp32 parity with the reference.
template <typename T>
__device__ __forceinline__ void ln_store(const float (&v)[ROW_VPT], int H, const float* gamma,
                                         const float* beta, float eps, T* out_row, int lane) {
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
        if (c < H) store(out_row + c, (v[i] - mean) * rstd * gamma[c] + beta[c]);
    }
}

// out[t] = LN(word[ids[t]] + type0 + pos_emb[positions[t]])
template <typename T>
__device__ __forceinline__ void embed_ln(const u32* ids, const u32* positions, const T* word,
                                         const T* pos_emb, const T* type0, const float* gamma,
                                         const float* beta, float eps, T* out, int n, int H) {
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
    ln_store(v, H, gamma, beta, eps, out + (long long)row * H, lane);
}

// x[t] = LN(x[t] + bias + residual[t]), in place (each warp reads its whole row first).
template <typename T>
__device__ __forceinline__ void bias_residual_ln(T* x, const float* bias, const T* residual,
                                                 const float* gamma, const float* beta, float eps,
                                                 int n, int H) {
    int row = (int)((blockIdx.x * blockDim.x + threadIdx.x) >> 5);
    int lane = threadIdx.x & 31;
    if (row >= n) return;
    T* xr = x + (long long)row * H;
    const T* rr = residual + (long long)row * H;
    float v[ROW_VPT];
#pragma unroll
    for (int i = 0; i < ROW_VPT; i++) {
        int c = lane + 32 * i;
        v[i] = c < H ? (tof(xr[c]) + bias[c]) + tof(rr[c]) : 0.f;
    }
    ln_store(v, H, gamma, beta, eps, xr, lane);
}

#define LN_KERNELS(SUF, T)                                                                     \
    extern "C" __global__ void embed_ln_##SUF(const u32* ids, const u32* positions,            \
                                              const T* word, const T* pos_emb, const T* type0, \
                                              const float* gamma, const float* beta,           \
                                              float eps, T* out, int n, int H) {               \
        embed_ln<T>(ids, positions, word, pos_emb, type0, gamma, beta, eps, out, n, H);        \
    }                                                                                          \
    extern "C" __global__ void bias_residual_ln_##SUF(T* x, const float* bias,                \
                                                      const T* residual, const float* gamma,  \
                                                      const float* beta, float eps, int n,    \
                                                      int H) {                                 \
        bias_residual_ln<T>(x, bias, residual, gamma, beta, eps, n, H);                        \
    }

LN_KERNELS(f32, float)
LN_KERNELS(bf16, bf16)
