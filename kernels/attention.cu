// Self-attention over packed variable-length sequences, fp32 arithmetic (any storage type).
// Used by the fp32 mode (parity) and for head sizes the tensor-core kernel does not cover.
//
// qkv is `[tokens x 3H]` laid out [q | k | v]; out is `[tokens x H]`. Block (tile, head): the
// tile table gives (sequence, first query) for 64 queries of one sequence; one thread per query.
// Keys/values stream through shared memory 32 at a time with an online softmax, so memory is
// linear in the sequence length and nothing is padded.
#define GA_TQ 64
#define GA_TK 32

template <typename T, int D>
__device__ __forceinline__ void attention_generic(const T* qkv, T* out, const u32* cu_seqlens,
                                                  const u32* tiles, int H, float scale) {
    __shared__ float ks[GA_TK][D];
    __shared__ float vs[GA_TK][D];
    const int head = blockIdx.y;
    const u32 seq = tiles[2 * blockIdx.x];
    const u32 q0 = tiles[2 * blockIdx.x + 1];
    const u32 s0 = cu_seqlens[seq], s1 = cu_seqlens[seq + 1];
    const long long ld = 3LL * H;
    const u32 qi = q0 + threadIdx.x;
    const bool active = qi < s1;

    float q[D], o[D];
#pragma unroll
    for (int d = 0; d < D; d++) {
        q[d] = active ? tof(qkv[qi * ld + head * D + d]) * scale : 0.f;
        o[d] = 0.f;
    }
    float m = NEG_INF, l = 0.f;

    for (u32 k0 = s0; k0 < s1; k0 += GA_TK) {
        __syncthreads();
        for (int e = threadIdx.x; e < GA_TK * D; e += blockDim.x) {
            int r = e / D, c = e % D;
            u32 kt = k0 + r;
            bool ok = kt < s1;
            ks[r][c] = ok ? tof(qkv[kt * ld + H + head * D + c]) : 0.f;
            vs[r][c] = ok ? tof(qkv[kt * ld + 2 * H + head * D + c]) : 0.f;
        }
        __syncthreads();
        if (!active) continue;
        const int nk = (int)min((u32)GA_TK, s1 - k0);
        // Streaming softmax, one key at a time: rescale only when the running max grows.
        // (Not unrolled over keys: keeps code size, and NVRTC time, small.)
#pragma unroll 1
        for (int j = 0; j < nk; j++) {
            float s = 0.f;
#pragma unroll
            for (int d = 0; d < D; d++) s += q[d] * ks[j][d];
            if (s > m) {
                const float corr = expf(m - s);  // 0 for the first key (m = -inf)
                l *= corr;
#pragma unroll
                for (int d = 0; d < D; d++) o[d] *= corr;
                m = s;
            }
            const float p = expf(s - m);
            l += p;
#pragma unroll
            for (int d = 0; d < D; d++) o[d] += p * vs[j][d];
        }
    }
    if (active) {
        const float inv = 1.0f / l;
#pragma unroll
        for (int d = 0; d < D; d++) store(out + qi * (long long)H + head * D + d, o[d] * inv);
    }
}

#define ATTN_GENERIC(SUF, T, D)                                                                      \
    extern "C" __global__ void __launch_bounds__(GA_TQ) attention_##SUF##_d##D(                      \
        const T* qkv, T* out, const u32* cu_seqlens, const u32* tiles, int H, float scale) {        \
        attention_generic<T, D>(qkv, out, cu_seqlens, tiles, H, scale);                              \
    }

ATTN_GENERIC(f32, float, 8)
ATTN_GENERIC(f32, float, 16)
ATTN_GENERIC(f32, float, 32)
ATTN_GENERIC(f32, float, 64)
ATTN_GENERIC(bf16, bf16, 8)
ATTN_GENERIC(bf16, bf16, 16)
ATTN_GENERIC(bf16, bf16, 32)
ATTN_GENERIC(bf16, bf16, 64)
