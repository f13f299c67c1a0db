//! Retrieval metrics computed as `trec_eval` (and so `pytrec_eval`, and BEIR, which calls it)
//! computes them: nDCG@k, recall@k and MRR@k over a run (a scored document list per query) and
//! qrels (graded judgements per query).
//!
//! - A run is put in trec_eval's order first: score descending, ties broken by document id
//!   descending (byte order, `strcmp`), whatever order it was given in.
//! - A document without a judgement counts as judged 0. Relevant means a judgement ≥ 1.
//! - nDCG@k: `DCG = Σ_{i<k} gain(d_i) / log2(i + 2)` with the judgement as the gain (linear
//!   gain, as trec_eval; judgements ≤ 0 gain 0), divided by the DCG of the ideal ranking of the
//!   query's judgements cut at k; 0 when that ideal is 0.
//! - recall@k: relevant documents in the top k / relevant documents judged; 0 when none is.
//! - MRR@k: 1 / rank of the first relevant document when it is within the top k, else 0
//!   (trec_eval's `recip_rank` on the run cut at k).
//! - Which queries count: those with judgements in the qrels and a run (which may be empty, then
//!   every metric is 0). A query judged with no relevant document scores 0, as trec_eval
//!   scores it. The mean is over the counted queries.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;

/// Judgements of one query: document id → relevance grade.
pub type Judgements = HashMap<String, i64>;

/// Judgements per query id, in query id order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Qrels {
    pub queries: BTreeMap<String, Judgements>,
}

/// Why qrels could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QrelsError {
    #[error(
        "qrels line {line}: expected `query-id corpus-id score` (BEIR TSV) or \
         `query-id 0 corpus-id score` (TREC), got {text:?}"
    )]
    Fields { line: usize, text: String },
    #[error("qrels line {line}: the score {score:?} is not an integer")]
    Score { line: usize, score: String },
    #[error("qrels: no judgement found")]
    Empty,
}

impl Qrels {
    /// Reads BEIR's TSV (`query-id<TAB>corpus-id<TAB>score`, a header line allowed) or TREC's
    /// qrels (`query-id iteration corpus-id score`, whitespace separated). Empty lines are
    /// skipped; a first line whose score is not a number is taken as the header. A repeated
    /// (query, document) pair keeps its last judgement.
    pub fn parse(text: &str) -> Result<Qrels, QrelsError> {
        let mut q = Qrels::default();
        let mut header_seen = false;
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim_end_matches('\r');
            if line.trim().is_empty() {
                continue;
            }
            let fields: Vec<&str> = if line.contains('\t') {
                line.split('\t').map(str::trim).collect()
            } else {
                line.split_whitespace().collect()
            };
            let (qid, doc, score) = match fields.as_slice() {
                [q, d, s] => (*q, *d, *s),
                [q, _, d, s] => (*q, *d, *s),
                _ => return Err(QrelsError::Fields { line: i + 1, text: line.to_string() }),
            };
            let grade = match score.parse::<i64>() {
                Ok(g) => g,
                // trec_eval reads grades as numbers; "1.0" is 1.
                Err(_) => match score.parse::<f64>() {
                    Ok(f) if f.fract() == 0.0 && f.is_finite() => f as i64,
                    _ if !header_seen && q.queries.is_empty() => {
                        header_seen = true;
                        continue;
                    }
                    _ => return Err(QrelsError::Score { line: i + 1, score: score.to_string() }),
                },
            };
            q.queries.entry(qid.to_string()).or_default().insert(doc.to_string(), grade);
        }
        if q.queries.is_empty() {
            return Err(QrelsError::Empty);
        }
        Ok(q)
    }

    /// Number of judgements in all.
    pub fn len(&self) -> usize {
        self.queries.values().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.queries.is_empty()
    }
}

/// A metric and its cutoff.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Metric {
    Ndcg(usize),
    Recall(usize),
    Mrr(usize),
}

/// What `trident eval` reports: nDCG@10, recall@20/100/1000, MRR@10.
pub const DEFAULT_METRICS: [Metric; 5] = [
    Metric::Ndcg(10),
    Metric::Recall(20),
    Metric::Recall(100),
    Metric::Recall(1000),
    Metric::Mrr(10),
];

