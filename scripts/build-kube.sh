#!/usr/bin/env bash
# Build a real Kubernetes control plane from Go modules into .tools/kube, once; later runs reuse it.
#
#   etcd                      go.etcd.io/etcd/server/v3 (etcdmain)
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubectl
#                             k8s.io/kubernetes, built in a scratch module whose `replace` block points
#                             every staging module at its published k8s.io/* v0.X.Y release
#   kwok                      sigs.k8s.io/kwok (fake nodes and pod lifecycles, no container engine)
#   crds/                     Prometheus-operator and Gateway API CRDs, from their module copies
#   stages/                   kwok's Stage objects, from its module copy
#
# The tests start it on 127.0.0.1 only (tests/fixtures/kube.py). About 8 minutes on 2 cores with an
# empty Go build cache, seconds afterwards.
set -euo pipefail
K8S_VERSION=v1.34.4          # newest v1.34 served by the module proxy
STAGING_VERSION=v0.34.4      # the staging modules published with it
ETCD_VERSION=v3.6.16
KWOK_VERSION=v0.8.0
PROMETHEUS_OPERATOR_VERSION=v0.85.0
GATEWAY_API_VERSION=v1.4.1
STAMP_VALUE="$K8S_VERSION $ETCD_VERSION $KWOK_VERSION $PROMETHEUS_OPERATOR_VERSION $GATEWAY_API_VERSION"

TOOLS="${DICOMGW_TOOLS:-$(cd "$(dirname "$0")/.." && pwd)/.tools}"
OUT="$TOOLS/kube"
STAMP="$OUT/.version"
if [ "$(cat "$STAMP" 2>/dev/null)" = "$STAMP_VALUE" ]; then
    exit 0
fi
command -v go >/dev/null || { echo "Go is needed to build the Kubernetes control plane" >&2; exit 1; }
echo "building Kubernetes $K8S_VERSION, etcd $ETCD_VERSION and kwok $KWOK_VERSION from their Go modules (about 8 minutes, once)..."
mkdir -p "$OUT/bin" "$OUT/crds" "$OUT/stages"
SRC="$TOOLS/src"
rm -rf "$SRC/kube" "$SRC/etcd"
mkdir -p "$SRC/kube" "$SRC/etcd"
export GOFLAGS="-trimpath -buildvcs=false" CGO_ENABLED=0

# --- Kubernetes -----------------------------------------------------------------------------------
modfile="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
staging="$(sed -n '/^replace (/,/^)/p' "$modfile" | awk '/=>/ {print $1}')"
cd "$SRC/kube"
go mod init dicomgw.local/kube >/dev/null 2>&1
for module in $staging; do
    if go list -m "$module@$STAGING_VERSION" >/dev/null 2>&1; then
        go mod edit -replace "$module=$module@$STAGING_VERSION"
    else
        # never published (the sample-* modules): nothing imports them, an empty module stands in
        mkdir -p "stubs/$module"
        printf 'module %s\n\ngo 1.24\n' "$module" > "stubs/$module/go.mod"
        go mod edit -replace "$module=./stubs/$module"
    fi
done
commands="k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager
k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl"
{
    echo '//go:build tools'
    echo
    echo 'package tools'
    echo
    echo 'import ('
    for cmd in $commands; do echo "	_ \"$cmd\""; done
    echo ')'
} > tools.go
go get "k8s.io/kubernetes@$K8S_VERSION" >/dev/null
go mod tidy >/dev/null
minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
ldflags="-s -w"
for var in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags="$ldflags -X $var.gitVersion=$K8S_VERSION -X $var.gitMajor=1 -X $var.gitMinor=$minor"
    ldflags="$ldflags -X $var.gitTreeState=clean -X $var.buildDate=1970-01-01T00:00:00Z"
done
for cmd in $commands; do
    go build -ldflags "$ldflags" -o "$OUT/bin/$(basename "$cmd")" "$cmd"
done

# --- etcd -----------------------------------------------------------------------------------------
cd "$SRC/etcd"
go mod init dicomgw.local/etcd >/dev/null 2>&1
cat > main.go <<'EOF'
// etcd's own main, built from its server module.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
EOF
go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >/dev/null
go mod tidy >/dev/null
go build -ldflags "-s -w" -o "$OUT/bin/etcd" .

# --- kwok, its stages, and the CRDs ---------------------------------------------------------------
GOBIN="$OUT/bin" go install -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
module_dir() { go mod download -json "$1" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p'; }
kwok_dir="$(module_dir "sigs.k8s.io/kwok@$KWOK_VERSION")"
rm -f "$OUT/stages/"*.yaml
# nodes become Ready at once and renew their Lease (or the node controller evicts every pod);
# pods go through their real phases
for stage in node/fast node/heartbeat-with-lease pod/general; do
    for file in "$kwok_dir/kustomize/stage/$stage"/*.yaml; do
        [ "$(basename "$file")" = kustomization.yaml ] || cp "$file" "$OUT/stages/${stage//\//-}-$(basename "$file")"
    done
done
prom_dir="$(module_dir "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION")"
gateway_dir="$(module_dir "sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION")"
rm -f "$OUT/crds/"*.yaml
cp "$prom_dir"/example/prometheus-operator-crd/monitoring.coreos.com_{servicemonitors,prometheusrules,podmonitors}.yaml "$OUT/crds/"
cp "$gateway_dir"/config/crd/standard/gateway.networking.k8s.io_*.yaml "$OUT/crds/"
chmod -R u+w "$OUT/crds" "$OUT/stages"

"$OUT/bin/kube-apiserver" --version
echo "$STAMP_VALUE" > "$STAMP"
