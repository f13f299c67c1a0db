#!/usr/bin/env python3
"""Checks of `trident embed` Parquet outputs, for crates/trident/tests/corpus.rs.

    check.py schema OUT --dim D [--dense f32|f16|bf16] [--colbert f32|f16|binary] [--keep a:T,b:T]
    check.py coverage OUT CORPUS [--keep a,b]
    check.py jsonl OUT JSONL_OUTPUT [--max-length N]
    check.py equal OUT_A OUT_B
    check.py parts OUT

Each prints one JSON line (its findings) and exits 0, or prints what is wrong on stderr and
exits 1. Exit code 3: pyarrow or numpy is missing (run `bash scripts/test.sh`).

OUT is an output directory: Parquet parts `part-*.parquet` and `_trident/manifest-*.json`.
"""
import argparse
import glob
import json
import os
import sys
from collections import Counter

try:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq
except ImportError as e:
    print(f"pyarrow/numpy missing: {e}", file=sys.stderr)
    sys.exit(3)



def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def parts(out):
    return sorted(glob.glob(os.path.join(out, "part-*.parquet")))


def read_out(out, columns=None):
    """OUT read back as a dataset, the way a consumer reads it: pyarrow skips `_trident/`;
    every file it finds must be a part."""
    ps = parts(out)
    if not ps:
        fail(f"{out}: no parts")
    d = ds.dataset(out, format="parquet")
    found = sorted(os.path.relpath(f, out) for f in d.files)
    if found != [os.path.basename(p) for p in ps]:
        fail(f"{out}: pyarrow reads {found[:5]}..., not only the parts")
    return pq.read_table(out, columns=columns)


def read_corpus(corpus, columns):
    files = sorted(
        p for p in glob.glob(os.path.join(corpus, "**", "*.parquet"), recursive=True)
    )
    return pa.concat_tables([pq.read_table(f, columns=columns) for f in files])


def manifests(out):
    ms = []
    for p in sorted(glob.glob(os.path.join(out, "_trident", "manifest-*.json"))):
        with open(p) as f:
            ms.append((os.path.basename(p), json.load(f)))
    return ms


