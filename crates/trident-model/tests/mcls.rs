//! MCLS (`Encoder::set_mcls_every`) against a float64 reference of the XLM-R encoder and the
//! BGE-M3 heads written here from the checkpoint's tensors: CLS tokens inserted every N tokens,
//! the dense vector the normalised mean of the CLS positions' final states, sparse weights and
//! ColBERT rows without the inserted positions. Within the fixture's tolerances
//! (expected.json `tolerance`, |a − e| ≤ tol·(1 + |e|)).

mod common;

use common::{expected, texts, tiny};
use trident_core::{Embedding, Modes};
use trident_model::cpu::CpuBackend;
use trident_model::encoder::mcls_insert;
use trident_model::{Checkpoint, Encoder, Tokenizer};

/// The float64 reference: the checkpoint's tensors as f64.
struct Reference {
    ckpt: Checkpoint,
}

type Mat = Vec<Vec<f64>>;

impl Reference {
    fn t(&self, name: &str) -> Vec<f64> {
        self.ckpt.tensor(name).unwrap().data().iter().map(|&x| x as f64).collect()
    }

    /// `x · Wᵀ + b` for W `[out × in]`.
    fn linear(&self, x: &Mat, name: &str) -> Mat {
        let (w, b) = (self.t(&format!("{name}.weight")), self.t(&format!("{name}.bias")));
        let n_in = x[0].len();
        let n_out = b.len();
        x.iter()
            .map(|r| {
                (0..n_out)
                    .map(|o| b[o] + (0..n_in).map(|i| r[i] * w[o * n_in + i]).sum::<f64>())
                    .collect()
            })
            .collect()
    }

    fn norm(&self, x: &Mat, name: &str) -> Mat {
        let (g, b) = (self.t(&format!("{name}.weight")), self.t(&format!("{name}.bias")));
        let eps = self.ckpt.config.layer_norm_eps;
        x.iter()
            .map(|r| {
                let n = r.len() as f64;
                let mu = r.iter().sum::<f64>() / n;
                let var = r.iter().map(|v| (v - mu) * (v - mu)).sum::<f64>() / n;
                let s = (var + eps).sqrt();
                r.iter().enumerate().map(|(i, v)| (v - mu) / s * g[i] + b[i]).collect()
            })
            .collect()
    }

