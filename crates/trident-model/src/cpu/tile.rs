//! The f32 micro-tile's shape and the `B` elements it reads, shared by the portable/AVX2 kernel
//! (one tile) and the AVX-512 kernel (two panels of each operand per 12 × 32 tile).

/// Rows of a tile (`A` micro-panel width).
pub const MR: usize = 6;
/// Columns of a tile (`B` micro-panel width: two 8-lane vectors).
pub const NR: usize = 16;

/// A weight element as stored, and as the micro-kernels read it from a packed `B` panel: f32,
/// or bf16 widened in registers (exact: bf16 is the top half of an f32), so bf16 panels give
/// the same bits as f32 panels of the widened values at half the memory traffic.
pub trait Element: Copy + Default + Send + Sync + 'static {
    /// Whether the element is bf16 (the kernels' loads widen it).
    const BF16: bool;
    fn to_f32(self) -> f32;
    /// The element nearest `x` (round to nearest even).
    fn from_f32(x: f32) -> Self;
}

impl Element for f32 {
    const BF16: bool = false;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn from_f32(x: f32) -> f32 {
        x
    }
}

impl Element for half::bf16 {
    const BF16: bool = true;
    /// bf16 is the top half of an f32: widening is a shift (exact).
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f32::from_bits((self.to_bits() as u32) << 16)
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        half::bf16::from_f32(x)
    }
}

/// Eight `B` values from `p` as f32 lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
pub(super) unsafe fn load8<T: Element>(p: *const T) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    // SAFETY: the caller's panel holds eight elements at p.
    unsafe {
        if T::BF16 {
            let h = _mm_loadu_si128(p as *const __m128i);
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
        } else {
            _mm256_loadu_ps(p as *const f32)
        }
    }
}

/// Sixteen `B` values from `p` as f32 lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) unsafe fn load16<T: Element>(p: *const T) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    // SAFETY: the caller's panel holds sixteen elements at p.
    unsafe {
        if T::BF16 {
            let h = _mm256_loadu_si256(p as *const __m256i);
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
        } else {
            _mm512_loadu_ps(p as *const f32)
        }
    }
}
