#!/usr/bin/env python3
"""Validate a `trident embed --format vespa` feed against a Vespa schema (.sd), without a
Vespa engine: no Vespa runs here, so this checks what a content node would check on feed —
the document id, every field's presence and type, tensor forms, cell types and sizes.

    python3 tests/stores/check_vespa.py deploy/vespa/schemas/trident.sd FEED.jsonl \
        [--dense-dim 32] [--colbert-bytes 4] [--size FIELD.DIM=N ...] [--reference REF.jsonl]

The schema's indexed sizes are bge-m3's (dense x[1024], colbert x[128]); a smaller model's
feed is checked with the sizes overridden (--dense-dim / --colbert-bytes, or the general
--size). --reference gives the float ColBERT rows of the same documents (trident's default
JSON or `--format qdrant` with f32 ColBERT): every int8 block must then be exactly
numpy.packbits(row > 0) — the bit order unpack_bits() in the rank profiles assumes.

The schema itself is checked too: every attribute(f) in a ranking expression names a document
field with `attribute` indexing, and every query(q) is declared in an `inputs` block.
Prints one JSON line; exit 1 names the put and field at fault.
"""
import argparse
import math
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import CheckFailed, expect_keys, is_number, need, read_jsonl, run  # noqa: E402

CELL_TYPES = {"double", "float", "bfloat16", "int8"}
PRIMITIVES = {"string", "int", "long", "float", "double", "bool", "byte"}
INT_RANGE = {"int": 2**31, "long": 2**63, "byte": 2**7, "int8": 2**7}


class TensorType:
    def __init__(self, text):
        m = re.fullmatch(r"tensor(?:<(\w+)>)?\((.*)\)", text.replace(" ", ""))
        if not m:
            raise CheckFailed(f"not a tensor type: {text}")
        self.cell = m.group(1) or "float"
        if self.cell not in CELL_TYPES:
            raise CheckFailed(f"{text}: unknown cell type {self.cell}")
        self.dims = []  # (name, None) mapped, (name, size) indexed; in declaration order
        for d in m.group(2).split(","):
            dm = re.fullmatch(r"(\w+)(?:\{\}|\[(\d+)\])", d)
            if not dm:
                raise CheckFailed(f"{text}: bad dimension {d!r}")
            self.dims.append((dm.group(1), int(dm.group(2)) if dm.group(2) else None))

    @property
    def mapped(self):
        return [n for n, s in self.dims if s is None]

    @property
    def indexed(self):
        return [(n, s) for n, s in self.dims if s is not None]

    def __str__(self):
        dims = ",".join(f"{n}{{}}" if s is None else f"{n}[{s}]" for n, s in self.dims)
        return f"tensor<{self.cell}>({dims})"


def strip_comments(text):
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


def parse_schema(path):
    """{schema, document, fields: {name: (type text, TensorType|None, indexing)}, inputs,
    attribute_refs, query_refs}: a small parser for what trident.sd uses."""
    text = strip_comments(open(path, encoding="utf-8").read())
    m = re.search(r"\bschema\s+(\w+)\s*\{", text)
    if not m:
        raise CheckFailed(f"{path}: no `schema NAME {{`")
    schema = m.group(1)
    m = re.search(r"\bdocument\s+(\w+)\s*(?:inherits\s+[\w,\s]+)?\{", text)
    if not m:
        raise CheckFailed(f"{path}: no `document NAME {{` block")
    document = m.group(1)
    doc_body = block(text, m.end() - 1, path)
    fields = {}
    for fm in re.finditer(r"\bfield\s+(\w+)\s+type\s+", doc_body):
        name, type_text, brace = fm.group(1), *field_type(doc_body, fm.end(), path)
        body = block(doc_body, brace, path)
        im = re.search(r"indexing\s*:\s*([^\n}]+)", body)
        indexing = {s.strip() for s in im.group(1).split("|")} if im else set()
        if type_text.startswith("tensor"):
            ttype = TensorType(type_text)
        elif type_text in PRIMITIVES:
            ttype = None
        else:
            raise CheckFailed(f"{path}: field {name}: type {type_text!r} not handled here")
        if name in fields:
            raise CheckFailed(f"{path}: field {name} declared twice")
        fields[name] = (type_text, ttype, indexing)
    if not fields:
        raise CheckFailed(f"{path}: document {document} has no fields")
    inputs = {}
    for im in re.finditer(r"\binputs\s*\{", text):
        for q in re.finditer(r"query\((\w+)\)\s+([^\n]+)", block(text, im.end() - 1, path)):
            inputs[q.group(1)] = q.group(2).strip()
    outside = text.replace(doc_body, "")
    return {
        "schema": schema,
        "document": document,
        "fields": fields,
        "inputs": inputs,
        "attribute_refs": set(re.findall(r"attribute\((\w+)\)", outside)),
        "field_refs": set(re.findall(r"closeness\(\s*field\s*,\s*(\w+)\s*\)", outside)),
        "query_refs": set(re.findall(r"query\((\w+)\)", outside)),
        "rank_profiles": re.findall(r"\brank-profile\s+(\w+)", text),
    }


