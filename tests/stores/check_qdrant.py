#!/usr/bin/env python3
"""Load `trident embed --format qdrant` points into Qdrant (qdrant-client local mode, in
memory) and query them back.

    python3 tests/stores/check_qdrant.py DOCS.jsonl QUERIES.jsonl

The collection is deploy/qdrant/collection.json with the vector sizes of the points (named
vectors `dense` Cosine and `colbert` Cosine multivector MAX_SIM, sparse vector `sparse`).
Every point is validated as the REST schema's PointStruct (pydantic, strict: no coercion) from
the object json.loads gave, and upserted. The Python client's upsert takes PointStruct objects,
not dicts; the REST API (PUT /collections/trident/points {"points": [...]}) takes the same
objects verbatim. Point ids must follow trident's rule: the document id itself when it is a
non-negative integer, else the UUID v5 (URL namespace) of its text.

Each query row (the same texts, same format, same ids) runs two hybrid queries, and both must
rank the query's own document first, strictly ahead of the second:
  - rescore: prefetch dense and sparse candidates, rescore them with colbert MaxSim;
  - fusion: prefetch dense, sparse and colbert, fuse with RRF.
The rescoring score of the own document must be the number of query ColBERT rows (each row
finds itself, cosine 1). Prints one JSON line; exit 1 names the culprit.
"""
import argparse
import json
import os
import sys
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
    REPO,
    CheckFailed,
    expect_keys,
    float_list,
    is_number,
    need,
    read_jsonl,
    run,
    strictly_first,
)


def point_id_for(doc_id):
    """trident's rule: a non-negative integer id (as text, canonical) stays an integer; any
    other id becomes the UUID v5 of its text in the URL namespace."""
    key = doc_id if isinstance(doc_id, str) else json.dumps(doc_id)
    if key.isascii() and key.isdigit() and str(int(key)) == key and int(key) < 2**64:
        return int(key)
    return str(uuid.uuid5(uuid.NAMESPACE_URL, key))


def check_point(where, p, dense_dim, colbert_dim):
    expect_keys(where, p, ("id", "vector", "payload"))
    expect_keys(f"{where}: vector", p["vector"], ("dense", "sparse", "colbert"))
    v = p["vector"]
    float_list(f"{where}: vector.dense", v["dense"], dense_dim)
    expect_keys(f"{where}: vector.sparse", v["sparse"], ("indices", "values"))
    idx, val = v["sparse"]["indices"], v["sparse"]["values"]
    if not (isinstance(idx, list) and all(isinstance(i, int) and 0 <= i < 2**32 for i in idx)):
        raise CheckFailed(f"{where}: vector.sparse.indices must be u32 integers")
    float_list(f"{where}: vector.sparse.values", val, len(idx))
    if len(set(idx)) != len(idx):
        raise CheckFailed(f"{where}: vector.sparse.indices repeat a token id")
    rows = v["colbert"]
    if not isinstance(rows, list) or not rows:
        raise CheckFailed(f"{where}: vector.colbert must be a non-empty list of rows")
    for r, row in enumerate(rows):
        float_list(f"{where}: vector.colbert[{r}]", row, colbert_dim)
    pl = p["payload"]
    if not isinstance(pl, dict) or not {"id", "tokens", "truncated"} <= set(pl):
        raise CheckFailed(f"{where}: payload must hold id, tokens and truncated, got {pl!r:.120}")
    if not is_number(pl["tokens"]) or not isinstance(pl["truncated"], bool):
        raise CheckFailed(f"{where}: payload tokens/truncated have the wrong types: {pl!r:.120}")
    want = point_id_for(pl["id"])
    if p["id"] != want or type(p["id"]) is not type(want):
        raise CheckFailed(
            f"{where}: point id {p['id']!r} for document id {pl['id']!r}; expected {want!r}"
        )


def collection_body(dense_dim, colbert_dim):
    with open(os.path.join(REPO, "deploy", "qdrant", "collection.json"), encoding="utf-8") as f:
        body = json.load(f)
    body["vectors"]["dense"]["size"] = dense_dim
    body["vectors"]["colbert"]["size"] = colbert_dim
    return body


