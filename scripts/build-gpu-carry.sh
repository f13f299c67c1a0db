#!/usr/bin/env bash
# Builds the CUDA backend's GPU test and benchmark binaries here (x86-64, dev profile: deps at
# opt-level 3) and copies them, stripped, into .carry/gpu/ for scripts/gpu-check.sh on a lent
# GPU machine (no Rust there); gpu-check.sh unpacks them. The tiny fixture travels with the working tree (tests/fixtures).
set -euo pipefail
cd "$(dirname "$0")/.."

exe_of() { # cargo JSON messages on stdin → executable of the target named $1
  python3 -c '
import json, sys
name = sys.argv[1]
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == name and m.get("executable"):
        print(m["executable"])
' "$1" | tail -1
}

tests=$(cargo test -p trident-cuda --test gpu --no-run --message-format=json | exe_of gpu)
bench=$(cargo build -p trident-cuda --example gpu_bench --message-format=json | exe_of gpu_bench)
[ -x "$tests" ] && [ -x "$bench" ] || { echo "build-gpu-carry: binaries not found ($tests, $bench)" >&2; exit 1; }

rm -rf .carry/gpu
mkdir -p .carry/gpu
# Stripped and gzipped: the carried tree (tracked files included) must stay under 64 MiB.
strip --strip-debug -o .carry/gpu/gpu-tests "$tests"
strip --strip-debug -o .carry/gpu/gpu-bench "$bench"
gzip -9 .carry/gpu/gpu-tests .carry/gpu/gpu-bench
git rev-parse --short HEAD > .carry/gpu/COMMIT
git status --porcelain -- crates/trident-cuda kernels crates/trident-model >> .carry/gpu/COMMIT || true
ls -l .carry/gpu
size=$(du -sm .carry | cut -f1)
echo "build-gpu-carry: .carry is ${size} MiB (limit 30)"
[ "$size" -lt 30 ] || { echo "build-gpu-carry: .carry too large (tracked files take ~26 MiB of the 64)" >&2; exit 1; }
