//! Device discovery and set-up: probing for the driver, cuBLAS and NVRTC libraries, and
//! `CudaBackend::new` (context, stream, kernels, cuBLAS handle and math mode), plus the
//! accessors and the per-thread context binding every entry point starts with.

use std::sync::{Arc, Mutex};

use cudarc::cublas::{sys as blas_sys, CudaBlas};
use cudarc::driver::{CudaContext, CudaStream};

use super::kernels::load_kernels;
use super::{CudaBackend, CudaOptions, Precision};
use crate::error::{CResult, CudaError};
use crate::pool::Pool;

/// True when a CUDA driver, cuBLAS, NVRTC and at least one device are present.
pub fn cuda_available() -> bool {
    libraries_present().is_ok() && CudaContext::device_count().map(|n| n > 0).unwrap_or(false)
}

fn libraries_present() -> CResult<()> {
    // SAFETY: each probe only tries to dlopen the library.
    unsafe {
        if !cudarc::driver::sys::is_culib_present() {
            return Err(CudaError::NoDriver);
        }
        if !cudarc::cublas::sys::is_culib_present() {
            return Err(CudaError::MissingLibrary("libcublas"));
        }
        if !cudarc::cublaslt::sys::is_culib_present() {
            return Err(CudaError::MissingLibrary("libcublasLt"));
        }
        if !cudarc::nvrtc::sys::is_culib_present() {
            return Err(CudaError::MissingLibrary("libnvrtc"));
        }
    }
    Ok(())
}

impl CudaBackend {
    /// Opens device `device` (a typed error, never a panic, when there is no driver or GPU),
    /// compiles the kernels for its architecture with NVRTC and creates the cuBLAS handle, set
    /// up as `options` says (precision, bf16 attention kernel).
    pub fn new(device: usize, options: CudaOptions) -> Result<Self, CudaError> {
        let CudaOptions { precision, attention } = options;
        libraries_present()?;
        let available =
            CudaContext::device_count().map_err(CudaError::driver("cuDeviceGetCount"))? as usize;
        if device >= available {
            return Err(CudaError::NoDevice { requested: device, available });
        }
        let ctx = CudaContext::new(device)
            .map_err(CudaError::driver(format!("creating a context on device {device}")))?;
        // One stream orders every use of every buffer, so cudarc's per-buffer events are not needed.
        // SAFETY: all work of this backend is issued on `stream` alone.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(CudaError::driver("creating a stream"))?;
        let name = ctx.name().map_err(CudaError::driver("reading the device name"))?;
        let cc = ctx
            .compute_capability()
            .map_err(CudaError::driver("reading the compute capability"))?;
        if cc.0 < 8 {
            return Err(CudaError::Unsupported(format!(
                "{name} is sm_{}{}; bf16 tensor cores need sm_80 or newer",
                cc.0, cc.1
            )));
        }
        let sms = ctx
            .attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            )
            .map_err(CudaError::driver("reading the SM count"))? as usize;
        let k = load_kernels(&ctx, cc, precision)?;
        let blas = CudaBlas::new(stream.clone()).map_err(CudaError::cublas("cublasCreate"))?;
        let math = match precision {
            // No TF32, no reduced-precision reductions: fp32 mode is the parity reference.
            Precision::F32 => blas_sys::cublasMath_t::CUBLAS_PEDANTIC_MATH,
            Precision::Bf16 => blas_sys::cublasMath_t::CUBLAS_DEFAULT_MATH,
        };
        // SAFETY: valid handle.
        unsafe { blas_sys::cublasSetMathMode(*blas.handle(), math) }
            .result()
            .map_err(CudaError::cublas("cublasSetMathMode"))?;
        Ok(CudaBackend {
            ordinal: device,
            name,
            cc,
            sms,
            precision,
            attention,
            pool: Pool::new(stream.clone()),
            ctx,
            stream,
            blas,
            k,
            staging: Mutex::default(),
        })
    }

    pub fn device_name(&self) -> &str {
        &self.name
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Makes this backend's context current on the calling thread: workers may call from a
    /// thread other than the one that created the backend, and raw cuBLAS/driver calls use the
    /// current context.
    pub(super) fn bind(&self) -> CResult<()> {
        self.ctx
            .bind_to_thread()
            .map_err(CudaError::driver(format!("binding the context of cuda:{}", self.ordinal)))
    }

    /// Waits for all queued work; surfaces asynchronous kernel faults as a typed error.
    pub fn synchronize(&self, op: &str) -> CResult<()> {
        self.stream.synchronize().map_err(CudaError::driver(op.to_string()))
    }
}
