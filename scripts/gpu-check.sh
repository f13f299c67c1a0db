#!/usr/bin/env bash
# GPU check of the CUDA backend on a lent GPU machine (CUDA 13 / driver 580, no Rust, no network).
# Run from the repository root with the binaries of scripts/build-gpu-carry.sh in .carry/gpu:
#     bash scripts/gpu-check.sh          (carry: .carry)
# Steps, each bounded by `timeout` (≈ 7 min at most): nvidia-smi; the GPU tests, one process
# each (fp32 parity with tests/fixtures/tiny-m3/expected.json, bf16 vs the CPU backend on the
# fixture and on a real-shape random model, attention kernels up to 8192 tokens, buffer reuse);
# the benchmark; compute-sanitizer memcheck on the fixture parity and attention tests. Logs go
# to $OUT (default ./gpu-check-out); the benchmark table is printed last.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-check-out}
mkdir -p "$OUT"
T0=$(date +%s)
say() { echo "== [$(( $(date +%s) - T0 ))s] $*" | tee -a "$OUT/summary.txt"; }

BIN=$(mktemp -d /tmp/trident-gpu.XXXXXX)
for b in gpu-tests gpu-bench; do
  if [ -f ".carry/gpu/$b.gz" ]; then gunzip -c ".carry/gpu/$b.gz" > "$BIN/$b" && chmod +x "$BIN/$b"; fi
done
[ -x $BIN/gpu-tests ] && [ -x $BIN/gpu-bench ] || { say "missing .carry/gpu binaries: run scripts/build-gpu-carry.sh and carry .carry"; exit 1; }
say "binaries built from $(head -1 .carry/gpu/COMMIT 2>/dev/null)"

say "nvidia-smi"
timeout 20 nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
timeout 10 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>&1 | tee -a "$OUT/summary.txt"

