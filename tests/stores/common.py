"""Shared by the vector-store checks (check_milvus.py, check_qdrant.py, check_vespa.py).

Each check prints one JSON summary line on stdout and exits 0, or prints what failed (naming
the document, query or field at fault) on stderr and exits 1. A missing Python package exits
3 with the install hint; the Rust test (crates/trident/tests/stores.rs) turns that into a
failure, never a skip.
"""
import json
import os
import sys

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
INSTALL_HINT = "run `bash scripts/test.sh` (it pip-installs the pinned packages)"


class CheckFailed(Exception):
    """A failed check; its message names the culprit."""


def need(*modules):
    """Import the named modules or exit 3 saying what is missing and how to install it."""
    missing = []
    for m in modules:
        try:
            __import__(m)
        except ImportError as e:
            missing.append(f"{m} ({e})")
    if missing:
        print(f"missing Python package(s): {', '.join(missing)}; {INSTALL_HINT}", file=sys.stderr)
        sys.exit(3)


def read_jsonl(path):
    """The records of a trident JSON Lines file, as json.loads gives them, with line numbers.
    Error records ({"id", "error"}) are a failure here: every test document must embed."""
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise CheckFailed(f"{path}:{n}: not JSON: {e}")
            if not isinstance(rec, dict):
                raise CheckFailed(f"{path}:{n}: not a JSON object")
            if "error" in rec:
                raise CheckFailed(f"{path}:{n}: error record: {rec}")
            out.append((n, rec))
    if not out:
        raise CheckFailed(f"{path}: no records")
    return out


def expect_keys(where, obj, keys):
    """obj must be a dict with exactly these keys."""
    if not isinstance(obj, dict):
        raise CheckFailed(f"{where}: expected an object, got {type(obj).__name__}")
    got = set(obj)
    if got != set(keys):
        raise CheckFailed(
            f"{where}: keys {sorted(got)}, expected {sorted(keys)}"
            f" (missing {sorted(set(keys) - got)}, unexpected {sorted(got - set(keys))})"
        )


def is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def float_list(where, v, dim=None):
    if not isinstance(v, list) or not all(is_number(x) for x in v):
        raise CheckFailed(f"{where}: expected a list of numbers")
    if dim is not None and len(v) != dim:
        raise CheckFailed(f"{where}: {len(v)} numbers, expected {dim}")
    return v


def strictly_first(where, want, ranked):
    """ranked: [(id, score)], best first. `want` must be first and strictly ahead of the next."""
    if not ranked:
        raise CheckFailed(f"{where}: no hits")
    top_id, top = ranked[0]
    if top_id != want:
        pos = next((i for i, (h, _) in enumerate(ranked) if h == want), None)
        where_is = f"at rank {pos + 1}" if pos is not None else "not in the hits"
        raise CheckFailed(
            f"{where}: expected {want!r} first, got {top_id!r} (score {top:.6g}); {want!r} is"
            f" {where_is}; hits: {ranked[:5]}"
        )
    if len(ranked) > 1 and not top > ranked[1][1]:
        raise CheckFailed(
            f"{where}: tie at the top: {want!r} and {ranked[1][0]!r} both score {top:.6g}"
        )
    return top - ranked[1][1] if len(ranked) > 1 else float("inf")


def run(main):
    """Run a check's main(argv) -> summary dict; print it, or the failure, and exit."""
    try:
        summary = main(sys.argv[1:])
    except CheckFailed as e:
        print(f"FAILED: {e}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps(summary, sort_keys=True))
    sys.exit(0)
