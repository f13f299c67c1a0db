// Flash-style self-attention on tensor cores (mma.sync m16n8k16 bf16 -> fp32), head size 64,
// over packed variable-length sequences (no padding; memory linear in sequence length).
//
// Block (tile, head) = 4 warps x 16 query rows = the 64 queries of one tile-table entry.
// Per 64-key tile: S = Q K^T (fp32), online softmax in registers, O += P V. Fragment layouts
// are those of the PTX ISA for mma.m16n8k16 (.bf16): with g = lane / 4 and t = lane % 4,
//   A (16x16, row):  a[0] = (g, 2t..2t+1)   a[1] = (g+8, 2t..)   a[2] = (g, 2t+8..)   a[3] = (g+8, 2t+8..)
//   B (16x8, col):   b[0] = (k 2t..2t+1, n g)   b[1] = (k 2t+8..2t+9, n g)
//   C (16x8, f32):   c[0..1] = (g, 2t..2t+1)   c[2..3] = (g+8, 2t..2t+1)
// so the C fragments of S for keys 16kk..16kk+15 are exactly the A fragment of P for the
// P V product (no shuffle through shared memory).
#define TC_D 64
#define TC_TK 64
#define TC_PAD 72  // row stride in bf16: 36 words, so the 32 lanes of a fragment load hit 32 banks

