#!/usr/bin/env python3
"""Copy a Parquet corpus with a fraction of its texts changed, every file keeping its
row-group layout (so `--previous` finds the unchanged rows at the same place).

    change.py CORPUS NEW_CORPUS [--fraction 0.01] [--seed 11]

Only the files holding a changed row are rewritten; the others are copied byte for byte.
Prints one JSON line: changed (rows whose text changed), were_null (of those, rows whose
text was null before), files_rewritten. Exit code 3 when pyarrow is missing.
"""
import argparse
import glob
import json
import os
import random
import shutil
import sys

try:
    import pyarrow as pa
    import pyarrow.parquet as pq
except ImportError as e:
    print(f"pyarrow missing: {e}", file=sys.stderr)
    sys.exit(3)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("corpus")
    ap.add_argument("out")
    ap.add_argument("--fraction", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=11)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    files = sorted(glob.glob(os.path.join(a.corpus, "**", "*.parquet"), recursive=True))
    changed = were_null = rewritten = 0
    for src in files:
        rel = os.path.relpath(src, a.corpus)
        dst = os.path.join(a.out, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        pf = pq.ParquetFile(src)
        table = pf.read()
        texts = table.column("text").to_pylist()
        picks = [i for i in range(len(texts)) if rng.random() < a.fraction]
        if not picks:
            shutil.copyfile(src, dst)
            continue
        for i in picks:
            were_null += texts[i] is None
            texts[i] = f"{texts[i] or ''} changed {rng.randrange(10**9)}".strip()
        changed += len(picks)
        rewritten += 1
        col = table.schema.get_field_index("text")
        table = table.set_column(col, table.schema.field(col), pa.array(texts, pa.string()))
        sizes = [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)]
        with pq.ParquetWriter(dst, table.schema) as w:
            start = 0
            for n in sizes:
                w.write_table(table.slice(start, n), row_group_size=max(n, 1))
                start += n
        back = pq.ParquetFile(dst)
        got = [back.metadata.row_group(g).num_rows for g in range(back.num_row_groups)]
        if got != sizes:
            print(f"{dst}: row groups {got}, wanted {sizes}", file=sys.stderr)
            sys.exit(1)
    for extra in glob.glob(os.path.join(a.corpus, "_*")):
        shutil.copyfile(extra, os.path.join(a.out, os.path.basename(extra)))
    print(json.dumps({"changed": changed, "were_null": were_null, "files_rewritten": rewritten}))


if __name__ == "__main__":
    main()
