#!/usr/bin/env bash
# Fidelity of the CPU precisions on a checkpoint with TRAINED encoder weights (random weights
# flatter reduced precision): trident bf16 and int8 against trident f32 (int8 on AMX-INT8, or
# else AVX512-VNNI, else the portable kernel: all three give the same linear-layer results), and ONNX Runtime's dynamic int8
# against its own f32, on the 340 multilingual queries and passages of tests/fixtures/eval;
# trident f32 against ONNX Runtime f32 shows the two f32 runs are the same model. One JSON line
# per comparison (scripts/precision-fidelity.py), then a markdown table.
#
#   bash /work/shared/realweights/make.sh /tmp/realweights      # once (../shared/realweights)
#   scripts/fidelity-cpu.sh [/tmp/realweights] [WORKDIR]
#
# Needs a release build (`cargo build --release -p trident`) and, for the ONNX Runtime rows,
# torch, transformers, onnx and onnxruntime (pip). THREADS (2).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MODEL=${1:-/tmp/realweights}
WORK=${2:-/tmp/trident-fidelity}
THREADS=${THREADS:-2}
TRIDENT=${TRIDENT:-$ROOT/target/release/trident}
mkdir -p "$WORK"
python3 - "$ROOT/tests/fixtures/eval" "$WORK/input.jsonl" <<'PY'
import json, sys
src, out = sys.argv[1], sys.argv[2]
with open(out, "w", encoding="utf-8") as f:
    for name in ("queries", "corpus"):
        for line in open(f"{src}/{name}.jsonl", encoding="utf-8"):
            d = json.loads(line)
            f.write(json.dumps({"id": d["_id"], "text": d["text"]}, ensure_ascii=False) + "\n")
PY
MODES="f32 bf16 int8"
for p in $MODES; do
    "$TRIDENT" embed --model "$MODEL" --input "$WORK/input.jsonl" --threads "$THREADS" \
        --precision "$p" >"$WORK/trident-$p.jsonl" 2>"$WORK/trident-$p.err"
done
# Without AMX but with AVX512-BF16, the AMX kernels' arithmetic once more, its tile products
# emulated in software (TRIDENT_AMX_EMULATE: the instructions' results, not their speed; the
# hardware also flushes subnormal inputs). EMULATE_AMX=0 leaves it out.
EMULATED=""
if [ "${EMULATE_AMX:-1}" = 1 ] && ! grep -qw amx_bf16 /proc/cpuinfo \
    && grep -qw avx512_bf16 /proc/cpuinfo; then
    EMULATED="bf16 int8"
    for p in $EMULATED; do
        TRIDENT_AMX_EMULATE=1 "$TRIDENT" embed --model "$MODEL" --input "$WORK/input.jsonl" \
            --threads "$THREADS" --precision "$p" >"$WORK/trident-$p-amx-emulated.jsonl" \
            2>"$WORK/trident-$p-amx-emulated.err"
    done
fi
{
    for p in $MODES; do
        [ "$p" = f32 ] && continue
        python3 scripts/precision-fidelity.py "$WORK/trident-f32.jsonl" "$WORK/trident-$p.jsonl" \
            --label "trident $p vs trident f32"
    done
    for p in $EMULATED; do
        python3 scripts/precision-fidelity.py "$WORK/trident-f32.jsonl" \
            "$WORK/trident-$p-amx-emulated.jsonl" \
            --label "trident $p on AMX (emulated in software) vs trident f32"
    done
    if python3 -c "import onnxruntime, onnx" 2>/dev/null; then
        for q in "" --int8; do
            python3 scripts/ort_reference.py --model "$MODEL" --corpus "$WORK/input.jsonl" \
                --threads "$THREADS" --repeat 1 --work "$WORK/onnx" $q \
                --dump "$WORK/ort${q:+-int8}.jsonl" >/dev/null 2>"$WORK/ort${q:+-int8}.err"
        done
        python3 scripts/precision-fidelity.py "$WORK/ort.jsonl" "$WORK/ort-int8.jsonl" \
            --label "ONNX Runtime int8 vs ONNX Runtime f32"
        python3 scripts/precision-fidelity.py "$WORK/trident-f32.jsonl" "$WORK/ort.jsonl" \
            --label "ONNX Runtime f32 vs trident f32"
    fi
} | tee "$WORK/fidelity.jsonl"
python3 - "$WORK/fidelity.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print("| comparison | dense cos min / mean | ColBERT row cos min / mean | lexical Jaccard (>0.01) min / mean | hybrid Spearman min / mean | top-10 overlap min / mean |")
print("|---|---|---|---|---|---|")
f = lambda r, k: f"{r[k + '_min']:.6f} / {r[k + '_mean']:.6f}"
for r in rows:
    print(f"| {r['label']} | {f(r, 'dense_cos')} | {f(r, 'colbert_cos')} | {f(r, 'lexical_jaccard')} "
          f"| {f(r, 'hybrid_spearman')} | {f(r, 'top10_overlap')} |")
PY