__device__ __forceinline__ void mma_bf16(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ u32 ld_pair(const bf16* p) { return *reinterpret_cast<const u32*>(p); }

extern "C" __global__ void __launch_bounds__(128)
    attention_tc_bf16_d64(const bf16* qkv, bf16* out, const u32* cu_seqlens, const u32* tiles, int H,
                          float scale_log2) {
    __shared__ __align__(16) bf16 ks[TC_TK * TC_PAD];  // [key][dim]
    __shared__ __align__(16) bf16 vt[TC_D * TC_PAD];   // [dim][key] (V transposed)
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, t = lane & 3;
    const int head = blockIdx.y;
    const u32 seq = tiles[2 * blockIdx.x];
    const u32 q0 = tiles[2 * blockIdx.x + 1];
    const u32 s0 = cu_seqlens[seq], s1 = cu_seqlens[seq + 1];
    const long long ld = 3LL * H;
    const int hoff = head * TC_D;

    // Q fragments stay in registers: rows r0 = q0 + 16 warp + g and r1 = r0 + 8.
    const u32 r0 = q0 + warp * 16 + g, r1 = r0 + 8;
    const bool v0 = r0 < s1, v1 = r1 < s1;
    u32 qa[4][4];
#pragma unroll
    for (int kk = 0; kk < 4; kk++) {
        const int c = kk * 16 + 2 * t;
        qa[kk][0] = v0 ? ld_pair(qkv + r0 * ld + hoff + c) : 0u;
        qa[kk][1] = v1 ? ld_pair(qkv + r1 * ld + hoff + c) : 0u;
        qa[kk][2] = v0 ? ld_pair(qkv + r0 * ld + hoff + c + 8) : 0u;
        qa[kk][3] = v1 ? ld_pair(qkv + r1 * ld + hoff + c + 8) : 0u;
    }

    float o[8][4];
#pragma unroll
    for (int nt = 0; nt < 8; nt++) o[nt][0] = o[nt][1] = o[nt][2] = o[nt][3] = 0.f;
    float m0 = NEG_INF, m1 = NEG_INF;  // running max of rows r0, r1 (log2 domain)
    float l0 = 0.f, l1 = 0.f;          // this lane's partial row sums (reduced at the end)

    for (u32 k0 = s0; k0 < s1; k0 += TC_TK) {
        __syncthreads();
        // 64 keys x 64 dims = 512 chunks of 8 bf16; keys past the sequence end load as zeros.
        for (int ch = threadIdx.x; ch < TC_TK * TC_D / 8; ch += blockDim.x) {
            const int key = ch >> 3, c8 = (ch & 7) * 8;
            const u32 kt = k0 + key;
            uint4 kv = make_uint4(0u, 0u, 0u, 0u), vv = make_uint4(0u, 0u, 0u, 0u);
            if (kt < s1) {
                kv = *reinterpret_cast<const uint4*>(qkv + kt * ld + H + hoff + c8);
                vv = *reinterpret_cast<const uint4*>(qkv + kt * ld + 2 * H + hoff + c8);
            }
            *reinterpret_cast<uint4*>(ks + key * TC_PAD + c8) = kv;
            const u32 w[4] = {vv.x, vv.y, vv.z, vv.w};
#pragma unroll
            for (int i = 0; i < 4; i++) {
                vt[(c8 + 2 * i) * TC_PAD + key] = (bf16)(w[i] & 0xffffu);
                vt[(c8 + 2 * i + 1) * TC_PAD + key] = (bf16)(w[i] >> 16);
            }
        }
        __syncthreads();

        // S = Q K^T for this warp's 16 rows x 64 keys.
        float s[8][4];
#pragma unroll
        for (int nt = 0; nt < 8; nt++) {
            s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
            const bf16* kr = ks + (nt * 8 + g) * TC_PAD + 2 * t;
#pragma unroll
            for (int kk = 0; kk < 4; kk++) mma_bf16(s[nt], qa[kk], ld_pair(kr + kk * 16), ld_pair(kr + kk * 16 + 8));
        }
        // Scale into the log2 domain and mask keys past the end of the sequence.
        float mx0 = NEG_INF, mx1 = NEG_INF;
#pragma unroll
        for (int nt = 0; nt < 8; nt++) {
#pragma unroll
            for (int j = 0; j < 2; j++) {
                const bool ok = k0 + nt * 8 + 2 * t + j < s1;
                s[nt][j] = ok ? s[nt][j] * scale_log2 : NEG_INF;
                s[nt][j + 2] = ok ? s[nt][j + 2] * scale_log2 : NEG_INF;
                mx0 = fmaxf(mx0, s[nt][j]);
                mx1 = fmaxf(mx1, s[nt][j + 2]);
            }
        }
        // The 4 lanes of a group hold one row between them.
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
        const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);  // finite: key k0 is in the sequence
        const float a0 = exp2f(m0 - mn0), a1 = exp2f(m1 - mn1);    // 0 on the first tile
        m0 = mn0;
        m1 = mn1;
        l0 *= a0;
        l1 *= a1;
#pragma unroll
        for (int nt = 0; nt < 8; nt++) {
            o[nt][0] *= a0;
            o[nt][1] *= a0;
            o[nt][2] *= a1;
            o[nt][3] *= a1;
            s[nt][0] = exp2f(s[nt][0] - mn0);
            s[nt][1] = exp2f(s[nt][1] - mn0);
            s[nt][2] = exp2f(s[nt][2] - mn1);
            s[nt][3] = exp2f(s[nt][3] - mn1);
            l0 += s[nt][0] + s[nt][1];
            l1 += s[nt][2] + s[nt][3];
        }
        // O += P V: keys 16kk.. of P come from S tiles 2kk and 2kk+1.
#pragma unroll
        for (int kk = 0; kk < 4; kk++) {
            const u32 pa[4] = {pack_bf16(s[2 * kk][0], s[2 * kk][1]), pack_bf16(s[2 * kk][2], s[2 * kk][3]),
                               pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                               pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
            for (int nt = 0; nt < 8; nt++) {
                const bf16* vr = vt + (nt * 8 + g) * TC_PAD + kk * 16 + 2 * t;
                mma_bf16(o[nt], pa, ld_pair(vr), ld_pair(vr + 8));
            }
        }
    }

    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    const float i0 = 1.0f / l0, i1 = 1.0f / l1;
#pragma unroll
    for (int nt = 0; nt < 8; nt++) {
        const int c = hoff + nt * 8 + 2 * t;
        if (v0) *reinterpret_cast<u32*>(out + r0 * (long long)H + c) = pack_bf16(o[nt][0] * i0, o[nt][1] * i0);
        if (v1) *reinterpret_cast<u32*>(out + r1 * (long long)H + c) = pack_bf16(o[nt][2] * i1, o[nt][3] * i1);
    }
}
