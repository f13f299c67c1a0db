#!/usr/bin/env bash
# The project's one test command (README "Quick start", and what CI runs through .ci/run).
#
# On a fresh Debian/Ubuntu machine, as root (or with sudo), it installs what the tests need —
# Redis and the tansu Kafka broker (scripts/test-services.sh), the pinned NVIDIA NVRTC 13.0
# wheels for compiling kernels without a GPU, helm/kubernetes-validate/hadolint for the deploy
# checks — then runs: rustfmt check, deploy and kernel checks, every workspace test (one dev
# build, cargo-nextest), the model tests once more with AMX emulated, and clippy. Installs are
# skipped when already present. Any failing step fails the script.
#
#   bash scripts/test.sh                 # everything
#   TRIDENT_SKIP_CLIPPY=1 bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

T0=$SECONDS
STEP_T0=$SECONDS
STEP=""
section() {
    [ -n "$STEP" ] && printf '==== done: %s (%ds)\n' "$STEP" $((SECONDS - STEP_T0))
    STEP="$*"
    STEP_T0=$SECONDS
    printf '\n==== %s  [t=%ds]\n' "$STEP" $((SECONDS - T0))
}
# retry N CMD...: network steps get N tries with a growing pause.
retry() {
    local tries=$1 n=1
    shift
    until "$@"; do
        if [ "$n" -ge "$tries" ]; then
            echo "FAILED after $n tries: $*" >&2
            return 1
        fi
        echo "try $n failed: $*; retrying in $((n * 10))s" >&2
        sleep $((n * 10))
        n=$((n + 1))
    done
}
SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO=sudo; fi
PY=${PYTHON:-python3}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
export CARGO_NET_RETRY=${CARGO_NET_RETRY:-10}
# One cold build: incremental state would only add gigabytes to target/ (override to keep it).
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
export DEBIAN_FRONTEND=noninteractive

section "system packages (apt)"
need_apt=()
for tool in unzip:unzip curl:curl; do
    command -v "${tool%%:*}" >/dev/null || need_apt+=("${tool#*:}")
done
command -v redis-server >/dev/null || need_apt+=(redis-server)
if [ ${#need_apt[@]} -gt 0 ]; then
    retry 3 $SUDO apt-get update -qq
    retry 3 $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
    echo "installed: ${need_apt[*]}"
else
    echo "all present"
fi

section "test services: Redis, tansu (scripts/test-services.sh)"
if [ -f scripts/test-services.sh ]; then
    retry 3 bash scripts/test-services.sh
else
    echo "scripts/test-services.sh not in this tree: skipped"
fi

section "NVIDIA NVRTC 13.0 wheels (kernel compilation without a GPU)"
# Pinned to CUDA 13.0 to match the GPU machines' driver (PTX from a newer NVRTC will not load).
NVIDIA_WHEELS=(nvidia-cuda-nvrtc==13.0.88 nvidia-cuda-nvcc==13.0.88 nvidia-cuda-runtime==13.0.96
    nvidia-cuda-cccl==13.0.85 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88)
retry 3 "$PY" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "${NVIDIA_WHEELS[@]}"
CU13=$("$PY" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')
if [ ! -f "$CU13/include/cuda_fp16.h" ]; then
    echo "NVRTC wheels installed but $CU13/include/cuda_fp16.h is missing" >&2
    exit 1
fi
export TRIDENT_CUDA_HOME="$CU13"
export LD_LIBRARY_PATH="$CU13/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "CUDA 13.0 headers and NVRTC in $CU13"

section "Python packages for the store and corpus tests"
# crates/trident/tests/stores.rs loads trident's Milvus/Qdrant/Vespa feeds with the stores' own
# Python clients (tests/stores/). Pinned: pymilvus + milvus-lite 2.5 (embedded Milvus 2.5),
# qdrant-client (local mode). milvus-lite 2.5 imports pkg_resources, gone from setuptools 81.
# crates/trident/tests/corpus.rs writes and checks Parquet corpora with pyarrow (tests/corpus/).
# crates/trident/tests/eval.rs checks `trident eval` against pytrec_eval and numpy (tests/eval/).
STORE_WHEELS=(numpy==2.4.6 msgpack==1.2.4 pymilvus==2.6.17 milvus-lite==2.5.1
    qdrant-client==1.20.0 "setuptools<81" pyarrow==26.0.1
    pytrec-eval-terrier==0.5.11)
retry 3 "$PY" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "${STORE_WHEELS[@]}"
"$PY" -W ignore - <<'PY'
import importlib.metadata as m
import numpy, msgpack, pymilvus, milvus_lite, qdrant_client, pyarrow  # noqa: F401  (they import)
import pytrec_eval  # noqa: F401  (trident eval's metric checks)
print(", ".join(f"{d} {m.version(d)}" for d in ("pymilvus", "milvus-lite", "qdrant-client", "numpy", "pyarrow", "pytrec-eval-terrier")))
PY

section "cargo fetch (locked)"
retry 3 cargo fetch --locked

section "cargo fmt --check"
cargo fmt --all --check

section "structure: no module import cycles, no source file over 600 lines"
"$PY" scripts/check-module-cycles.py
long=$(find crates -name '*.rs' -not -path '*/target/*' -exec wc -l {} + | awk '$2 != "total" && $1 > 600')
if [ -n "$long" ]; then
    echo "source files over 600 lines:" >&2
    echo "$long" >&2
    exit 1
fi
echo "largest source file: $(find crates -name '*.rs' -exec wc -l {} + | grep -v ' total$' | sort -n | tail -1)"

if [ -f scripts/check-deploy.sh ]; then
    section "deploy checks (scripts/check-deploy.sh)"
    retry 2 bash scripts/check-deploy.sh
fi

if [ -f scripts/check-kernels.sh ]; then
    section "CUDA kernel checks (scripts/check-kernels.sh)"
    bash scripts/check-kernels.sh
fi

if ! cargo nextest --version >/dev/null 2>&1; then
    section "cargo-nextest (not on this machine)"
    retry 3 cargo install cargo-nextest --locked
fi

section "build all tests (dev profile)"
cargo nextest run --workspace --locked --no-run
echo "target/ holds $(du -sh target 2>/dev/null | cut -f1); $(df -h . | awk 'NR==2{print $4}') left on disk"

section "tests (cargo nextest run --workspace)"
cargo nextest run --workspace --locked --no-fail-fast

section "model tests again with AMX tiles emulated in software (TRIDENT_AMX_EMULATE=1)"
# The AMX kernels' packing, block loops, zero points and scaling, checked on CPUs without AMX
# (on AVX512-BF16 CPUs; elsewhere the AMX tests skip with a message, as in the run above).
TRIDENT_AMX_EMULATE=1 cargo nextest run -p trident-model --locked --no-fail-fast

if [ -z "${TRIDENT_SKIP_CLIPPY:-}" ]; then
    section "clippy (all targets, warnings are errors)"
    cargo clippy --workspace --all-targets --locked -- -D warnings
fi

section "summary"
echo "target/ holds $(du -sh target 2>/dev/null | cut -f1); disk: $(df -h . | awk 'NR==2{print $4 " free of " $2}')"
echo "all checks passed in $((SECONDS - T0))s"
