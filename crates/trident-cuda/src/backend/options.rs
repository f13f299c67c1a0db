//! The backend's settings, passed to `CudaBackend::new` in `CudaOptions`: the storage and GEMM
//! precision, and which attention kernel bf16 mode uses. The crate reads no environment; the
//! binary's composition root decides (`AttentionKernel` parses from its flag or variable).

/// Storage and GEMM precision of weights and activations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    /// Everything fp32, GEMMs in plain fp32 (no TF32): for parity with the reference.
    F32,
    /// bf16 weights and activations, fp32 accumulation and fp32 kernel arithmetic (default).
    #[default]
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttentionKernel {
    /// mma.sync bf16 tensor-core kernel (default).
    #[default]
    TensorCore,
    /// The fp32-arithmetic tiled kernel (always used in fp32 mode or for other head sizes).
    Generic,
}

impl std::str::FromStr for AttentionKernel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tensor-core" | "tensorcore" => Ok(AttentionKernel::TensorCore),
            "generic" => Ok(AttentionKernel::Generic),
            other => Err(format!(
                "attention kernel {other:?}: expected tensor-core (or tensorcore) or generic"
            )),
        }
    }
}

/// How `CudaBackend::new` sets the backend up. The default is bf16 with tensor-core attention;
/// `CudaOptions { precision: Precision::F32, ..Default::default() }` picks one setting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CudaOptions {
    /// Storage and GEMM precision of weights and activations.
    pub precision: Precision,
    /// The attention kernel bf16 mode uses for head size 64 (fp32 mode always runs the generic
    /// kernel); `CudaBackend::set_attention_kernel` changes it later.
    pub attention: AttentionKernel,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_kernel_parses_its_names() {
        for (s, k) in [
            ("tensor-core", AttentionKernel::TensorCore),
            ("tensorcore", AttentionKernel::TensorCore),
            ("generic", AttentionKernel::Generic),
        ] {
            assert_eq!(s.parse::<AttentionKernel>(), Ok(k), "{s}");
        }
        let e = "flash".parse::<AttentionKernel>().unwrap_err();
        assert!(
            e.contains("\"flash\"") && e.contains("tensor-core") && e.contains("generic"),
            "{e}"
        );
    }

    #[test]
    fn default_options_are_bf16_with_tensor_cores() {
        let o = CudaOptions::default();
        assert_eq!((o.precision, o.attention), (Precision::Bf16, AttentionKernel::TensorCore));
    }
}
