#!/usr/bin/env bash
# Helm built from its Go module into .tools/bin, once; later runs reuse the binary.
set -euo pipefail
VERSION="v3.22.0"
TOOLS="${DICOMGW_TOOLS:-$(cd "$(dirname "$0")/.." && pwd)/.tools}"
BIN="$TOOLS/bin"
STAMP="$BIN/.helm-version"
if [ -x "$BIN/helm" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$VERSION" ]; then
    exit 0
fi
command -v go >/dev/null || { echo "Go is needed to build Helm (go install)" >&2; exit 1; }
mkdir -p "$BIN"
echo "building Helm $VERSION from its Go module (a few minutes, once)..."
GOBIN="$BIN" GOFLAGS="-trimpath" go install "helm.sh/helm/v3/cmd/helm@$VERSION"
echo "$VERSION" > "$STAMP"
