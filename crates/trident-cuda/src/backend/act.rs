//! Activations: allocation from the pool (plain, or residual-stream with its fp32 copy in bf16
//! mode), the fp32 view of the residual stream, uploads of host f32 values in the backend's
//! precision (weights and activations), and `CudaAct`'s host round trips for tests.

use cudarc::driver::{result as drv, CudaSlice};

use super::{ptr, CudaAct, CudaBackend, Precision};
use crate::error::{CResult, CudaError};

impl CudaBackend {
    pub(super) fn alloc_act(&self, rows: usize, cols: usize, what: &str) -> CResult<CudaAct> {
        let buf = self.pool.get(rows * cols * self.precision.elem(), what)?;
        Ok(CudaAct { buf, wide: None, rows, cols })
    }

    /// An activation of the residual stream: with its fp32 copy in bf16 mode.
    pub(super) fn alloc_stream(&self, rows: usize, cols: usize, what: &str) -> CResult<CudaAct> {
        let mut act = self.alloc_act(rows, cols, what)?;
        if self.precision == Precision::Bf16 {
            act.wide = Some(self.pool.get(rows * cols * 4, what)?);
        }
        Ok(act)
    }

    /// Device pointer to the fp32 values of a residual-stream activation.
    pub(super) fn stream_f32(&self, a: &CudaAct, what: &str) -> CResult<u64> {
        match (&a.wide, self.precision) {
            (Some(w), _) => Ok(w.ptr()),
            (None, Precision::F32) => Ok(a.buf.ptr()),
            (None, Precision::Bf16) => Err(CudaError::Unsupported(format!(
                "{what}: the activation is not a LayerNorm output (no fp32 copy)"
            ))),
        }
    }

    /// Host f32 values → device buffer in the backend's precision.
    pub(super) fn upload_values(&self, data: &[f32], what: &str) -> CResult<CudaSlice<u8>> {
        let bytes: Vec<u8> = match self.precision {
            Precision::F32 => data.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Precision::Bf16 => {
                data.iter().flat_map(|&x| half::bf16::from_f32(x).to_bits().to_le_bytes()).collect()
            }
        };
        self.stream.clone_htod(&bytes).map_err(CudaError::driver(format!("uploading {what}")))
    }

    pub(super) fn upload_f32(&self, data: &[f32], what: &str) -> CResult<CudaSlice<f32>> {
        self.stream.clone_htod(data).map_err(CudaError::driver(format!("uploading {what}")))
    }
}

impl CudaAct {
    /// Copies the activation to the host as f32 (tests and debugging).
    pub fn to_host(&self, be: &CudaBackend) -> Result<Vec<f32>, CudaError> {
        be.bind()?;
        let n = self.rows * self.cols;
        let mut raw = vec![0u8; n * be.precision.elem()];
        if n > 0 {
            // SAFETY: the buffer holds n elements; synchronised right after.
            unsafe { drv::memcpy_dtoh_async(&mut raw[..], self.buf.ptr(), be.stream.cu_stream()) }
                .map_err(CudaError::driver("copying an activation to the host"))?;
            be.synchronize("copying an activation to the host")?;
        }
        Ok(match be.precision {
            Precision::F32 => {
                raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
            }
            Precision::Bf16 => raw
                .chunks_exact(2)
                .map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
                .collect(),
        })
    }

    /// Uploads host f32 values as an activation `[rows × cols]` (tests of single ops).
    pub fn from_host(
        be: &CudaBackend,
        data: &[f32],
        rows: usize,
        cols: usize,
    ) -> Result<CudaAct, CudaError> {
        assert_eq!(data.len(), rows * cols, "activation data/shape mismatch");
        let mut act = be.alloc_stream(rows, cols, "uploaded activation")?;
        if let Some(w) = act.wide.take() {
            // The exact values as the fp32 copy, so uploaded rows can stand for the stream.
            let tmp = be.upload_f32(data, "activation (fp32)")?;
            if !data.is_empty() {
                // SAFETY: both buffers hold 4·len bytes; stream-ordered.
                unsafe {
                    drv::memcpy_dtod_async(
                        w.ptr(),
                        ptr(&tmp, &be.stream),
                        4 * data.len(),
                        be.stream.cu_stream(),
                    )
                }
                .map_err(CudaError::driver("copying an activation"))?;
                be.synchronize("copying an activation")?;
            }
            act.wide = Some(w);
        }
        let tmp = be.upload_values(data, "activation")?;
        if !data.is_empty() {
            let bytes = data.len() * be.precision.elem();
            // SAFETY: both buffers hold `bytes` bytes; stream-ordered.
            unsafe {
                drv::memcpy_dtod_async(
                    act.buf.ptr(),
                    ptr(&tmp, &be.stream),
                    bytes,
                    be.stream.cu_stream(),
                )
            }
            .map_err(CudaError::driver("copying an activation"))?;
            be.synchronize("copying an activation")?;
        }
        Ok(act)
    }
}
