// Helpers shared by trident's kernels. The backend prepends this file to every kernels/*.cu
// before NVRTC compiles it, so the kernels need no CUDA headers at run time.
typedef unsigned short bf16;  // raw bfloat16 bits
typedef unsigned int u32;

#define NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ float tof(float x) { return x; }
__device__ __forceinline__ float tof(bf16 x) { return __uint_as_float(((u32)x) << 16); }

// fp32 -> bf16, round to nearest even (NaN kept as a quiet NaN).
__device__ __forceinline__ bf16 to_bf16(float x) {
    u32 u = __float_as_uint(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16)0x7fc0;
    u += 0x7fffu + ((u >> 16) & 1u);
    return (bf16)(u >> 16);
}

__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(bf16* p, float v) { *p = to_bf16(v); }

// Two bf16 in one 32-bit word, `lo` at the lower address.
__device__ __forceinline__ u32 pack_bf16(float lo, float hi) {
    return (u32)to_bf16(lo) | ((u32)to_bf16(hi) << 16);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Rows of up to 32 * ROW_VPT features are held in registers by one warp (lane owns columns
// lane, lane + 32, ...). The host checks hidden sizes against this bound.
#define ROW_VPT 32
