#!/usr/bin/env bash
# Builds the local control plane's binaries (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, helm) from the Go module in e2e/cluster/go, into
# .cache/k8s/<first 16 hex of sha256(go.sum)>/. A cache hit costs nothing; a cold build takes many
# minutes, so every step prints what it does and how long it took.
#
# Usage: e2e/cluster/build-binaries.sh [--print-dir]
#   --print-dir  only print the cache folder the binaries go to (used by the TypeScript side).
# Env: K8S_BIN_DIR overrides the folder; GO_BUILD_NICE (default 10) is the nice level of the builds.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
mod="$here/go"

# One place for the versions the binaries report (/version, kubectl version, helm version).
k8s_version="v1.34.4"
k8s_build_date="2026-02-10T12:53:36Z" # the release's tag time, so builds are reproducible
helm_version="v3.19.5"

hash="$(sha256sum "$mod/go.sum" | cut -c1-16)"
out="${K8S_BIN_DIR:-$repo/.cache/k8s/$hash}"
if [[ "${1:-}" == "--print-dir" ]]; then
  echo "$out"
  exit 0
fi

binaries=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl helm)
missing=()
for b in "${binaries[@]}"; do
  [[ -x "$out/$b" ]] || missing+=("$b")
done
if [[ ${#missing[@]} -eq 0 ]]; then
  echo "== k8s binaries: cached in $out"
  exit 0
fi

command -v go >/dev/null || {
  echo "error: Go is needed to build the local control plane (missing: ${missing[*]}); install Go >= 1.25" >&2
  exit 1
}
echo "== k8s binaries: building ${missing[*]} into $out ($(go version))"
mkdir -p "$out"

export GOTOOLCHAIN=local CGO_ENABLED=0
# go.sum is committed and complete: readonly makes a missing entry an error instead of an edit.
export GOFLAGS="-mod=readonly -trimpath -buildvcs=false"
nice_level="${GO_BUILD_NICE:-10}"

kv="k8s.io/component-base/version"
cv="k8s.io/client-go/pkg/version"
major="${k8s_version#v}"
major="${major%%.*}"
minor="${k8s_version#v*.}"
minor="${minor%%.*}"
k8s_ldflags="-s -w"
for p in "$kv" "$cv"; do
  k8s_ldflags+=" -X $p.gitVersion=$k8s_version -X $p.gitMajor=$major -X $p.gitMinor=$minor"
  k8s_ldflags+=" -X $p.gitTreeState=clean -X $p.buildDate=$k8s_build_date"
done
helm_ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$helm_version -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for p in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  helm_ldflags+=" -X $p.k8sVersionMajor=$major -X $p.k8sVersionMinor=$minor"
done

package_of() {
  case "$1" in
    etcd) echo "./etcd" ;;
    helm) echo "helm.sh/helm/v3/cmd/helm" ;;
    *) echo "k8s.io/kubernetes/cmd/$1" ;;
  esac
}

cd "$mod"
echo "-- downloading modules"
start=$SECONDS
go mod download
echo "   done in $((SECONDS - start))s"
total_start=$SECONDS
i=0
# One binary at a time: linking kube-apiserver alone needs a few GiB of memory.
for b in "${missing[@]}"; do
  i=$((i + 1))
  flags="$k8s_ldflags"
  [[ "$b" == helm ]] && flags="$helm_ldflags"
  echo "-- [$i/${#missing[@]}] building $b ($(package_of "$b"))"
  start=$SECONDS
  nice -n "$nice_level" go build -ldflags "$flags" -o "$out/.$b.tmp" "$(package_of "$b")"
  mv -f "$out/.$b.tmp" "$out/$b"
  echo "   $b done in $((SECONDS - start))s"
done
echo "== k8s binaries: built in $((SECONDS - total_start))s, in $out"
"$out/kube-apiserver" --version
