//! Where and how the encoder runs, for every command alike: `--device`/`--devices`,
//! `--workers`, `--threads`, `--precision`, and the kernel choices `--cpu-isa` and
//! `--cuda-attention`. [`workers`] is the one factory of encoder workers in the binary (CPU or
//! CUDA, over a loaded or a random checkpoint).

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use trident_engine::model::{load_model, LoadedModel};
use trident_engine::WorkerSpec;
use trident_model::cpu::{CpuBackend, CpuPrecision, Isa};
use trident_model::{BackendError, Checkpoint, Embedder, Encoder, ModelError};

/// The placement settings every model-running command takes (`embed`, `score`, `bench`,
/// `eval`, `serve`; `node` takes the same keys through its own layered settings).
#[derive(clap::Args, Clone, Debug)]
#[command(next_help_heading = "Placement and precision")]
pub struct PlacementArgs {
    /// `cpu` or `cuda:N`.
    #[arg(long, env = "TRIDENT_DEVICE", default_value = "cpu")]
    pub device: String,
    /// CUDA device ordinals, `--workers` workers each: `--devices 0,1`.
    #[arg(long, env = "TRIDENT_DEVICES", value_delimiter = ',', conflicts_with = "device")]
    pub devices: Vec<usize>,
    /// Workers: CPU workers (each with `--threads` threads), or workers per CUDA device (each
    /// on its own stream, so one batch's copies and host work overlap another's kernels).
    #[arg(long, env = "TRIDENT_WORKERS", default_value_t = 1)]
    pub workers: usize,
    /// CPU threads per worker (0 = all cores).
    #[arg(long, env = "TRIDENT_THREADS", default_value_t = 0)]
    pub threads: usize,
    /// Precision of the linear layers: f32 (the CPU's default), bf16 (the GPU's default; on a
    /// CPU with AMX the tile unit multiplies bf16 operands, elsewhere only the weights are
    /// rounded and the arithmetic stays f32), or int8 (CPU only: calibrated per-channel weights,
    /// per-token activations; the tile unit on AMX-INT8, else AVX512-VNNI, else portable code).
    #[arg(long, env = "TRIDENT_PRECISION")]
    pub precision: Option<CpuPrecision>,
    /// Cap the CPU kernels at this instruction set: generic, avx2, avx512 or amx (default: the
    /// best this CPU has). For comparisons and tests.
    #[arg(long, env = "TRIDENT_CPU_ISA", value_parser = parse_isa)]
    pub cpu_isa: Option<Isa>,
    /// CUDA bf16 attention kernel: tensor-core (default) or generic (fp32 arithmetic).
    #[arg(long, env = "TRIDENT_CUDA_ATTENTION", default_value = "tensor-core")]
    pub cuda_attention: String,
}

fn parse_isa(s: &str) -> Result<Isa, String> {
    s.parse()
}

/// Where the encoder runs: the CPU, or a list of CUDA devices.
#[derive(Debug, PartialEq, Eq)]
pub enum Placement {
    Cpu,
    Cuda(Vec<usize>),
}

impl Placement {
    /// `--device cpu|cuda:N`, or `--devices 0,1,…` (which wins over the default `cpu`).
    pub fn parse(device: &str, devices: &[usize]) -> anyhow::Result<Placement> {
        if !devices.is_empty() {
            anyhow::ensure!(
                device == "cpu",
                "give either --device {device} or --devices {devices:?}, not both"
            );
            let mut seen = std::collections::BTreeSet::new();
            if let Some(d) = devices.iter().find(|d| !seen.insert(**d)) {
                anyhow::bail!("--devices lists CUDA device {d} twice");
            }
            return Ok(Placement::Cuda(devices.to_vec()));
        }
        match device {
            "cpu" => Ok(Placement::Cpu),
            other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(d)) => Ok(Placement::Cuda(vec![d])),
                _ => anyhow::bail!("--device {other}: expected `cpu` or `cuda:N`"),
            },
        }
    }
}

impl PlacementArgs {
    /// Checks the settings (before any slow model load, so a typo fails at once) and applies
    /// the process-wide ones (the CPU kernel cap).
    pub fn check(&self) -> anyhow::Result<Placement> {
        let placement = Placement::parse(&self.device, &self.devices)?;
        anyhow::ensure!(self.workers > 0, "--workers must be positive");
        self.cuda_attention
            .parse::<trident_cuda::AttentionKernel>()
            .map_err(|e| anyhow::anyhow!("--cuda-attention: {e}"))?;
        trident_model::cpu::force_isa(self.cpu_isa);
        Ok(placement)
    }
}

/// Resolve `--model` (a directory or a hub id), load it and build its workers.
pub fn build_workers(
    model: &Path,
    args: &PlacementArgs,
) -> anyhow::Result<(LoadedModel, Vec<WorkerSpec>)> {
    let placement = args.check()?;
    // A hub id is downloaded (or found in the hub cache) after the placement check.
    let dir = super::hub::resolve_model_path(model)?;
    let loaded = load_model(&dir).with_context(|| format!("loading model {}", model.display()))?;
    let specs = workers(&placement, args, loaded.checkpoint.clone(), &loaded.tokenizer)?;
    let specs = inject_faults(specs, &loaded.tokenizer);
    Ok((loaded, specs))
}