    /// Final hidden states of one sequence.
    fn forward(&self, ids: &[u32]) -> Mat {
        let c = &self.ckpt.config;
        let h = c.hidden_size;
        let (word, pos, typ) = (
            self.t("embeddings.word_embeddings.weight"),
            self.t("embeddings.position_embeddings.weight"),
            self.t("embeddings.token_type_embeddings.weight"),
        );
        let pad = c.pad_token_id as usize;
        let x: Mat = ids
            .iter()
            .enumerate()
            .map(|(i, &t)| {
                let p = pad + 1 + i;
                (0..h).map(|j| word[t as usize * h + j] + pos[p * h + j] + typ[j]).collect()
            })
            .collect();
        let mut x = self.norm(&x, "embeddings.LayerNorm");
        let heads = c.num_attention_heads;
        let d = h / heads;
        for l in 0..c.num_hidden_layers {
            let p = format!("encoder.layer.{l}");
            let q = self.linear(&x, &format!("{p}.attention.self.query"));
            let k = self.linear(&x, &format!("{p}.attention.self.key"));
            let v = self.linear(&x, &format!("{p}.attention.self.value"));
            let n = ids.len();
            let mut ctx = vec![vec![0f64; h]; n];
            for hd in 0..heads {
                let r = hd * d..(hd + 1) * d;
                for i in 0..n {
                    let s: Vec<f64> = (0..n)
                        .map(|j| {
                            r.clone().map(|e| q[i][e] * k[j][e]).sum::<f64>() / (d as f64).sqrt()
                        })
                        .collect();
                    let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = s.iter().map(|v| (v - m).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for dd in r.clone() {
                        ctx[i][dd] = (0..n).map(|j| e[j] / z * v[j][dd]).sum();
                    }
                }
            }
            let o = self.linear(&ctx, &format!("{p}.attention.output.dense"));
            let res: Mat = o
                .iter()
                .zip(&x)
                .map(|(a, b)| a.iter().zip(b).map(|(a, b)| a + b).collect())
                .collect();
            let a = self.norm(&res, &format!("{p}.attention.output.LayerNorm"));
            let f: Mat = self
                .linear(&a, &format!("{p}.intermediate.dense"))
                .into_iter()
                .map(|r| {
                    r.into_iter()
                        .map(|v| 0.5 * v * (1.0 + libm::erf(v / std::f64::consts::SQRT_2)))
                        .collect()
                })
                .collect();
            let y = self.linear(&f, &format!("{p}.output.dense"));
            let res: Mat = y
                .iter()
                .zip(&a)
                .map(|(a, b)| a.iter().zip(b).map(|(a, b)| a + b).collect())
                .collect();
            x = self.norm(&res, &format!("{p}.output.LayerNorm"));
        }
        x
    }

    /// MCLS outputs of a document (`every = None`: the ordinary outputs): dense, lexical
    /// weights (token → max weight, specials out), ColBERT rows.
    fn encode(
        &self,
        ids: &[u32],
        every: Option<usize>,
        excluded: &[u32],
        cls: u32,
    ) -> (Vec<f64>, Vec<(u32, f64)>, Mat) {
        let (seq, at) = match every {
            Some(n) => mcls_insert(ids, cls, n),
            None => (ids.to_vec(), vec![0]),
        };
        let hs = self.forward(&seq);
        let hidden = hs[0].len();
        let mut dense = vec![0f64; hidden];
        for &p in &at {
            dense.iter_mut().zip(&hs[p]).for_each(|(d, v)| *d += v);
        }
        let norm = dense.iter().map(|v| v * v).sum::<f64>().sqrt();
        dense.iter_mut().for_each(|v| *v /= norm);
        let w = self.linear(&hs, "sparse");
        let mut sparse: Vec<(u32, f64)> = Vec::new();
        for (i, &t) in seq.iter().enumerate() {
            let v = w[i][0].max(0.0);
            if excluded.contains(&t) || v <= 0.0 {
                continue;
            }
            match sparse.iter_mut().find(|p| p.0 == t) {
                Some(p) => p.1 = p.1.max(v),
                None => sparse.push((t, v)),
            }
        }
        let keep: Mat = (1..seq.len()).filter(|p| !at.contains(p)).map(|p| hs[p].clone()).collect();
        let colbert = self
            .linear(&keep, "colbert")
            .into_iter()
            .map(|r| {
                let n = r.iter().map(|v| v * v).sum::<f64>().sqrt();
                r.into_iter().map(|v| v / n).collect()
            })
            .collect();
        (dense, sparse, colbert)
    }
}

fn tol(tokens: usize) -> f64 {
    let t = &expected()["tolerance"];
    if tokens as u64 >= t["long_if_at_least_tokens"].as_u64().unwrap() {
        t["long"].as_f64().unwrap()
    } else {
        t["short"].as_f64().unwrap()
    }
}

fn close(what: &str, a: f32, e: f64, tol: f64) {
    assert!(
        (a as f64 - e).abs() <= tol * (1.0 + e.abs()),
        "{what}: got {a}, expected {e} (tol {tol})"
    );
}

fn compare(got: &Embedding, want: &(Vec<f64>, Vec<(u32, f64)>, Mat), tol: f64, what: &str) {
    let (dense, sparse, colbert) = want;
    let gd = got.dense.as_ref().unwrap();
    assert_eq!(gd.len(), dense.len());
    gd.iter()
        .zip(dense)
        .enumerate()
        .for_each(|(i, (a, e))| close(&format!("{what} dense[{i}]"), *a, *e, tol));
    let gs = got.sparse.as_ref().unwrap();
    for (t, e) in sparse {
        // A weight at the edge of zero may be present on one side only.
        match gs.iter().find(|p| p.0 == *t) {
            Some(p) => close(&format!("{what} sparse[{t}]"), p.1, *e, tol),
            None => assert!(*e <= tol, "{what}: sparse token {t} ({e}) missing"),
        }
    }
    let gc = got.colbert.as_ref().unwrap();
    let dim = got.colbert_dim;
    assert_eq!(gc.len() / dim, colbert.len(), "{what}: ColBERT rows");
    for (r, (a, e)) in gc.chunks_exact(dim).zip(colbert).enumerate() {
        a.iter().zip(e).for_each(|(a, e)| close(&format!("{what} colbert[{r}]"), *a, *e, tol));
    }
}

#[test]
fn mcls_matches_its_float64_reference() {
    let dir = tiny();
    let tok = Tokenizer::from_dir(&dir).unwrap();
    let ckpt = Checkpoint::open(&dir).unwrap();
    let mut enc = Encoder::new(&ckpt, CpuBackend::new(2)).unwrap();
    let special = tok.special_ids();
    enc.set_special_ids(special);
    let reference = Reference { ckpt: Checkpoint::open(&dir).unwrap() };
    // Up to 160 tokens (the float64 reference is quadratic and slow beyond).
    let mut docs: Vec<_> = texts().iter().map(|t| tok.encode(t, 160).unwrap()).collect();
    let long = "MCLS puts several CLS tokens into one long document. ".repeat(12);
    docs.push(tok.encode(&long, 160).unwrap());
    docs.sort_by_key(|d| std::cmp::Reverse(d.ids.len()));
    docs.truncate(6);
    let excluded = special.excluded();
    // The reference without MCLS is the encoder's ordinary output (checks the reference).
    let plain = enc.encode(&docs, Modes::ALL).unwrap();
    for (i, (d, e)) in docs.iter().zip(&plain).enumerate() {
        let want = reference.encode(&d.ids, None, &excluded, special.cls);
        compare(e, &want, tol(d.ids.len()), &format!("doc {i} plain"));
    }
    for every in [1, 5, 16] {
        enc.set_mcls_every(Some(every)).unwrap();
        let got = enc.encode(&docs, Modes::ALL).unwrap();
        for (i, (d, e)) in docs.iter().zip(&got).enumerate() {
            let want = reference.encode(&d.ids, Some(every), &excluded, special.cls);
            let n = mcls_insert(&d.ids, special.cls, every).0.len();
            compare(e, &want, tol(n), &format!("doc {i} ({} tokens) every {every}", d.ids.len()));
            assert_eq!(e.tokens, d.ids.len());
            assert_eq!(e.colbert.as_ref().unwrap().len(), (d.ids.len() - 1) * e.colbert_dim);
        }
        // Dense alone takes the same path.
        let dense =
            enc.encode(&docs, Modes { dense: true, sparse: false, colbert: false }).unwrap();
        assert_eq!(dense[0].dense, got[0].dense);
        assert!(dense[0].sparse.is_none());
    }
    // A document no longer than the interval is encoded as without MCLS.
    enc.set_mcls_every(Some(10_000)).unwrap();
    let same = enc.encode(&docs, Modes::ALL).unwrap();
    for (a, b) in same.iter().zip(&plain) {
        for (x, y) in a.dense.as_ref().unwrap().iter().zip(b.dense.as_ref().unwrap()) {
            assert!((x - y).abs() < 1e-5);
        }
        assert_eq!(a.colbert.as_ref().unwrap().len(), b.colbert.as_ref().unwrap().len());
    }
    enc.set_mcls_every(None).unwrap();
    assert_eq!(enc.encode(&docs, Modes::ALL).unwrap(), plain);
    assert!(enc.set_mcls_every(Some(0)).is_err());
}
