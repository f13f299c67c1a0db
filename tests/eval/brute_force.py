#!/usr/bin/env python3
"""`trident eval`'s retrieval against brute force in numpy (float64), on a synthetic corpus.

    brute_force.py gen DIR               # DIR/corpus.jsonl, DIR/queries.jsonl (trident embed's
                                         #   JSON form), DIR/qrels.tsv
    brute_force.py check DIR RUN_DIR EVAL.json

`check` recomputes every run of EVAL.json (trident eval --json) from the embeddings, by the
definitions of trident_core::retrieve, and compares it with RUN_DIR/<run>.trec:
  dense   all passages by q·p, top depth
  sparse  passages sharing a token, by Σ q_t·p_t, top depth
  colbert the dense top depth re-ranked by MaxSim (mean over query rows of the best row dot)
  hybrid  dense top depth ∪ sparse top depth, by w1·dense + w2·sparse + w3·colbert, top depth
ties broken by passage id descending (trec_eval's order). Same documents in the same order (a
swap allowed only between scores within 1e-5), each score within 1e-5. The means in EVAL.json
are then checked against pytrec_eval on the run files (1e-6), when pytrec_eval is installed.
Exit 0 with a JSON summary line; 1 on a mismatch; 3 when numpy is missing.
"""
import json
import os
import sys

try:
    import numpy as np
except ImportError as e:  # pragma: no cover
    print(f"missing Python package: {e}", file=sys.stderr)
    sys.exit(3)

DENSE, CDIM, VOCAB = 16, 8, 120
TOL = 1e-5


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def gen_one(rng, i, prefix, rows_range, toks_range):
    dense = unit(rng.standard_normal(DENSE)).astype(np.float32)
    n_tok = rng.integers(*toks_range)
    toks = rng.choice(VOCAB, size=n_tok, replace=False)
    weights = rng.uniform(0.01, 0.6, size=n_tok).astype(np.float32)
    rows = unit(rng.standard_normal((rng.integers(*rows_range), CDIM))).astype(np.float32)
    return {
        "id": f"{prefix}{i:04d}",
        "tokens": int(rows.shape[0]) + 1,
        "truncated": False,
        "dense": [float(x) for x in dense],
        "sparse": {str(int(t)): float(w) for t, w in zip(toks, weights)},
        "colbert": [[float(x) for x in r] for r in rows],
    }


def gen(d):
    rng = np.random.default_rng(1234)
    os.makedirs(d, exist_ok=True)
    corpus = [gen_one(rng, i, "p", (2, 7), (3, 9)) for i in range(400)]
    queries = [gen_one(rng, i, "q", (1, 4), (2, 6)) for i in range(30)]
    for name, items in (("corpus.jsonl", corpus), ("queries.jsonl", queries)):
        with open(os.path.join(d, name), "w") as f:
            for it in items:
                f.write(json.dumps(it) + "\n")
    with open(os.path.join(d, "qrels.tsv"), "w") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for q in queries:
            for p in rng.choice(400, size=rng.integers(1, 6), replace=False):
                f.write(f"{q['id']}\tp{p:04d}\t{rng.integers(0, 3)}\n")


def load(path):
    out = [json.loads(l) for l in open(path) if l.strip()]
    ids = [o["id"] for o in out]
    dense = np.array([o["dense"] for o in out], dtype=np.float64)
    sparse = [{int(k): float(v) for k, v in o["sparse"].items()} for o in out]
    colbert = [np.array(o["colbert"], dtype=np.float64) for o in out]
    return ids, dense, sparse, colbert


def ranked(ids, scores, cand, depth):
    """Top depth of cand by score descending, ties by id descending."""
    order = sorted(cand, key=lambda i: (-scores[i], tuple(-b for b in ids[i].encode())))
    return order[:depth]