/// The worker specs for a checkpoint: `--workers` CPU workers, or `--workers` per CUDA device
/// (each with its own backend: stream, weights, buffers). A restarted worker builds a fresh
/// encoder over the same shared checkpoint; CPU workers share one packed copy of its weights.
/// At int8 the checkpoint is calibrated once, here, for every worker (`trident_model::calibrate`).
pub fn workers(
    placement: &Placement,
    args: &PlacementArgs,
    ckpt: Arc<Checkpoint>,
    tokenizer: &trident_model::Tokenizer,
) -> anyhow::Result<Vec<WorkerSpec>> {
    let special = tokenizer.special_ids();
    match placement {
        Placement::Cpu => {
            let (threads, precision) = (args.threads, args.precision.unwrap_or_default());
            let smoothing = if precision == CpuPrecision::Int8 {
                let t = std::time::Instant::now();
                let s = trident_model::calibrate::int8_smoothing(&ckpt, tokenizer, threads)
                    .context("int8 calibration")?;
                let secs = t.elapsed().as_secs_f32();
                tracing::info!(layers = s.layers(), secs, "int8 calibration");
                Some(s)
            } else {
                None
            };
            // One packed copy of the weights for all workers (and their restarts).
            let shared = trident_model::cpu::SharedWeights::default();
            Ok((0..args.workers)
                .map(|i| {
                    let (ckpt, smoothing) = (ckpt.clone(), smoothing.clone());
                    let shared = shared.clone();
                    WorkerSpec {
                        name: format!("cpu-{i}"),
                        factory: Arc::new(move || {
                            let mut backend = CpuBackend::with_precision(threads, precision)
                                .sharing(shared.clone());
                            if let Some(s) = &smoothing {
                                backend = backend.with_smoothing(s.clone());
                            }
                            let mut enc = Encoder::new(&ckpt, backend)?;
                            enc.set_special_ids(special);
                            Ok(Box::new(enc) as Box<dyn Embedder>)
                        }),
                    }
                })
                .collect())
        }
        Placement::Cuda(devices) => cuda_workers(devices, args, ckpt, special),
    }
}

fn cuda_workers(
    devices: &[usize],
    args: &PlacementArgs,
    ckpt: Arc<Checkpoint>,
    special: trident_model::SpecialIds,
) -> anyhow::Result<Vec<WorkerSpec>> {
    use trident_cuda::{cuda_available, AttentionKernel, CudaBackend, CudaOptions, Precision};
    anyhow::ensure!(
        cuda_available(),
        "--devices {devices:?}: no CUDA driver or device found (use --device cpu)"
    );
    let precision = match args.precision {
        Some(CpuPrecision::F32) => Precision::F32,
        Some(CpuPrecision::Bf16) | None => Precision::Bf16,
        Some(CpuPrecision::Int8) => {
            anyhow::bail!("--precision int8 is a CPU mode; CUDA workers run f32 or bf16")
        }
    };
    let attention: AttentionKernel =
        args.cuda_attention.parse().map_err(|e| anyhow::anyhow!("--cuda-attention: {e}"))?;
    let options = CudaOptions { precision, attention };
    let per_device = args.workers;
    let mut specs = Vec::new();
    for &device in devices {
        for i in 0..per_device {
            let ckpt = ckpt.clone();
            let factory = move || -> Result<Box<dyn Embedder>, ModelError> {
                let backend = CudaBackend::new(device, options).map_err(BackendError::from)?;
                let mut enc = Encoder::new(&ckpt, backend)?;
                enc.set_special_ids(special);
                Ok(Box::new(enc))
            };
            let name = if per_device == 1 {
                format!("cuda:{device}")
            } else {
                format!("cuda:{device}/{i}")
            };
            specs.push(WorkerSpec { name, factory: Arc::new(factory) });
        }
    }
    Ok(specs)
}

/// The embedder of a command that encodes on its own thread (`score`, `bench`): the first
/// worker's, built now.
pub fn first_embedder(specs: &[WorkerSpec]) -> anyhow::Result<Box<dyn Embedder>> {
    let spec = specs.first().context("no worker")?;
    (spec.factory)().map_err(|e| anyhow::anyhow!("worker {}: {e}", spec.name))
}

/// `TRIDENT_FAULT_INJECT` (test builds only; see `trident_engine::fault`).
fn inject_faults(specs: Vec<WorkerSpec>, tokenizer: &trident_model::Tokenizer) -> Vec<WorkerSpec> {
    match std::env::var("TRIDENT_FAULT_INJECT") {
        Ok(rules) if !rules.is_empty() => trident_engine::fault::inject(specs, &rules, tokenizer),
        _ => specs,
    }
}

#[cfg(test)]
mod tests {
    use super::Placement;

    #[test]
    fn placement_from_flags() {
        assert_eq!(Placement::parse("cpu", &[]).unwrap(), Placement::Cpu);
        assert_eq!(Placement::parse("cuda:3", &[]).unwrap(), Placement::Cuda(vec![3]));
        assert_eq!(Placement::parse("cpu", &[0, 1]).unwrap(), Placement::Cuda(vec![0, 1]));
        let e = Placement::parse("gpu", &[]).unwrap_err().to_string();
        assert!(e.contains("--device gpu"), "{e}");
        let e = Placement::parse("cuda:0", &[1]).unwrap_err().to_string();
        assert!(e.contains("not both"), "{e}");
        let e = Placement::parse("cpu", &[0, 1, 0]).unwrap_err().to_string();
        assert!(e.contains("device 0 twice"), "{e}");
    }
}
