//! The backend's settings: the storage and GEMM precision, and which attention kernel bf16
//! mode uses. Chosen by the caller when the backend is made.

/// Storage and GEMM precision of weights and activations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// Everything fp32, GEMMs in plain fp32 (no TF32): for parity with the reference.
    F32,
    /// bf16 weights and activations, fp32 accumulation and fp32 kernel arithmetic.
    Bf16,
}

impl Precision {
    pub(super) fn elem(self) -> usize {
        match self {
            Precision::F32 => 4,
            Precision::Bf16 => 2,
        }
    }
    pub(super) fn suffix(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }
}

/// Which attention kernel bf16 mode uses for head size 64.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionKernel {
    /// mma.sync bf16 tensor-core kernel (default).
    TensorCore,
    /// The fp32-arithmetic tiled kernel (always used in fp32 mode or for other head sizes).
    Generic,
}
