//! Typed errors of the CUDA backend; each names the operation that failed.

use trident_model::BackendError;

#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    #[error("no CUDA driver library (libcuda) could be loaded: no NVIDIA driver on this machine")]
    NoDriver,
    #[error("CUDA library {0} could not be loaded (set LD_LIBRARY_PATH to the CUDA 13 libraries)")]
    MissingLibrary(&'static str),
    #[error("CUDA device {requested} does not exist ({available} device(s) visible)")]
    NoDevice { requested: usize, available: usize },
    #[error("CUDA driver call failed in {op}: {source}")]
    Driver {
        op: String,
        #[source]
        source: cudarc::driver::DriverError,
    },
    #[error("cuBLAS call failed in {op}: {source}")]
    Cublas {
        op: String,
        #[source]
        source: cudarc::cublas::result::CublasError,
    },
    #[error("NVRTC could not compile kernels/{kernel} for {arch}: {log}")]
    Nvrtc { kernel: String, arch: String, log: String },
    #[error("unsupported by the CUDA backend: {0}")]
    Unsupported(String),
}

impl CudaError {
    pub fn driver(op: impl Into<String>) -> impl FnOnce(cudarc::driver::DriverError) -> CudaError {
        let op = op.into();
        move |source| CudaError::Driver { op, source }
    }

    pub fn cublas(
        op: impl Into<String>,
    ) -> impl FnOnce(cudarc::cublas::result::CublasError) -> CudaError {
        let op = op.into();
        move |source| CudaError::Cublas { op, source }
    }

    fn op(&self) -> String {
        match self {
            CudaError::Driver { op, .. } | CudaError::Cublas { op, .. } => op.clone(),
            CudaError::Nvrtc { kernel, .. } => format!("nvrtc compile {kernel}"),
            CudaError::NoDriver | CudaError::MissingLibrary(_) | CudaError::NoDevice { .. } => {
                "init".into()
            }
            CudaError::Unsupported(_) => "check".into(),
        }
    }
}

impl From<CudaError> for BackendError {
    fn from(e: CudaError) -> Self {
        BackendError::new("cuda", e.op(), e)
    }
}

pub type CResult<T> = Result<T, CudaError>;
