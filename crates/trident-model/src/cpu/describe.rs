//! The CPU backend's precisions, and what runs at each, in words (`/info`, `bench`, `describe`).

use super::isa::{isa, kernel_name, Isa};
use super::kernel_int8;

/// The precision of the CPU backend's linear layers and, where the CPU multiplies bf16 as fast
/// as f32 or faster (AMX, AMD's AVX512-BF16), of attention's products; norms and heads stay f32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CpuPrecision {
    /// The checkpoint's f32 weights (packed for the micro-kernels at load), f32 arithmetic.
    #[default]
    F32,
    /// Weights rounded to bf16 at load (half the memory of the linear layers). With AMX the
    /// layer inputs are rounded to bf16 too and the tile unit multiplies (f32 sums), attention
    /// too; below it, on AMD's AVX512-BF16 cores, the same arithmetic on `VDPBF16PS`
    /// (`kernel_bf16.rs`, `attention_bf16.rs`); elsewhere the weights are widened back and the
    /// arithmetic stays f32 (`VDPBF16PS` was slower than the f32 kernel on an Emerald Rapids
    /// Xeon).
    Bf16,
    /// Linear layers in int8: weights smoothed (calibrated at load, `smooth.rs`) and quantised
    /// per output channel, activations per token (u8 with a zero point) as they are multiplied,
    /// exact i32 sums. On AMX-INT8 (attention on AMX-BF16); elsewhere AVX512-VNNI, AVX2 or
    /// portable code with the same linear-layer results (attention on `VDPBF16PS` where bf16
    /// prefers it, else f32). Norms, softmax's sums, sparse head: f32.
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
    Kernels::for_precision(precision).describe(precision)
}

/// The kernels a backend made now at a precision runs beside the f32 ones, decided once when
/// it is made (the weights are packed for them at load).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Kernels {
    /// Reduced-precision linear layers and attention on AMX tiles.
    pub amx: bool,
    /// bf16 linear layers on AVX512-BF16 dot products (`kernel_bf16.rs`).
    pub bf16_dot: bool,
    /// Reduced-precision attention on AVX512-BF16 dot products below AMX (`attention_bf16.rs`).
    pub bf16_attention: bool,
}

impl Kernels {
    pub fn for_precision(precision: CpuPrecision) -> Kernels {
        let amx = amx_for(precision);
        // AVX512-BF16 below AMX, at the AVX-512 level, where its kernel is preferred.
        #[cfg(target_arch = "x86_64")]
        let dot =
            precision.reduced() && !amx && isa() >= Isa::Avx512 && super::kernel_bf16::preferred();
        #[cfg(not(target_arch = "x86_64"))]
        let dot = false;
        Kernels { amx, bf16_dot: dot && precision == CpuPrecision::Bf16, bf16_attention: dot }
    }

    pub fn describe(self, precision: CpuPrecision) -> String {
        let f32s = kernel_name();
        match precision {
            CpuPrecision::F32 => format!("f32, {f32s}"),
            CpuPrecision::Bf16 if self.amx => {
                format!("bf16: amx bf16 32x32{} (linear layers and attention), {f32s}", emulated())
            }
            CpuPrecision::Bf16 if self.bf16_dot => format!(
                "bf16: avx512 bf16 6x64 (linear layers and attention, bf16 operands, f32 sums), \
                 {f32s}"
            ),
            CpuPrecision::Bf16 => format!("bf16 weights, f32 math, {f32s}"),
            CpuPrecision::Int8 => {
                let (linear, attention) = if self.amx {
                    (format!("amx int8 32x32{}", emulated()), format!("amx bf16{}", emulated()))
                } else if self.bf16_attention {
                    (kernel_int8::name().to_string(), "avx512 bf16 6x64".to_string())
                } else {
                    (kernel_int8::name().to_string(), "f32".to_string())
                };
                format!(
                    "int8: {linear} (linear layers, smoothed per-channel weights, per-token u8 \
                     activations), {attention} attention, {f32s}"
                )
            }
        }
    }
}

/// Whether a backend made now at `precision` runs its linear layers and attention on AMX.
fn amx_for(precision: CpuPrecision) -> bool {
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

/// Marks AMX kernels that run in software (`TRIDENT_AMX_EMULATE`, tests only).
fn emulated() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    if super::amx_unit::emulated() {
        return " (emulated in software)";
    }
    ""
}
