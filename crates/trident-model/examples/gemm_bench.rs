//! GFLOP/s of the CPU backend's linear-layer GEMM on the encoder's shapes (XLM-R large: hidden
//! 1024, FFN 4096), against the cores' FMA peak measured in the same run.
//!
//!     cargo run --release -p trident-model --example gemm_bench -- [ROWS] [THREADS] [MODE]
//!
//! MODE: `f32` (default; the weight packed on every call), `packed` (f32 packed once),
//! `bf16-call` (bf16 weights widened and packed on every call), `bf16` (bf16 packed once, widened
//! by the kernel as it loads, or from 256 rows once per block), `bf16-dot` (AVX512-BF16
//! `VDPBF16PS`: bf16 operands, f32 sums), `amx` (AMX-BF16), `int8` (the
//! int8 kernel below AMX: AVX512-VNNI where present, else AVX2); "GFLOP/s" counts a multiply
//! and an add per product.

use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let m: usize = args.get(1).map_or(4096, |s| s.parse().expect("ROWS"));
    let threads: usize = args.get(2).map_or(2, |s| s.parse().expect("THREADS"));
    let mode = args.get(3).map_or("f32", |s| s.as_str());
    let amx = mode == "amx";
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    for (name, n, k) in [("qkv part", 1024, 1024), ("ffn up", 4096, 1024), ("ffn down", 1024, 4096)]
    {
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 37 % 101) as f32 - 50.0) / 500.0).collect();
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 53 % 97) as f32 - 48.0) / 480.0).collect();
        let mut c = vec![0f32; m * n];
        #[cfg(target_arch = "x86_64")]
        let packed = amx.then(|| {
            use trident_model::cpu::amx;
            assert!(amx::available(), "this CPU (or its kernel) gives no AMX-BF16");
            amx::AmxWeight::pack(n, k, |j, kk| amx::bf16_bits(w[j * k + kk]))
        });
        #[cfg(target_arch = "x86_64")]
        let dot = (mode == "bf16-dot").then(|| {
            use trident_model::cpu::reduced;
            assert!(reduced::bf16_available(), "this CPU has no AVX512-BF16");
            pool.install(|| reduced::Bf16Panels::pack(n, k, &w))
        });
        let int8 = (mode == "int8").then(|| {
            use trident_model::cpu::reduced::{Int8Weight, QuantizedRows};
            pool.install(|| Int8Weight::new(QuantizedRows::new(n, k, &w, None)))
        });
        let packed_f32 = (mode == "packed")
            .then(|| pool.install(|| trident_model::cpu::PackedF32::pack(n, k, &w)));
        let packed_bf16 = (mode == "bf16")
            .then(|| pool.install(|| trident_model::cpu::Packed::<half::bf16>::pack(n, k, &w)));
        let call_bf16 = (mode == "bf16-call")
            .then(|| w.iter().map(|&x| half::bf16::from_f32(x)).collect::<Vec<_>>());
        let mut run = || {
            // SAFETY: c is [m × n]; AMX was checked above.
            pool.install(|| unsafe {
                #[cfg(target_arch = "x86_64")]
                if let Some(p) = &packed {
                    return trident_model::cpu::amx::matmul_amx(m, &a, p, c.as_mut_ptr(), n);
                }
                #[cfg(target_arch = "x86_64")]
                if let Some(p) = &dot {
                    return trident_model::cpu::reduced::matmul_bf16(m, &a, p, c.as_mut_ptr(), n);
                }
                if let Some(p) = &packed_f32 {
                    return trident_model::cpu::matmul_packed(m, &a, p, c.as_mut_ptr(), n);
                }
                if let Some(p) = &packed_bf16 {
                    return trident_model::cpu::matmul_packed(m, &a, p, c.as_mut_ptr(), n);
                }
                if let Some(wb) = &call_bf16 {
                    return trident_model::cpu::matmul_wt(m, n, k, &a, wb, c.as_mut_ptr(), n);
                }
                if let Some(p) = &int8 {
                    let none = trident_model::cpu::reduced::HeldOut::default();
                    return trident_model::cpu::reduced::matmul_int8(
                        m,
                        &a,
                        p,
                        &none,
                        c.as_mut_ptr(),
                        n,
                    );
                }
                trident_model::cpu::matmul_wt(m, n, k, &a, &w, c.as_mut_ptr(), n)
            })
        };
        run();
        let reps = 5;
        let t = Instant::now();
        for _ in 0..reps {
            run();
        }
        let s = t.elapsed().as_secs_f64() / reps as f64;
        println!("{name:9} {m}×{n}×{k}: {:.1} GFLOP/s", 2.0 * (m * n * k) as f64 / s / 1e9);
    }
}
