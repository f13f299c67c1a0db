#!/usr/bin/env bash
# The CPU speed table of issue 7, reproducible: FlagEmbedding's `encode` (torch_reference.py)
# and `trident bench` (f32 and bf16 weights) on the same checkpoint, corpora and threads, run
# one after the other in this session, then a markdown table with the ratios.
#
#   scripts/bench-cpu.sh [WORKDIR]        (default /tmp/trident-bench)
#
# Environment: SHARED (../shared), THREADS (2), LAYERS (4: the real width, 4 of 24 layers),
# MIXES ("mixed short long"), TORCH_REPEAT (2), REPEAT (3), SKIP_TORCH=1 to reuse earlier
# baseline files in WORKDIR. Needs the Python packages of ../shared/TESTING-INFRA.md
# (FlagEmbedding 1.4.2, torch, faker) and a release build (`cargo build --release -p trident`).
# With `onnxruntime` and `onnx` installed (pip), scripts/ort_reference.py adds an ONNX Runtime
# float32 column (heads in the graph, length buckets of at most 4096 padded tokens).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=${1:-/tmp/trident-bench}
SHARED=${SHARED:-$ROOT/../shared}
THREADS=${THREADS:-2}
LAYERS=${LAYERS:-4}
MIXES=${MIXES:-mixed short long}
TORCH_REPEAT=${TORCH_REPEAT:-2}
REPEAT=${REPEAT:-3}
TRIDENT=${TRIDENT:-$ROOT/target/release/trident}
mkdir -p "$WORK"
[ -x "$TRIDENT" ] || cargo build --release -p trident
MODEL=$WORK/m3-l$LAYERS
[ -f "$MODEL/model.safetensors" ] ||
    python3 "$SHARED/bench/make_random_m3.py" --out "$MODEL" --layers "$LAYERS" >&2
declare -A DOCS=([short]=256 [mixed]=48 [long]=8)
for mix in $MIXES; do
    corpus=$WORK/$mix.jsonl
    [ -f "$corpus" ] ||
        python3 "$SHARED/bench/make_corpus.py" --out "$corpus" --mix "$mix" --docs "${DOCS[$mix]}" >&2
    # Long documents make every torch repeat minutes long: one timed run there.
    reps=$TORCH_REPEAT
    [ "$mix" = long ] && reps=1
    if [ "${SKIP_TORCH:-0}" != 1 ] || [ ! -s "$WORK/torch-$mix.json" ]; then
        echo "== FlagEmbedding $mix" >&2
        python3 "$SHARED/bench/torch_reference.py" --model "$MODEL" --corpus "$corpus" \
            --threads "$THREADS" --repeat "$reps" >"$WORK/torch-$mix.json" 2>"$WORK/torch-$mix.err"
    fi
    if python3 -c "import onnxruntime, onnx" 2>/dev/null &&
        { [ "${SKIP_TORCH:-0}" != 1 ] || [ ! -s "$WORK/ort-$mix.json" ]; }; then
        echo "== ONNX Runtime $mix" >&2
        python3 "$ROOT/scripts/ort_reference.py" --model "$MODEL" --corpus "$corpus" \
            --threads "$THREADS" --repeat "$reps" --work "$WORK/onnx" >"$WORK/ort-$mix.json" 2>"$WORK/ort-$mix.err"
    fi
    for p in f32 bf16; do
        echo "== trident $mix $p" >&2
        "$TRIDENT" bench --model "$MODEL" --corpus "$corpus" --threads "$THREADS" \
            --repeat "$REPEAT" --precision "$p" >"$WORK/trident-$mix-$p.json" 2>"$WORK/trident-$mix-$p.err"
    done
done
python3 - "$WORK" $MIXES <<'EOF'
import json, sys
work, mixes = sys.argv[1], sys.argv[2:]
load = lambda n: json.load(open(f"{work}/{n}.json"))
print("| corpus | tokens | FlagEmbedding tok/s | ONNX Runtime f32 tok/s | trident f32 tok/s | × FE | × ORT | trident bf16 tok/s | × FE | TTFE f32 s | peak RSS f32 / bf16 MiB |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for m in mixes:
    t, f, b = load(f"torch-{m}"), load(f"trident-{m}-f32"), load(f"trident-{m}-bf16")
    try:
        o = load(f"ort-{m}")["tokens_per_s"]
    except (OSError, ValueError):
        o = None
    base = t["tokens_per_s"]
    ort = f"{o:.0f}" if o else "—"
    vs_ort = f"{f['tokens_per_s']/o:.2f}" if o else "—"
    print(f"| {m} | {f['tokens']} | {base:.0f} | {ort} | {f['tokens_per_s']:.0f} | {f['tokens_per_s']/base:.2f} "
          f"| {vs_ort} | {b['tokens_per_s']:.0f} | {b['tokens_per_s']/base:.2f} | {f['time_to_first_embedding_s']:.2f} "
          f"| {f['peak_rss_bytes']>>20} / {b['peak_rss_bytes']>>20} |")
EOF
