#!/usr/bin/env python3
"""What the file formats of `trident embed` cost: a Parquet re-embedding job (Parquet in,
Parquet parts out) against the same corpus as JSON Lines in and out, against the encoder alone
(`trident bench`: tokenize and encode, no pipeline, no files), and the saving of `--previous`
on a rerun with 1% of the texts changed. Prints a Markdown table.

    python3 scripts/bench-corpus.py [--model DIR] [--rows 100000] [--words 3,12]
                                    [--binary target/release/trident] [--work DIR]

--model: any checkpoint directory (default: the tiny test fixture, whose encoder is nearly
free, so the table then shows the formats' own cost). A real-shape random checkpoint with
few layers: `python3 /work/shared/bench/make_random_m3.py --out /tmp/m3-2l --layers 2`.
--binary: default target/release/trident when built, else target/debug/trident (the table
says which; the dev profile is much slower than release in the encoder and the formats).
Needs pyarrow (tests/corpus/make_corpus.py writes the corpus). Peak RSS is measured with
/usr/bin/time -v when present, else with wait4's rusage.

Every timed job runs after the model is loaded once (a one-row run): "load" is subtracted
from the wall time of JSON Lines runs, Parquet runs report their own `seconds` (from the
start of the job, after the model load). The corpus has distinct texts (`--distinct`) and no
null texts, so the content cache and failures do not flatter or blur the numbers.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CORPUS_PY = os.path.join(REPO, "tests", "corpus")
GNU_TIME = "/usr/bin/time"


def run(cmd):
    """Run cmd; returns (wall seconds, peak RSS MiB, exit code, stdout, stderr)."""
    use_time = os.access(GNU_TIME, os.X_OK)
    full = [GNU_TIME, "-v"] + cmd if use_time else cmd
    with tempfile.TemporaryFile("w+") as fo, tempfile.TemporaryFile("w+") as fe:
        t0 = time.perf_counter()
        p = subprocess.Popen(full, stdout=fo, stderr=fe, text=True)
        _, status, usage = os.wait4(p.pid, 0)  # this child's own rusage
        wall = time.perf_counter() - t0
        code = os.waitstatus_to_exitcode(status)
        fo.seek(0)
        fe.seek(0)
        out, err = fo.read(), fe.read()
    rss = usage.ru_maxrss / 1024  # KiB on Linux
    if use_time:
        for line in err.splitlines():
            if "Maximum resident set size" in line:
                rss = int(line.rsplit(":", 1)[1]) / 1024
        # GNU time's report follows the command's own stderr
        cut = err.find("\tCommand being timed:")
        err = err[:cut] if cut >= 0 else err
    return wall, rss, code, out, err


def summary_line(err):
    for line in reversed(err.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise SystemExit(f"no JSON summary in:\n{err}")


def dir_mib(path):
    if os.path.isfile(path):
        return os.path.getsize(path) / 2**20
    total = 0
    for root, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total / 2**20


def pick_binary(arg):
    if arg:
        return arg, "given"
    rel = os.path.join(REPO, "target", "release", "trident")
    dbg = os.path.join(REPO, "target", "debug", "trident")
    if os.access(rel, os.X_OK):
        return rel, "release"
    if os.access(dbg, os.X_OK):
        return dbg, "debug (dev profile: opt-level 1 for trident's crates)"
    raise SystemExit("no trident binary: cargo build --release -p trident")


def cpu_model():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return "unknown CPU"
    fields = dict(
        (k.strip(), v.strip()) for k, v in (l.split(":", 1) for l in out.splitlines() if ":" in l)
    )
    return f"{fields.get('Model name', '?')}, {fields.get('CPU(s)', '?')} CPUs"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=os.path.join(REPO, "tests", "fixtures", "tiny-m3"))
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--words", default="3,12", help="words per text, LO,HI")
    ap.add_argument("--row-group", type=int, default=10_000)
    ap.add_argument("--max-length", default="512")
    ap.add_argument("--binary")
    ap.add_argument("--work", help="keep the corpus and outputs here (default: a temp dir)")
    ap.add_argument("--flags", default="", help="extra flags for every trident embed run")
    a = ap.parse_args()

    binary, build = pick_binary(a.binary)
    work = a.work or tempfile.mkdtemp(prefix="bench-corpus-")
    os.makedirs(work, exist_ok=True)
    corpus, jsonl = os.path.join(work, "corpus"), os.path.join(work, "corpus.jsonl")
    changed = os.path.join(work, "changed")
    for p in (corpus, changed):
        shutil.rmtree(p, ignore_errors=True)
    py = sys.executable
    c = subprocess.run(
        [py, os.path.join(CORPUS_PY, "make_corpus.py"), corpus, "--rows", str(a.rows),
         "--row-group", str(a.row_group), "--words", a.words, "--distinct", "--no-nulls",
         "--jsonl", jsonl], capture_output=True, text=True)
    if c.returncode:
        raise SystemExit(f"make_corpus.py failed ({c.returncode}):\n{c.stderr}")
    ch = subprocess.run([py, os.path.join(CORPUS_PY, "change.py"), corpus, changed,
                         "--fraction", "0.01"], capture_output=True, text=True)
    if ch.returncode:
        raise SystemExit(f"change.py failed:\n{ch.stderr}")
    n_changed = json.loads(ch.stdout.splitlines()[-1])["changed"]

    common = ["--model", a.model, "--max-length", a.max_length] + a.flags.split()
    rows = []

    def embed(name, inp, out, extra=(), parquet=True):
        shutil.rmtree(out, ignore_errors=True) if os.path.isdir(out) else None
        if os.path.isfile(out):
            os.remove(out)
        cmd = [binary, "embed", "--input", inp, "--output", out] + common + list(extra)
        wall, rss, code, _, err = run(cmd)
        if code not in (0, 1):
            raise SystemExit(f"{name}: exit {code}\n{err}")
        r = {"name": name, "wall": wall, "rss": rss, "out_mib": dir_mib(out)}
        if parquet:
            s = summary_line(err)
            r.update(seconds=s["seconds"], tokens=s["tokens"], rows=s["rows"],
                     embedded=s["embedded"], reused=s["reused"], fmt=s["format_seconds"])
        return r

    # Model load and start-up: a one-row JSON Lines run.
    one = os.path.join(work, "one.jsonl")
    with open(jsonl) as f, open(one, "w") as g:
        g.write(f.readline())
    load = min(run([binary, "embed", "--input", one, "--output", os.devnull] + common)[0]
               for _ in range(2))

    # The encoder alone: tokenize + encode the same texts, no pipeline, no files.
    _, enc_rss, code, out, err = run([binary, "bench", "--model", a.model, "--corpus", jsonl,
                                      "--repeat", "1", "--max-length", a.max_length])
    if code:
        raise SystemExit(f"trident bench: exit {code}\n{err}")
    b = json.loads(out.strip().splitlines()[-1])
    enc_s = float(b["seconds"])
    enc_tokens = int(b.get("tokens", 0))

    pq_full = embed("Parquet → Parquet", corpus, os.path.join(work, "out-parquet"))
    wall, rss, code, _, err = run([binary, "embed", "--input", jsonl, "--output",
                                   os.path.join(work, "out.jsonl")] + common)
    if code not in (0, 1):
        raise SystemExit(f"JSON Lines run: exit {code}\n{err}")
    jl = {"name": "JSON Lines → JSON Lines", "wall": wall, "rss": rss,
          "out_mib": dir_mib(os.path.join(work, "out.jsonl")), "seconds": wall - load,
          "tokens": pq_full["tokens"], "rows": a.rows,
          "fmt": summary_line(err)["format_seconds"]}
    pq_bin = embed("Parquet → Parquet, `--colbert-encoding binary`", corpus,
                   os.path.join(work, "out-binary"), ["--colbert-encoding", "binary"])
    prev = embed(f"Parquet --previous ({n_changed} rows changed)", changed,
                 os.path.join(work, "out-previous"),
                 ["--previous", os.path.join(work, "out-parquet")])
    fresh = embed("Parquet → Parquet, changed corpus, fresh", changed,
                  os.path.join(work, "out-fresh"))

    tokens = pq_full["tokens"]
    print(f"\n## trident embed: file formats vs encoder\n")
    print(f"- CPU: {cpu_model()}")
    print(f"- binary: {binary} ({build})")
    print(f"- model: {a.model}")
    print(f"- corpus: {a.rows} rows (distinct texts, {a.words.replace(',', '-')} words, "
          f"8 languages), {dir_mib(corpus):.1f} MiB Parquet in row groups of {a.row_group}, "
          f"{dir_mib(jsonl):.1f} MiB JSON Lines; {tokens} tokens (max length {a.max_length})")
    print(f"- model load + start-up (one-row run): {load:.2f} s, not counted below\n")
    print("| run | seconds | rows/s | tokens/s | peak RSS MiB | output MiB | vs encoder "
          "| format CPU s | format ÷ encoder |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    print(f"| encoder only (`trident bench`) | {enc_s:.2f} | {a.rows / enc_s:,.0f} | "
          f"{(enc_tokens or tokens) / enc_s:,.0f} | {enc_rss:.0f} | – | 1.00 | – | – |")
    for r in (pq_full, pq_bin, jl, prev, fresh):
        sec = r["seconds"]
        print(f"| {r['name']} | {sec:.2f} | {a.rows / sec:,.0f} | {r['tokens'] / sec:,.0f} | "
              f"{r['rss']:.0f} | {r['out_mib']:.0f} | {sec / enc_s:.2f} | {r['fmt']:.2f} | "
              f"{r['fmt'] / enc_s * 100:.1f}% |")
    print()
    print("format CPU s: the job's `format_seconds` (CPU time of the threads reading, decoding,")
    print("building, compressing and writing the files; JSON Lines: line splitting, record")
    print("formatting and writing, each line's JSON decode not included). Target: at most 5% of")
    print("the encoder time.\n")
    for r in (pq_full, pq_bin, jl):
        over = (r["seconds"] - enc_s) / enc_s * 100
        print(f"- {r['name']}: {over:+.1f}% over the encoder alone (pipeline and files; "
              f"target for the files: at most +5%)")
    # The --previous rerun reads the input and the whole earlier output and writes a whole
    # output, encoding ~1%: an upper bound of the Parquet I/O of a full run.
    io = max(prev["seconds"] - enc_s * prev["embedded"] / a.rows, 0)
    print(f"- Parquet I/O bound from the --previous rerun (read input + earlier output, write "
          f"output): {io:.2f} s = {io / enc_s * 100:.1f}% of the encoder time")
    print(f"- --previous: embedded {prev['embedded']}, reused {prev['reused']}; the rerun "
          f"takes {prev['seconds']:.2f} s, {prev['seconds'] / fresh['seconds'] * 100:.1f}% of "
          f"a fresh run on the same corpus ({fresh['seconds']:.2f} s)")
    if enc_tokens and enc_tokens != tokens:
        print(f"- note: trident bench counted {enc_tokens} tokens, the job {tokens}")
    if not a.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