impl Metric {
    /// The JSON key: `ndcg@10`, `recall@100`, `mrr@10`.
    pub fn key(self) -> String {
        match self {
            Metric::Ndcg(k) => format!("ndcg@{k}"),
            Metric::Recall(k) => format!("recall@{k}"),
            Metric::Mrr(k) => format!("mrr@{k}"),
        }
    }

    /// The table heading: `nDCG@10`, `R@100`, `MRR@10`.
    pub fn heading(self) -> String {
        match self {
            Metric::Ndcg(k) => format!("nDCG@{k}"),
            Metric::Recall(k) => format!("R@{k}"),
            Metric::Mrr(k) => format!("MRR@{k}"),
        }
    }

    pub fn cutoff(self) -> usize {
        match self {
            Metric::Ndcg(k) | Metric::Recall(k) | Metric::Mrr(k) => k,
        }
    }

    /// The value for one query whose run is already in trec_eval order ([`trec_order`]).
    pub fn value<S: AsRef<str>>(self, ranked: &[S], judged: &Judgements) -> f64 {
        let grade = |d: &S| judged.get(d.as_ref()).copied().unwrap_or(0);
        match self {
            Metric::Ndcg(k) => {
                let got = dcg(ranked.iter().take(k).map(grade));
                let mut ideal: Vec<i64> = judged.values().copied().filter(|&g| g > 0).collect();
                ideal.sort_unstable_by(|a, b| b.cmp(a));
                let idcg = dcg(ideal.into_iter().take(k));
                if idcg > 0.0 {
                    got / idcg
                } else {
                    0.0
                }
            }
            Metric::Recall(k) => {
                let relevant = judged.values().filter(|&&g| g >= 1).count();
                if relevant == 0 {
                    return 0.0;
                }
                let found = ranked.iter().take(k).filter(|d| grade(d) >= 1).count();
                found as f64 / relevant as f64
            }
            Metric::Mrr(k) => ranked
                .iter()
                .take(k)
                .position(|d| grade(d) >= 1)
                .map_or(0.0, |i| 1.0 / (i + 1) as f64),
        }
    }
}

fn dcg(grades: impl Iterator<Item = i64>) -> f64 {
    grades
        .enumerate()
        .filter(|(_, g)| *g > 0)
        .map(|(i, g)| g as f64 / ((i + 2) as f64).log2())
        .sum()
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key())
    }
}

impl FromStr for Metric {
    type Err = String;

    /// `ndcg@10`, `recall@100` (or `r@100`), `mrr@10`, case-insensitive.
    fn from_str(s: &str) -> Result<Metric, String> {
        let bad = || format!("metric {s:?}: expected ndcg@K, recall@K or mrr@K with K ≥ 1");
        let (name, k) = s.split_once('@').ok_or_else(bad)?;
        let k: usize = k.trim().parse().map_err(|_| bad())?;
        if k == 0 {
            return Err(bad());
        }
        match name.trim().to_ascii_lowercase().as_str() {
            "ndcg" => Ok(Metric::Ndcg(k)),
            "recall" | "r" => Ok(Metric::Recall(k)),
            "mrr" => Ok(Metric::Mrr(k)),
            _ => Err(bad()),
        }
    }
}

/// trec_eval's order of a run: score descending, then document id descending (byte order).
/// NaN scores sort last.
pub fn trec_cmp(a: (&str, f64), b: (&str, f64)) -> Ordering {
    match b.1.partial_cmp(&a.1) {
        Some(Ordering::Equal) => b.0.as_bytes().cmp(a.0.as_bytes()),
        Some(o) => o,
        None => a.1.is_nan().cmp(&b.1.is_nan()),
    }
}

/// Sorts `(document id, score)` pairs into trec_eval's order ([`trec_cmp`]).
pub fn trec_order<S: AsRef<str>>(run: &mut [(S, f64)]) {
    run.sort_by(|a, b| trec_cmp((a.0.as_ref(), a.1), (b.0.as_ref(), b.1)));
}

