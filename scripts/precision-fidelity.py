#!/usr/bin/env python3
"""Fidelity of a reduced-precision run against an f32 run of the same model on the same input
(trident `embed` JSON Lines, or scripts/ort_reference.py --dump): per document, dense cosine,
ColBERT row cosine, and the Jaccard overlap of the lexical key sets above 0.01; over queries
(ids starting with `q`) × passages (the rest), the hybrid score 0.4·dense + 0.2·sparse +
0.4·ColBERT (the paper's weights): Spearman correlation per query and top-10 overlap per query.
Prints one JSON line.

    python3 scripts/precision-fidelity.py f32.jsonl bf16.jsonl [--label bf16]
"""
import argparse
import json

import numpy as np


def load(path):
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            if "error" in d:
                raise SystemExit(f"{path}: document {d.get('id')} failed: {d['error']}")
            out[str(d["id"])] = d
    return out


def cos(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    na, nb = np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)
    return (a * b).sum(-1) / np.maximum(na * nb, 1e-30)


def keys(d, floor=0.01):
    return {t for t, w in d["sparse"].items() if w > floor}


def hybrid(q, p):
    dense = float(np.dot(q["dense"], p["dense"]))
    sparse = sum(w * p["sparse"].get(t, 0.0) for t, w in q["sparse"].items())
    qc, pc = np.asarray(q["colbert"]), np.asarray(p["colbert"])
    colbert = float((qc @ pc.T).max(axis=1).mean()) if len(qc) and len(pc) else 0.0
    return 0.4 * dense + 0.2 * sparse + 0.4 * colbert


def spearman(x, y):
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    return float(np.corrcoef(rx, ry)[0, 1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ref")
    ap.add_argument("low")
    ap.add_argument("--label", default="")
    a = ap.parse_args()
    ref, low = load(a.ref), load(a.low)
    if ref.keys() != low.keys():
        raise SystemExit("the two runs cover different documents")
    dense, colbert, jac = [], [], []
    for k, r in ref.items():
        l = low[k]
        dense.append(float(cos(r["dense"], l["dense"])))
        if r["colbert"]:
            colbert.extend(cos(r["colbert"], l["colbert"]).tolist())
        ka, kb = keys(r), keys(l)
        jac.append(len(ka & kb) / len(ka | kb) if ka | kb else 1.0)
    queries = sorted(k for k in ref if k.startswith("q"))
    passages = sorted(k for k in ref if not k.startswith("q"))
    rho, top10 = [], []
    for q in queries:
        sr = np.array([hybrid(ref[q], ref[p]) for p in passages])
        sl = np.array([hybrid(low[q], low[p]) for p in passages])
        rho.append(spearman(sr, sl))
        tr, tl = set(np.argsort(-sr)[:10]), set(np.argsort(-sl)[:10])
        top10.append(len(tr & tl) / 10)
    stat = lambda v: (round(min(v), 6), round(sum(v) / len(v), 6)) if v else (None, None)
    out = {"label": a.label, "docs": len(ref), "queries": len(queries), "passages": len(passages)}
    for name, v in [("dense_cos", dense), ("colbert_cos", colbert), ("lexical_jaccard", jac),
                    ("hybrid_spearman", rho), ("top10_overlap", top10)]:
        out[name + "_min"], out[name + "_mean"] = stat(v)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