def field_type(text, at, path):
    """(type text, offset of the field block's `{`) for a type starting at text[at]: a tensor
    type runs to its closing parenthesis (its mapped dimensions hold braces), others are one
    word."""
    if text.startswith("tensor", at):
        close = text.index(")", at)
    else:
        m = re.match(r"[\w<>]+", text[at:])
        close = at + m.end() - 1 if m else at
    brace = text.find("{", close + 1)
    if brace < 0 or text[close + 1 : brace].strip():
        raise CheckFailed(f"{path}: cannot read the field type at {text[at:at + 40]!r}")
    return " ".join(text[at : close + 1].split()), brace


def block(text, open_at, path):
    """The text inside the braces opening at text[open_at]."""
    depth = 0
    for i in range(open_at, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[open_at + 1 : i]
    raise CheckFailed(f"{path}: unbalanced braces after offset {open_at}")


def check_schema(path, s):
    if s["schema"] != s["document"]:
        raise CheckFailed(f"{path}: schema {s['schema']} holds document {s['document']}")
    for f in sorted(s["attribute_refs"] | s["field_refs"]):
        if f not in s["fields"]:
            raise CheckFailed(f"{path}: a ranking expression reads {f}, which is not a field")
        if "attribute" not in s["fields"][f][2]:
            raise CheckFailed(f"{path}: a ranking expression reads {f}, which is no attribute")
    for q in sorted(s["query_refs"] - set(s["inputs"])):
        raise CheckFailed(f"{path}: query({q}) is used but declared in no `inputs` block")
    for q, t in s["inputs"].items():
        if t.startswith("tensor"):
            TensorType(t)


def check_cell(where, cell, v):
    if cell == "int8":
        if not isinstance(v, int) or isinstance(v, bool):
            raise CheckFailed(f"{where}: int8 cell {v!r} is not an integer")
        if not -128 <= v <= 127:
            raise CheckFailed(f"{where}: int8 cell {v} out of range [-128, 127]")
    elif not is_number(v) or not math.isfinite(v):
        raise CheckFailed(f"{where}: {cell} cell {v!r} is not a finite number")


def check_label(where, label):
    # trident's mapped labels are decimal integers: token ids (lexical), row numbers (colbert).
    if not isinstance(label, str) or not label.isascii() or not label.isdigit():
        raise CheckFailed(f"{where}: label {label!r} is not an integer string")
    if str(int(label)) != label:
        raise CheckFailed(f"{where}: label {label!r} is not canonical (leading zeros)")


def check_tensor(where, t, v):
    """Vespa's JSON tensor forms that trident writes: indexed {"values": [...]}, mapped
    {"cells": {label: v}}, mixed (one mapped + one indexed) {"blocks": {label: [...]}}."""
    if not isinstance(v, dict):
        raise CheckFailed(f"{where}: a tensor must be a JSON object, got {type(v).__name__}")
    mapped, indexed = t.mapped, t.indexed
    if not mapped and len(indexed) == 1:
        expect_keys(where, v, ("values",))
        vals = v["values"]
        if not isinstance(vals, list) or len(vals) != indexed[0][1]:
            n = len(vals) if isinstance(vals, list) else type(vals).__name__
            raise CheckFailed(f"{where}: values has {n} cells, {t} needs {indexed[0][1]}")
        for i, x in enumerate(vals):
            check_cell(f"{where}.values[{i}]", t.cell, x)
        return {"cells": len(vals)}
    if len(mapped) == 1 and not indexed:
        expect_keys(where, v, ("cells",))
        cells = v["cells"]
        if not isinstance(cells, dict):
            raise CheckFailed(f"{where}: cells must be an object {{label: value}} for {t}")
        for label, x in cells.items():
            check_label(f"{where}.cells", label)
            check_cell(f"{where}.cells[{label}]", t.cell, x)
        return {"cells": len(cells)}
    if len(mapped) == 1 and len(indexed) == 1:
        expect_keys(where, v, ("blocks",))
        blocks, size = v["blocks"], indexed[0][1]
        if not isinstance(blocks, dict) or not blocks:
            raise CheckFailed(f"{where}: blocks must be a non-empty object {{label: [..]}}")
        for label, row in blocks.items():
            check_label(f"{where}.blocks", label)
            if not isinstance(row, list) or len(row) != size:
                n = len(row) if isinstance(row, list) else type(row).__name__
                raise CheckFailed(f"{where}.blocks[{label}]: {n} cells, {t} needs {size}")
            for i, x in enumerate(row):
                check_cell(f"{where}.blocks[{label}][{i}]", t.cell, x)
        if sorted(map(int, blocks)) != list(range(len(blocks))):
            raise CheckFailed(f"{where}: block labels are not 0..{len(blocks) - 1}")
        return {"cells": len(blocks) * size, "blocks": len(blocks)}
    raise CheckFailed(f"{where}: tensor type {t} has no JSON form checked here")


def check_primitive(where, type_text, v):
    if type_text == "string":
        ok = isinstance(v, str)
    elif type_text == "bool":
        ok = isinstance(v, bool)
    elif type_text in INT_RANGE:
        r = INT_RANGE[type_text]
        ok = isinstance(v, int) and not isinstance(v, bool) and -r <= v < r
    else:
        ok = is_number(v) and math.isfinite(v)
    if not ok:
        raise CheckFailed(f"{where}: {v!r:.60} is not a valid {type_text}")


def reference_rows(path):
    """{document id text: float ColBERT rows} from trident JSON or --format qdrant lines."""
    out = {}
    for n, rec in read_jsonl(path):
        rows = rec.get("colbert")
        doc_id = rec.get("id")
        if rows is None and isinstance(rec.get("vector"), dict):
            rows, doc_id = rec["vector"].get("colbert"), rec.get("payload", {}).get("id")
        if not isinstance(rows, list) or not rows or not isinstance(rows[0], list):
            raise CheckFailed(f"{path}:{n}: no float ColBERT rows (need f32/f16 encoding)")
        out[doc_id if isinstance(doc_id, str) else str(doc_id)] = rows
    return out


def main(argv):
    ap = argparse.ArgumentParser()
    ap.add_argument("schema")
    ap.add_argument("feed")
    ap.add_argument("--dense-dim", type=int, help="size of dense's indexed dimension")
    ap.add_argument("--colbert-bytes", type=int, help="size of colbert's indexed dimension")
    ap.add_argument("--size", action="append", default=[], metavar="FIELD.DIM=N")
    ap.add_argument("--reference", help="float ColBERT of the same documents (bit-order check)")
    a = ap.parse_args(argv)

    s = parse_schema(a.schema)
    check_schema(a.schema, s)
    sizes = list(a.size)
    if a.dense_dim:
        sizes.append(f"dense.x={a.dense_dim}")
    if a.colbert_bytes:
        sizes.append(f"colbert.x={a.colbert_bytes}")
    for spec in sizes:
        m = re.fullmatch(r"(\w+)\.(\w+)=(\d+)", spec)
        if not m or m.group(1) not in s["fields"] or s["fields"][m.group(1)][1] is None:
            raise CheckFailed(f"--size {spec}: expected TENSOR_FIELD.DIM=N of {a.schema}")
        t = s["fields"][m.group(1)][1]
        if not any(n == m.group(2) and sz is not None for n, sz in t.dims):
            raise CheckFailed(f"--size {spec}: {m.group(1)} has no indexed dimension {m.group(2)}")
        t.dims = [(n, int(m.group(3)) if n == m.group(2) else sz) for n, sz in t.dims]

    if a.reference:
        need("numpy")
    ref = reference_rows(a.reference) if a.reference else None
    puts, totals, seen, bits_checked = 0, {}, set(), 0
    id_re = re.compile(r"id:([^:]+):([^:]+)::(.+)", re.S)
    for n, rec in read_jsonl(a.feed):
        where = f"{a.feed}:{n}"
        expect_keys(where, rec, ("put", "fields"))
        m = id_re.fullmatch(rec["put"]) if isinstance(rec["put"], str) else None
        if not m:
            raise CheckFailed(f"{where}: put {rec['put']!r} is not id:<namespace>:<type>::<id>")
        if m.group(2) != s["document"]:
            raise CheckFailed(
                f"{where}: put for document type {m.group(2)}, schema has {s['document']}"
            )
        if rec["put"] in seen:
            raise CheckFailed(f"{where}: second put of {rec['put']}")
        seen.add(rec["put"])
        fields = rec["fields"]
        expect_keys(f"{where}: fields", fields, s["fields"])
        for name, (type_text, ttype, _) in s["fields"].items():
            fw = f"{where}: {rec['put']} field {name}"
            if ttype is None:
                check_primitive(fw, type_text, fields[name])
            else:
                got = check_tensor(fw, ttype, fields[name])
                for k, c in got.items():
                    totals[f"{name}_{k}"] = totals.get(f"{name}_{k}", 0) + c
        if fields.get("doc_id") is not None and fields["doc_id"] != m.group(3):
            raise CheckFailed(f"{where}: doc_id {fields['doc_id']!r} differs from the put's id")
        if ref is not None:
            bits_checked += check_bits(where, m.group(3), fields, s, ref)
        puts += 1
    summary = {
        "store": "vespa",
        "schema": s["schema"],
        "puts": puts,
        "fields": sorted(s["fields"]),
        "types": {k: str(t) if t else tt for k, (tt, t, _) in s["fields"].items()},
        "rank_profiles": s["rank_profiles"],
        **totals,
    }
    if ref is not None:
        summary["colbert_rows_bit_checked"] = bits_checked
    return summary


def check_bits(where, doc_id, fields, s, ref):
    """Each colbert int8 block == numpy.packbits(float row > 0) viewed as int8."""
    import numpy as np

    t = s["fields"]["colbert"][1]
    if t.cell != "int8":
        return 0
    if doc_id not in ref:
        raise CheckFailed(f"{where}: document {doc_id!r} is not in the --reference file")
    rows = np.asarray(ref[doc_id], dtype=np.float32)
    want = np.packbits(rows > 0, axis=-1).view(np.int8)
    blocks = fields["colbert"]["blocks"]
    if len(blocks) != len(want):
        raise CheckFailed(f"{where}: {len(blocks)} colbert rows, the reference has {len(want)}")
    for i, w in enumerate(want):
        got = blocks[str(i)]
        if got != w.tolist():
            raise CheckFailed(
                f"{where}: colbert row {i} is {got}, packbits(row > 0) of the reference gives"
                f" {w.tolist()} (bit order: dimension 0 = most significant bit of byte 0)"
            )
    return len(want)


if __name__ == "__main__":
    run(main)
