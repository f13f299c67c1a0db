//! What a stage of a job costs in CPU time. The file formats' work (Parquet decoding, Arrow
//! columns, compression, JSON writing) runs on threads that share the cores with the encoder;
//! the wall time of those sections would also count the encoder preempting them, so the
//! calling thread's CPU time is summed instead.

/// CPU seconds the calling thread has used so far (wall seconds where the OS gives no
/// per-thread clock).
pub fn thread_seconds() -> f64 {
    #[cfg(unix)]
    {
        let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: `t` is a valid timespec; the clock id is POSIX's per-thread CPU clock.
        if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) } == 0 {
            return t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9;
        }
    }
    use std::sync::OnceLock;
    static START: OnceLock<std::time::Instant> = OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed().as_secs_f64()
}

/// Run `f`, adding the CPU time it took on this thread to `acc`. `f` must not await or
/// hand its work to another thread (its time would be lost or misattributed).
pub fn charge<T>(acc: &mut f64, f: impl FnOnce() -> T) -> T {
    let t0 = thread_seconds();
    let r = f();
    *acc += (thread_seconds() - t0).max(0.0);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_work_not_sleep() {
        let mut busy = 0.0;
        let x = charge(&mut busy, || (0..20_000_000u64).fold(0u64, |a, i| a ^ i.wrapping_mul(31)));
        std::hint::black_box(x);
        let mut idle = 0.0;
        charge(&mut idle, || std::thread::sleep(std::time::Duration::from_millis(100)));
        assert!(busy > 0.0, "busy work charged nothing");
        assert!(idle < 0.05, "a sleep was charged {idle} s of CPU");
    }
}
