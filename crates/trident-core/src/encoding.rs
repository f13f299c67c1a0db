//! Output encodings: the number types a result's vectors are written in.
//!
//! The encoder always computes in f32; an encoding rounds the finished vectors to what the
//! output keeps, so every writer and every reader sees the same values:
//! - dense `f32 | f16 | bf16` (round to nearest even);
//! - ColBERT `f32 | f16 | binary` — binary keeps one sign bit per dimension (1 iff x > 0), packed
//!   most significant bit first as numpy's `packbits` and Vespa's `pack_bits` do (1024 dims →
//!   128 bytes per token). In memory a binarised row is the unit vector ±1/√dim, so the ColBERT
//!   MaxSim of two binarised rows is their ±1 dot product over dim: 1 − 2·Hamming/dim.
//! - sparse weights stay f32.

use std::fmt;
use std::str::FromStr;

use half::{bf16, f16};
use serde::{Deserialize, Serialize};

use crate::Embedding;

/// How the dense vector is written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DenseEncoding {
    #[default]
    F32,
    F16,
    Bf16,
}

/// How the ColBERT rows are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColbertEncoding {
    #[default]
    F32,
    F16,
    Binary,
}

/// The encodings of one run; the default (f32, f32) writes the encoder's values bit for bit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Encoding {
    #[serde(default)]
    pub dense: DenseEncoding,
    #[serde(default)]
    pub colbert: ColbertEncoding,
}

impl DenseEncoding {
    pub fn name(self) -> &'static str {
        match self {
            DenseEncoding::F32 => "f32",
            DenseEncoding::F16 => "f16",
            DenseEncoding::Bf16 => "bf16",
        }
    }

    /// The numpy dtype name of the written elements.
    pub fn dtype(self) -> &'static str {
        match self {
            DenseEncoding::F32 => "float32",
            DenseEncoding::F16 => "float16",
            DenseEncoding::Bf16 => "bfloat16",
        }
    }

    pub fn round(self, x: f32) -> f32 {
        match self {
            DenseEncoding::F32 => x,
            DenseEncoding::F16 => f16::from_f32(x).to_f32(),
            DenseEncoding::Bf16 => bf16::from_f32(x).to_f32(),
        }
    }
}

impl ColbertEncoding {
    pub fn name(self) -> &'static str {
        match self {
            ColbertEncoding::F32 => "f32",
            ColbertEncoding::F16 => "f16",
            ColbertEncoding::Binary => "binary",
        }
    }

    /// The numpy dtype name of the written elements (binary rows are packed bytes).
    pub fn dtype(self) -> &'static str {
        match self {
            ColbertEncoding::F32 => "float32",
            ColbertEncoding::F16 => "float16",
            ColbertEncoding::Binary => "uint8",
        }
    }
}

impl fmt::Display for DenseEncoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for ColbertEncoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DenseEncoding {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(DenseEncoding::F32),
            "f16" | "float16" => Ok(DenseEncoding::F16),
            "bf16" | "bfloat16" => Ok(DenseEncoding::Bf16),
            _ => Err(format!("unknown dense encoding {s:?}; expected f32, f16 or bf16")),
        }
    }
}

impl FromStr for ColbertEncoding {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(ColbertEncoding::F32),
            "f16" | "float16" => Ok(ColbertEncoding::F16),
            "binary" | "bits" | "1bit" => Ok(ColbertEncoding::Binary),
            _ => Err(format!("unknown ColBERT encoding {s:?}; expected f32, f16 or binary")),
        }
    }
}

impl Encoding {
    pub fn is_f32(self) -> bool {
        self == Encoding::default()
    }

