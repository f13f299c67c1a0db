//! NVRTC compilation of `kernels/*.cu` for the device's architecture (no nvcc at build time).
//! The same function serves the backend at start-up and the no-GPU kernel check in CI.
//!
//! The backend loads CUBIN (real `sm_XY` code): under CUDA's minor-version compatibility a CUBIN
//! from a newer 13.x NVRTC still loads on a 13.0 driver, where PTX of a newer ISA would not.

use std::collections::HashMap;
use std::ffi::{c_char, CStr, CString};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::nvrtc::{result as nvrtc, sys};

use crate::error::{CResult, CudaError};

const COMMON: &str = include_str!("../../../kernels/common.cuh");

/// Every kernel source file, by file name. `common.cuh` is prepended to each.
pub const KERNEL_FILES: &[(&str, &str)] = &[
    ("layernorm.cu", include_str!("../../../kernels/layernorm.cu")),
    ("elementwise.cu", include_str!("../../../kernels/elementwise.cu")),
    ("attention.cu", include_str!("../../../kernels/attention.cu")),
    ("attention_tc.cu", include_str!("../../../kernels/attention_tc.cu")),
    ("heads.cu", include_str!("../../../kernels/heads.cu")),
];

/// What NVRTC produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// PTX text for a virtual architecture (`compute_XY`), e.g. for `ptxas -v`.
    Ptx,
    /// Machine code for a real architecture (`sm_XY`), loaded by the backend.
    Cubin,
}

/// The full translation unit NVRTC sees for one kernel file.
pub fn kernel_source(file: &str) -> Option<String> {
    KERNEL_FILES
        .iter()
        .find(|(f, _)| *f == file)
        .map(|(_, src)| format!("{COMMON}\n#line 1 \"{file}\"\n{src}"))
}

/// NVRTC's `--gpu-architecture` for a compute capability: `compute_90` (PTX) or `sm_90` (CUBIN).
pub fn arch_for(major: i32, minor: i32, out: Output) -> String {
    match out {
        Output::Ptx => format!("compute_{major}{minor}"),
        Output::Cubin => format!("sm_{major}{minor}"),
    }
}

/// Whether the NVRTC library can be loaded (cudarc panics on first use otherwise).
pub fn nvrtc_available() -> bool {
    // SAFETY: only tries to dlopen the library.
    unsafe { sys::is_culib_present() }
}

/// NVRTC's version (major, minor).
pub fn nvrtc_version() -> CResult<(i32, i32)> {
    if !nvrtc_available() {
        return Err(CudaError::MissingLibrary("libnvrtc"));
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: out-pointers to live ints.
    unsafe { sys::nvrtcVersion(&mut major, &mut minor) }.result().map_err(|e| {
        CudaError::Nvrtc {
            kernel: "-".into(),
            arch: "-".into(),
            log: format!("nvrtcVersion: {e:?}"),
        }
    })?;
    Ok((major, minor))
}

/// Owns an nvrtcProgram and destroys it on drop.
struct Program(sys::nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: created by create_program, destroyed once.
        let _ = unsafe { nvrtc::destroy_program(self.0) };
    }
}

/// Compiles one kernel file for `arch` (`compute_XY` for PTX, `sm_XY` for CUBIN). PTX comes back
/// as its text bytes (no trailing NUL), CUBIN as the ELF image.
pub fn compile_kernel(file: &str, arch: &str, out: Output) -> CResult<Vec<u8>> {
    if !nvrtc_available() {
        return Err(CudaError::MissingLibrary("libnvrtc"));
    }
    let fail =
        |log: String| CudaError::Nvrtc { kernel: file.to_string(), arch: arch.to_string(), log };
    let src = kernel_source(file)
        .ok_or_else(|| CudaError::Unsupported(format!("no kernel file kernels/{file}")))?;
    let src = CString::new(src).map_err(|_| fail("source contains a NUL byte".into()))?;
    let name = CString::new(file).map_err(|_| fail("file name contains a NUL byte".into()))?;
    let prog = Program(
        nvrtc::create_program(&src, Some(&name))
            .map_err(|e| fail(format!("nvrtcCreateProgram: {e:?}")))?,
    );
    let options = [
        format!("--gpu-architecture={arch}"),
        "--std=c++17".to_string(),
        // Exact division/sqrt and no flush-to-zero: the fp32 mode must match the reference.
        "--ftz=false".to_string(),
        "--prec-div=true".to_string(),
        "--prec-sqrt=true".to_string(),
    ];
    // SAFETY: prog is live until `prog` drops.
    if let Err(e) = unsafe { nvrtc::compile_program(prog.0, &options) } {
        let log = unsafe { nvrtc::get_program_log(prog.0) }
            .map(|l| unsafe { CStr::from_ptr(l.as_ptr()) }.to_string_lossy().into_owned())
            .unwrap_or_default();
        return Err(fail(format!("{e:?}: {log}")));
    }
    match out {
        Output::Ptx => {
            // SAFETY: compiled program.
            let ptx = unsafe { nvrtc::get_ptx(prog.0) }
                .map_err(|e| fail(format!("nvrtcGetPTX: {e:?}")))?;
            let mut bytes: Vec<u8> = ptx.into_iter().map(|c| c as u8).collect();
            while bytes.last() == Some(&0) {
                bytes.pop();
            }
            Ok(bytes)
        }
        Output::Cubin => {
            let mut size = 0usize;
            // SAFETY: compiled program; buffer sized by nvrtcGetCUBINSize.
            unsafe { sys::nvrtcGetCUBINSize(prog.0, &mut size) }
                .result()
                .map_err(|e| fail(format!("nvrtcGetCUBINSize: {e:?}")))?;
            let mut bin = vec![0u8; size];
            unsafe { sys::nvrtcGetCUBIN(prog.0, bin.as_mut_ptr() as *mut c_char) }
                .result()
                .map_err(|e| fail(format!("nvrtcGetCUBIN: {e:?}")))?;
            Ok(bin)
        }
    }
}

/// `compile_kernel` memoised per process: every backend after the first (one per device, or
/// several in tests) reuses the compiled code.
pub fn compile_kernel_cached(file: &str, arch: &str, out: Output) -> CResult<Arc<Vec<u8>>> {
    type Cache = Mutex<HashMap<(String, String, bool), Arc<Vec<u8>>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let key = (file.to_string(), arch.to_string(), out == Output::Cubin);
    let cache = CACHE.get_or_init(Cache::default);
    if let Some(hit) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return Ok(hit.clone());
    }
    let code = Arc::new(compile_kernel(file, arch, out)?);
    cache.lock().unwrap_or_else(|e| e.into_inner()).insert(key, code.clone());
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_file_has_the_common_prelude() {
        for (f, _) in KERNEL_FILES {
            let s = kernel_source(f).unwrap();
            assert!(s.starts_with(COMMON), "{f}");
            assert!(s.contains("extern \"C\" __global__"), "{f} defines no kernel");
        }
        assert!(kernel_source("nope.cu").is_none());
        assert_eq!(arch_for(9, 0, Output::Ptx), "compute_90");
        assert_eq!(arch_for(8, 6, Output::Cubin), "sm_86");
    }
}
