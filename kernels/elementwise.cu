// Bias (+ exact erf GELU) applied in place to a GEMM output `[rows x cols]`. Blocks stride over
// rows and threads over columns (no per-element division); bf16 is processed in pairs.

__device__ __forceinline__ float bias_gelu(float v, int gelu) {
    // Exact GELU, 0.5 x (1 + erf(x / sqrt 2)); never the tanh approximation.
    return gelu ? 0.5f * v * (1.0f + erff(v * 0.7071067811865475f)) : v;
}

extern "C" __global__ void bias_act_f32(float* x, const float* bias, int rows, int cols, int gelu) {
    for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
        float* xr = x + r * cols;
        for (int c = threadIdx.x; c < cols; c += blockDim.x) xr[c] = bias_gelu(xr[c] + bias[c], gelu);
    }
}

// `cols` must be even (checked by the host): rows then start on 4-byte boundaries.
extern "C" __global__ void bias_act_bf16(bf16* x, const float* bias, int rows, int cols, int gelu) {
    const int pairs = cols >> 1;
    for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
        u32* xr = reinterpret_cast<u32*>(x + r * cols);
        for (int c = threadIdx.x; c < pairs; c += blockDim.x) {
            const u32 w = xr[c];
            const float lo = bias_gelu(tof((bf16)(w & 0xffffu)) + bias[2 * c], gelu);
            const float hi = bias_gelu(tof((bf16)(w >> 16)) + bias[2 * c + 1], gelu);
            xr[c] = pack_bf16(lo, hi);
        }
    }
}