    /// Round `e`'s vectors to what this encoding keeps (in place; sparse weights unchanged).
    pub fn apply(self, e: &mut Embedding) {
        if let Some(d) = e.dense.as_mut() {
            if self.dense != DenseEncoding::F32 {
                d.iter_mut().for_each(|x| *x = self.dense.round(*x));
            }
        }
        let dim = e.colbert_dim.max(1);
        if let Some(c) = e.colbert.as_mut() {
            match self.colbert {
                ColbertEncoding::F32 => {}
                ColbertEncoding::F16 => c.iter_mut().for_each(|x| *x = f16::from_f32(*x).to_f32()),
                ColbertEncoding::Binary => {
                    let unit = 1.0 / (dim as f32).sqrt();
                    c.iter_mut().for_each(|x| *x = if *x > 0.0 { unit } else { -unit });
                }
            }
        }
    }
}

/// Bytes of one packed binary row of `dim` dimensions.
pub fn packed_len(dim: usize) -> usize {
    dim.div_ceil(8)
}

/// Append the sign bits of `row` (1 iff x > 0), most significant bit first, the last byte
/// padded with zero bits.
pub fn pack_bits(row: &[f32], out: &mut Vec<u8>) {
    for chunk in row.chunks(8) {
        let mut b = 0u8;
        for (i, &x) in chunk.iter().enumerate() {
            b |= ((x > 0.0) as u8) << (7 - i);
        }
        out.push(b);
    }
}

/// The binarised row of `dim` dimensions held in `bytes`, as the unit vector ±1/√dim.
pub fn unpack_bits(bytes: &[u8], dim: usize, out: &mut Vec<f32>) {
    let unit = 1.0 / (dim as f32).sqrt();
    out.extend((0..dim).map(|i| if bytes[i / 8] >> (7 - i % 8) & 1 == 1 { unit } else { -unit }));
}

