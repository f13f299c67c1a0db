#!/usr/bin/env python3
"""Create the Milvus collection that `trident embed --format milvus` rows load into.

One row per document, exactly as trident writes it (one JSON object per line):

    {"id": "doc-1", "tokens": 12, "truncated": false,
     "dense": [0.013, ...], "sparse": {"6": 0.041, "33600": 0.276, ...}}

Fields: `id` VARCHAR primary key (the document id as text), `dense` FLOAT_VECTOR (or
FLOAT16_VECTOR with --dense-type float16, which needs a Milvus 2.6 server for JSON rows; trident's
--dense-encoding f16|bf16 rows are rounded floats and load into FLOAT_VECTOR as they are),
`sparse` SPARSE_FLOAT_VECTOR (token id -> lexical weight), `tokens` INT64, `truncated` BOOL.
Indexes: dense AUTOINDEX (HNSW on a Milvus server; milvus-lite has only FLAT/IVF_FLAT:
--dense-index FLAT there) with COSINE (IP gives the same order: trident's dense vectors are
L2-normalised), sparse SPARSE_INVERTED_INDEX with IP (the BGE-M3 lexical score is the inner
product of the two weight maps).

    pip install pymilvus==2.6.17                      # plus milvus-lite==2.5.1 for a local file
    python3 deploy/milvus/schema.py --uri http://localhost:19530 --dim 1024
    python3 deploy/milvus/schema.py --uri ./trident.db --dense-index FLAT --load rows.jsonl  # lite

Importable: `create(client, name, dim, dense_type, metric)` and `load_jsonl(client, name, path)`.
"""
import argparse
import json
import sys

from pymilvus import DataType, MilvusClient

DENSE_TYPES = {"float": DataType.FLOAT_VECTOR, "float16": DataType.FLOAT16_VECTOR}


def schema(client, dim=1024, dense_type="float", id_max_length=512):
    s = client.create_schema(auto_id=False, enable_dynamic_field=False)
    s.add_field("id", DataType.VARCHAR, is_primary=True, max_length=id_max_length)
    s.add_field("tokens", DataType.INT64)
    s.add_field("truncated", DataType.BOOL)
    s.add_field("dense", DENSE_TYPES[dense_type], dim=dim)
    s.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
    return s


def index_params(client, metric="COSINE", dense_index="AUTOINDEX"):
    p = client.prepare_index_params()
    params = {"M": 16, "efConstruction": 200} if dense_index == "HNSW" else {}
    p.add_index("dense", index_type=dense_index, metric_type=metric, params=params)
    p.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="IP")
    return p


def create(client, name="trident", dim=1024, dense_type="float", metric="COSINE",
           dense_index="AUTOINDEX", drop=False):
    """Create (or with drop=True recreate) the collection; returns its name."""
    if client.has_collection(name):
        if not drop:
            return name
        client.drop_collection(name)
    client.create_collection(
        name,
        schema=schema(client, dim, dense_type),
        index_params=index_params(client, metric, dense_index),
    )
    return name


def rows(path):
    """trident's rows as parsed: no conversion (error records, `{"id", "error"}`, are skipped)."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                row = json.loads(line)
                if "error" in row:
                    print(f"{path}:{n}: skipped error record: {row['error']}", file=sys.stderr)
                    continue
                yield row


def load_jsonl(client, name, path, batch=512):
    """Insert every row of a `--format milvus` JSON Lines file; returns the count."""
    total, buf = 0, []
    for row in rows(path):
        buf.append(row)
        if len(buf) == batch:
            total += client.insert(name, buf)["insert_count"]
            buf = []
    if buf:
        total += client.insert(name, buf)["insert_count"]
    return total


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--uri", default="http://localhost:19530",
                    help="Milvus server URI, or a local file path for milvus-lite")
    ap.add_argument("--token", default="", help="user:password or API key")
    ap.add_argument("--collection", default="trident")
    ap.add_argument("--dim", type=int, default=1024, help="dense dimension (1024 for bge-m3)")
    ap.add_argument("--dense-type", choices=sorted(DENSE_TYPES), default="float")
    ap.add_argument("--metric", choices=["COSINE", "IP"], default="COSINE")
    ap.add_argument("--dense-index", choices=["AUTOINDEX", "HNSW", "FLAT"], default="AUTOINDEX")
    ap.add_argument("--drop", action="store_true", help="drop an existing collection first")
    ap.add_argument("--load", metavar="JSONL", help="then insert this --format milvus file")
    a = ap.parse_args()
    client = MilvusClient(a.uri, token=a.token)
    create(client, a.collection, a.dim, a.dense_type, a.metric, a.dense_index, drop=a.drop)
    print(f"collection {a.collection}: dense {a.dense_type}[{a.dim}] {a.metric}, sparse IP")
    if a.load:
        print(f"inserted {load_jsonl(client, a.collection, a.load)} rows from {a.load}")


if __name__ == "__main__":
    main()
