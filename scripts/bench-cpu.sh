#!/usr/bin/env bash
# The CPU speed table, reproducible: FlagEmbedding's `encode` (torch_reference.py), ONNX Runtime
# f32 and its dynamic int8 quantisation (ort_reference.py) and `trident bench` at f32, bf16 and
# int8 (AMX-INT8, AVX512-VNNI, else AVX2's VPMADDWD kernel), on the same checkpoint,
# corpora and threads, in ROUNDS interleaved rounds in this session, then a markdown table of
# medians and ratios (scripts/bench_cpu_table.py), headed by the CPU's model name and features.
#
#   scripts/bench-cpu.sh [WORKDIR]        (default /tmp/trident-bench)
#
# Environment: SHARED (../shared), THREADS (2), LAYERS (4: the real width, 4 of 24 layers),
# MIXES ("mixed short long"), ROUNDS (3), TORCH_REPEAT (2; ONNX Runtime's repeats too), REPEAT
# (3), SKIP_TORCH=1 to reuse an earlier FlagEmbedding run in WORKDIR. Needs the Python packages
# of ../shared/TESTING-INFRA.md (FlagEmbedding 1.4.2, torch, faker) and a release build
# (`cargo build --release -p trident`). With `onnxruntime` and `onnx` installed (pip),
# scripts/ort_reference.py adds ONNX Runtime float32 and int8 columns (heads in the graph,
# length buckets of at most 4096 padded tokens).
# Fidelity of the reduced precisions: scripts/fidelity-cpu.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=${1:-/tmp/trident-bench}
SHARED=${SHARED:-$ROOT/../shared}
THREADS=${THREADS:-2}
LAYERS=${LAYERS:-4}
MIXES=${MIXES:-mixed short long}
ROUNDS=${ROUNDS:-3}
TORCH_REPEAT=${TORCH_REPEAT:-2}
REPEAT=${REPEAT:-3}
TRIDENT=${TRIDENT:-$ROOT/target/release/trident}
mkdir -p "$WORK"
[ -x "$TRIDENT" ] || cargo build --release -p trident
MODEL=$WORK/m3-l$LAYERS
[ -f "$MODEL/model.safetensors" ] ||
    python3 "$SHARED/bench/make_random_m3.py" --out "$MODEL" --layers "$LAYERS" >&2
# int8 runs on AMX-INT8 where the CPU has it, else AVX512-VNNI, else AVX2 (VPMADDWD).
MODES="f32 bf16 int8"
# BASELINE=/path/to/an/older/trident: its f32 runs right after each trident f32 run (same
# corpus, same settings), for an "× baseline" column measured in the same rounds.
BASELINE=${BASELINE:-}
declare -A DOCS=([short]=256 [mixed]=48 [long]=8)
# Long documents make every torch repeat minutes long: one timed run there.
reps_for() { if [ "$1" = long ]; then echo 1; else echo "$TORCH_REPEAT"; fi; }
for mix in $MIXES; do
    corpus=$WORK/$mix.jsonl
    [ -f "$corpus" ] ||
        python3 "$SHARED/bench/make_corpus.py" --out "$corpus" --mix "$mix" --docs "${DOCS[$mix]}" >&2
    # FlagEmbedding is context, not the baseline of a ratio: once, before the rounds.
    if [ "${SKIP_TORCH:-0}" != 1 ] || [ ! -s "$WORK/torch-$mix.json" ]; then
        echo "== FlagEmbedding $mix" >&2
        python3 "$SHARED/bench/torch_reference.py" --model "$MODEL" --corpus "$corpus" \
            --threads "$THREADS" --repeat "$(reps_for "$mix")" >"$WORK/torch-$mix.json" \
            2>"$WORK/torch-$mix.err" ||
            echo "FlagEmbedding failed (its column says —): $WORK/torch-$mix.err" >&2
    fi
done
HAVE_ORT=0
python3 -c "import onnxruntime, onnx" 2>/dev/null && HAVE_ORT=1
# Each round runs every implementation on every corpus back to back, so a slow phase of a
# shared machine hits a round's columns alike; ratios are taken within a round.
for round in $(seq 1 "$ROUNDS"); do
    out=$WORK/round$round
    rm -rf "$out" # an earlier run's files (a baseline not run this time) must not reach the table
    mkdir -p "$out"
    for mix in $MIXES; do
        corpus=$WORK/$mix.jsonl
        if [ "$HAVE_ORT" = 1 ]; then
            for q in f32 int8; do
                echo "== round $round: ONNX Runtime $q $mix" >&2
                name=ort-$mix
                flag=()
                [ "$q" = int8 ] && name=ort8-$mix && flag=(--int8)
                python3 "$ROOT/scripts/ort_reference.py" --model "$MODEL" --corpus "$corpus" \
                    "${flag[@]}" --threads "$THREADS" --repeat "$(reps_for "$mix")" \
                    --work "$WORK/onnx" >"$out/$name.json" 2>"$out/$name.err" ||
                    echo "ONNX Runtime $q failed: $out/$name.err" >&2
            done
        fi
        for p in $MODES; do
            echo "== round $round: trident $p $mix" >&2
            "$TRIDENT" bench --model "$MODEL" --corpus "$corpus" --threads "$THREADS" \
                --repeat "$REPEAT" --precision "$p" >"$out/trident-$mix-$p.json" \
                2>"$out/trident-$mix-$p.err"
            if [ "$p" = f32 ] && [ -n "$BASELINE" ]; then
                echo "== round $round: baseline f32 $mix ($BASELINE)" >&2
                "$BASELINE" bench --model "$MODEL" --corpus "$corpus" --threads "$THREADS" \
                    --repeat "$REPEAT" >"$out/base-$mix-f32.json" 2>"$out/base-$mix-f32.err"
            fi
        done
    done
done
python3 "$ROOT/scripts/bench_cpu_table.py" "$WORK" "$ROUNDS" $MIXES
