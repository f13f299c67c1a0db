//! Reuse of activation buffers across ops and batches: large fresh allocations come straight
//! from the kernel as untouched pages, and faulting them in costs more than the element-wise
//! passes that fill them.

use std::sync::{Arc, Mutex};

/// Most buffers kept: a layer has at most five live activations.
const KEEP: usize = 8;

#[derive(Default)]
pub struct BufferPool(Mutex<Vec<Vec<f32>>>);

impl BufferPool {
    /// A buffer of `len` floats, reusing the smallest kept buffer that is large enough; it holds
    /// whatever it last held (zeros where it grew), for outputs written in full.
    pub fn take(&self, len: usize) -> Vec<f32> {
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let best = kept
            .iter()
            .enumerate()
            .filter(|(_, v)| v.capacity() >= len)
            .min_by_key(|(_, v)| v.capacity())
            .map(|(i, _)| i);
        let mut v = match best {
            Some(i) => kept.swap_remove(i),
            None => Vec::with_capacity(len),
        };
        drop(kept);
        v.truncate(len);
        v.resize(len, 0.0);
        v
    }

    pub fn give(&self, v: Vec<f32>) {
        if v.capacity() == 0 {
            return;
        }
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        kept.push(v);
        if kept.len() > KEEP {
            // Drop the smallest: large buffers are the expensive ones to fault in again.
            let i = kept.iter().enumerate().min_by_key(|(_, v)| v.capacity()).map(|(i, _)| i);
            if let Some(i) = i {
                kept.swap_remove(i);
            }
        }
    }
}

/// A buffer that returns to its pool when dropped.
pub struct Pooled {
    pub data: Vec<f32>,
    pool: Arc<BufferPool>,
}

impl Pooled {
    /// A buffer whose every element the caller overwrites (not zeroed: at bf16 speed, zeroing
    /// each GEMM's output cost ~9 % of a run).
    pub fn overwritten(pool: &Arc<BufferPool>, len: usize) -> Self {
        Pooled { data: pool.take(len), pool: pool.clone() }
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.pool.give(std::mem::take(&mut self.data));
    }
}
