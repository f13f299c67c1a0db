//! GPU benchmark on the real BGE-M3 shape (random weights, XLM-R large): tokens/s and model FLOP
//! utilisation for documents of 128, 512, 2048 and 8192 tokens with all three heads, next to the
//! raw cuBLAS bf16 GEMM rate measured in the same run (the practical ceiling). Prints a table last;
//! `TRIDENT_BENCH_TABLE=<file>` also writes it there. Peak: `TRIDENT_PEAK_TFLOPS` (default 989,
//! H100/H200 SXM dense bf16). Attention kernel: `TRIDENT_CUDA_ATTENTION` (`tensor-core`, the
//! default, or `generic`).

use std::time::{Duration, Instant};

use trident_core::{Modes, TokenizedDoc};
use trident_cuda::{
    cuda_available, AttentionKernel, CudaBackend, CudaError, CudaOptions, Precision,
};
use trident_model::{Checkpoint, Encoder};

fn gemm_tflops(be: &CudaBackend, m: usize, k: usize, n: usize) -> Result<f64, CudaError> {
    let x = be.scratch(m * k * 2)?;
    let w = be.scratch(n * k * 2)?;
    let y = be.scratch(m * n * 2)?;
    for b in [&x, &w] {
        // bf16 0x3c3c ≈ 0.0115 everywhere: finite, non-trivial inputs.
        unsafe {
            cudarc::driver::result::memset_d8_async(
                b.ptr(),
                0x3c,
                b.bytes(),
                be.stream().cu_stream(),
            )
        }
        .map_err(CudaError::driver("memset"))?;
    }
    for _ in 0..3 {
        be.gemm_raw(x.ptr(), m, k, w.ptr(), n, y.ptr(), false, "bench warm-up")?;
    }
    be.synchronize("gemm warm-up")?;
    let reps = 20;
    let t = Instant::now();
    for _ in 0..reps {
        be.gemm_raw(x.ptr(), m, k, w.ptr(), n, y.ptr(), false, "bench")?;
    }
    be.synchronize("gemm bench")?;
    Ok(2.0 * (m * k * n) as f64 * reps as f64 / t.elapsed().as_secs_f64() / 1e12)
}

fn docs(n: usize, len: usize, vocab: usize, seed: u64) -> Vec<TokenizedDoc> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            let mut ids: Vec<u32> = (0..len)
                .map(|_| {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    4 + (s % (vocab as u64 - 5)) as u32
                })
                .collect();
            ids[0] = 0;
            ids[len - 1] = 2;
            TokenizedDoc { ids, truncated: false }
        })
        .collect()
}