def check(d, run_dir, eval_json):
    pid, pd, ps, pc = load(os.path.join(d, "corpus.jsonl"))
    qid, qd, qs, qc = load(os.path.join(d, "queries.jsonl"))
    ev = json.load(open(eval_json))
    n = len(pid)
    dense = qd @ pd.T
    sparse = np.zeros((len(qid), n))
    shares = np.zeros((len(qid), n), dtype=bool)
    for i, q in enumerate(qs):
        for j, p in enumerate(ps):
            common = set(q) & set(p)
            shares[i, j] = bool(common)
            sparse[i, j] = sum(q[t] * p[t] for t in common)
    colbert = np.array([[(qc[i] @ pc[j].T).max(axis=1).mean() for j in range(n)] for i in range(len(qid))])
    checked = 0
    for run in ev["runs"]:
        name, method, depth = run["name"], run["method"], run["depth"]
        w = run["weights"]
        got = {}
        path = os.path.join(run_dir, os.path.basename(run["run_file"]))
        for line in open(path):
            q, _, doc, rank, score, _ = line.split()
            got.setdefault(q, []).append((doc, float(score)))
        for i, q in enumerate(qid):
            allp = range(n)
            if method == "dense":
                s, want = dense[i], ranked(pid, dense[i], allp, depth)
            elif method == "sparse":
                s = sparse[i]
                want = ranked(pid, s, [j for j in allp if shares[i, j]], depth)
            elif method == "colbert":
                s = colbert[i]
                want = ranked(pid, s, ranked(pid, dense[i], allp, depth), depth)
            elif method == "hybrid":
                cand = set(ranked(pid, dense[i], allp, depth))
                cand |= set(ranked(pid, sparse[i], [j for j in allp if shares[i, j]], depth))
                s = w[0] * dense[i] + w[1] * sparse[i] + w[2] * colbert[i]
                want = ranked(pid, s, sorted(cand), depth)
            else:
                raise SystemExit(f"unknown method {method}")
            have = got.get(q, [])
            index = {p: j for j, p in enumerate(pid)}
            ctx = f"run {name} query {q}"
            if len(have) != len(want):
                print(f"{ctx}: {len(have)} documents, brute force {len(want)}")
                sys.exit(1)
            for pos, ((doc, score), wj) in enumerate(zip(have, want)):
                hj = index[doc]
                if abs(score - s[hj]) > TOL:
                    print(f"{ctx} rank {pos + 1}: {doc} scored {score}, brute force {s[hj]}")
                    sys.exit(1)
                if hj != wj and abs(s[hj] - s[wj]) > TOL:
                    print(f"{ctx} rank {pos + 1}: {doc} ({s[hj]}), brute force {pid[wj]} ({s[wj]})")
                    sys.exit(1)
            checked += 1
    summary = {"runs": len(ev["runs"]), "rankings": checked}
    try:
        import pytrec_eval
    except ImportError:
        pytrec_eval = None
    if pytrec_eval is not None:
        qrels = {}
        for line in list(open(os.path.join(d, "qrels.tsv")))[1:]:
            q, p, g = line.split()
            qrels.setdefault(q, {})[p] = int(g)
        for run in ev["runs"]:
            runs = {q: {} for q in qid}
            for line in open(os.path.join(run_dir, os.path.basename(run["run_file"]))):
                q, _, doc, _, score, _ = line.split()
                runs[q][doc] = float(score)
            res = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.20", "recall.100"}).evaluate(runs)
            for key, m in (("ndcg@10", "ndcg_cut_10"), ("recall@20", "recall_20"), ("recall@100", "recall_100")):
                ref = sum(r[m] for r in res.values()) / len(res)
                if abs(ref - run["metrics"][key]) > 1e-6:
                    print(f"run {run['name']} {key}: trident {run['metrics'][key]}, pytrec_eval {ref}")
                    sys.exit(1)
        summary["means_checked_with_pytrec_eval"] = True
    print(json.dumps(summary))


if __name__ == "__main__":
    if sys.argv[1] == "gen":
        gen(sys.argv[2])
    else:
        check(*sys.argv[2:5])
