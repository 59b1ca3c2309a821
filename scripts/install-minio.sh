#!/usr/bin/env bash
# MinIO server built from its Go module into .tools/bin, once; later runs reuse the binary.
set -euo pipefail
VERSION="v0.0.0-20260212201848-7aac2a2c5b7c"
TOOLS="${DICOMGW_TOOLS:-$(cd "$(dirname "$0")/.." && pwd)/.tools}"
BIN="$TOOLS/bin"
STAMP="$BIN/.minio-version"
if [ -x "$BIN/minio" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$VERSION" ]; then
    exit 0
fi
command -v go >/dev/null || { echo "Go is needed to build MinIO (go install)" >&2; exit 1; }
mkdir -p "$BIN"
echo "building MinIO $VERSION from its Go module (a few minutes, once)..."
GOBIN="$BIN" GOFLAGS="-trimpath" go install "github.com/minio/minio@$VERSION"
echo "$VERSION" > "$STAMP"