/// Per-query values and their means.
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluation {
    pub metrics: Vec<Metric>,
    /// (query id, one value per metric), in query id order.
    pub per_query: Vec<(String, Vec<f64>)>,
    /// One mean per metric (0 when no query counted).
    pub mean: Vec<f64>,
}

/// Evaluates runs (query id → scored documents, in any order) against qrels. Counted: queries
/// with judgements and a run. Runs of queries without judgements are ignored.
pub fn evaluate<S: AsRef<str> + Clone>(
    runs: &HashMap<String, Vec<(S, f64)>>,
    qrels: &Qrels,
    metrics: &[Metric],
) -> Evaluation {
    let mut per_query: Vec<(String, Vec<f64>)> = Vec::new();
    for (qid, judged) in &qrels.queries {
        let Some(run) = runs.get(qid) else { continue };
        let mut run = run.clone();
        trec_order(&mut run);
        let ranked: Vec<&str> = run.iter().map(|(d, _)| d.as_ref()).collect();
        per_query.push((
            qid.clone(),
            metrics.iter().map(|m| m.value(&ranked, judged)).collect::<Vec<f64>>(),
        ));
    }
    let n = per_query.len();
    let mean =
        (0..metrics.len())
            .map(|j| {
                if n == 0 {
                    0.0
                } else {
                    per_query.iter().map(|(_, v)| v[j]).sum::<f64>() / n as f64
                }
            })
            .collect();
    Evaluation { metrics: metrics.to_vec(), per_query, mean }
}

