//! Loading a linear layer's weights at a precision: f32 or bf16 packed for the micro-kernels,
//! AMX-BF16, AVX512-BF16 and int8 (AMX-INT8, VNNI, AVX2 or portable) packed for their kernels,
//! with the parts of a fused layer (Q, K, V) made one weight so its input is quantised or
//! converted once. The workers of one model share these copies ([`SharedWeights`]).

use std::collections::HashMap;
use std::sync::Mutex;

use super::*;

/// The packed linear-layer weights of one model's workers, by layer name: packing at load makes
/// a copy (the mapped checkpoint's pages are then dropped), and N workers with a copy each would
/// hold N times the weights where they used to share one mapping.
#[derive(Clone, Default)]
pub struct SharedWeights(Arc<Mutex<HashMap<String, Shared>>>);

/// A shared weight and what it was packed from (checked on every take, so a name reused for
/// other weights packs its own).
struct Shared {
    source: ((usize, usize), usize, usize),
    precision: CpuPrecision,
    weight: Arc<PartWeight>,
}

impl CpuBackend {
    /// Loads a linear layer at `precision` (the backend's, or f32 for the heads).
    pub(super) fn load(
        &self,
        name: &str,
        parts: &[LinearParts],
        precision: CpuPrecision,
    ) -> BResult<CpuLinear> {
        let Some(first) = parts.first() else { return Err(Self::err(name, "no weight parts")) };
        let in_dim = *first.weight.shape().last().unwrap_or(&0);
        let mut bias = Vec::new();
        for p in parts {
            let s = p.weight.shape();
            if s.len() != 2 || s[1] != in_dim {
                return Err(Self::err(
                    name,
                    format!("weight shape {s:?}, expected [out, {in_dim}]"),
                ));
            }
            check_len(name, &p.bias, s[0])?;
            bias.extend_from_slice(&p.bias.values());
        }
        let reduced = precision.reduced();
        let int8 = precision == CpuPrecision::Int8;
        let bf16 = reduced && !int8;
        let amx = bf16 && self.kernels.amx;
        let n = bias.len();
        let linear =
            |weights| CpuLinear { name: name.to_string(), weights, bias, in_dim, out_dim: n };
        // int8, AMX and packed f32/bf16 weights are copies: the parts become one weight, so the
        // layer's input is quantised (or converted) once, not once per part (Q, K, V). An f32
        // layer narrower than one panel (the sparse head, a dot product) stays as loaded, and
        // so does every layer of the int8 calibration pass: it multiplies by each weight once,
        // and a packed copy of the whole model would set the int8 load's peak memory (the
        // same bits: packing per call is what the packed kernels are tested against).
        if !(int8 || bf16 || n >= kernel::NR) || self.recorder.is_some() {
            return Ok(linear(
                parts.iter().map(|p| Arc::new(PartWeight::F32(p.weight.clone()))).collect(),
            ));
        }
        let source = (first.weight.source_id(), n, in_dim);
        // Held while packing: a second worker waits for the first one's copy.
        let mut shared =
            self.shared.as_ref().map(|s| s.0.lock().unwrap_or_else(|e| e.into_inner()));
        if let Some(s) = shared.as_ref().and_then(|m| m.get(name)) {
            if s.source == source && s.precision == precision {
                return Ok(linear(vec![s.weight.clone()]));
            }
        }
        let src = rows_of(parts);
        let weight = Arc::new(self.pool.install(|| {
            #[cfg(target_arch = "x86_64")]
            if amx {
                let packed = kernel_amx::AmxWeight::pack(n, in_dim, |j, kk| {
                    kernel_amx::bf16_bits(src[j * in_dim + kk])
                });
                return PartWeight::Amx(packed);
            }
            if int8 {
                let factors = self.smoothing.as_ref().and_then(|s| {
                    let mut rest = &src[..];
                    let data: Vec<&[f32]> = parts
                        .iter()
                        .map(|p| {
                            let (part, tail) = rest.split_at(p.weight.len());
                            rest = tail;
                            part
                        })
                        .collect();
                    s.factors(name, &data, in_dim)
                });
                let q = quant::QuantizedRows::new(n, in_dim, &src, factors.as_deref());
                let held = quant::HeldOut::new(n, in_dim, &src, factors.as_deref());
                #[cfg(target_arch = "x86_64")]
                if self.kernels.amx {
                    return PartWeight::AmxI8(kernel_amx_int8::AmxI8Weight::pack(&q), held);
                }
                return PartWeight::I8(kernel_int8::Int8Weight::new(q), held);
            }
            #[cfg(target_arch = "x86_64")]
            if bf16 && self.kernels.bf16_dot {
                return PartWeight::Bf16Dot(kernel_bf16::Bf16Panels::pack(n, in_dim, &src));
            }
            if bf16 {
                return PartWeight::PackedBf16(packed::Packed::pack(n, in_dim, &src));
            }
            PartWeight::Packed(packed::PackedF32::pack(n, in_dim, &src))
        }));
        parts.iter().for_each(|p| p.weight.release_pages());
        if let Some(m) = shared.as_mut() {
            m.insert(name.to_string(), Shared { source, precision, weight: weight.clone() });
        }
        Ok(linear(vec![weight]))
    }
}