# CUDA 13 libraries: the toolkit's own first (its NVRTC matches the driver), then any other copy.
say "locating CUDA libraries"
dirs=""
add() { case ":$dirs:" in *":$1:"*) ;; *) [ -d "$1" ] && dirs="${dirs:+$dirs:}$1" ;; esac; }
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/nvidia/lib64 /usr/local/nvidia/lib; do add "$d"; done
has_lib() {
  for d in ${dirs//:/ }; do [ -e "$d/$1" ] && return 0; done
  ldconfig -p 2>/dev/null | grep -q " $1 "
}
missing=""
for lib in libcublas.so.13 libcublasLt.so.13 libnvrtc.so.13 libcuda.so.1; do has_lib "$lib" || missing="$missing $lib"; done
if [ -n "$missing" ]; then
  # One bounded search for everything missing; the first copy of each wins.
  timeout 60 find / \( -path /proc -o -path /sys -o -path /dev \) -prune -o \( -name libcublas.so.13 -o -name libcublasLt.so.13 -o -name libnvrtc.so.13 -o -name libcuda.so.1 \) -print 2>/dev/null > "$OUT/libs-found.txt"
  for lib in $missing; do
    f=$(grep -m1 "/$lib\$" "$OUT/libs-found.txt")
    [ -n "$f" ] && add "$(dirname "$f")"
  done
  rm -f "$OUT/libs-found.txt"
fi
export LD_LIBRARY_PATH="$dirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH" | tee -a "$OUT/summary.txt"
for lib in libcuda.so.1 libcublas.so.13 libcublasLt.so.13 libnvrtc.so.13; do
  found=no
  for d in ${LD_LIBRARY_PATH//:/ }; do [ -e "$d/$lib" ] && found="$d/$lib" && break; done
  [ "$found" = no ] && ldconfig -p 2>/dev/null | grep -q " $lib " && found="(ldconfig)"
  echo "  $lib: $found" | tee -a "$OUT/summary.txt"
done

export TRIDENT_FIXTURE_DIR="$PWD/tests/fixtures/tiny-m3"
export RUST_BACKTRACE=1

left() { echo $(( 420 - ($(date +%s) - T0) )); }  # the whole script stays within ~7 minutes

# One process per test: a kernel fault poisons the CUDA context of its process only.
say "GPU tests, one process each"
rc_tests=0
: > "$OUT/gpu-tests.log"
for t in fixture_parity_f32:45 attention_kernels_match_reference:30 attention_tensor_core_8192_tokens:30 \
         fixture_bf16_matches_cpu:45 real_shape_bf16_matches_cpu:90 buffers_are_reused_across_batches:20 \
         two_workers_share_one_device:45 no_gpu_gives_a_typed_error_not_a_panic:10; do
  name=${t%%:*}; limit=${t##*:}
  timeout "$limit" $BIN/gpu-tests --exact "$name" --test-threads=1 --nocapture >> "$OUT/gpu-tests.log" 2>&1
  rc=$?
  [ $rc = 0 ] || rc_tests=$rc
  [ $rc = 124 ] && echo "test $name ... TIMED OUT after ${limit}s" >> "$OUT/gpu-tests.log"
done
grep -aE "^test |worst|deviation|cos ≥|SKIP|panicked|TIMED OUT|cuda:|Error|error" "$OUT/gpu-tests.log" | grep -v "^test result" | head -60 | tee -a "$OUT/summary.txt"
say "GPU tests done (last failing exit code: $rc_tests)"

# A failing tensor-core attention kernel must not cost the benchmark: fall back to the generic one.
if grep -qaE "^test attention_.* (FAILED|TIMED OUT)" "$OUT/gpu-tests.log"; then
  export TRIDENT_CUDA_ATTENTION=generic
  say "tensor-core attention failed its test: benchmark uses TRIDENT_CUDA_ATTENTION=generic"
fi

say "benchmark (timeout 150 s)"
TRIDENT_BENCH_TABLE="$OUT/bench-table.txt" timeout 150 $BIN/gpu-bench > "$OUT/gpu-bench.log" 2>&1
rc_bench=$?
say "benchmark exit code $rc_bench"
if [ $rc_bench != 0 ] && [ -z "${TRIDENT_CUDA_ATTENTION:-}" ] && [ "$(left)" -gt 150 ]; then
  say "benchmark failed: once more with TRIDENT_CUDA_ATTENTION=generic (timeout 120 s)"
  mv "$OUT/gpu-bench.log" "$OUT/gpu-bench-tc.log"
  TRIDENT_CUDA_ATTENTION=generic TRIDENT_BENCH_TABLE="$OUT/bench-table.txt" timeout 120 $BIN/gpu-bench > "$OUT/gpu-bench.log" 2>&1
  rc_bench=$?
  say "benchmark (generic attention) exit code $rc_bench"
fi

CS=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
if [ -z "$CS" ]; then
  say "compute-sanitizer not found: memcheck skipped"
elif [ "$(left)" -lt 40 ]; then
  say "memcheck skipped: $(left) s left of the ~7 min budget"
else
  lim=$(( $(left) < 90 ? $(left) : 90 ))
  say "compute-sanitizer memcheck on fixture_parity_f32 + attention_kernels_match_reference (timeout $lim s)"
  timeout "$lim" "$CS" --tool memcheck --error-exitcode 9 $BIN/gpu-tests --test-threads=1 --nocapture fixture_parity_f32 attention_kernels_match_reference > "$OUT/memcheck.log" 2>&1
  rc_mc=$?
  grep -aE "ERROR SUMMARY|test result|Invalid|out of bounds" "$OUT/memcheck.log" | head -20 | tee -a "$OUT/summary.txt"
  say "memcheck exit code $rc_mc (0 = clean, 9 = errors found, 124 = timed out)"
fi

say "done: tests rc=$rc_tests bench rc=$rc_bench"
echo
if [ -s "$OUT/bench-table.txt" ]; then
  cat "$OUT/bench-table.txt"
else
  echo "(no benchmark table; last lines of the benchmark log:)"
  tail -25 "$OUT/gpu-bench.log"
fi