fn time_encode(
    enc: &Encoder<CudaBackend>,
    batch: &[TokenizedDoc],
    modes: Modes,
) -> Result<(f64, usize), Box<dyn std::error::Error>> {
    enc.encode(batch, modes)?; // warm-up: buffers, cuBLAS heuristics
    let mut reps = 0;
    let t = Instant::now();
    while reps < 3 || (t.elapsed() < Duration::from_millis(1500) && reps < 20) {
        let out = enc.encode(batch, modes)?;
        assert_eq!(out.len(), batch.len());
        reps += 1;
    }
    Ok((t.elapsed().as_secs_f64() / reps as f64, reps))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if !cuda_available() {
        eprintln!("SKIP gpu_bench: no CUDA driver/device on this machine");
        return Ok(());
    }
    let peak = std::env::var("TRIDENT_PEAK_TFLOPS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(989.0)
        * 1e12;
    let attention = match std::env::var("TRIDENT_CUDA_ATTENTION") {
        Ok(v) => v.parse::<AttentionKernel>()?,
        Err(_) => AttentionKernel::default(),
    };
    let options = CudaOptions { precision: Precision::Bf16, attention };
    let be = CudaBackend::new(0, options)?;
    let device = be.device_name().to_string();
    eprintln!(
        "gpu_bench: {}; NVRTC {:?}",
        trident_model::Backend::describe(&be),
        trident_cuda::compile::nvrtc_version()?
    );
    let mut lines = vec![format!("device: {device}; peak {:.0} TFLOP/s bf16 dense", peak / 1e12)];
    for (m, k, n, what) in [
        (8192, 8192, 8192, "square 8192³"),
        (32768, 1024, 4096, "FFN-in 32768×1024→4096"),
        (32768, 4096, 1024, "FFN-out 32768×4096→1024"),
        (32768, 1024, 3072, "QKV 32768×1024→3072"),
    ] {
        let r = match gemm_tflops(&be, m, k, n) {
            Ok(r) => r,
            Err(e) => {
                lines.push(format!("cuBLAS bf16 GEMM {what}: failed: {e}"));
                continue;
            }
        };
        lines.push(format!(
            "cuBLAS bf16 GEMM {what:<26} {r:7.1} TFLOP/s ({:4.1} % of peak)",
            100.0 * r * 1e12 / peak
        ));
        eprintln!("{}", lines.last().unwrap());
    }
    let t = Instant::now();
    let ckpt = Checkpoint::random_xlmr_large(1);
    let vocab = ckpt.config.vocab_size;
    let layers = ckpt.config.num_hidden_layers;
    let enc = Encoder::new(&ckpt, be)?;
    // A second worker on the same device (`--workers 2`): its own backend, stream and weights.
    let enc2 = CudaBackend::new(0, options)
        .map_err(|e| e.to_string())
        .and_then(|b| Encoder::new(&ckpt, b).map_err(|e| e.to_string()));
    drop(ckpt);
    eprintln!(
        "gpu_bench: random XLM-R large ({layers} layers) built and uploaded in {:?}",
        t.elapsed()
    );
    lines.push(String::new());
    lines.push(format!(
        "{:>12} | {:<14} | {:>10} | {:>9} | {:>9} | {:>6}",
        "docs×tokens", "heads", "tokens/s", "ms/batch", "TFLOP/s", "MFU"
    ));
    let dense_only = Modes { dense: true, sparse: false, colbert: false };
    for (len, n) in [(128usize, 256usize), (512, 64), (2048, 16), (8192, 4)] {
        let batch = docs(n, len, vocab, len as u64);
        for (modes, label) in [(Modes::ALL, "dense+sparse+colbert"), (dense_only, "dense")] {
            let label = if label.len() > 14 { "all three" } else { label };
            let (secs, reps) = match time_encode(&enc, &batch, modes) {
                Ok(r) => r,
                Err(e) => {
                    lines.push(format!("{:>12} | {label:<14} | failed: {e}", format!("{n}×{len}")));
                    eprintln!("{}", lines.last().unwrap());
                    continue;
                }
            };
            let tps = (n * len) as f64 / secs;
            let flops = tps * (604e6 + 98304.0 * len as f64);
            lines.push(format!(
                "{:>12} | {:<14} | {:>10.0} | {:>9.2} | {:>9.1} | {:>5.1}%",
                format!("{n}×{len}"),
                label,
                tps,
                secs * 1e3,
                flops / 1e12,
                100.0 * flops / peak
            ));
            eprintln!("{}  ({reps} reps)", lines.last().unwrap());
        }
    }
    // Two workers on one device, each encoding its own copy of the batch on its own thread: the
    // gain over one worker is the overlap of one batch's copies and host work with the other's
    // kernels.
    match &enc2 {
        Err(e) => lines.push(format!("two workers on one device: failed to build: {e}")),
        Ok(enc2) => {
            lines.push(String::new());
            lines.push(format!(
                "{:>12} | {:<14} | {:>10} | {:>10} | {:>6}",
                "docs×tokens", "all three", "1 worker", "2 workers", "gain"
            ));
            for (len, n) in [(128usize, 256usize), (512, 64), (2048, 16)] {
                let batch = docs(n, len, vocab, len as u64);
                let one = match time_encode(&enc, &batch, Modes::ALL) {
                    Ok((secs, _)) => (n * len) as f64 / secs,
                    Err(e) => {
                        lines.push(format!("{n}×{len}: one worker failed: {e}"));
                        continue;
                    }
                };
                if let Err(e) = enc2.encode(&batch, Modes::ALL) {
                    lines.push(format!("{n}×{len}: second worker failed: {e}"));
                    continue;
                }
                let reps = 8;
                let t = Instant::now();
                let run = |e: &'static str, enc: &Encoder<CudaBackend>| -> Result<(), String> {
                    for _ in 0..reps {
                        enc.encode(&batch, Modes::ALL).map_err(|x| format!("{e}: {x}"))?;
                    }
                    Ok(())
                };
                let ok = std::thread::scope(|s| {
                    let a = s.spawn(|| run("worker 0", &enc));
                    let b = s.spawn(|| run("worker 1", enc2));
                    a.join().expect("worker 0").and(b.join().expect("worker 1"))
                });
                let two = (2 * reps * n * len) as f64 / t.elapsed().as_secs_f64();
                match ok {
                    Ok(()) => lines.push(format!(
                        "{:>12} | {:<14} | {:>10.0} | {:>10.0} | {:>5.2}×",
                        format!("{n}×{len}"),
                        "tokens/s",
                        one,
                        two,
                        two / one
                    )),
                    Err(e) => lines.push(format!("{n}×{len}: two workers failed: {e}")),
                }
                eprintln!("{}", lines.last().unwrap());
            }
        }
    }
    let table = lines.join("\n");
    if let Some(p) = std::env::var_os("TRIDENT_BENCH_TABLE") {
        std::fs::write(p, format!("{table}\n"))?;
    }
    println!("\n{table}");
    Ok(())
}