/// The parts' weight rows one after another as f32: borrowed when there is one f32 part, else
/// a copy that lives while the layer is packed (16-bit weights are widened here).
fn rows_of(parts: &[LinearParts]) -> std::borrow::Cow<'_, [f32]> {
    match parts {
        [one] => one.weight.values(),
        _ => {
            let mut rows = vec![0.0; parts.iter().map(|p| p.weight.len()).sum()];
            let mut at = 0;
            for p in parts {
                p.weight.read_into(0, &mut rows[at..at + p.weight.len()]);
                at += p.weight.len();
            }
            rows.into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(n: usize, k: usize, seed: usize) -> LinearParts {
        let w = (0..n * k).map(|i| (((i + seed) * 7919 % 1009) as f32 - 504.0) / 500.0).collect();
        LinearParts {
            weight: HostTensor::from_vec(w, vec![n, k]),
            bias: HostTensor::from_vec(vec![0.0; n], vec![n]),
        }
    }

    /// An int8 layer's parts load as one weight whose columns equal each part loaded alone
    /// (per-channel codes do not depend on the neighbours); heads stay f32.
    #[test]
    fn int8_parts_load_as_one_weight_and_heads_stay_f32() {
        let (m, k) = (5, 70);
        let b = CpuBackend::with_precision(1, CpuPrecision::Int8);
        let parts = [part(24, k, 1), part(40, k, 2), part(24, k, 3)];
        let qkv = b.load_linear("qkv", &parts).unwrap();
        assert_eq!((qkv.weights.len(), qkv.out_dim), (1, 88));
        assert!(!matches!(*qkv.weights[0], PartWeight::F32(_)));
        let mut x = CpuAct { buf: Pooled::overwritten(&b.buffers, m * k), rows: m, cols: k };
        x.buf
            .data
            .iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v = ((i * 31 % 17) as f32 - 8.0) / 3.0);
        let fused = b.matmul(&x, &qkv).unwrap();
        let mut col = 0;
        for p in &parts {
            let alone = b.load_linear("part", std::slice::from_ref(p)).unwrap();
            let y = b.matmul(&x, &alone).unwrap();
            let n = alone.out_dim;
            for r in 0..m {
                assert_eq!(&fused.data[r * 88 + col..][..n], &y.data[r * n..][..n], "row {r}");
            }
            col += n;
        }
        let head = b.load_head("colbert_linear", &[part(16, k, 4)]).unwrap();
        assert!(matches!(*head.weights[0], PartWeight::Packed(_)));
        let sparse = b.load_head("sparse_linear", &[part(1, k, 5)]).unwrap();
        assert!(matches!(*sparse.weights[0], PartWeight::F32(_)));
    }

    /// The calibration pass multiplies by the weights as loaded (no packed copy) and gets the
    /// packed f32 layer's bits, so the int8 smoothing it records is the same.
    #[test]
    fn recording_keeps_weights_as_loaded_with_the_packed_bits() {
        let (m, k) = (7, 600);
        let parts = [part(24, k, 1), part(40, k, 2), part(24, k, 3)];
        let rec = CpuBackend::with_precision(2, CpuPrecision::F32)
            .recording(Arc::new(super::super::Recorder::default()));
        let packed = CpuBackend::with_precision(2, CpuPrecision::F32);
        let (a, b) =
            (rec.load_linear("qkv", &parts).unwrap(), packed.load_linear("qkv", &parts).unwrap());
        assert_eq!(a.weights.len(), 3);
        assert!(a.weights.iter().all(|w| matches!(**w, PartWeight::F32(_))));
        assert!(matches!(*b.weights[0], PartWeight::Packed(_)));
        let mut x = CpuAct { buf: Pooled::overwritten(&rec.buffers, m * k), rows: m, cols: k };
        x.buf
            .data
            .iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v = ((i * 29 % 23) as f32 - 11.0) / 7.0);
        assert_eq!(rec.matmul(&x, &a).unwrap().data, packed.matmul(&x, &b).unwrap().data);
    }

    /// A smoothed int8 layer holds its widest features out of the int8 product and adds their
    /// f32 products: two features a thousand times the rest leave the others their precision.
    #[test]
    fn int8_holds_the_widest_features_out_in_f32() {
        let (m, n, k) = (6, 40, 320);
        let w = [part(n, k, 1)];
        let x: Vec<f32> = (0..m * k)
            .map(|i| match i % k {
                5 => 1000.0 * if i / k % 2 == 0 { 1.0 } else { -1.0 },
                77 => 800.0,
                _ => ((i * 31 % 17) as f32 - 8.0) / 8.0,
            })
            .collect();
        let rec = Arc::new(super::super::Recorder::default());
        rec.record("l", &x, k);
        let b = CpuBackend::with_precision(2, CpuPrecision::Int8)
            .with_smoothing(Arc::new(rec.finish()));
        let l = b.load_linear("l", &w).unwrap();
        let held = match &*l.weights[0] {
            PartWeight::I8(_, held) => held,
            #[cfg(target_arch = "x86_64")]
            PartWeight::AmxI8(_, held) => held,
            _ => panic!("an int8 weight"),
        };
        assert_eq!(held.features().len(), smooth::HELD_OUT);
        assert!(held.features().contains(&5) && held.features().contains(&77));
        let wv = w[0].weight.values();
        // The largest error against exact sums, held out and plain (no smoothing).
        let worst = |b: &CpuBackend, l: &CpuLinear| {
            let mut a = CpuAct { buf: Pooled::overwritten(&b.buffers, m * k), rows: m, cols: k };
            a.buf.data.copy_from_slice(&x);
            let y = b.matmul(&a, l).unwrap();
            let mut worst = 0f64;
            for i in 0..m {
                for j in 0..n {
                    let exact: f64 =
                        (0..k).map(|kk| x[i * k + kk] as f64 * wv[j * k + kk] as f64).sum();
                    worst = worst.max((y.data[i * n + j] as f64 - exact).abs());
                }
            }
            worst
        };
        let plain = CpuBackend::with_precision(2, CpuPrecision::Int8);
        let (held, plain) = (worst(&b, &l), worst(&plain, &plain.load_linear("l", &w).unwrap()));
        assert!(held < 0.2 && held * 40.0 < plain, "held out {held}, plain {plain}");
    }

    /// Backends given one `SharedWeights` pack each layer once; a name reused for other weights,
    /// or another precision, packs its own.
    #[test]
    fn workers_share_packed_weights() {
        let shared = SharedWeights::default();
        for precision in [CpuPrecision::F32, CpuPrecision::Bf16, CpuPrecision::Int8] {
            let backend = || CpuBackend::with_precision(1, precision).sharing(shared.clone());
            let (a, b) = (backend(), backend());
            let (w, other) = ([part(32, 40, 1)], [part(32, 40, 2)]);
            let (x, y) = (a.load_linear("l", &w).unwrap(), b.load_linear("l", &w).unwrap());
            assert!(Arc::ptr_eq(&x.weights[0], &y.weights[0]), "{precision:?}");
            let z = b.load_linear("l", &other).unwrap();
            assert!(!Arc::ptr_eq(&x.weights[0], &z.weights[0]), "{precision:?}");
            let alone = CpuBackend::with_precision(1, precision).load_linear("l", &w).unwrap();
            assert!(!Arc::ptr_eq(&x.weights[0], &alone.weights[0]));
        }
    }
}
