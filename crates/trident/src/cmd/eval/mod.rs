//! `trident eval`: retrieval quality of BGE-M3's outputs and their hybrids on a BEIR-format
//! dataset: nDCG@10, recall@20/100/1000 and MRR@10 per run (dense, sparse, ColBERT re-ranking,
//! weighted hybrids), as a table, as JSON and as TREC run files.
//!
//! Inputs (BEIR): `corpus.jsonl` and `queries.jsonl`, one `{"_id", "text"}` object a line (a
//! corpus line's `"title"`, when not empty, is embedded as `title + " " + text`, as BEIR's
//! dense-retrieval code joins them); qrels as TSV `query-id corpus-id score` with a header (or
//! TREC's `qid 0 docid grade`). Either side may instead be embeddings written by `trident embed`
//! (JSON Lines, any encoding): `--corpus-embeddings`, `--query-embeddings`; `--save-embeddings
//! DIR` writes what this run encoded in that form for the next run.
//!
//! Retrieval is exact (`trident_core::retrieve`: every passage scored, queries in parallel);
//! metrics are trec_eval's (`trident_core::eval`). Only queries with judgements are encoded and
//! evaluated.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, ensure, Context};
use rayon::prelude::*;
use serde_json::{json, Value};
use trident_core::eval::{evaluate, random_expectation, Metric, Qrels};
use trident_core::retrieve::{default_depth, Index, Method, Preset, RunSpec};
use trident_core::score::Weights;
use trident_core::{Embedding, Modes};
use trident_engine::model::LoadedModel;
use trident_engine::{Metrics, Pipeline, PipelineConfig, Priority, WorkerSpec};

use crate::root::layered::ConfigFile;
use crate::root::placement::{build_workers, PlacementArgs};

mod read;
mod report;

use read::*;
use report::*;

#[derive(clap::Args)]
pub struct EvalArgs {
    /// Model directory or hub id (`BAAI/bge-m3`); needed unless both sides are given as
    /// embeddings.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// BEIR corpus: JSON Lines of {"_id", "title"?, "text"}.
    #[arg(long)]
    pub corpus: Option<PathBuf>,
    /// BEIR queries: JSON Lines of {"_id", "text"}.
    #[arg(long)]
    pub queries: Option<PathBuf>,
    /// Judgements: TSV `query-id<TAB>corpus-id<TAB>score` with a header line (BEIR), or TREC
    /// qrels `query-id 0 corpus-id grade`.
    #[arg(long)]
    pub qrels: PathBuf,
    /// The passages' embeddings as `trident embed` writes them, used instead of encoding
    /// `--corpus`: JSON Lines (`"id"` = corpus id), or Parquet (a part, an output directory
    /// or a glob; the id column = corpus id). Any encoding.
    #[arg(long)]
    pub corpus_embeddings: Option<PathBuf>,
    /// The queries' embeddings (`trident embed` JSON Lines or Parquet), used instead of
    /// `--queries`.
    #[arg(long)]
    pub query_embeddings: Option<PathBuf>,
    /// Write the embeddings this run encoded to DIR/corpus.jsonl and DIR/queries.jsonl, for
    /// `--corpus-embeddings` / `--query-embeddings` next time.
    #[arg(long)]
    pub save_embeddings: Option<PathBuf>,
    /// The paper's runs: `miracl` (dense+sparse 1,0.3,0 @1000; all 1,0.3,1 @200), `mldr` (long
    /// documents: 0.2,0.8,0 and 0.15,0.5,0.35), or `none` (only --weights runs).
    #[arg(long, default_value = "miracl")]
    pub preset: Preset,
    /// An extra hybrid run with these [dense, sparse, colbert] weights; repeat for several.
    #[arg(long)]
    pub weights: Vec<Weights>,
    /// Candidate depth of the --weights runs (default: 200 when the ColBERT weight is not 0,
    /// else 1000, as the paper).
    #[arg(long)]
    pub depth: Option<usize>,
    /// Only these runs (names as in the table, comma-separated), e.g. `dense,sparse`.
    #[arg(long, value_delimiter = ',')]
    pub runs: Vec<String>,
    /// Metrics, comma-separated: ndcg@K, recall@K, mrr@K.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "ndcg@10,recall@20,recall@100,recall@1000,mrr@10"
    )]
    pub metrics: Vec<Metric>,
    /// Write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write one TREC run file per run into this directory (`<run>.trec`).
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Truncate passages to this many tokens (specials included).
    #[arg(long, default_value_t = 8192)]
    pub max_length: usize,
    /// Truncate queries to this many tokens.
    #[arg(long, default_value_t = 512)]
    pub query_max_length: usize,
    /// Token budget of one batch.
    #[arg(long, default_value_t = 16384)]
    pub batch_tokens: usize,
    /// MCLS (the BGE-M3 paper's "multiple CLS"): insert a CLS token every N tokens and take the dense vector
    /// as the normalised mean of all CLS positions' final states (sparse and ColBERT leave the
    /// inserted positions out). For long documents on models without long-document training.
    /// Off by default.
    #[arg(long)]
    pub mcls_every: Option<usize>,
    /// Retrieval (scoring) uses all cores whatever `--threads` says.
    #[command(flatten)]
    pub placement: PlacementArgs,
    #[command(flatten)]
    pub config: ConfigFile,
}