/// ColBERT MaxSim of two binarised documents given as packed rows (`packed_len(dim)` bytes
/// each): the mean over query rows of the best 1 − 2·Hamming/dim. Equal to
/// [`crate::score::colbert_score`] on the rows [`unpack_bits`] gives, up to float rounding.
pub fn binary_maxsim(q: &[u8], p: &[u8], dim: usize) -> f32 {
    let w = packed_len(dim);
    if w == 0 || q.is_empty() || p.is_empty() {
        return 0.0;
    }
    let mut total = 0.0f64;
    let mut rows = 0usize;
    for qr in q.chunks_exact(w) {
        let best = p
            .chunks_exact(w)
            .map(|pr| qr.iter().zip(pr).map(|(a, b)| (a ^ b).count_ones()).sum::<u32>())
            .min()
            .unwrap_or(dim as u32);
        total += 1.0 - 2.0 * best as f64 / dim as f64;
        rows += 1;
    }
    (total / rows as f64) as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::score::colbert_score;

    fn sample(dim: usize, rows: usize, seed: u32) -> Vec<f32> {
        // A small deterministic generator: values of both signs, zeros and tiny magnitudes.
        let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
        (0..dim * rows)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                if i % 17 == 0 {
                    0.0
                } else {
                    (s as f32 / u32::MAX as f32 - 0.5) * if i % 5 == 0 { 1e-5 } else { 2.0 }
                }
            })
            .collect()
    }

    #[test]
    fn rounding_is_round_to_nearest_even() {
        // 1 + 2^-11 is halfway between f16 1.0 and the next value: ties to even (1.0).
        assert_eq!(DenseEncoding::F16.round(1.0 + 2f32.powi(-11)), 1.0);
        assert_eq!(DenseEncoding::F16.round(1.0 + 3.0 * 2f32.powi(-11)), 1.0 + 2f32.powi(-9));
        assert_eq!(DenseEncoding::Bf16.round(1.0 + 2f32.powi(-8)), 1.0);
        assert_eq!(DenseEncoding::Bf16.round(1.0 + 3.0 * 2f32.powi(-8)), 1.0 + 2f32.powi(-6));
        for x in sample(64, 4, 1) {
            let h = DenseEncoding::F16.round(x);
            assert!((h - x).abs() <= x.abs() * 2f32.powi(-11) + 2f32.powi(-25), "{x} {h}");
            let b = DenseEncoding::Bf16.round(x);
            assert!((b - x).abs() <= x.abs() * 2f32.powi(-8), "{x} {b}");
            assert_eq!(DenseEncoding::F32.round(x), x);
        }
    }

    #[test]
    fn bits_are_signs_msb_first_and_roundtrip() {
        let mut out = Vec::new();
        pack_bits(&[1.0, -1.0, 0.0, 2.0, 0.5, -0.0, 1e-30, -3.0, 4.0], &mut out);
        assert_eq!(out, vec![0b1001_1010, 0b1000_0000]);
        for dim in [8, 32, 37, 1024] {
            let row = sample(dim, 1, dim as u32);
            let mut packed = Vec::new();
            pack_bits(&row, &mut packed);
            assert_eq!(packed.len(), packed_len(dim));
            let mut back = Vec::new();
            unpack_bits(&packed, dim, &mut back);
            for (x, y) in row.iter().zip(&back) {
                assert_eq!(*x > 0.0, *y > 0.0);
                assert!((y.abs() - 1.0 / (dim as f32).sqrt()).abs() < 1e-7);
            }
        }
    }

    #[test]
    fn apply_matches_the_written_forms() {
        let dim = 16;
        let mut e = Embedding {
            tokens: 4,
            truncated: false,
            dense: Some(sample(dim, 1, 3)),
            sparse: Some(vec![(5, 0.123_456_79)]),
            colbert: Some(sample(dim, 3, 4)),
            colbert_dim: dim,
        };
        let orig = e.clone();
        Encoding { dense: DenseEncoding::Bf16, colbert: ColbertEncoding::Binary }.apply(&mut e);
        assert_eq!(e.sparse, orig.sparse);
        for (x, y) in orig.dense.as_ref().unwrap().iter().zip(e.dense.as_ref().unwrap()) {
            assert_eq!(bf16::from_f32(*x).to_f32(), *y);
        }
        let mut packed = Vec::new();
        orig.colbert_rows().for_each(|r| pack_bits(r, &mut packed));
        let mut unpacked = Vec::new();
        packed.chunks(packed_len(dim)).for_each(|r| unpack_bits(r, dim, &mut unpacked));
        assert_eq!(e.colbert.as_ref().unwrap(), &unpacked);
    }

    #[test]
    fn binary_maxsim_equals_float_maxsim_of_unpacked_rows() {
        for dim in [8, 24, 40, 1024] {
            let (q, p) = (sample(dim, 5, 7), sample(dim, 9, 8));
            let (mut qb, mut pb) = (Vec::new(), Vec::new());
            q.chunks(dim).for_each(|r| pack_bits(r, &mut qb));
            p.chunks(dim).for_each(|r| pack_bits(r, &mut pb));
            let (mut qu, mut pu) = (Vec::new(), Vec::new());
            qb.chunks(packed_len(dim)).for_each(|r| unpack_bits(r, dim, &mut qu));
            pb.chunks(packed_len(dim)).for_each(|r| unpack_bits(r, dim, &mut pu));
            let float = colbert_score(&qu, &pu, dim).unwrap();
            let bits = binary_maxsim(&qb, &pb, dim);
            assert!((float - bits).abs() < 1e-5, "dim {dim}: {float} vs {bits}");
        }
        // Identical rows score 1; complementary rows −1.
        assert_eq!(binary_maxsim(&[0xF0], &[0xF0], 8), 1.0);
        assert_eq!(binary_maxsim(&[0xF0], &[0x0F], 8), -1.0);
    }

    #[test]
    fn names_parse_and_print() {
        for e in [DenseEncoding::F32, DenseEncoding::F16, DenseEncoding::Bf16] {
            assert_eq!(e.name().parse::<DenseEncoding>().unwrap(), e);
        }
        for e in [ColbertEncoding::F32, ColbertEncoding::F16, ColbertEncoding::Binary] {
            assert_eq!(e.to_string().parse::<ColbertEncoding>().unwrap(), e);
        }
        assert!("int8".parse::<DenseEncoding>().unwrap_err().contains("f32, f16 or bf16"));
        assert!("bf16".parse::<ColbertEncoding>().is_err());
    }
}
