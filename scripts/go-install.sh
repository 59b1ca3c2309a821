#!/usr/bin/env bash
# Build a Go tool from its module, at a pinned version, into .tools/bin, once; later runs reuse it.
#   scripts/go-install.sh <binary name> <module path> <version>
# (the binary is named <binary name> whatever the module's command folder is called)
set -euo pipefail
NAME="$1" MODULE="$2" VERSION="$3"
TOOLS="${DICOMGW_TOOLS:-$(cd "$(dirname "$0")/.." && pwd)/.tools}"
BIN="$TOOLS/bin"
STAMP="$BIN/.$NAME-version"
if [ -x "$BIN/$NAME" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$VERSION" ]; then
    exit 0
fi
command -v go >/dev/null || { echo "Go is needed to build $NAME (go install)" >&2; exit 1; }
mkdir -p "$BIN"
echo "building $NAME $VERSION from its Go module (a few minutes, once)..."
# built into a scratch folder, then named NAME (a module's command folder may be called "server")
BUILD="$(mktemp -d)"
trap 'rm -rf "$BUILD"' EXIT
GOBIN="$BUILD" GOFLAGS="-trimpath" go install "$MODULE@$VERSION"
mv "$BUILD/$(basename "$MODULE")" "$BIN/$NAME"
echo "$VERSION" > "$STAMP"