/// A document to encode or its embedding, by id.
struct Side {
    ids: Vec<String>,
    texts: Vec<String>,
    embeddings: Option<Vec<Embedding>>,
}

/// The runs asked for: the preset's, then one per `--weights`, filtered by `--runs`.
fn run_specs(args: &EvalArgs) -> anyhow::Result<Vec<RunSpec>> {
    let mut runs = args.preset.runs();
    for w in &args.weights {
        let w = w.get();
        let depth = args.depth.unwrap_or_else(|| default_depth(w));
        let name = format!("hybrid({},{},{})@{depth}", w[0], w[1], w[2]);
        runs.push(RunSpec { name, method: Method::Hybrid(w), depth });
    }
    if args.depth.is_some() && args.weights.is_empty() {
        bail!("--depth sets the depth of --weights runs; give --weights too");
    }
    if !args.runs.is_empty() {
        let known: Vec<String> = runs.iter().map(|r| r.name.clone()).collect();
        for r in &args.runs {
            ensure!(known.contains(r), "--runs {r}: no such run; the runs are {known:?}");
        }
        runs.retain(|r| args.runs.contains(&r.name));
    }
    ensure!(!runs.is_empty(), "no run to evaluate (--preset none and no --weights)");
    for r in &runs {
        ensure!(r.depth > 0, "run {}: the depth must be positive", r.name);
    }
    Ok(runs)
}

fn modes_of(runs: &[RunSpec]) -> Modes {
    runs.iter().fold(Modes::NONE, |m, r| {
        let (dense, sparse, colbert) = r.method.needs();
        m.union(Modes { dense, sparse, colbert })
    })
}

/// The model and pipeline, started on first use.
struct Encoder {
    rt: tokio::runtime::Runtime,
    pipeline: Pipeline,
}

impl Encoder {
    fn start(args: &EvalArgs, model_dir: &Path) -> anyhow::Result<Encoder> {
        let (model, mut workers): (LoadedModel, Vec<WorkerSpec>) =
            build_workers(model_dir, &args.placement)?;
        if let Some(every) = args.mcls_every {
            ensure!(every > 0, "--mcls-every must be at least 1");
            for w in &mut workers {
                let inner = w.factory.clone();
                w.factory = std::sync::Arc::new(move || {
                    let mut e = inner()?;
                    e.set_mcls_every(Some(every))?;
                    Ok(e)
                });
            }
        }
        let rt = crate::root::runtime()?;
        let cfg = PipelineConfig {
            policy: crate::root::batch_policy(args.batch_tokens, 5),
            key_prefix: "trident".into(),
            model_fingerprint: model.fingerprint.clone(),
        };
        let pipeline =
            rt.block_on(Pipeline::start(cfg, model.tokenizer, workers, None, Metrics::new()))?;
        Ok(Encoder { rt, pipeline })
    }

