#!/usr/bin/env bash
# Creates the kind cluster for the e2e scenarios, builds the images with Docker, loads them into
# the cluster and installs the operator's chart with helm. Prerequisites: see e2e/README.md.
#
# Usage: e2e/kind/up.sh [--kubeconfig FILE]
# Env: KIND_CLUSTER (default paxos-e2e), IMAGE_TAG (default dev), HELM (default: helm on PATH,
#      else the one e2e/cluster/build-binaries.sh built).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cluster="${KIND_CLUSTER:-paxos-e2e}"
tag="${IMAGE_TAG:-dev}"
kubeconfig="$repo/.cache/kind/$cluster.kubeconfig"
if [[ "${1:-}" == "--kubeconfig" ]]; then
  kubeconfig="$2"
fi

need() {
  command -v "$1" >/dev/null || {
    echo "error: $1 is needed for the kind provider (see e2e/README.md)" >&2
    exit 1
  }
}
need docker
need kind
docker info >/dev/null 2>&1 || {
  echo "error: the Docker daemon is not reachable (docker info failed)" >&2
  exit 1
}
helm="${HELM:-$(command -v helm || true)}"
if [[ -z "$helm" ]]; then
  helm="$("$repo/e2e/cluster/build-binaries.sh" --print-dir)/helm"
  [[ -x "$helm" ]] || "$repo/e2e/cluster/build-binaries.sh"
fi

if kind get clusters 2>/dev/null | grep -qx "$cluster"; then
  echo "== kind cluster $cluster exists; reusing it"
else
  echo "== creating kind cluster $cluster"
  kind create cluster --name "$cluster" --config "$here/cluster.yaml" --wait 120s
fi
mkdir -p "$(dirname "$kubeconfig")"
kind get kubeconfig --name "$cluster" >"$kubeconfig"
echo "== kubeconfig: $kubeconfig"

# The product images from their own Dockerfiles; the test server from the e2e one.
for spec in "paxos-node=$repo/node/Dockerfile" "paxos-operator=$repo/operator/Dockerfile" \
  "e2e-testserver=$here/Dockerfile"; do
  image="${spec%%=*}"
  echo "== building $image:$tag"
  docker build -f "${spec#*=}" -t "$image:$tag" "$repo"
  kind load docker-image --name "$cluster" "$image:$tag"
done

chart="$repo/charts/paxos-operator"
if [[ -f "$chart/Chart.yaml" ]]; then
  echo "== helm install paxos-operator"
  "$helm" upgrade --install paxos-operator "$chart" --kubeconfig "$kubeconfig" \
    --namespace paxos-system --create-namespace \
    --set image.repository=paxos-operator --set image.tag="$tag" --set image.pullPolicy=Never \
    --set nodeImage.repository=paxos-node --set nodeImage.tag="$tag" --wait
else
  echo "== no chart at $chart yet: the operator is not installed"
fi
