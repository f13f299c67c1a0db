//! Pinned host staging buffers, one for uploads and one for downloads per backend, grown to
//! the largest batch and reused: batch tables go up through `staged_upload` (the next upload
//! waits on the previous copy's event before overwriting), head outputs come back through
//! `staged_download` (one synchronising copy, read in place by the caller).

use cudarc::driver::result as drv;

use super::CudaBackend;
use crate::error::{CResult, CudaError};

impl CudaBackend {
    pub(super) fn staged_upload(&self, words: &[u32], dst: u64) -> CResult<()> {
        let mut st = self.staging.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = st.up_done.take() {
            e.synchronize().map_err(CudaError::driver("waiting for the previous batch upload"))?;
        }
        if st.up.as_ref().is_none_or(|p| p.len() < words.len()) {
            let cap = words.len().next_power_of_two().max(4096);
            // SAFETY: written below before any read.
            st.up = Some(
                unsafe { self.ctx.alloc_pinned_with_flags::<u32>(cap, 0) }
                    .map_err(CudaError::driver("allocating pinned upload buffer"))?,
            );
        }
        let pinned = st.up.as_mut().expect("allocated above");
        let host =
            pinned.as_mut_slice().map_err(CudaError::driver("mapping pinned upload buffer"))?;
        host[..words.len()].copy_from_slice(words);
        // SAFETY: dst has room for `words` (allocated by the caller); the pinned buffer is not
        // touched again until `up_done` has completed.
        unsafe { drv::memcpy_htod_async(dst, &host[..words.len()], self.stream.cu_stream()) }
            .map_err(CudaError::driver("copying batch tables to the device"))?;
        st.up_done = Some(
            self.stream.record_event(None).map_err(CudaError::driver("recording upload event"))?,
        );
        Ok(())
    }

    /// Copies `n` f32 from the device into the pinned buffer and hands it to `take` (which copies
    /// out what it needs: one host copy per output).
    pub(super) fn staged_download<R>(
        &self,
        src: u64,
        n: usize,
        take: impl FnOnce(&[f32]) -> R,
    ) -> CResult<R> {
        if n == 0 {
            return Ok(take(&[]));
        }
        let mut st = self.staging.lock().unwrap_or_else(|e| e.into_inner());
        if st.down.as_ref().is_none_or(|p| p.len() < n) {
            let cap = n.next_power_of_two().max(4096);
            // SAFETY: written by the copy below before it is read.
            st.down = Some(
                unsafe { self.ctx.alloc_pinned_with_flags::<f32>(cap, 0) }
                    .map_err(CudaError::driver("allocating pinned download buffer"))?,
            );
        }
        let pinned = st.down.as_mut().expect("allocated above");
        let host =
            pinned.as_mut_slice().map_err(CudaError::driver("mapping pinned download buffer"))?;
        // SAFETY: src holds n f32 values; we synchronise before reading `host`.
        unsafe { drv::memcpy_dtoh_async(&mut host[..n], src, self.stream.cu_stream()) }
            .map_err(CudaError::driver("copying head outputs to the host"))?;
        self.synchronize("running the batch (kernels and copy back)")?;
        Ok(take(&host[..n]))
    }
}
