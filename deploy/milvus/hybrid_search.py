#!/usr/bin/env python3
"""Hybrid dense + sparse search over the `trident` collection (deploy/milvus/schema.py).

The queries are embedded by trident too, in the same format as the documents:

    printf '{"id":"q1","text":"who painted the night watch?"}\n' \
      | trident embed --model models/bge-m3 --format milvus > queries.jsonl
    python3 deploy/milvus/hybrid_search.py --uri http://localhost:19530 queries.jsonl

Each query row gives one AnnSearchRequest on `dense` (COSINE) and one on `sparse` (IP); the
two lists are merged with WeightedRanker(1.0, 0.3), the dense + sparse weights of the BGE-M3
paper (s = 1.0 * s_dense + 0.3 * s_lex). Milvus rows carry no ColBERT vectors; rescore the
top hits with ColBERT elsewhere if needed (trident's default JSON output has them).

Importable: `hybrid(client, name, row, limit, weights)` returns [(id, score), ...].
"""
import argparse
import json

from pymilvus import AnnSearchRequest, MilvusClient, WeightedRanker

BGE_M3_DENSE_SPARSE = (1.0, 0.3)


def hybrid(client, name, row, limit=10, weights=BGE_M3_DENSE_SPARSE, candidates=100):
    """One hybrid search for a trident `--format milvus` row (its dense and sparse)."""
    reqs = [
        AnnSearchRequest([row["dense"]], "dense", {"metric_type": "COSINE"}, limit=candidates),
        AnnSearchRequest([row["sparse"]], "sparse", {"metric_type": "IP"}, limit=candidates),
    ]
    res = client.hybrid_search(
        name, reqs, WeightedRanker(*weights), limit=limit, output_fields=["id", "tokens"]
    )
    return [(hit["id"], hit["distance"]) for hit in res[0]]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("queries", help="trident --format milvus JSON Lines of the query texts")
    ap.add_argument("--uri", default="http://localhost:19530")
    ap.add_argument("--token", default="")
    ap.add_argument("--collection", default="trident")
    ap.add_argument("--limit", type=int, default=10)
    ap.add_argument("--weights", default="1.0,0.3", help="dense,sparse (default: BGE-M3 paper)")
    a = ap.parse_args()
    weights = tuple(float(w) for w in a.weights.split(","))
    client = MilvusClient(a.uri, token=a.token)
    client.load_collection(a.collection)
    with open(a.queries, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            hits = hybrid(client, a.collection, row, a.limit, weights)
            print(json.dumps({"query": row["id"], "hits": [[i, round(s, 6)] for i, s in hits]}))


if __name__ == "__main__":
    main()
