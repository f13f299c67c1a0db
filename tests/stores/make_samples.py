#!/usr/bin/env python3
"""Synthetic files in the shapes of `trident embed --format milvus|qdrant|vespa` (random unit
vectors, numpy), for exercising the store checks without trident. The real test
(crates/trident/tests/stores.rs) uses trident's own output instead.

    python3 tests/stores/make_samples.py OUTDIR [--docs 16] [--dense 32] [--colbert 32]

Writes OUTDIR/{milvus,qdrant,vespa}.jsonl (documents) and OUTDIR/{milvus,qdrant}-queries.jsonl
(the same documents: identical text gives identical vectors).
"""
import argparse
import json
import os
import uuid

import numpy as np


def unit(rng, *shape):
    v = rng.normal(size=shape).astype(np.float32)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def bf16(v):
    """Round float32 to bfloat16 (nearest even), back as float32."""
    b = np.asarray(v, np.float32).view(np.uint32).astype(np.uint64)
    b = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) << 16
    return b.astype(np.uint32).view(np.float32)


def enc_dense(v, kind):
    return {"f32": v, "f16": v.astype(np.float16).astype(np.float32), "bf16": bf16(v)}[kind]


def qdrant_id(doc_id):
    key = str(doc_id)
    if key.isdigit() and str(int(key)) == key and int(key) < 2**64:
        return int(key)
    return str(uuid.uuid5(uuid.NAMESPACE_URL, key))


def docs(n, dense_dim, colbert_dim, seed=7):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        doc_id = i if i % 3 == 0 else f"doc-{i}"  # integer and text ids
        rows = 3 + i % 5
        toks = rng.choice(6000, size=rows, replace=False)
        out.append({
            "id": doc_id,
            "tokens": rows + 1,
            "dense": unit(rng, dense_dim),
            "sparse": {int(t): float(w) for t, w in zip(toks, rng.uniform(0.01, 0.4, rows))},
            "colbert": unit(rng, rows, colbert_dim),
        })
    return out


def milvus(d, dense="f32"):
    return {"id": str(d["id"]), "tokens": d["tokens"], "truncated": False,
            "dense": enc_dense(d["dense"], dense).tolist(),
            "sparse": {str(t): w for t, w in sorted(d["sparse"].items())}}


def qdrant(d, dense="f32", colbert="f32"):
    c = d["colbert"]
    c = {"f32": c, "f16": c.astype(np.float16).astype(np.float32),
         "binary": np.where(c > 0, 1.0, -1.0)}[colbert]
    ts = sorted(d["sparse"])
    return {"id": qdrant_id(d["id"]),
            "vector": {"dense": enc_dense(d["dense"], dense).tolist(),
                       "sparse": {"indices": ts, "values": [d["sparse"][t] for t in ts]},
                       "colbert": c.tolist()},
            "payload": {"id": d["id"], "tokens": d["tokens"], "truncated": False}}


def vespa(d, dense="f32"):
    packed = np.packbits(d["colbert"] > 0, axis=-1).view(np.int8)
    key = str(d["id"])
    return {"put": f"id:trident:trident::{key}",
            "fields": {"doc_id": key, "tokens": d["tokens"],
                       "dense": {"values": enc_dense(d["dense"], dense).tolist()},
                       "lexical": {"cells": {str(t): w for t, w in d["sparse"].items()}},
                       "colbert": {"blocks": {str(i): r.tolist() for i, r in enumerate(packed)}}}}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("outdir")
    ap.add_argument("--docs", type=int, default=16)
    ap.add_argument("--dense", type=int, default=32)
    ap.add_argument("--colbert", type=int, default=32)
    a = ap.parse_args()
    os.makedirs(a.outdir, exist_ok=True)
    ds = docs(a.docs, a.dense, a.colbert)

    def write(name, recs):
        with open(os.path.join(a.outdir, name), "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in recs)

    write("milvus.jsonl", map(milvus, ds))
    write("milvus-queries.jsonl", map(milvus, ds))
    write("qdrant.jsonl", (qdrant(d, colbert="f16") for d in ds))
    write("qdrant-queries.jsonl", (qdrant(d, colbert="f16") for d in ds))
    write("vespa.jsonl", map(vespa, ds))
    write("reference.jsonl", (qdrant(d) for d in ds))  # f32 ColBERT, for vespa's bit check


if __name__ == "__main__":
    main()