def main(argv):
    ap = argparse.ArgumentParser()
    ap.add_argument("docs")
    ap.add_argument("queries")
    a = ap.parse_args(argv)
    need("numpy", "qdrant_client", "pydantic")
    import pydantic
    import qdrant_client
    from qdrant_client import models

    docs = read_jsonl(a.docs)
    queries = read_jsonl(a.queries)
    first = docs[0][1]
    try:
        dense_dim = len(first["vector"]["dense"])
        colbert_dim = len(first["vector"]["colbert"][0])
    except (KeyError, IndexError, TypeError) as e:
        raise CheckFailed(f"{a.docs}:{docs[0][0]}: no dense or colbert vector ({e!r})")
    for path, recs in ((a.docs, docs), (a.queries, queries)):
        for n, p in recs:
            check_point(f"{path}:{n}", p, dense_dim, colbert_dim)
    ids = [p["id"] for _, p in docs]
    if len(set(map(str, ids))) != len(ids):
        raise CheckFailed(f"{a.docs}: duplicate point ids")

    body = models.CreateCollection.model_validate(collection_body(dense_dim, colbert_dim))
    client = qdrant_client.QdrantClient(":memory:")
    client.create_collection(
        "trident", vectors_config=body.vectors, sparse_vectors_config=body.sparse_vectors
    )
    points = []
    for n, p in docs:
        try:
            points.append(models.PointStruct.model_validate(p, strict=True))
        except pydantic.ValidationError as e:
            raise CheckFailed(f"{a.docs}:{n}: not a Qdrant point: {e}")
    try:
        client.upsert("trident", points=points, wait=True)
    except Exception as batch_error:
        for (n, p), point in zip(docs, points):
            try:
                client.upsert("trident", points=[point], wait=True)
            except Exception as e:
                raise CheckFailed(f"{a.docs}:{n}: Qdrant refused point {p['id']!r}: {e}")
        raise CheckFailed(f"{a.docs}: batch upsert failed, each point alone passed: {batch_error}")
    count = client.count("trident", exact=True).count
    if count != len(points):
        raise CheckFailed(f"{a.docs}: collection holds {count} points after {len(points)} upserts")

    n_docs = len(points)
    margins = {"rescore": [], "fusion": []}
    for n, q in queries:
        v = q["vector"]
        dense = models.Prefetch(query=v["dense"], using="dense", limit=n_docs)
        sparse = models.Prefetch(
            query=models.SparseVector(**v["sparse"]), using="sparse", limit=n_docs
        )
        colbert = models.Prefetch(query=v["colbert"], using="colbert", limit=n_docs)
        where = f"{a.queries}:{n} (document {q['payload']['id']!r})"
        try:
            rescored = client.query_points(
                "trident", prefetch=[dense, sparse], query=v["colbert"], using="colbert",
                limit=n_docs,
            ).points
            fused = client.query_points(
                "trident", prefetch=[dense, sparse, colbert],
                query=models.FusionQuery(fusion=models.Fusion.RRF), limit=n_docs,
            ).points
        except Exception as e:
            raise CheckFailed(f"{where}: query failed: {e}")
        ranked = [(h.id, h.score) for h in rescored]
        margins["rescore"].append(
            strictly_first(f"{where}: dense+sparse prefetch, colbert rescore", q["id"], ranked)
        )
        if abs(ranked[0][1] - len(v["colbert"])) > 1e-3 * len(v["colbert"]):
            raise CheckFailed(
                f"{where}: own-document MaxSim {ranked[0][1]:.6g}, expected the number of query"
                f" rows {len(v['colbert'])} (each row matching itself with cosine 1)"
            )
        margins["fusion"].append(
            strictly_first(
                f"{where}: RRF of dense, sparse, colbert", q["id"], [(h.id, h.score) for h in fused]
            )
        )
    client.close()
    return {
        "store": "qdrant",
        "docs": n_docs,
        "queries": len(queries),
        "dense_dim": dense_dim,
        "colbert_dim": colbert_dim,
        "colbert_rows": sum(len(p["vector"]["colbert"]) for _, p in docs),
        "top1_rescore": len(margins["rescore"]),
        "top1_fusion": len(margins["fusion"]),
        "min_margin_rescore": round(min(margins["rescore"]), 6),
        "min_margin_fusion": round(min(margins["fusion"]), 6),
        "qdrant_client": _version("qdrant-client"),
    }


def _version(dist):
    from importlib.metadata import version

    try:
        return version(dist)
    except Exception:
        return None


if __name__ == "__main__":
    run(main)
