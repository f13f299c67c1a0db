//! Which GEMM micro-kernels run: the best the CPU supports, capped by [`force_isa`] (the
//! binary's `--cpu-isa` / `TRIDENT_CPU_ISA`, tests, comparisons).
//! Every f32 path computes each output as the same FMA chain in the same order, so their results
//! are bit-for-bit equal and switching between them mid-run is harmless. The bf16 precision's
//! kernel (AMX tiles; below that level AVX512-BF16 dot products on AMD, else f32 arithmetic on
//! bf16 weights) is chosen when a model loads, since each wants its weights packed in its order.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

/// An instruction-set level of the f32 GEMM micro-kernel, lowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// Portable Rust (any CPU), 6 × 16 tile.
    Generic = 1,
    /// AVX2 + FMA, 6 × 16 tile.
    Avx2 = 2,
    /// AVX-512F, 12 × 32 tile.
    Avx512 = 3,
    /// AVX-512 for f32, and AMX-BF16 tiles (32 × 32 blocks) for the bf16 precision's linear
    /// layers; needs Linux's permission for the tile state, asked once.
    Amx = 4,
}

impl Isa {
    /// Name of the micro-kernel this level runs.
    pub fn kernel_name(self) -> &'static str {
        match self {
            Isa::Generic => "generic f32 6x16",
            Isa::Avx2 => "avx2 f32 6x16",
            Isa::Avx512 | Isa::Amx => "avx512 f32 12x32",
        }
    }

    fn from_u8(v: u8) -> Option<Isa> {
        [Isa::Generic, Isa::Avx2, Isa::Avx512, Isa::Amx].into_iter().find(|&i| i as u8 == v)
    }
}

impl std::str::FromStr for Isa {
    type Err = String;
    fn from_str(s: &str) -> Result<Isa, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "generic" | "scalar" => Ok(Isa::Generic),
            "avx2" => Ok(Isa::Avx2),
            "avx512" | "avx-512" => Ok(Isa::Avx512),
            "amx" => Ok(Isa::Amx),
            _ => Err(format!("{s:?}: expected generic, avx2, avx512 or amx")),
        }
    }
}

/// The best level this CPU supports.
pub fn detected() -> Isa {
    static DETECTED: OnceLock<Isa> = OnceLock::new();
    *DETECTED.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") {
                if super::kernel_amx::available() {
                    return Isa::Amx;
                }
                return Isa::Avx512;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Isa::Avx2;
            }
        }
        Isa::Generic
    })
}

/// 0: no programmatic cap.
static FORCED: AtomicU8 = AtomicU8::new(0);

/// Caps the kernel level for the whole process (`None` lifts the cap). A level above the CPU's is capped to the CPU's.
pub fn force_isa(isa: Option<Isa>) {
    FORCED.store(isa.map_or(0, |i| i as u8), Ordering::Relaxed);
}

/// The level the GEMMs run at now.
pub fn isa() -> Isa {
    let mut isa = detected();
    if let Some(cap) = Isa::from_u8(FORCED.load(Ordering::Relaxed)) {
        isa = isa.min(cap);
    }
    isa
}

/// The name of the micro-kernel the GEMMs run on now, e.g. `"avx512 f32 12x32"`.
pub fn kernel_name() -> &'static str {
    isa().kernel_name()
}
