#!/usr/bin/env python3
"""Load `trident embed --format milvus` rows into Milvus (milvus-lite, embedded, through
pymilvus) and search them back.

    python3 tests/stores/check_milvus.py DOCS.jsonl QUERIES.jsonl

The collection is deploy/milvus/schema.py's, at the dense size of the rows, dense FLOAT_VECTOR
(trident's f16/bf16 dense encodings are rounded floats: they load as they are; FLOAT16_VECTOR
from JSON lists needs a Milvus 2.6 server, which converts the float32 that pymilvus 2.6 sends —
milvus-lite 2.5 fails such inserts of more than one row). Every document row
is inserted exactly as json.loads parsed it. Each query row (the same texts, embedded by
trident in the same format, same ids) runs deploy/milvus/hybrid_search.py's search
(dense COSINE + sparse IP, WeightedRanker(1.0, 0.3)); the document with the query's id must
come first, strictly ahead of the second. Prints one JSON line; exit 1 names the culprit.
"""
import argparse
import os
import sys
import tempfile
import time
import warnings

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

ROW_KEYS = ("id", "tokens", "truncated", "dense", "sparse")


def check_row(where, row, dim):
    """The row shape trident promises (README of deploy/milvus)."""
    expect_keys(where, row, ROW_KEYS)
    if not isinstance(row["id"], str) or not row["id"]:
        raise CheckFailed(f"{where}: id must be a non-empty string, got {row['id']!r}")
    if not isinstance(row["tokens"], int) or isinstance(row["tokens"], bool) or row["tokens"] < 1:
        raise CheckFailed(f"{where}: tokens must be a positive integer, got {row['tokens']!r}")
    if not isinstance(row["truncated"], bool):
        raise CheckFailed(f"{where}: truncated must be a boolean, got {row['truncated']!r}")
    float_list(f"{where}: dense", row["dense"], dim)
    sp = row["sparse"]
    if not isinstance(sp, dict):
        raise CheckFailed(
            f"{where}: sparse must be an object {{\"<token id>\": weight}} (what pymilvus"
            f" takes), got {str(sp)[:80]}"
        )
    for k, v in sp.items():
        if not k.isdigit() or not 0 <= int(k) < 2**32 - 1:
            raise CheckFailed(
                f"{where}: sparse key {k!r} is not a token id (decimal u32 text); pymilvus takes"
                f" {{\"<token id>\": weight}} maps, not {{\"indices\", \"values\"}}"
            )
        if not is_number(v):
            raise CheckFailed(f"{where}: sparse weight of {k} is {v!r}, not a number")


def main(argv):
    ap = argparse.ArgumentParser()
    ap.add_argument("docs")
    ap.add_argument("queries")
    a = ap.parse_args(argv)
    # milvus-lite 2.5 imports pkg_resources (setuptools < 81), which warns on import.
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
    need("numpy", "pymilvus", "milvus_lite")
    import pymilvus

    sys.path.insert(0, os.path.join(REPO, "deploy", "milvus"))
    import hybrid_search
    import schema

    docs = read_jsonl(a.docs)
    queries = read_jsonl(a.queries)
    dim = len(docs[0][1].get("dense") or [])
    if dim == 0:
        raise CheckFailed(f"{a.docs}:{docs[0][0]}: no dense vector")
    for n, row in docs:
        check_row(f"{a.docs}:{n}", row, dim)
    for n, row in queries:
        check_row(f"{a.queries}:{n}", row, dim)
    ids = [row["id"] for _, row in docs]
    if len(set(ids)) != len(ids):
        raise CheckFailed(f"{a.docs}: duplicate ids")

    with tempfile.TemporaryDirectory(prefix="trident-milvus-") as tmp:
        client = open_lite(pymilvus, tmp)
        try:
            return load_and_search(a, client, schema, hybrid_search, docs, queries, dim, pymilvus)
        finally:
            client.close()


def open_lite(pymilvus, tmp, attempts=3):
    """Start milvus-lite on a fresh database file. Its embedded server sometimes fails to start
    on a loaded machine ("Open storage failed", milvus-lite issue 195): only the start is retried,
    each time on a new file, and every failure is said on stderr."""
    for attempt in range(1, attempts + 1):
        try:
            return pymilvus.MilvusClient(os.path.join(tmp, f"trident-{attempt}.db"))
        except Exception as e:
            print(f"milvus-lite start {attempt}/{attempts} failed: {e}", file=sys.stderr)
            if attempt == attempts:
                raise CheckFailed(f"milvus-lite did not start in {attempts} attempts: {e}")
            time.sleep(attempt)


def load_and_search(a, client, schema, hybrid_search, docs, queries, dim, pymilvus):
    # milvus-lite has FLAT and IVF_FLAT only (a server takes deploy's AUTOINDEX).
    name = schema.create(client, "trident", dim=dim, dense_index="FLAT", drop=True)
    rows = [row for _, row in docs]
    try:
        inserted = client.insert(name, rows, timeout=120)["insert_count"]
    except Exception as batch_error:  # find the row pymilvus/Milvus refuses, and say why
        for n, row in docs:
            try:
                client.insert(name, [row], timeout=30)
            except Exception as e:
                raise CheckFailed(f"{a.docs}:{n}: Milvus refused row id {row['id']!r}: {e}")
        raise CheckFailed(f"{a.docs}: batch insert failed, each row alone passed: {batch_error}")
    if inserted != len(rows):
        raise CheckFailed(f"{a.docs}: inserted {inserted} of {len(rows)} rows")
    client.load_collection(name)
    count = client.query(name, filter="", output_fields=["count(*)"])[0]["count(*)"]
    if count != len(rows):
        raise CheckFailed(f"{a.docs}: collection holds {count} rows after inserting {len(rows)}")

    margins = []
    for n, q in queries:
        try:
            hits = hybrid_search.hybrid(client, name, q, limit=len(rows), candidates=len(rows))
        except Exception as e:
            raise CheckFailed(f"{a.queries}:{n}: hybrid search for {q['id']!r} failed: {e}")
        margins.append(strictly_first(f"{a.queries}:{n}: hybrid dense+sparse", q["id"], hits))
    return {
        "store": "milvus",
        "docs": len(rows),
        "queries": len(queries),
        "dense_dim": dim,
        "top1": len(margins),
        "min_margin": round(min(margins), 6),
        "pymilvus": pymilvus.__version__,
        "milvus_lite": _version("milvus-lite"),
    }


def _version(dist):
    from importlib.metadata import version

    try:
        return version(dist)
    except Exception:
        return None


if __name__ == "__main__":
    run(main)