# ---------------------------------------------------------------------------------------------
def cmd_schema(a):
    dense_t = {"f32": pa.float32(), "f16": pa.float16(), "bf16": pa.uint16()}[a.dense]
    if a.colbert == "binary":
        cb_row = pa.binary(a.dim // 8)
    else:
        cb_row = pa.list_(pa.field("item", {"f32": pa.float32(), "f16": pa.float16()}[a.colbert],
                                   nullable=False), a.dim)
    keep = [tuple(k.split(":")) for k in a.keep.split(",")] if a.keep else []
    types = {"str": pa.string(), "string": pa.string(), "int64": pa.int64(), "int32": pa.int32()}
    sparse_t = pa.struct([pa.field("token", pa.uint32(), nullable=False),
                          pa.field("weight", pa.float32(), nullable=False)])
    want = [
        ("id", types[a.id_type]),
        ("text_hash", pa.binary(16)),
        ("tokens", pa.int32()),
        ("truncated", pa.bool_()),
        ("dense", pa.list_(pa.field("item", dense_t, nullable=False), a.dim)),
        ("sparse", pa.list_(pa.field("item", sparse_t, nullable=False))),
        ("colbert", pa.list_(pa.field("item", cb_row, nullable=False))),
        ("error", pa.string()),
    ] + [(k, types[t]) for k, t in keep]
    ps = parts(a.out)
    if not ps:
        fail(f"{a.out}: no parts")
    for p in ps:
        s = pq.read_schema(p)
        got = [(f.name, f.type) for f in s]
        if [n for n, _ in got] != [n for n, _ in want]:
            fail(f"{p}: columns {[n for n, _ in got]}, expected {[n for n, _ in want]}")
        for (n, t), (_, w) in zip(got, want):
            if not t.equals(w):
                fail(f"{p}: column {n} is {t}, expected {w}")
        if s.field("text_hash").nullable:
            fail(f"{p}: text_hash is nullable")
        meta = {k.decode(): v.decode() for k, v in (s.metadata or {}).items()}
        if meta.get("trident.dense_encoding") != a.dense or \
                meta.get("trident.colbert_encoding") != a.colbert:
            fail(f"{p}: metadata {meta}")
    print(json.dumps({"parts": len(ps), "columns": [n for n, _ in want]}))


# ---------------------------------------------------------------------------------------------
def cmd_coverage(a):
    keep = a.keep.split(",") if a.keep else []
    src = read_corpus(a.corpus, ["id", "text"] + keep)
    out = read_out(a.out)
    if out.num_rows != src.num_rows:
        fail(f"{out.num_rows} output rows for {src.num_rows} input rows")
    ids = out.column("id").to_pylist()
    dup = [i for i, c in Counter(ids).items() if c > 1]
    if dup:
        fail(f"{len(dup)} ids written more than once, e.g. {dup[:5]}")
    if set(ids) != set(src.column("id").to_pylist()):
        fail("the output ids are not the input ids")
    # Join on id: kept columns equal, errors exactly on null texts, one hash per text.
    src = src.sort_by("id")
    out = out.sort_by("id")
    for k in keep:
        if not out.column(k).equals(src.column(k)):
            fail(f"kept column {k} differs from the input")
    null_text = src.column("text").is_null().to_numpy(zero_copy_only=False)
    err = out.column("error").is_null().to_numpy(zero_copy_only=False) == False  # noqa: E712
    if not np.array_equal(null_text, err):
        bad = np.nonzero(null_text != err)[0][:5]
        fail(f"error set differs from the null texts at ids "
             f"{[out.column('id')[int(i)].as_py() for i in bad]}")
    for c in ["tokens", "truncated", "dense", "sparse", "colbert"]:
        if c in out.column_names:
            nulls = out.column(c).is_null().to_numpy(zero_copy_only=False)
            if not np.array_equal(nulls, err):
                fail(f"column {c}: null exactly where the row failed, expected")
    tok = out.column("tokens").to_numpy(zero_copy_only=False)
    if (np.nan_to_num(tok[~err]) < 2).any():
        fail("a row with fewer than 2 tokens")
    texts = src.column("text").to_pylist()
    hashes = out.column("text_hash").to_pylist()
    by_text = {}
    for t, h in zip(texts, hashes):
        if t is not None and by_text.setdefault(t, h) != h:
            fail(f"text {t!r} has two hashes")
    if len(set(by_text.values())) != len(by_text):
        fail("two texts share a hash")
    if "colbert" in out.column_names:
        lens = pc.list_value_length(out.column("colbert")).to_numpy(zero_copy_only=False)
        ok = ~err
        if not np.array_equal(lens[ok], tok[ok] - 1):
            fail("colbert rows != tokens - 1 (every token but <s>)")
    if "n" in keep:  # n is the row's position in the corpus: each part is one row group
        for p in parts(a.out):
            n = pq.read_table(p, columns=["n"]).column("n").to_numpy()
            if len(n) and not np.array_equal(n, np.arange(n[0], n[0] + len(n))):
                fail(f"{p}: rows not in input order")
    print(json.dumps({
        "rows": out.num_rows, "ids": len(ids), "failed": int(err.sum()),
        "truncated": int(pc.sum(pc.cast(pc.fill_null(out.column("truncated"), False),
                                        pa.int64())).as_py() or 0),
        "distinct_texts": len(by_text),
    }))


# ---------------------------------------------------------------------------------------------
def cmd_jsonl(a):
    """The Parquet rows equal `trident embed` JSON Lines output for the same ids."""
    out = read_out(a.out)
    index = {v: i for i, v in enumerate(out.column("id").to_pylist())}
    cols = {c: out.column(c) for c in out.column_names}
    dim = out.schema.field("dense").type.list_size
    dense = cols["dense"].combine_chunks()
    n = errors = 0
    with open(a.jsonl_output, encoding="utf-8") as f:
        for line in f:
            j = json.loads(line)
            i = index.get(j["id"])
            if i is None:
                fail(f"id {j['id']!r} of the JSON Lines output is not in the Parquet output")
            n += 1
            err = cols["error"][i].as_py()
            if "error" in j:
                if err is None:
                    fail(f"{j['id']}: JSON Lines failed ({j['error']}), Parquet did not")
                errors += 1
                continue
            if err is not None:
                fail(f"{j['id']}: Parquet failed ({err}), JSON Lines did not")
            for k in ("tokens", "truncated"):
                if cols[k][i].as_py() != j[k]:
                    fail(f"{j['id']}: {k} {cols[k][i].as_py()} != {j[k]}")
            d = dense.values.slice(i * dim, dim).to_numpy()
            if not np.array_equal(d, np.asarray(j["dense"], dtype=np.float32)):
                fail(f"{j['id']}: dense differs (max |d| "
                     f"{np.abs(d - np.asarray(j['dense'], dtype=np.float32)).max()})")
            sp = {str(e["token"]): e["weight"] for e in cols["sparse"][i].as_py()}
            js = {k: float(np.float32(v)) for k, v in j["sparse"].items()}
            if sp != js or len(cols["sparse"][i].as_py()) != len(j["sparse"]):
                fail(f"{j['id']}: sparse differs: {sp} != {js}")
            cb = np.asarray(cols["colbert"][i].as_py(), dtype=np.float32)
            jc = np.asarray(j["colbert"], dtype=np.float32)
            if cb.shape != jc.shape or not np.array_equal(cb, jc):
                fail(f"{j['id']}: colbert differs ({cb.shape} vs {jc.shape})")
    print(json.dumps({"compared": n, "errors": errors}))


# ---------------------------------------------------------------------------------------------
def cmd_equal(a):
    """Same rows (sorted by id), every column equal."""
    x = read_out(a.a).sort_by("id")
    y = read_out(a.b).sort_by("id")
    if x.schema.remove_metadata() != y.schema.remove_metadata():
        fail(f"schemas differ:\n{x.schema}\n---\n{y.schema}")
    if x.num_rows != y.num_rows:
        fail(f"{x.num_rows} rows != {y.num_rows} rows")
    for c in x.column_names:
        cx, cy = x.column(c).combine_chunks(), y.column(c).combine_chunks()
        if not cx.equals(cy):
            diff = pc.invert(pc.fill_null(pc.equal(cx, cy), False)) if pa.types.is_primitive(
                cx.type) or pa.types.is_string(cx.type) else None
            where = ""
            if diff is not None:
                idx = np.nonzero(diff.to_numpy(zero_copy_only=False))[0][:5]
                where = f" at ids {[x.column('id')[int(i)].as_py() for i in idx]}"
            else:
                for i in range(len(cx)):
                    if cx[i].as_py() != cy[i].as_py():
                        where = f" first at id {x.column('id')[i].as_py()}"
                        break
            fail(f"column {c} differs{where}")
    print(json.dumps({"rows": x.num_rows, "columns": len(x.column_names)}))


# ---------------------------------------------------------------------------------------------
def cmd_parts(a):
    """Manifests and part files agree: each part in exactly one manifest entry, no stray files,
    no temporary files, the row counts right."""
    ms = manifests(a.out)
    if not ms:
        fail(f"{a.out}: no manifests")
    named = Counter()
    rows = failed = reused = 0
    units = Counter()
    for _, m in ms:
        for key, u in m["units"].items():
            named[u["part"]] += 1
            units[key] += 1
            rows += u["rows"]
            failed += u["failed"]
            reused += u["reused"]
            got = pq.ParquetFile(os.path.join(a.out, u["part"])).metadata.num_rows
            if got != u["rows"]:
                fail(f"{u['part']}: {got} rows, the manifest says {u['rows']}")
    twice = [p for p, c in named.items() if c > 1]
    if twice:
        fail(f"parts in two manifest entries: {twice[:5]}")
    if [k for k, c in units.items() if c > 1]:
        fail("a unit done by two shards")
    files = set(os.listdir(a.out)) - {"_trident"}
    stray = sorted(files - set(named))
    if stray:
        fail(f"files no manifest names: {stray[:5]}")
    missing = sorted(set(named) - files)
    if missing:
        fail(f"manifest parts missing: {missing[:5]}")
    print(json.dumps({"manifests": len(ms), "parts": len(named), "rows": rows,
                      "failed": failed, "reused": reused}))


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("schema")
    s.add_argument("out")
    s.add_argument("--dim", type=int, required=True)
    s.add_argument("--dense", default="f32")
    s.add_argument("--colbert", default="f32")
    s.add_argument("--keep", default="")
    s.add_argument("--id-type", default="string")
    s = sub.add_parser("coverage")
    s.add_argument("out")
    s.add_argument("corpus")
    s.add_argument("--keep", default="")
    s = sub.add_parser("jsonl")
    s.add_argument("out")
    s.add_argument("jsonl_output")
    s = sub.add_parser("equal")
    s.add_argument("a")
    s.add_argument("b")
    s = sub.add_parser("parts")
    s.add_argument("out")
    a = ap.parse_args()
    {"schema": cmd_schema, "coverage": cmd_coverage, "jsonl": cmd_jsonl, "equal": cmd_equal,
     "parts": cmd_parts}[a.cmd](a)


if __name__ == "__main__":
    main()
