#!/usr/bin/env bash
# What the OHIF end-to-end test needs: Debian's Chromium, the published OHIF viewer build (npm package
# @ohif/app, its dist/ folder) and playwright-core to drive Chromium. Cached under .tools/ohif.
set -euo pipefail
OHIF_VERSION="3.13.2"
PLAYWRIGHT_VERSION="1.65.1"
TOOLS="${DICOMGW_TOOLS:-$(cd "$(dirname "$0")/.." && pwd)/.tools}"
DEST="$TOOLS/ohif"
STAMP="$DEST/.versions"
WANT="ohif=$OHIF_VERSION playwright-core=$PLAYWRIGHT_VERSION"

if ! command -v chromium >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq chromium >/dev/null
fi

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && [ -f "$DEST/dist/index.html" ]; then
    exit 0
fi
command -v npm >/dev/null || { echo "npm is needed for the OHIF build" >&2; exit 1; }
rm -rf "$DEST"
mkdir -p "$DEST/pack" "$DEST/driver"
# The package's tarball carries the built viewer; its dependencies are only for building it.
(cd "$DEST/pack" && npm pack --silent "@ohif/app@$OHIF_VERSION" >/dev/null)
tar -xzf "$DEST/pack/ohif-app-$OHIF_VERSION.tgz" -C "$DEST/pack"
mv "$DEST/pack/package/dist" "$DEST/dist"
rm -rf "$DEST/pack"
# playwright-core drives an installed browser and downloads none itself
(cd "$DEST/driver" && npm init -y >/dev/null && \
    npm install --silent --no-audit --no-fund "playwright-core@$PLAYWRIGHT_VERSION" >/dev/null)
echo "$WANT" > "$STAMP"
