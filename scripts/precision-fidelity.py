#!/usr/bin/env python3
"""Fidelity of a reduced-precision run against an f32 run of `trident embed` (same input):
dense cosine, ColBERT row cosine, lexical-weight key overlap (weights above 1e-3) and the
largest relative lexical weight error on shared keys. Prints one JSON line.

    python3 scripts/precision-fidelity.py f32.jsonl bf16.jsonl
"""
import json
import math
import sys


def load(path):
    with open(path, encoding="utf-8") as f:
        return {str(d["id"]): d for d in map(json.loads, f) if "error" not in d}


def cos(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(y * y for y in b))
    return dot / (na * nb) if na and nb else 1.0


def main():
    ref, low = load(sys.argv[1]), load(sys.argv[2])
    assert ref.keys() == low.keys(), "the two runs cover different documents"
    dense, colbert, overlap, lex_err = [], [], [], 0.0
    for k, r in ref.items():
        l = low[k]
        if "dense" in r:
            dense.append(cos(r["dense"], l["dense"]))
        if "colbert" in r:
            colbert.extend(cos(a, b) for a, b in zip(r["colbert"], l["colbert"]))
        if "sparse" in r:
            ka = {t for t, w in r["sparse"].items() if w > 1e-3}
            kb = {t for t, w in l["sparse"].items() if w > 1e-3}
            overlap.append(len(ka & kb) / max(1, len(ka | kb)))
            for t in ka & kb:
                lex_err = max(lex_err, abs(r["sparse"][t] - l["sparse"][t]) / r["sparse"][t])
    out = {
        "docs": len(ref),
        "dense_cos_min": min(dense, default=None),
        "dense_cos_mean": sum(dense) / len(dense) if dense else None,
        "colbert_cos_min": min(colbert, default=None),
        "colbert_cos_mean": sum(colbert) / len(colbert) if colbert else None,
        "lexical_key_jaccard_min": min(overlap, default=None),
        "lexical_key_jaccard_mean": sum(overlap) / len(overlap) if overlap else None,
        "lexical_rel_err_max": lex_err,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
