//! The CPU backend's precisions, and what runs at each, in words (`/info`, `bench`, `describe`).

use super::isa::{isa, kernel_name, Isa};
use super::kernel_int8;

/// The precision of the CPU backend's linear layers (attention, norms and heads stay f32).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CpuPrecision {
    /// The checkpoint's f32 weights (packed for the micro-kernels at load), f32 arithmetic.
    #[default]
    F32,
    /// Weights rounded to bf16 at load (half the memory of the linear layers). With AMX the
    /// layer inputs are rounded to bf16 too and the tile unit multiplies (f32 sums); below it,
    /// on AMD's AVX512-BF16 cores, the same arithmetic on `VDPBF16PS` (linear layers only,
    /// `kernel_bf16.rs`); elsewhere the weights are widened back and the arithmetic stays f32
    /// (`VDPBF16PS` was slower than the f32 kernel on an Emerald Rapids Xeon).
    Bf16,
    /// Linear layers in int8: weights smoothed (calibrated at load, `smooth.rs`) and quantised
    /// per output channel, activations per token (u8 with a zero point) as they are multiplied,
    /// exact i32 sums. On AMX-INT8 (attention on AMX-BF16); elsewhere AVX512-VNNI or portable
    /// code with the same linear-layer results (attention f32). Norms, softmax, sparse head: f32.
    Int8,
}

impl CpuPrecision {
    /// Whether the linear layers' weights are stored below f32.
    pub(super) fn reduced(self) -> bool {
        self != CpuPrecision::F32
    }
}

impl std::str::FromStr for CpuPrecision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" | "fp32" => Ok(CpuPrecision::F32),
            "bf16" => Ok(CpuPrecision::Bf16),
            "int8" => Ok(CpuPrecision::Int8),
            other => Err(format!("precision {other:?}: expected f32, bf16 or int8")),
        }
    }
}

/// What runs a model loaded now at `precision`, e.g. `"f32, avx512 f32 12x32"` or `"bf16: amx
/// bf16 32x32 (linear layers and attention), avx512 f32 12x32"` (for `/info` and `bench`).
pub fn kernels_for(precision: CpuPrecision) -> String {
    kernels(precision, amx_for(precision), bf16_dot_for(precision))
}

/// Whether a backend made now at `precision` runs its linear layers on AVX512-BF16 dot
/// products (`kernel_bf16.rs`): bf16 below AMX, at the AVX-512 level, where that kernel is
/// preferred.
pub(super) fn bf16_dot_for(precision: CpuPrecision) -> bool {
    #[cfg(target_arch = "x86_64")]
    return precision == CpuPrecision::Bf16
        && !amx_for(precision)
        && isa() >= Isa::Avx512
        && super::kernel_bf16::preferred();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether a backend made now at `precision` runs its linear layers and attention on AMX.
pub(super) fn amx_for(precision: CpuPrecision) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let amx = isa() >= Isa::Amx;
        match precision {
            CpuPrecision::F32 => false,
            CpuPrecision::Bf16 => amx,
            CpuPrecision::Int8 => amx && super::kernel_amx_int8::available(),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

pub(super) fn kernels(precision: CpuPrecision, amx: bool, bf16_dot: bool) -> String {
    match precision {
        CpuPrecision::F32 => format!("f32, {}", kernel_name()),
        CpuPrecision::Bf16 if amx => format!(
            "bf16: amx bf16 32x32{} (linear layers and attention), {}",
            emulated(),
            kernel_name()
        ),
        CpuPrecision::Bf16 if bf16_dot => format!(
            "bf16: avx512 bf16 6x64 (linear layers, bf16 operands, f32 sums), {}",
            kernel_name()
        ),
        CpuPrecision::Bf16 => format!("bf16 weights, f32 math, {}", kernel_name()),
        CpuPrecision::Int8 if amx => format!(
            "int8: amx int8 32x32{0} (linear layers, smoothed per-channel weights, per-token u8 \
             activations), amx bf16{0} attention, {1}",
            emulated(),
            kernel_name()
        ),
        CpuPrecision::Int8 => format!(
            "int8: {} (linear layers, smoothed per-channel weights, per-token u8 activations), {}",
            kernel_int8::name(),
            kernel_name()
        ),
    }
}

/// Marks AMX kernels that run in software (`TRIDENT_AMX_EMULATE`, tests only).
fn emulated() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    if super::kernel_amx::emulated() {
        return " (emulated in software)";
    }
    ""
}