/// The expected value of a metric for a uniformly random ranking of `n` documents: what a run
/// that knows nothing scores on average (the baseline to beat). `judged` holds the query's
/// judgements; judged documents outside the corpus are taken as present.
///
/// recall@k: `min(k, n)/n`; MRR@k: `Σ_{r≤k} P(first relevant at r)/r`; nDCG@k: the expected
/// DCG `Σ_{i<min(k,n)} mean_gain / log2(i+2)` over the ideal.
pub fn random_expectation(metric: Metric, judged: &Judgements, n: usize) -> f64 {
    if n == 0 {
        return 0.0;
    }
    let relevant = judged.values().filter(|&&g| g >= 1).count().min(n);
    match metric {
        Metric::Recall(k) => {
            if relevant == 0 {
                0.0
            } else {
                k.min(n) as f64 / n as f64
            }
        }
        Metric::Mrr(k) => {
            if relevant == 0 {
                return 0.0;
            }
            // P(no relevant in the first r-1) · P(relevant at r | none before).
            let (mut none_before, mut sum) = (1.0f64, 0.0f64);
            for r in 1..=k.min(n) {
                let left = (n - (r - 1)) as f64;
                let rel_here = relevant as f64 / left;
                sum += none_before * rel_here / r as f64;
                none_before *= 1.0 - rel_here;
                if none_before <= 0.0 {
                    break;
                }
            }
            sum
        }
        Metric::Ndcg(k) => {
            let total: i64 = judged.values().filter(|&&g| g > 0).sum();
            let mut ideal: Vec<i64> = judged.values().copied().filter(|&g| g > 0).collect();
            ideal.sort_unstable_by(|a, b| b.cmp(a));
            let idcg = dcg(ideal.into_iter().take(k));
            if idcg == 0.0 {
                return 0.0;
            }
            let mean_gain = total as f64 / n as f64;
            let discount: f64 = (0..k.min(n)).map(|i| 1.0 / ((i + 2) as f64).log2()).sum();
            mean_gain * discount / idcg
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judged(pairs: &[(&str, i64)]) -> Judgements {
        pairs.iter().map(|(d, g)| (d.to_string(), *g)).collect()
    }

    #[test]
    fn ties_break_by_document_id_descending() {
        let mut run = vec![("d1", 0.5), ("d2", 0.5), ("d3", 0.5), ("d4", 0.9)];
        trec_order(&mut run);
        let ids: Vec<&str> = run.iter().map(|r| r.0).collect();
        assert_eq!(ids, ["d4", "d3", "d2", "d1"]);
    }

    #[test]
    fn values_match_trec_eval_on_a_hand_example() {
        // pytrec_eval 0.5.11: ndcg_cut_10 0.3133823808702839, ndcg_cut_2 0.1480409554829326,
        // recall_10 2/3, recip_rank 0.5.
        let j = judged(&[("d1", 2), ("d2", -1), ("d3", 1), ("d9", 3)]);
        let ranked = ["d4", "d3", "d2", "d1"];
        assert!((Metric::Ndcg(10).value(&ranked, &j) - 0.3133823808702839).abs() < 1e-12);
        assert!((Metric::Ndcg(2).value(&ranked, &j) - 0.1480409554829326).abs() < 1e-12);
        assert!((Metric::Recall(10).value(&ranked, &j) - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(Metric::Mrr(10).value(&ranked, &j), 0.5);
        assert_eq!(Metric::Mrr(1).value(&ranked, &j), 0.0);
        let none = judged(&[("d5", 0)]);
        for m in DEFAULT_METRICS {
            assert_eq!(m.value(&["d5", "d6"], &none), 0.0);
        }
    }

    #[test]
    fn evaluate_counts_judged_queries_with_a_run() {
        let qrels =
            Qrels::parse("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\nq3\tx\t1\n").unwrap();
        let mut runs: HashMap<String, Vec<(String, f64)>> = HashMap::new();
        runs.insert("q1".into(), vec![("d1".into(), 1.0)]);
        runs.insert("q2".into(), vec![]);
        runs.insert("q9".into(), vec![("d1".into(), 1.0)]);
        let e = evaluate(&runs, &qrels, &[Metric::Recall(10)]);
        assert_eq!(e.per_query.len(), 2);
        assert_eq!(e.mean, vec![0.5]);
    }

    #[test]
    fn qrels_formats() {
        let beir =
            Qrels::parse("query-id\tcorpus-id\tscore\r\nq1\td1\t2\r\n\r\nq1\td2\t0\n").unwrap();
        assert_eq!(beir.queries["q1"], judged(&[("d1", 2), ("d2", 0)]));
        let trec = Qrels::parse("q1 0 d1 1\nq2 Q0 d3 2\n").unwrap();
        assert_eq!(trec.len(), 2);
        assert!(matches!(Qrels::parse("q1\td1\tx\nq1\td2\ty\n"), Err(QrelsError::Score { .. })));
        assert!(matches!(Qrels::parse("q1 d1\n"), Err(QrelsError::Fields { .. })));
        assert!(matches!(Qrels::parse("query-id\tcorpus-id\tscore\n"), Err(QrelsError::Empty)));
    }

    #[test]
    fn metric_names_round_trip() {
        for m in DEFAULT_METRICS {
            assert_eq!(m.key().parse::<Metric>().unwrap(), m);
        }
        assert!("ndcg@0".parse::<Metric>().is_err());
        assert!("map@10".parse::<Metric>().is_err());
    }

    #[test]
    fn random_expectation_matches_enumeration() {
        // All 4! orders of 4 documents, two relevant (grades 2 and 1).
        let j = judged(&[("a", 2), ("b", 1)]);
        let docs = ["a", "b", "c", "d"];
        let mut perms = vec![];
        fn permute<'a>(left: Vec<&'a str>, acc: Vec<&'a str>, out: &mut Vec<Vec<&'a str>>) {
            if left.is_empty() {
                out.push(acc);
                return;
            }
            for i in 0..left.len() {
                let mut l = left.clone();
                let x = l.remove(i);
                let mut a = acc.clone();
                a.push(x);
                permute(l, a, out);
            }
        }
        permute(docs.to_vec(), vec![], &mut perms);
        for m in
            [Metric::Ndcg(2), Metric::Ndcg(10), Metric::Recall(2), Metric::Mrr(2), Metric::Mrr(3)]
        {
            let mean: f64 = perms.iter().map(|p| m.value(p, &j)).sum::<f64>() / perms.len() as f64;
            assert!((random_expectation(m, &j, 4) - mean).abs() < 1e-12, "{m}");
        }
    }
}