    /// Encodes texts in order; a text that fails fails the run (naming its id).
    fn encode(
        &self,
        what: &str,
        ids: &[String],
        texts: &[String],
        modes: Modes,
        max_length: usize,
    ) -> anyhow::Result<Vec<Embedding>> {
        let t0 = Instant::now();
        let mut out = Vec::with_capacity(texts.len());
        for (chunk_ids, chunk) in ids.chunks(4096).zip(texts.chunks(4096)) {
            let res = self.rt.block_on(self.pipeline.embed(
                chunk.to_vec(),
                modes,
                max_length,
                Priority::Stream,
            ));
            for (id, r) in chunk_ids.iter().zip(res) {
                out.push(r.map_err(|e| anyhow::anyhow!("encoding {what}: {id:?}: {e}"))?);
            }
        }
        eprintln!(
            "trident eval: encoded {} {what} in {:.1}s",
            texts.len(),
            t0.elapsed().as_secs_f64()
        );
        Ok(out)
    }

    fn stop(self) {
        self.rt.block_on(self.pipeline.stop());
    }
}

pub fn run(args: EvalArgs) -> anyhow::Result<ExitCode> {
    let t_start = Instant::now();
    let qrels_text = std::fs::read_to_string(&args.qrels)
        .with_context(|| format!("reading qrels {}", args.qrels.display()))?;
    let qrels = Qrels::parse(&qrels_text).with_context(|| args.qrels.display().to_string())?;
    let runs = run_specs(&args)?;
    ensure!(!args.metrics.is_empty(), "--metrics is empty");
    let metrics = args.metrics.clone();
    let modes = modes_of(&runs);
    ensure!(
        args.corpus.is_some() || args.corpus_embeddings.is_some(),
        "give --corpus (texts) or --corpus-embeddings"
    );
    ensure!(
        args.queries.is_some() || args.query_embeddings.is_some(),
        "give --queries (texts) or --query-embeddings"
    );

    // Queries: only those judged.
    let judged: HashSet<&String> = qrels.queries.keys().collect();
    let mut queries = match &args.query_embeddings {
        Some(p) => {
            let (ids, embs): (Vec<_>, Vec<_>) =
                read_any_embeddings(p)?.into_iter().filter(|(id, _)| judged.contains(id)).unzip();
            Side { ids, texts: vec![], embeddings: Some(embs) }
        }
        None => {
            let path = args.queries.as_ref().expect("checked above");
            let (ids, texts) =
                read_beir(path, false)?.into_iter().filter(|(id, _)| judged.contains(id)).unzip();
            Side { ids, texts, embeddings: None }
        }
    };
    let mut corpus = match &args.corpus_embeddings {
        Some(p) => {
            let (ids, embs) = read_any_embeddings(p)?.into_iter().unzip();
            Side { ids, texts: vec![], embeddings: Some(embs) }
        }
        None => {
            let path = args.corpus.as_ref().expect("checked above");
            let (ids, texts) = read_beir(path, true)?.into_iter().unzip();
            Side { ids, texts, embeddings: None }
        }
    };
    ensure!(!corpus.ids.is_empty(), "the corpus is empty");
    ensure!(
        !queries.ids.is_empty(),
        "no query of the queries file has judgements in {}",
        args.qrels.display()
    );
    {
        let mut seen = HashSet::new();
        if let Some(d) = queries.ids.iter().find(|id| !seen.insert(*id)) {
            bail!("query id {d:?} occurs twice");
        }
    }
    let have: HashSet<&String> = queries.ids.iter().collect();
    let missing_q = qrels.queries.keys().filter(|q| !have.contains(q)).count();
    if missing_q > 0 {
        eprintln!(
            "trident eval: {missing_q} judged queries are not in the queries and are not evaluated"
        );
    }

    // Encode what is not given.
    if corpus.embeddings.is_none() || queries.embeddings.is_none() {
        let dir = args.model.as_ref().context(
            "--model is needed to encode the texts (or give --corpus-embeddings and \
             --query-embeddings)",
        )?;
        crate::root::check_max_length("--max-length", args.max_length)?;
        crate::root::check_max_length("--query-max-length", args.query_max_length)?;
        ensure!(args.batch_tokens > 0, "--batch-tokens must be positive");
        let enc = Encoder::start(&args, dir)?;
        if queries.embeddings.is_none() {
            let e =
                enc.encode("queries", &queries.ids, &queries.texts, modes, args.query_max_length)?;
            if let Some(d) = &args.save_embeddings {
                save(d, "queries.jsonl", &queries.ids, &e)?;
            }
            queries.embeddings = Some(e);
        }
        if corpus.embeddings.is_none() {
            let e = enc.encode("passages", &corpus.ids, &corpus.texts, modes, args.max_length)?;
            if let Some(d) = &args.save_embeddings {
                save(d, "corpus.jsonl", &corpus.ids, &e)?;
            }
            corpus.embeddings = Some(e);
        }
        enc.stop();
    }
    let passages: Vec<(String, Embedding)> =
        corpus.ids.into_iter().zip(corpus.embeddings.take().expect("encoded")).collect();
    let n_passages = passages.len();
    let index = Index::build(passages)?;
    for r in &runs {
        index.check(r)?;
    }
    let query_embs = queries.embeddings.take().expect("encoded");

    // Retrieve and evaluate.
    let mut results = Vec::new();
    for spec in &runs {
        let t0 = Instant::now();
        let ranked: Vec<Vec<(u32, f32)>> = queries
            .ids
            .par_iter()
            .zip(query_embs.par_iter())
            .map(|(id, q)| index.search(id, q, spec))
            .collect::<Result<_, _>>()?;
        let secs = t0.elapsed().as_secs_f64();
        let run_map: HashMap<String, Vec<(&str, f64)>> = queries
            .ids
            .iter()
            .zip(&ranked)
            .map(|(q, r)| {
                let docs = r.iter().map(|&(d, s)| (index.ids()[d as usize].as_str(), s as f64));
                (q.clone(), docs.collect())
            })
            .collect();
        let ev = evaluate(&run_map, &qrels, &metrics);
        if let Some(dir) = &args.run_dir {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let path = dir.join(run_file_name(&spec.name));
            let mut w = BufWriter::new(
                File::create(&path).with_context(|| format!("creating {}", path.display()))?,
            );
            let tag = format!("trident-{}", spec.name.replace(char::is_whitespace, "_"));
            for (q, r) in queries.ids.iter().zip(&ranked) {
                for (rank, &(d, s)) in r.iter().enumerate() {
                    writeln!(w, "{q} Q0 {} {} {s} {tag}", index.ids()[d as usize], rank + 1)?;
                }
            }
            w.flush().with_context(|| format!("writing {}", path.display()))?;
        }
        results.push((spec.clone(), ev.mean, ev.per_query.len(), secs));
    }

    // The expected value of a uniformly random ranking of the whole corpus.
    let evaluated: Vec<&String> =
        queries.ids.iter().filter(|q| qrels.queries.contains_key(*q)).collect();
    let random: Vec<f64> = metrics
        .iter()
        .map(|&m| {
            let sum: f64 = evaluated
                .iter()
                .map(|q| random_expectation(m, &qrels.queries[*q], n_passages))
                .sum();
            sum / evaluated.len().max(1) as f64
        })
        .collect();

    print!("{}", table(&results, &random, &metrics, n_passages, evaluated.len(), qrels.len()));
    if let Some(path) = &args.json {
        let runs_json: Vec<Value> = results
            .iter()
            .map(|(spec, mean, _, secs)| {
                json!({
                    "name": spec.name,
                    "method": method_name(spec.method).0,
                    "candidates": method_name(spec.method).1,
                    "weights": weights_of(spec.method).map(|w| w.map(decimal)),
                    "depth": spec.depth,
                    "run_file": args.run_dir.as_ref().map(|d| d.join(run_file_name(&spec.name))),
                    "metrics": metric_map(&metrics, mean),
                    "retrieval_seconds": secs,
                })
            })
            .collect();
        let doc = json!({
            "passages": n_passages,
            "queries": evaluated.len(),
            "judgements": qrels.len(),
            "metrics": metrics.iter().map(|m| m.key()).collect::<Vec<_>>(),
            "runs": runs_json,
            "random_expected": metric_map(&metrics, &random),
            "seconds": t_start.elapsed().as_secs_f64(),
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}
