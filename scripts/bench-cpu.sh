#!/usr/bin/env bash
# The CPU speed table, reproducible: FlagEmbedding's `encode` (torch_reference.py), ONNX Runtime
# f32 and its dynamic int8 quantisation (ort_reference.py) and `trident bench` at f32, bf16 and
# int8 (AMX-INT8, AVX512-VNNI, or the portable int8 kernel elsewhere),
# on the same checkpoint, corpora and threads, run one after the other in this session, then a
# markdown table with the ratios, headed by the CPU's model name and features.
#
#   scripts/bench-cpu.sh [WORKDIR]        (default /tmp/trident-bench)
#
# Environment: SHARED (../shared), THREADS (2), LAYERS (4: the real width, 4 of 24 layers),
# MIXES ("mixed short long"), TORCH_REPEAT (2), REPEAT (3), SKIP_TORCH=1 to reuse earlier
# baseline files in WORKDIR. Needs the Python packages of ../shared/TESTING-INFRA.md
# (FlagEmbedding 1.4.2, torch, faker) and a release build (`cargo build --release -p trident`).
# With `onnxruntime` and `onnx` installed (pip), scripts/ort_reference.py adds ONNX Runtime
# float32 and int8 columns (heads in the graph, length buckets of at most 4096 padded tokens).
# Fidelity of the reduced precisions: scripts/fidelity-cpu.sh.
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
# int8 runs on AMX-INT8 where the CPU has it, else AVX512-VNNI, else the portable int8 kernel.
MODES="f32 bf16 int8"
# BASELINE=/path/to/an/older/trident: its f32 runs right after each trident f32 run (same
# corpus, same settings), for an "× baseline" column measured in the same run.
BASELINE=${BASELINE:-}
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
            --threads "$THREADS" --repeat "$reps" >"$WORK/torch-$mix.json" 2>"$WORK/torch-$mix.err" ||
            echo "FlagEmbedding failed (its column says —): $WORK/torch-$mix.err" >&2
    fi
    if python3 -c "import onnxruntime, onnx" 2>/dev/null &&
        { [ "${SKIP_TORCH:-0}" != 1 ] || [ ! -s "$WORK/ort-$mix.json" ]; }; then
        echo "== ONNX Runtime $mix" >&2
        python3 "$ROOT/scripts/ort_reference.py" --model "$MODEL" --corpus "$corpus" \
            --threads "$THREADS" --repeat "$reps" --work "$WORK/onnx" >"$WORK/ort-$mix.json" 2>"$WORK/ort-$mix.err"
        echo "== ONNX Runtime int8 $mix" >&2
        python3 "$ROOT/scripts/ort_reference.py" --model "$MODEL" --corpus "$corpus" --int8 \
            --threads "$THREADS" --repeat "$reps" --work "$WORK/onnx" >"$WORK/ort8-$mix.json" 2>"$WORK/ort8-$mix.err"
    fi
    for p in $MODES; do
        echo "== trident $mix $p" >&2
        "$TRIDENT" bench --model "$MODEL" --corpus "$corpus" --threads "$THREADS" \
            --repeat "$REPEAT" --precision "$p" >"$WORK/trident-$mix-$p.json" 2>"$WORK/trident-$mix-$p.err"
        if [ "$p" = f32 ] && [ -n "$BASELINE" ]; then
            echo "== baseline $mix f32 ($BASELINE)" >&2
            "$BASELINE" bench --model "$MODEL" --corpus "$corpus" --threads "$THREADS" \
                --repeat "$REPEAT" >"$WORK/base-$mix-f32.json" 2>"$WORK/base-$mix-f32.err"
        fi
    done
done
python3 - "$WORK" $MIXES <<'EOF'
import json, sys
work, mixes = sys.argv[1], sys.argv[2:]
load = lambda n: json.load(open(f"{work}/{n}.json"))
def opt(n):
    try:
        return load(n)["tokens_per_s"]
    except (OSError, ValueError, KeyError):
        return None
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
flags = set(next((l.split(":", 1)[1].split() for l in open("/proc/cpuinfo") if l.startswith("flags")), []))
feats = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8") if f in flags]
def opt_run(n):
    try:
        return load(n)
    except (OSError, ValueError):
        return None
i8 = opt_run(f"trident-{mixes[0]}-int8")
print(f"CPU: {cpu} ({', '.join(feats)}); trident f32: {load(f'trident-{mixes[0]}-f32')['backend']}; "
      f"bf16: {load(f'trident-{mixes[0]}-bf16')['backend']}; int8: {i8['backend'] if i8 else 'not run'}\n")
r = lambda a, b: f"{a / b:.2f}" if a and b else "—"
n = lambda v: f"{v:.0f}" if v else "—"
print("| corpus | tokens | FlagEmbedding tok/s | ONNX Runtime f32 | ONNX Runtime int8 | trident f32 | × ORT f32 | baseline f32 | × baseline | trident bf16 | × ORT int8 | trident int8 | × ORT int8 | × FE (bf16) | peak RSS f32 / bf16 / int8 MiB |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for m in mixes:
    f, b = load(f"trident-{m}-f32"), load(f"trident-{m}-bf16")
    q = opt_run(f"trident-{m}-int8")
    o, o8 = opt(f"ort-{m}"), opt(f"ort8-{m}")
    fe, tf, tb = opt(f"torch-{m}"), f["tokens_per_s"], b["tokens_per_s"]
    tq = q["tokens_per_s"] if q else None
    rss = lambda d: str(d["peak_rss_bytes"] >> 20) if d else "—"
    base = opt(f"base-{m}-f32")
    print(f"| {m} | {f['tokens']} | {n(fe)} | {n(o)} | {n(o8)} | {tf:.0f} | {r(tf, o)} | {n(base)} | {r(tf, base)} | {tb:.0f} | {r(tb, o8)} "
          f"| {n(tq)} | {r(tq, o8)} | {r(tb, fe)} | {rss(f)} / {rss(b)} / {rss(q)} |")
EOF
