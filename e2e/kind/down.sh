#!/usr/bin/env bash
# Deletes the kind cluster made by e2e/kind/up.sh.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cluster="${KIND_CLUSTER:-paxos-e2e}"
command -v kind >/dev/null || {
  echo "error: kind is not installed" >&2
  exit 1
}
kind delete cluster --name "$cluster"
rm -f "$repo/.cache/kind/$cluster.kubeconfig"
