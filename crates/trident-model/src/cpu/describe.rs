//! What the CPU backend runs at each precision, in words (`/info`, `bench`, `describe`).

use super::isa::{isa, kernel_name, Isa};
use super::{kernel_int8, CpuPrecision};

/// What runs a model loaded now at `precision`, e.g. `"f32, avx512 f32 12x32"` or `"bf16: amx
/// bf16 32x32 (linear layers and attention), avx512 f32 12x32"` (for `/info` and `bench`).
pub fn kernels_for(precision: CpuPrecision) -> String {
    kernels(precision, amx_for(precision))
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

pub(super) fn kernels(precision: CpuPrecision, amx: bool) -> String {
    match precision {
        CpuPrecision::F32 => format!("f32, {}", kernel_name()),
        CpuPrecision::Bf16 if amx => {
            format!("bf16: amx bf16 32x32 (linear layers and attention), {}", kernel_name())
        }
        CpuPrecision::Bf16 => format!("bf16 weights, f32 math, {}", kernel_name()),
        CpuPrecision::Int8 if amx => format!(
            "int8: amx int8 32x32 (linear layers, smoothed per-channel weights, per-token u8 \
             activations), amx bf16 attention, {}",
            kernel_name()
        ),
        CpuPrecision::Int8 => format!(
            "int8: {} (linear layers, smoothed per-channel weights, per-token u8 activations), {}",
            kernel_int8::name(),
            kernel_name()
        ),
    }
}
