//! Device buffers reused across batches. One stream orders every use, so a buffer returned to
//! the pool can be handed out again at once: later kernels on the stream run after earlier ones.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};

use crate::error::{CResult, CudaError};
use crate::plan::size_class;

#[derive(Default)]
struct Free {
    by_class: HashMap<usize, Vec<CudaSlice<u8>>>,
}

/// A pool of untyped device buffers keyed by size class.
#[derive(Clone)]
pub struct Pool {
    stream: Arc<CudaStream>,
    free: Arc<Mutex<Free>>,
}

/// A device buffer on loan from the pool; goes back on drop.
pub struct DevBuf {
    slice: Option<CudaSlice<u8>>,
    ptr: u64,
    bytes: usize,
    free: Arc<Mutex<Free>>,
}

impl Pool {
    pub fn new(stream: Arc<CudaStream>) -> Self {
        Pool { stream, free: Arc::default() }
    }

    /// A buffer of at least `bytes` bytes (contents undefined).
    pub fn get(&self, bytes: usize, what: &str) -> CResult<DevBuf> {
        let class = size_class(bytes);
        let reused = self
            .free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .by_class
            .get_mut(&class)
            .and_then(Vec::pop);
        let slice = match reused {
            Some(s) => s,
            // SAFETY: uninitialised device memory; every kernel writes before it reads.
            None => unsafe { self.stream.alloc::<u8>(class) }
                .map_err(CudaError::driver(format!("allocating {class} bytes for {what}")))?,
        };
        let ptr = slice.device_ptr(&self.stream).0;
        Ok(DevBuf { slice: Some(slice), ptr, bytes, free: self.free.clone() })
    }

    /// Bytes held idle by the pool.
    pub fn idle_bytes(&self) -> usize {
        let f = self.free.lock().unwrap_or_else(|e| e.into_inner());
        f.by_class.iter().map(|(c, v)| c * v.len()).sum()
    }
}

impl DevBuf {
    pub fn ptr(&self) -> u64 {
        self.ptr
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for DevBuf {
    fn drop(&mut self) {
        if let Some(s) = self.slice.take() {
            let class = s.len();
            self.free
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .by_class
                .entry(class)
                .or_default()
                .push(s);
        }
    }
}
