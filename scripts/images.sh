#!/usr/bin/env bash
# Builds the two images the Helm chart runs, from this checkout, with the
# project's own Dockerfiles (deploy/Dockerfile, deploy/Dockerfile.operator;
# FROM scratch, so no base image is pulled and no registry is needed),
# checks that both start, and prints how to hand them to a cluster.
#
#   scripts/images.sh                     # ghcr.io/raftmq/raftmq:<version>
#                                         # ghcr.io/raftmq/raftmq-operator:<version>
#   REGISTRY=localhost:5001 TAG=dev scripts/images.sh
#
# The default names are the ones the chart (image.repository, appVersion)
# and the operator (an MqttCluster without spec.image) use, so after
# `kind load` / `k3d image import` nothing needs configuring.
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
registry=${REGISTRY:-ghcr.io/raftmq}
tag=${TAG:-$version}
broker="$registry/raftmq:$tag"
operator="$registry/raftmq-operator:$tag"
# The operator is linked statically against glibc: that needs an explicit
# --target (build scripts and proc macros stay dynamic).
target="$(uname -m)-unknown-linux-gnu"
target_dir=${CARGO_TARGET_DIR:-$PWD/target}
# A directory of its own: crt-static flags would otherwise rebuild the
# broker's dependencies on every switch.
operator_target_dir=${CARGO_TARGET_DIR_OPERATOR:-$PWD/target-operator}

if ! docker info >/dev/null 2>&1; then
  echo "images.sh: no running Docker engine (docker info failed)" >&2
  exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
start=$SECONDS
lap=$SECONDS
done_step() {
  echo "   $1: $((SECONDS - lap)) s"
  lap=$SECONDS
}

echo "== broker: cargo build --release -p raftmq"
cargo build --release -p raftmq
done_step "broker binary"
deploy/stage-rootfs.sh "$target_dir/release/raftmq" "$work/broker"
docker build -q -f deploy/Dockerfile -t "$broker" "$work/broker" >/dev/null
done_step "broker image $broker"

echo "== operator: cargo build --release -p raftmq-operator (static)"
CARGO_TARGET_DIR=$operator_target_dir \
  RUSTFLAGS="-C target-feature=+crt-static -C strip=debuginfo" \
  cargo build --release -p raftmq-operator --target "$target"
done_step "operator binary"
# The context is the binary alone, not the whole release directory.
mkdir -p "$work/operator"
cp "$operator_target_dir/$target/release/raftmq-operator" "$work/operator/"
docker build -q -f deploy/Dockerfile.operator -t "$operator" "$work/operator" >/dev/null
done_step "operator image $operator"

echo "== both images start"
docker run --rm "$broker" --version
docker run --rm "$broker" sub --help >/dev/null
docker run --rm "$operator" --version
done_step "checks"

size() { docker image inspect -f '{{.Size}}' "$1" | awk '{printf "%.1f MB", $1 / 1e6}'; }
cat <<EOF

Built in $((SECONDS - start)) s:
  $broker   ($(size "$broker"))
  $operator   ($(size "$operator"))

Hand them to your cluster, one of:
  kind load docker-image $broker $operator
  k3d image import $broker $operator
  minikube image load $broker && minikube image load $operator
  docker push $broker && docker push $operator
EOF
if [ "$registry" = ghcr.io/raftmq ] && [ "$tag" = "$version" ]; then
  cat <<EOF

These are the chart's and the operator's default names: install with
  helm install raftmq charts/raftmq -n raftmq-system --create-namespace
EOF
else
  cat <<EOF

Install the chart with these names, and name the broker image in each
MqttCluster (spec.image):
  helm install raftmq charts/raftmq -n raftmq-system --create-namespace \\
    --set image.repository=$registry/raftmq-operator --set image.tag=$tag
  kubectl patch mqc demo --type=merge -p '{"spec": {"image": "$broker"}}'
EOF
fi
