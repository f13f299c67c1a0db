//! The kernel table: every `kernels/*.cu` file compiled by NVRTC for the device's
//! architecture (one host thread per file, cached), loaded as CUBIN (PTX for the driver's JIT
//! as the fallback), and the functions the ops launch looked up once at start-up.

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaFunction};

use super::options::Precision;
use crate::compile::{arch_for, compile_kernel_cached, Output, KERNEL_FILES};
use crate::error::{CResult, CudaError};

pub(super) struct Kernels {
    pub(super) embed_ln: CudaFunction,
    pub(super) bias_residual_ln: CudaFunction,
    pub(super) bias_act: CudaFunction,
    /// Generic attention for head sizes 8, 16, 32, 64.
    pub(super) attn_generic: [(usize, CudaFunction); 4],
    pub(super) attn_tc: CudaFunction,
    pub(super) heads_dense_sparse: CudaFunction,
    pub(super) colbert_norm: CudaFunction,
}

pub(super) fn load_kernels(
    ctx: &Arc<CudaContext>,
    cc: (i32, i32),
    precision: Precision,
) -> CResult<Kernels> {
    // NVRTC runs on the host, one thread per kernel file.
    let cubin_arch = arch_for(cc.0, cc.1, Output::Cubin);
    let cubins: Vec<CResult<Arc<Vec<u8>>>> = std::thread::scope(|s| {
        let handles: Vec<_> = KERNEL_FILES
            .iter()
            .map(|(file, _)| {
                let arch = cubin_arch.as_str();
                s.spawn(move || compile_kernel_cached(file, arch, Output::Cubin))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(CudaError::Unsupported("NVRTC thread panicked".into())))
            })
            .collect()
    });
    let mut compiled = HashMap::new();
    for ((file, _), r) in KERNEL_FILES.iter().zip(cubins) {
        compiled.insert(*file, r?);
    }
    let module = |file: &str| -> CResult<Arc<cudarc::driver::CudaModule>> {
        // CUBIN first (minor-version compatible); PTX for the driver's JIT if that will not load.
        let cubin = compiled[file].as_ref().clone();
        match ctx.load_module(cudarc::nvrtc::Ptx::from_binary(cubin)) {
            Ok(m) => Ok(m),
            Err(cubin_err) => {
                let ptx =
                    compile_kernel_cached(file, &arch_for(cc.0, cc.1, Output::Ptx), Output::Ptx)?;
                let ptx = String::from_utf8_lossy(&ptx).into_owned();
                ctx.load_module(cudarc::nvrtc::Ptx::from_src(ptx)).map_err(|e| CudaError::Driver {
                    op: format!("loading module {file} (CUBIN failed too: {cubin_err})"),
                    source: e,
                })
            }
        }
    };
    let func = |m: &Arc<cudarc::driver::CudaModule>, name: String| -> CResult<CudaFunction> {
        m.load_function(&name).map_err(CudaError::driver(format!("loading kernel {name}")))
    };
    let s = precision.suffix();
    let ln = module("layernorm.cu")?;
    let ew = module("elementwise.cu")?;
    let at = module("attention.cu")?;
    let tc = module("attention_tc.cu")?;
    let hd = module("heads.cu")?;
    Ok(Kernels {
        embed_ln: func(&ln, format!("embed_ln_{s}"))?,
        bias_residual_ln: func(&ln, format!("bias_residual_ln_{s}"))?,
        bias_act: func(&ew, format!("bias_act_{s}"))?,
        attn_generic: [
            (8, func(&at, format!("attention_{s}_d8"))?),
            (16, func(&at, format!("attention_{s}_d16"))?),
            (32, func(&at, format!("attention_{s}_d32"))?),
            (64, func(&at, format!("attention_{s}_d64"))?),
        ],
        attn_tc: func(&tc, "attention_tc_bf16_d64".into())?,
        heads_dense_sparse: func(&hd, "heads_dense_sparse".into())?,
        colbert_norm: func(&hd, "colbert_norm".into())?,
    })
}
